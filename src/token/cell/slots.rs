//! Per-thread slots: where the fast path finds the token, in one place of its own per thread.
//!
//! Under load a request costs the layer the cache lines it touches more than the instructions it
//! runs: between two requests of a stream the kernel's network path evicts the caches, and each
//! line the fast path needs is then a miss (`evicted_ratios` in `benches/` measures it). Reading
//! the token through the cell's arc-swap pointer touches the thread's debt slots, the pointer, the
//! token's instants and a copy of its header value, each in a line of its own. A [`Slots`] keeps,
//! inside the cell, up to one slot per hardware thread (16 at most), each in cache lines of its
//! own: a lock, the instant until which the slot may hand out its token, the generation, a
//! header value of the slot's own (its own bytes and count) and a link to the cell of its own
//! (for the response future), so that threads write no count in common unless they share a
//! slot. A hit touches that slot, its value's count and its link's count, and reads the clock.
//!
//! A slot is a cache, never the truth: it is filled, by the thread that uses it, from the cell's
//! current token, and it holds the token only until the token's refresh point (never past its
//! usable-until instant): a hit needs no refresh, and the slow path that follows a miss starts
//! the refresh as it always did. The cell clears every slot whenever its token changes (a new
//! token, a rejected one) and when its background refresher is gone (so that the next use
//! restarts it); a fill checks, under the slot's lock, that the token is still the cell's and
//! that a refresher runs. Readers never wait: a slot whose lock is held (its thread shares it
//! with another, or the cell is clearing it) is a miss.
//!
//! Which slot a thread uses comes from a number given to each thread the first time it uses a
//! cell: numbers are handed out in sequence, so the worker threads of a runtime get different
//! slots.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, TryLockError};

use http::HeaderValue;
use tokio::time::Instant;

use super::{CellLink, TokenHeader};

/// At most this many slots per cell (a power of two): on a machine with more hardware threads,
/// threads share a slot by 2, 4, ..., and a thread that finds its slot's lock held reads the
/// cell's token instead.
pub(super) const MAX_SLOTS: usize = 16;

/// The cell's slots.
pub(super) struct Slots {
    slots: [Slot; MAX_SLOTS],
    /// `count - 1`, for `count` slots in use (a power of two).
    mask: usize,
}

/// One slot, in cache lines no other slot shares.
#[repr(align(128))]
#[derive(Default)]
struct Slot(Mutex<Option<Entry>>);

/// What a slot hands out, until when.
struct Entry {
    /// The slot hands out its token before this instant only: the token's refresh point, or its
    /// usable-until instant if that comes first.
    until: Instant,
    /// The slot's own copy of the header value, with the token's generation.
    header: TokenHeader,
    /// The slot's own link to the cell (a count of its own), for a response future that may
    /// have to report a `401`.
    link: CellLink,
}

impl Slots {
    /// `count` slots in use (rounded up to a power of two, at most [`MAX_SLOTS`]), all empty.
    pub(super) fn new(count: usize) -> Self {
        Self {
            slots: Default::default(),
            mask: count.clamp(1, MAX_SLOTS).next_power_of_two() - 1,
        }
    }

    /// This thread's slot.
    #[inline]
    fn mine(&self) -> &Slot {
        &self.slots[thread_index() & self.mask]
    }

    /// `hand_out` of the token in this thread's slot, if it holds one before its `until`
    /// instant (the clock is read after the slot, so that it is no earlier than the fill).
    /// Never waits.
    #[inline]
    pub(super) fn get<R>(&self, hand_out: impl FnOnce(&TokenHeader, &CellLink) -> R) -> Option<R> {
        let entry = match self.mine().0.try_lock() {
            Ok(entry) => entry,
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => return None,
        };
        let entry = entry.as_ref()?;
        (Instant::now() < entry.until).then(|| hand_out(&entry.header, &entry.link))
    }

