//! The layer's view of a cell: [`TokenReader`], one per service, and the [`LocalToken`] it hands
//! out.
//!
//! Under contention what a token holder costs is the cache lines every thread writes: the
//! reference counts of shared values. A reader keeps the last token it saw and checks with one
//! relaxed atomic load that the cell still holds it (arc-swap's `Cache`); from its second call on
//! it hands the token out as a copy of its own (one per token), header value and cell link
//! included, so that services used on different threads write no count in common. A service's
//! first call uses the cell's shared copy, so that a service cloned for one call (`oneshot`)
//! allocates nothing.

use std::fmt;
use std::sync::{Arc, Weak};

use http::HeaderValue;
use tokio::time::Instant;

use super::flight::Reason;
use super::{CachedToken, Shared, TokenCell};

/// A per-service view of a [`TokenCell`] for the layer's fast path. Behaves as
/// [`TokenCell::current`]: the clock is read on every call.
pub(crate) struct TokenReader {
    cache: arc_swap::Cache<CurrentRef, Option<Arc<CachedToken>>>,
    /// This reader's own copy of the token, once it has made one.
    local: Option<LocalToken>,
    /// Whether this reader has handed out a token.
    used: bool,
}

impl Clone for TokenReader {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            local: None,
            used: false,
        }
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

    /// A copy for one service, with a header value and a link of its own.
    fn copy_of(cached: &CachedToken) -> Self {
        let shared = cached.token.header_value();
        // A deep copy: a header value of its own, with its own reference count.
        let value = HeaderValue::from_bytes(shared.as_bytes()).map_or_else(
            |_| shared.clone(),
            |mut value| {
                value.set_sensitive(true);
                value
            },
        );
        // Share the new bytes now, so that clones on the fast path never allocate.
        drop(value.clone());
        Self {
            value,
            generation: cached.generation,
            link: CellLink(Arc::new(Weak::clone(&cached.local.link.0))),
        }
    }

    /// The `Authorization` value.
    #[inline]
    pub(crate) fn value(&self) -> HeaderValue {
        self.value.clone()
    }

    /// The token's generation.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The link to the token's cell.
    #[inline]
    pub(crate) fn link(&self) -> CellLink {
        self.link.clone()
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
    pub(crate) fn new(cell: &TokenCell) -> Self {
        Self {
            cache: arc_swap::Cache::new(CurrentRef(Arc::clone(&cell.shared))),
            local: None,
            used: false,
        }
    }

    /// As [`TokenCell::current`], the token as this reader's [`LocalToken`]. `cell` is the cell
    /// the reader was made from (passed in rather than kept, so that cloning a reader counts one
    /// reference less on the cell).
    #[inline]
    pub(crate) fn current(&mut self, cell: &TokenCell) -> Option<&LocalToken> {
        let now = Instant::now();
        let cached = self.cache.load().as_ref()?;
        if now >= cached.usable_until {
            return None;
        }
        if now < cached.valid_from {
            return cached.previous_at(now).map(|previous| &previous.local);
        }
        if now >= cached.refresh_at {
            cell.shared.refresh_soon(now, Reason::Proactive);
        }
        cell.shared.keep_refresher();
        let own = matches!(&self.local, Some(local) if local.generation == cached.generation);
        if !own {
            if !std::mem::replace(&mut self.used, true) {
                return Some(&cached.local);
            }
            self.local = Some(LocalToken::copy_of(cached));
        }
        self.local.as_ref()
    }
}

impl fmt::Debug for TokenReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReader").finish_non_exhaustive()
    }
}
