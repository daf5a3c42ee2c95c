//! The layer's view of a cell: [`TokenReader`], one per service, and the [`LocalToken`] it hands
//! out.
//!
//! Under contention what a token holder costs is the cache lines every thread writes: the
//! reference counts of shared values. A service's first call (and a service cloned for one call,
//! as `oneshot` callers do) reads the cell's token through arc-swap's thread-local debt slots and
//! hands out its thread's copy (see [`Stripes`](super::stripes)): no count the service's clone
//! shares with other threads (unless they share a stripe), no allocation after that thread's
//! first use of the token. From its second call on a reader keeps the last
//! token it saw, checks with one relaxed atomic load that the cell still holds it (arc-swap's
//! `Cache`), and hands it out as a copy of its own (one per token), header value and cell link
//! included. Cloning a reader clones none of that: a clone starts afresh.
use std::fmt;
use std::sync::{Arc, Weak};

use http::HeaderValue;
use tokio::time::Instant;

use super::cached::Serves;
use super::{CachedToken, Shared, TokenCell};

/// A per-service view of a [`TokenCell`] for the layer's fast path. Behaves as
/// [`TokenCell::current`]: the clock is read on every call.
#[derive(Default)]
pub(crate) struct TokenReader {
    /// The cache and this reader's own copy, from its second call on.
    own: Option<Own>,
    /// Whether this reader has had its first call (whether or not it found a token).
    used: bool,
}

/// What a reader keeps from its second call on.
struct Own {
    cache: arc_swap::Cache<CurrentRef, Option<Arc<CachedToken>>>,
    /// This reader's own copy of the token, once it has made one.
    local: Option<LocalToken>,
}

impl Clone for TokenReader {
    /// A reader with nothing of its own: cloning takes no reference on the cell or its token.
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// A weak link from a token to its cell, so that a response future can renew the token after a
/// `401`. Each [`LocalToken`] has its own (one allocation per copy), so that cloning it per
/// request writes a count only that copy's holders share.
#[derive(Clone)]
pub(crate) struct CellLink(Arc<Weak<Shared>>);

impl CellLink {
    /// The cell, if any handle on it is left.
    pub(crate) fn cell(&self) -> Option<TokenCell> {
        self.0.upgrade().map(|shared| TokenCell { shared })
    }
}

/// A token as [`TokenReader`] hands it out: the header value, its generation, and a link to its
/// cell.
#[derive(Clone)]
pub(crate) struct LocalToken {
    value: HeaderValue,
    generation: u64,
    link: CellLink,
}

impl LocalToken {
    /// The copy a cell keeps with its token, for readers that have none of their own.
    pub(super) fn shared_copy(shared: &Shared, value: &HeaderValue, generation: u64) -> Self {
        Self {
            value: value.clone(),
            generation,
            link: CellLink(Arc::new(shared.me.clone())),
        }
    }

    /// A token linked to no cell, for tests.
    #[cfg(test)]
    pub(super) fn detached(value: HeaderValue, generation: u64) -> Self {
        Self {
            value,
            generation,
            link: CellLink(Arc::new(Weak::new())),
        }
    }

    /// A copy with a header value and a link of its own (three allocations: the bytes, their
    /// shared count, the link).
    pub(super) fn deep_copy(&self) -> Self {
        // A deep copy: a header value of its own, with its own reference count.
        let value = HeaderValue::from_bytes(self.value.as_bytes()).map_or_else(
            |_| self.value.clone(),
            |mut value| {
                value.set_sensitive(true);
                value
            },
        );
        // Share the new bytes now, so that clones on the fast path never allocate.
        drop(value.clone());
        Self {
            value,
            generation: self.generation,
            link: CellLink(Arc::new(Weak::clone(&self.link.0))),
        }
    }

    /// The `Authorization` value.
    #[inline]
    pub(crate) fn value(&self) -> &HeaderValue {
        &self.value
    }

    /// The token's generation.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The header value and the link to the token's cell, taken apart.
    #[inline]
    pub(crate) fn into_parts(self) -> (HeaderValue, CellLink) {
        (self.value, self.link)
    }
}

impl fmt::Debug for LocalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalToken")
            .field("value", &"[redacted]")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Lets `arc_swap::Cache` reach the cell's token slot.
#[derive(Clone)]
struct CurrentRef(Arc<Shared>);

impl std::ops::Deref for CurrentRef {
    type Target = arc_swap::ArcSwapOption<CachedToken>;

    fn deref(&self) -> &Self::Target {
        &self.0.current
    }
}

impl TokenReader {
    /// As [`TokenCell::current`], the token as a [`LocalToken`] (a clone: two uncontended
    /// reference counts). `cell` is the cell the reader was made from (passed in rather than
    /// kept, so that a reader takes no reference on it until its second call).
    #[inline]
    pub(crate) fn current(&mut self, cell: &TokenCell) -> Option<LocalToken> {
        match &mut self.own {
            Some(own) => own.current(cell),
            None => self.first(cell),
        }
    }

    /// The first two calls: the first hands out this thread's copy, the second sets up the
    /// cache and the reader's own copy.
    fn first(&mut self, cell: &TokenCell) -> Option<LocalToken> {
        if std::mem::replace(&mut self.used, true) {
            return self
                .own
                .insert(Own {
                    cache: arc_swap::Cache::new(CurrentRef(Arc::clone(&cell.shared))),
                    local: None,
                })
                .current(cell);
        }
        cell.shared.with_current(LocalToken::clone)
    }
}

impl Own {
    #[inline]
    fn current(&mut self, cell: &TokenCell) -> Option<LocalToken> {
        let cached = self.cache.load().as_ref()?;
        // After the load: no earlier than the instant the token was installed at.
        let now = Instant::now();
        match cached.serves(now) {
            Serves::No => None,
            Serves::Previous(previous) => Some(previous.local.clone()),
            Serves::Current => {
                cell.shared.tend(now >= cached.refresh_at, now);
                match &self.local {
                    Some(local) if local.generation == cached.generation => Some(local.clone()),
                    _ => Some(self.local.insert(cached.local.deep_copy()).clone()),
                }
            }
        }
    }
}

impl fmt::Debug for TokenReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReader").finish_non_exhaustive()
    }
}
