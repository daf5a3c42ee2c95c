//! A refresh through a [`TokenStore`]: take a newer shared token, or lease the refresh and fetch,
//! or wait for the lease holder's token; fall back to fetching alone when the store fails.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::policy::RefreshPolicy;
use super::{AccessToken, TokenSource};
use crate::error::Error;
use crate::store::{StorePolicy, StoredToken, TokenStore};

/// How a shared refresh ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// Another instance's token, taken from the store.
    Adopted,
    /// Fetched by this instance (holding the lease, or after the holder failed to publish).
    Fetched,
    /// Fetched by this instance because the store was unavailable.
    Fallback,
}

/// What the refresh needs to know about the cell.
pub(crate) struct Context<'a> {
    pub(crate) source: &'a dyn TokenSource,
    pub(crate) store: &'a dyn TokenStore,
    pub(crate) store_policy: StorePolicy,
    pub(crate) policy: &'a RefreshPolicy,
    /// The token being replaced (digest, wall-clock expiry): only another token that expires
    /// later is worth taking.
    pub(crate) current: Option<([u8; 32], SystemTime)>,
    /// Digest of the token the server last rejected: never taken from the store again.
    pub(crate) rejected: Option<[u8; 32]>,
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A store operation bounded by the policy's timeout; `None` means the store is unavailable.
async fn bounded<T>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, Error>>,
) -> Option<T> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(error)) => {
            tracing::warn!(%error, "token store unavailable");
            None
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "token store too slow"
            );
            None
        }
    }
}

/// The shared form of a token just fetched.
pub(crate) fn stored(token: &AccessToken) -> StoredToken {
    let remaining = token.expires_at().saturating_duration_since(Instant::now());
    StoredToken::new(
        token.as_str(),
        SystemTime::now() + remaining,
        token.lifetime(),
        token.scope().map(str::to_owned),
    )
}

/// A stored token as if this instance had received it: same expiry, same lifetime, so that every
/// instance computes the same refresh point.
fn adopt(stored: &StoredToken) -> Result<AccessToken, Error> {
    let remaining = stored
        .expires_at()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let lifetime = stored.lifetime().max(remaining);
    let now = Instant::now();
    let received_at = now.checked_sub(lifetime - remaining).unwrap_or(now);
    Ok(AccessToken::new(stored.token(), lifetime, received_at)?.with_scope(stored.scope()))
}

impl Context<'_> {
    /// A stored token this instance should take: before its own refresh point, later than the
    /// token being replaced, and not the one the server rejected.
    fn acceptable(&self, stored: &StoredToken) -> bool {
        let Ok(remaining) = stored.expires_at().duration_since(SystemTime::now()) else {
            return false;
        };
        remaining > self.policy.refresh_ahead_for(stored.lifetime(), 0.0)
            && self.current.is_none_or(|(current, expires_at)| {
                digest(stored.token()) != current && stored.expires_at() > expires_at
            })
            && self.rejected != Some(digest(stored.token()))
    }

    async fn load_acceptable(&self) -> Result<Option<StoredToken>, ()> {
        match bounded(self.store_policy.operation_timeout, self.store.load()).await {
            Some(Some(stored)) if self.acceptable(&stored) => Ok(Some(stored)),
            Some(_) => Ok(None),
            None => Err(()),
        }
    }

    /// Fetches, publishes the token, and releases the lease if `owner` holds it.
    async fn fetch_and_publish(&self, owner: Option<String>) -> Result<AccessToken, Error> {
        let result = self.source.fetch().await;
        let timeout = self.store_policy.operation_timeout;
        if let Ok(token) = &result {
            let shared = stored(token);
            let _ = bounded(timeout, self.store.save(&shared)).await;
        }
        if let Some(owner) = owner {
            let _ = bounded(timeout, self.store.release_lease(&owner)).await;
        }
        result
    }

    pub(crate) async fn refresh(&self) -> (Result<AccessToken, Error>, Via) {
        let timeout = self.store_policy.operation_timeout;
        match self.load_acceptable().await {
            Ok(Some(stored)) => return (adopt(&stored), Via::Adopted),
            Ok(None) => {}
            Err(()) => return (self.source.fetch().await, Via::Fallback),
        }
        match bounded(timeout, self.store.try_lease(self.store_policy.lease)).await {
            Some(Some(owner)) => {
                // Someone may have published between our look and our lease.
                if let Ok(Some(stored)) = self.load_acceptable().await {
                    let _ = bounded(timeout, self.store.release_lease(&owner)).await;
                    return (adopt(&stored), Via::Adopted);
                }
                (self.fetch_and_publish(Some(owner)).await, Via::Fetched)
            }
            Some(None) => {
                // Another instance is fetching: wait for its token, one lease period at most.
                let deadline = Instant::now() + self.store_policy.lease;
                while Instant::now() < deadline {
                    tokio::time::sleep(self.store_policy.poll_interval).await;
                    match self.load_acceptable().await {
                        Ok(Some(stored)) => return (adopt(&stored), Via::Adopted),
                        Ok(None) => {}
                        Err(()) => return (self.source.fetch().await, Via::Fallback),
                    }
                }
                tracing::warn!(
                    lease_ms = self.store_policy.lease.as_millis() as u64,
                    "the instance holding the refresh lease published no token in time: fetching"
                );
                let owner = bounded(timeout, self.store.try_lease(self.store_policy.lease))
                    .await
                    .flatten();
                (self.fetch_and_publish(owner).await, Via::Fetched)
            }
            None => (self.source.fetch().await, Via::Fallback),
        }
    }
}