    /// Fills this thread's slot with a copy of `token` and a link of its own to the cell (made
    /// by `link`), to hand out until `until`, if `still_current` (called under the slot's lock)
    /// says the token is still the cell's and may be cached. Returns `hand_out` of the slot's
    /// copy, or `None` when the slot is busy or the token may not be cached (the caller then
    /// hands out its own). Allocates only when the slot does not hold this token yet.
    pub(super) fn fill<R>(
        &self,
        token: &TokenHeader,
        until: Instant,
        still_current: impl FnOnce() -> bool,
        link: impl FnOnce() -> CellLink,
        hand_out: impl FnOnce(&TokenHeader, &CellLink) -> R,
    ) -> Option<R> {
        let slot = &self.mine().0;
        let mut entry = match slot.try_lock() {
            Ok(entry) => entry,
            Err(TryLockError::WouldBlock) => return None,
            // A panic under the lock (in a caller's `hand_out`): the slot starts afresh, rather
            // than missing for good.
            Err(TryLockError::Poisoned(poisoned)) => {
                let mut entry = poisoned.into_inner();
                *entry = None;
                slot.clear_poison();
                entry
            }
        };
        if !still_current() {
            return None;
        }
        let entry = match &mut *entry {
            Some(entry) if entry.header.generation == token.generation && entry.until == until => {
                entry
            }
            slot => slot.insert(Entry {
                until,
                header: TokenHeader {
                    value: own_copy(&token.value),
                    generation: token.generation,
                },
                link: link(),
            }),
        };
        Some(hand_out(&entry.header, &entry.link))
    }

    /// Empties every slot (waiting for a reader that holds one: a few instructions).
    pub(super) fn clear(&self) {
        for slot in &self.slots[..=self.mask] {
            let old = slot.0.lock().unwrap_or_else(PoisonError::into_inner).take();
            slot.0.clear_poison();
            // The copy is freed outside the lock.
            drop(old);
        }
    }

    /// How many slots hold a token (for tests).
    #[cfg(test)]
    pub(super) fn filled(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.0.lock().is_ok_and(|entry| entry.is_some()))
            .count()
    }
}

/// A copy of `value` with bytes and a count of its own, marked sensitive and wiped from memory
/// when its last clone is dropped; clones on the fast path never allocate.
fn own_copy(value: &HeaderValue) -> HeaderValue {
    crate::wipe::sensitive_header(&[value.as_bytes()]).unwrap_or_else(|_| value.clone())
}

/// How many slots a cell uses: the machine's hardware threads, rounded up to a power of two, at
/// most [`MAX_SLOTS`].
pub(super) fn slot_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_SLOTS)
        .next_power_of_two()
}

/// This thread's index: the order in which threads first used a token cell, counted once per
/// thread (threads that start one after another, a runtime's workers, get consecutive ones).
#[inline]
fn thread_index() -> usize {
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut value = index.get();
        if value == usize::MAX {
            value = next_thread_index();
            index.set(value);
        }
        value
    })
}

