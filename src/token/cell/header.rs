//! The values a [`TokenCell`](super::TokenCell) hands out: the token as a ready header value,
//! the link to the cell a response future keeps, and the cell's counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::{Shared, TokenCell};

/// A usable token as the cell hands it out: the ready `Authorization` value and its generation.
///
/// Cloning bumps reference counts only.
#[derive(Clone)]
pub struct TokenHeader {
    pub(super) value: HeaderValue,
    pub(super) generation: u64,
}

impl TokenHeader {
    /// `Bearer <token>`, marked sensitive.
    #[must_use]
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    /// Takes the header value.
    #[must_use]
    pub fn into_value(self) -> HeaderValue {
        self.value
    }

    /// The token generation: 1 for the cell's first token, one more for every renewal. Pass it to
    /// [`TokenCell::invalidate`] when the server rejects the token.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// A link to a cell that does not keep it alive, with a reference count of its own: a response
/// future keeps one, to report a `401`. Each thread's slot has its own (see
/// [`Slots`](super::slots::Slots)), so that the response futures of different threads write no
/// count in common; the cell has one more for the tokens no slot holds.
#[derive(Clone)]
pub(crate) struct CellLink(Arc<Weak<Shared>>);

impl CellLink {
    pub(super) fn new(shared: Weak<Shared>) -> Self {
        Self(Arc::new(shared))
    }

    /// The cell, if any handle on it is left.
    pub(crate) fn cell(&self) -> Option<TokenCell> {
        self.0.upgrade().map(|shared| TokenCell { shared })
    }

    /// A link to no cell, for tests.
    #[cfg(test)]
    pub(super) fn detached() -> Self {
        Self::new(Weak::new())
    }

    /// Whether both share one count, for tests.
    #[cfg(test)]
    pub(super) fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for CellLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CellLink").finish_non_exhaustive()
    }
}

impl fmt::Debug for TokenHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenHeader")
            .field("value", &"[redacted]")
            .field("generation", &self.generation)
            .finish()
    }
}

/// Counters of a [`TokenCell`]; see [`TokenCell::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CellStats {
    /// Token requests that produced a token.
    pub fetches_ok: u64,
    /// Token requests that failed (attempts that were cut off included).
    pub fetches_failed: u64,
    /// Calls that found no usable token and had to wait (or fail).
    pub waits: u64,
    /// Tokens dropped because the server rejected them (one per generation at most).
    pub invalidations: u64,
    /// Generation of the current token; 0 before the first.
    pub generation: u64,
    /// Time until the current token expires, if there is one.
    pub time_to_expiry: Option<Duration>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// Tokens taken from the shared store (fetched by another instance).
    pub adopted_from_store: u64,
    /// Refreshes that fetched alone because the shared store was unavailable.
    pub store_unavailable: u64,
    /// Requests sent again after a `401` (by the layer or the middleware).
    pub replays: u64,
    /// Total time callers spent waiting for a token (see `waits`).
    pub wait_time: Duration,
}

/// What a cell counts, read by [`TokenCell::stats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) fetches_ok: AtomicU64,
    pub(super) fetches_failed: AtomicU64,
    pub(super) waits: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) adopted: AtomicU64,
    pub(super) store_unavailable: AtomicU64,
    pub(super) replays: AtomicU64,
    pub(super) wait_nanos: AtomicU64,
}

impl TokenCell {
    /// The counters.
    #[must_use]
    pub fn stats(&self) -> CellStats {
        let shared = &*self.shared;
        let counters = &shared.counters;
        let consecutive_failures = shared.lock().failures;
        let guard = shared.current.load();
        let now = Instant::now();
        CellStats {
            fetches_ok: counters.fetches_ok.load(Ordering::Relaxed),
            fetches_failed: counters.fetches_failed.load(Ordering::Relaxed),
            waits: counters.waits.load(Ordering::Relaxed),
            invalidations: counters.invalidations.load(Ordering::Relaxed),
            generation: guard.as_ref().map_or(0, |cached| cached.generation),
            time_to_expiry: guard
                .as_ref()
                .map(|cached| cached.token.expires_at().saturating_duration_since(now)),
            consecutive_failures,
            adopted_from_store: counters.adopted.load(Ordering::Relaxed),
            store_unavailable: counters.store_unavailable.load(Ordering::Relaxed),
            replays: counters.replays.load(Ordering::Relaxed),
            wait_time: std::time::Duration::from_nanos(counters.wait_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Counts a request sent again after a `401` (for [`CellStats::replays`]).
    pub(crate) fn count_replay(&self) {
        self.shared.counters.replays.fetch_add(1, Ordering::Relaxed);
    }
}
