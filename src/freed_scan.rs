//! The unit tests' global allocator: the system allocator, which on request scans the blocks a
//! thread frees (or moves with `realloc`) for secrets, to prove that the crate wipes its copies
//! (see `crate::wipe`). Only the thread inside [`freed_blocks_holding`] scans, so that tests
//! running beside it neither slow down nor disturb the count. `tests/key_memory.rs` and
//! `tests/token_memory.rs` do the same across threads, each in a binary of its own.
// A global allocator cannot be written without `unsafe`; it only reads the blocks it frees.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// The needles this thread looks for (a pointer to the caller's slice, valid while it
    /// scans), and how many freed blocks held one.
    static SCAN: Cell<Option<(*const &'static [u8], usize)>> = const { Cell::new(None) };
    static FOUND: Cell<usize> = const { Cell::new(0) };
}

/// Counts `block` if it holds a needle.
///
/// # Safety
///
/// `ptr` must point to `size` readable bytes.
unsafe fn scan(ptr: *const u8, size: usize) {
    let Ok(Some((needles, count))) = SCAN.try_with(Cell::get) else {
        return;
    };
    // SAFETY: set by `freed_blocks_holding` from a slice that outlives the scan.
    let needles = unsafe { std::slice::from_raw_parts(needles, count) };
    // SAFETY: the caller's contract; the block is still allocated.
    let block = unsafe { std::slice::from_raw_parts(ptr, size) };
    if needles
        .iter()
        .any(|needle| block.windows(needle.len()).any(|w| w == *needle))
    {
        FOUND.with(|found| found.set(found.get() + 1));
    }
}

struct Scanning;

unsafe impl GlobalAlloc for Scanning {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarding the caller's contract to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes until freed below.
        unsafe { scan(ptr, layout.size()) };
        // SAFETY: forwarding the caller's contract to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A moving realloc frees the old block with its contents.
        // SAFETY: `ptr` is a live block of `layout.size()` bytes.
        unsafe { scan(ptr, layout.size()) };
        // SAFETY: forwarding the caller's contract to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Scanning = Scanning;

/// Runs `f` on this thread and returns how many blocks this thread freed meanwhile held one of
/// `needles` (each non-empty).
pub(crate) fn freed_blocks_holding(needles: &[&'static [u8]], f: impl FnOnce()) -> usize {
    /// Stops the scan however `f` ends (a failing assertion unwinds): the pointer to `needles`
    /// must not outlive the call.
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            SCAN.with(|scan| scan.set(None));
        }
    }
    assert!(needles.iter().all(|needle| !needle.is_empty()));
    FOUND.with(|found| found.set(0));
    SCAN.with(|scan| scan.set(Some((needles.as_ptr(), needles.len()))));
    let stop = Stop;
    f();
    drop(stop);
    FOUND.with(Cell::get)
}

#[test]
fn the_scanner_sees_a_copy_freed_unwiped() {
    let found = freed_blocks_holding(&[b"needle-7c1e"], || {
        drop(String::from("a needle-7c1e in a haystack"));
    });
    assert_eq!(found, 1);
    assert_eq!(freed_blocks_holding(&[b"needle-7c1e"], || {}), 0);
    // A panic inside ends the scan too.
    let panicked = std::panic::catch_unwind(|| {
        freed_blocks_holding(&[b"needle-7c1e"], || panic!("inside the scan (expected)"))
    });
    assert!(panicked.is_err());
    assert!(SCAN.with(Cell::get).is_none());
}