/// The next thread's index. A counter for the whole process (one increment per thread, ever):
/// it is what makes a runtime's workers use different slots.
#[cold]
fn next_thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Wraps after `usize::MAX` threads; `usize::MAX` itself is the "unset" marker.
    NEXT.fetch_add(1, Ordering::Relaxed) % (usize::MAX - 1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn get(slots: &Slots) -> Option<TokenHeader> {
        slots.get(|header, _| header.clone())
    }

    fn fill(
        slots: &Slots,
        token: &TokenHeader,
        until: Instant,
        still_current: impl FnOnce() -> bool,
    ) -> Option<TokenHeader> {
        slots.fill(
            token,
            until,
            still_current,
            CellLink::detached,
            |header, _| header.clone(),
        )
    }

    fn header(generation: u64) -> TokenHeader {
        let mut value = HeaderValue::from_static("Bearer abc");
        value.set_sensitive(true);
        TokenHeader { value, generation }
    }

    #[test]
    fn a_slot_hands_out_its_own_copy_until_its_instant_only() {
        let slots = Slots::new(3);
        assert_eq!(slots.mask, 3, "rounded up to a power of two");
        assert!(get(&slots).is_none(), "empty");
        let token = header(7);
        let until = Instant::now() + Duration::from_secs(60);
        let filled = fill(&slots, &token, until, || true).unwrap();
        let got = get(&slots).unwrap();
        for copy in [&filled, &got] {
            assert_eq!(copy.value(), token.value());
            assert!(copy.value().is_sensitive());
            assert_eq!(copy.generation(), 7);
            assert_ne!(
                copy.value().as_bytes().as_ptr(),
                token.value().as_bytes().as_ptr(),
                "bytes (and a count) of the slot's own"
            );
        }
        assert_eq!(
            got.value().as_bytes().as_ptr(),
            filled.value().as_bytes().as_ptr(),
            "copied once"
        );
        assert_eq!(slots.filled(), 1);
        slots.clear();
        assert!(get(&slots).is_none());
        assert_eq!(slots.filled(), 0);
    }

    #[test]
    fn a_slot_makes_its_link_once_per_token() {
        let slots = Slots::new(1);
        let until = Instant::now() + Duration::from_secs(60);
        let links = Cell::new(0);
        let link = || {
            links.set(links.get() + 1);
            CellLink::detached()
        };
        let first = slots.fill(&header(1), until, || true, link, |_, link| link.clone());
        let again = slots.fill(&header(1), until, || true, link, |_, link| link.clone());
        let hit = slots.get(|_, link| link.clone());
        assert_eq!(links.get(), 1, "made by the first fill only");
        let [first, again, hit] = [first, again, hit].map(Option::unwrap);
        assert!(
            first.same_as(&again) && first.same_as(&hit),
            "one count per slot"
        );
        slots
            .fill(&header(2), until, || true, link, |_, _| ())
            .unwrap();
        assert_eq!(links.get(), 2, "a new token, a new link");
    }

    #[test]
    fn a_slot_is_not_filled_when_the_token_is_no_longer_current() {
        let slots = Slots::new(1);
        let until = Instant::now() + Duration::from_secs(60);
        assert!(fill(&slots, &header(1), until, || false).is_none());
        assert!(get(&slots).is_none());
    }

    #[test]
    fn a_slot_past_its_instant_hands_out_nothing() {
        let slots = Slots::new(1);
        let until = Instant::now();
        assert!(fill(&slots, &header(1), until, || true).is_some());
        assert!(get(&slots).is_none(), "`until` is excluded");
    }

    #[test]
    fn a_busy_slot_is_a_miss_not_a_wait() {
        let slots = Slots::new(1);
        let until = Instant::now() + Duration::from_secs(60);
        fill(&slots, &header(1), until, || true).unwrap();
        // The fill's check runs under the slot's lock: a read meanwhile misses.
        let inner = fill(&slots, &header(1), until, || get(&slots).is_none());
        assert!(inner.is_some(), "the read inside missed instead of waiting");
        let _held = slots.slots[0].0.lock().unwrap();
        assert!(get(&slots).is_none());
        assert!(fill(&slots, &header(1), until, || true).is_none());
    }

    #[test]
    fn a_poisoned_slot_heals_at_the_next_fill_or_clear() {
        let slots = Slots::new(1);
        let until = Instant::now() + Duration::from_secs(60);
        let poison = |slots: &Slots| {
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                slots.fill(
                    &header(1),
                    until,
                    || true,
                    CellLink::detached,
                    |_, _| panic!("a panic under the slot's lock (expected by the test)"),
                )
            }));
            assert!(panicked.is_err());
            assert!(slots.slots[0].0.is_poisoned());
        };
        poison(&slots);
        assert!(get(&slots).is_none(), "a poisoned slot is a miss");
        assert_eq!(
            fill(&slots, &header(2), until, || true).map(|got| got.generation()),
            Some(2),
            "healed by the next fill, with the new token"
        );
        assert_eq!(get(&slots).map(|got| got.generation()), Some(2));
        poison(&slots);
        slots.clear();
        assert!(!slots.slots[0].0.is_poisoned(), "healed by a clear");
        assert!(fill(&slots, &header(3), until, || true).is_some());
    }

    #[test]
    fn slot_count_is_a_power_of_two_within_bounds() {
        let count = slot_count();
        assert!(count.is_power_of_two());
        assert!((1..=MAX_SLOTS).contains(&count));
        assert_eq!(Slots::new(0).mask, 0);
        assert_eq!(Slots::new(usize::MAX).mask, MAX_SLOTS - 1);
    }

    #[test]
    fn threads_get_different_indexes_in_sequence() {
        let mine = thread_index();
        assert_eq!(thread_index(), mine, "read once per thread, then kept");
        let others: Vec<usize> = (0..4)
            .map(|_| std::thread::spawn(thread_index).join().unwrap())
            .collect();
        let mut all = others.clone();
        all.push(mine);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 5, "{others:?} and {mine}");
        assert!(
            others.windows(2).all(|pair| pair[0] < pair[1]),
            "sequential: {others:?}"
        );
    }
}
