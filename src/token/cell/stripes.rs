//! Per-thread copies of a token: what callers that keep no copy of their own hand out.
//!
//! Under load what a token holder costs is the cache lines every thread writes: reference counts.
//! Handing out one shared header value makes every request on every thread increment and
//! decrement the same count, and that line then moves between cores on every request (tower-http's
//! `AddAuthorization` pays this too). A [`Stripes`] keeps, next to each token, up to one copy per
//! hardware thread, 16 at most (header value and cell link), each made by the first thread that
//! needs it;
//! a thread hands out the copy of its stripe, so threads write no count in common unless there
//! are more threads than stripes (more than 16 hardware threads, or threads that started out of
//! step). A copy is made at most once per stripe and token: the fast path allocates only the
//! first time a thread hands out a new token.
//!
//! Which stripe a thread uses comes from a number given to each thread the first time it uses a
//! cell: numbers are handed out in sequence, so the worker threads of a runtime get different
//! stripes.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::LocalToken;

/// At most this many copies per token (a power of two). A token (and its copies) stays in
/// memory while an idle service's cache still points at it: 16 copies of a ~1.5 KB token bound
/// that at ~24 KB per token, and on a machine with more hardware threads, threads share a
/// stripe by 2, 4, ... instead of all sharing one.
const MAX_STRIPES: usize = 16;

/// Up to one copy of a token per stripe, made on first use.
pub(super) struct Stripes {
    copies: Box<[OnceLock<LocalToken>]>,
}

impl Stripes {
    /// Room for `count` copies (rounded up to a power of two; see [`stripe_count`]); none made
    /// yet.
    pub(super) fn new(count: usize) -> Self {
        let count = count.clamp(1, MAX_STRIPES).next_power_of_two();
        Self {
            copies: (0..count).map(|_| OnceLock::new()).collect(),
        }
    }

    /// This thread's copy of `template`, made now if this stripe has none yet.
    #[inline]
    pub(super) fn get(&self, template: &LocalToken) -> &LocalToken {
        self.get_at(thread_index(), template)
    }

    /// The copy of the stripe for thread index `index`.
    #[inline]
    fn get_at(&self, index: usize, template: &LocalToken) -> &LocalToken {
        // `copies.len()` is a power of two (at least one), so the index is in range.
        let slot = &self.copies[index & (self.copies.len() - 1)];
        slot.get_or_init(|| template.deep_copy())
    }
}

/// How many stripes a cell's tokens get: the machine's hardware threads, rounded up to a power
/// of two, at most [`MAX_STRIPES`].
pub(super) fn stripe_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_STRIPES)
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
/// it is what makes a runtime's workers use different stripes (`oneshot_ratios` in
/// `benches/` measures what that saves).
#[cold]
fn next_thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Wraps after `usize::MAX` threads; `usize::MAX` itself is the "unset" marker.
    NEXT.fetch_add(1, Ordering::Relaxed) % (usize::MAX - 1)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn each_stripe_has_a_copy_of_its_own_made_once() {
        let mut value = HeaderValue::from_static("Bearer abc");
        value.set_sensitive(true);
        let template = LocalToken::detached(value, 7);
        let stripes = Stripes::new(3);
        assert_eq!(stripes.copies.len(), 4, "rounded up to a power of two");
        let first = stripes.get_at(0, &template);
        let other = stripes.get_at(1, &template);
        for copy in [first, other] {
            assert_eq!(copy.value(), template.value());
            assert!(copy.value().is_sensitive());
            assert_eq!(copy.generation(), 7);
        }
        let bytes = |copy: &LocalToken| copy.value().as_bytes().as_ptr();
        assert_ne!(bytes(first), bytes(other), "no bytes (or count) in common");
        assert_ne!(bytes(first), bytes(&template));
        assert!(
            std::ptr::eq(first, stripes.get_at(0, &template)),
            "made once"
        );
        assert!(
            std::ptr::eq(first, stripes.get_at(4, &template)),
            "wraps around"
        );
        assert_eq!(Stripes::new(0).copies.len(), 1);
        assert_eq!(Stripes::new(usize::MAX).copies.len(), MAX_STRIPES);
    }

    #[test]
    fn stripe_count_is_a_power_of_two_within_bounds() {
        let count = stripe_count();
        assert!(count.is_power_of_two());
        assert!((1..=MAX_STRIPES).contains(&count));
    }

    #[test]
    fn threads_get_different_indexes_in_sequence() {
        let mine = thread_index();
        assert_eq!(thread_index(), mine, "read once per thread, then kept");
        let others: Vec<usize> = (0..4)
            .map(|_| std::thread::spawn(thread_index).join().unwrap())
            .collect();
        // Later threads have later ids: all different, and different from this one.
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
