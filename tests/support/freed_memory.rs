//! A global allocator that scans every block freed (or moved by `realloc`) on any thread for
//! secrets, while scanning is on: for the tests that prove the crate wipes its copies
//! (`key_memory.rs`, `token_memory.rs`). Each includes this file with `#[path]` in a binary of
//! its own (it is not part of `support`: every test binary would get the allocator).
// A global allocator cannot be written without `unsafe`; it only reads the blocks it frees.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The secrets to look for; set once, before scanning starts, and never freed.
static NEEDLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
static SCANNING: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);

/// Sets the secrets to look for (once per test binary).
pub(crate) fn look_for(needles: Vec<Vec<u8>>) {
    assert!(needles.iter().all(|needle| !needle.is_empty()));
    NEEDLES.set(needles).expect("needles are set once");
}

/// Runs `f` with scanning on; how many freed blocks held a secret, in all so far.
pub(crate) fn scanning<R>(f: impl FnOnce() -> R) -> (R, usize) {
    SCANNING.store(true, Ordering::SeqCst);
    let result = f();
    SCANNING.store(false, Ordering::SeqCst);
    (result, FOUND.load(Ordering::SeqCst))
}

/// Counts `block` if it holds a needle.
///
/// # Safety
///
/// `ptr` must point to `size` readable bytes.
unsafe fn scan(ptr: *const u8, size: usize) {
    if !SCANNING.load(Ordering::Relaxed) {
        return;
    }
    let Some(needles) = NEEDLES.get() else {
        return;
    };
    // SAFETY: the caller's contract; the block is still allocated.
    let block = unsafe { std::slice::from_raw_parts(ptr, size) };
    if needles
        .iter()
        .any(|needle| block.windows(needle.len()).any(|w| w == &needle[..]))
    {
        FOUND.fetch_add(1, Ordering::SeqCst);
    }
}

/// The system allocator, scanning what is freed.
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
