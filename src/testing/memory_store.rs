//! `MemoryTokenStore`: an in-process `TokenStore` shared by several cells, for tests.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::store::{StoredToken, TokenStore};
use crate::token::BoxFuture;

/// A [`TokenStore`] in memory, shared by every clone: several cells built with clones of one
/// `MemoryTokenStore` behave like instances sharing a Redis. It can be made unavailable, and a
/// lease can be taken by a pretend instance that then "dies". Like Redis, it measures how long a
/// token has left with its own clock (tokio's, so that paused-clock tests work).
#[derive(Clone, Debug, Default)]
pub struct MemoryTokenStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The token and when it expires, by the store's clock.
    token: Option<(StoredToken, Instant)>,
    lease: Option<(String, Instant)>,
    down: bool,
    saves: u64,
    leases_taken: u64,
}

impl MemoryTokenStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every operation fail (`true`) or work again (`false`).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Takes the lease for `ttl` as an instance that will never publish nor release.
    pub fn take_lease_and_die(&self, ttl: Duration) {
        self.lock().lease = Some((
            "dead-instance".to_owned(),
            crate::token::later(Instant::now(), ttl),
        ));
    }

    /// Tokens published so far.
    #[must_use]
    pub fn saves(&self) -> u64 {
        self.lock().saves
    }

    /// Leases granted so far.
    #[must_use]
    pub fn leases_taken(&self) -> u64 {
        self.lock().leases_taken
    }

    /// How long the stored token has left, if there is one.
    #[must_use]
    pub fn expires_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.lock()
            .token
            .as_ref()
            .map(|(_, expires_at)| expires_at.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    fn check(&self) -> Result<MutexGuard<'_, Inner>, Error> {
        let inner = self.lock();
        if inner.down {
            Err(Error::new(ErrorKind::Transport, "memory store is down"))
        } else {
            Ok(inner)
        }
    }
}

impl TokenStore for MemoryTokenStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredToken>, Error>> {
        Box::pin(async move {
            let inner = self.check()?;
            let now = Instant::now();
            Ok(inner.token.as_ref().and_then(|(token, expires_at)| {
                let left = expires_at.saturating_duration_since(now);
                (!left.is_zero()).then(|| {
                    StoredToken::new(
                        token.token(),
                        left,
                        token.lifetime(),
                        token.scope().map(str::to_owned),
                    )
                    .with_not_before(token.not_before())
                })
            }))
        })
    }

    fn save<'a>(&'a self, token: &'a StoredToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut inner = self.check()?;
            let expires_at = crate::token::later(Instant::now(), token.expires_in());
            inner.token = Some((token.clone(), expires_at));
            inner.saves += 1;
            Ok(())
        })
    }

    fn try_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<Option<String>, Error>> {
        Box::pin(async move {
            let mut inner = self.check()?;
            let now = Instant::now();
            if inner.lease.as_ref().is_some_and(|(_, until)| *until > now) {
                return Ok(None);
            }
            let owner = uuid::Uuid::new_v4().to_string();
            inner.lease = Some((owner.clone(), crate::token::later(now, ttl)));
            inner.leases_taken += 1;
            Ok(Some(owner))
        })
    }

    fn release_lease<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut inner = self.check()?;
            if inner.lease.as_ref().is_some_and(|(held, _)| held == owner) {
                inner.lease = None;
            }
            Ok(())
        })
    }
}
