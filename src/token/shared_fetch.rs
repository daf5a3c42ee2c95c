//! A refresh through a [`TokenStore`]: take a newer shared token, or lease the refresh and fetch,
//! or wait for the lease holder's token; fall back to fetching alone when the store fails.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::policy::{RefreshPolicy, later};
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
    pub(crate) store: &'a Arc<dyn TokenStore>,
    pub(crate) store_policy: StorePolicy,
    pub(crate) policy: &'a RefreshPolicy,
    /// The token being replaced (digest, time left): only another token that lives longer is
    /// worth taking.
    pub(crate) current: Option<([u8; 32], Duration)>,
    /// Digest of the token the server last rejected: never taken from the store again.
    pub(crate) rejected: Option<[u8; 32]>,
    /// Whether this refresh has warned of an unusable stored token (it looks again at every
    /// poll: once is enough).
    pub(crate) unusable_reported: std::sync::atomic::AtomicBool,
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
            // The store's own error (a Redis `NOPERM`, say) is what an operator needs to see.
            let cause = std::error::Error::source(&error).map(tracing::field::display);
            tracing::warn!(%error, cause, "token store unavailable");
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

/// The refresh lease this instance holds: released when the attempt is done with it, and, when
/// the attempt ends any other way (its source panicked, it was cut off at its deadline), released
/// on drop by a task of its own, so that the other instances notice within one poll interval
/// instead of waiting for the lease to lapse. Best effort: on a runtime shutting down that task
/// never runs, and the lease lapses.
struct Lease {
    store: Arc<dyn TokenStore>,
    owner: Option<String>,
    timeout: Duration,
}

impl Lease {
    async fn release(mut self) {
        if let Some(owner) = &self.owner {
            let _ = bounded(self.timeout, self.store.release_lease(owner)).await;
        }
        // Released (or the store failed to): nothing left for drop, unless this was cut short.
        self.owner = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        // Best effort: without a runtime the lease lapses on its own.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, timeout) = (Arc::clone(&self.store), self.timeout);
            tracing::debug!("the refresh attempt ended holding the lease: releasing it");
            drop(runtime.spawn(async move {
                let _ = bounded(timeout, store.release_lease(&owner)).await;
            }));
        }
    }
}

/// The shared form of a token just fetched: the time it has left now.
pub(crate) fn stored(token: &AccessToken) -> StoredToken {
    StoredToken::new(
        token.as_str(),
        token.expires_at().saturating_duration_since(Instant::now()),
        token.lifetime(),
        token.scope().map(str::to_owned),
    )
    .with_not_before(token.not_before())
}

/// A stored token as if this instance had received it when it asked the store (`asked_at`): the
/// time left that the store measured, counted from then (so the store's round trip only shortens
/// it), and the lifetime it was issued with, so that every instance computes the same refresh
/// point.
///
/// Where the clock cannot go back that far (on Windows an `Instant` cannot precede the boot),
/// the token counts as received at `asked_at` with the time left as its lifetime: its expiry
/// stays right, only its refresh point moves (computed from the shorter lifetime).
///
/// A time left beyond the lifetime (a store whose clock stepped back) is cut to the lifetime.
fn adopt(stored: &StoredToken, asked_at: Instant) -> Result<AccessToken, Error> {
    let remaining = time_left(stored);
    let lifetime = stored.lifetime();
    let (lifetime, received_at) = received(
        lifetime,
        remaining,
        asked_at,
        asked_at.checked_sub(lifetime - remaining),
    );
    Ok(AccessToken::new(stored.token(), lifetime, received_at)?
        .with_scope(stored.scope())
        .with_not_before(stored.not_before()))
}

/// The lifetime and arrival of a token with `remaining` of `lifetime` left at `asked_at`, given
/// the instant `lifetime - remaining` before it (`None` where the clock cannot go back so far).
fn received(
    lifetime: Duration,
    remaining: Duration,
    asked_at: Instant,
    backdated: Option<Instant>,
) -> (Duration, Instant) {
    match backdated {
        Some(received_at) => (lifetime, received_at),
        None => (remaining, asked_at),
    }
}

/// The time `stored` has left, as the store says, but never more than its lifetime.
fn time_left(stored: &StoredToken) -> Duration {
    stored.expires_in().min(stored.lifetime())
}

impl Context<'_> {
    /// A stored token this instance should take: before its own refresh point and outside its
    /// expiry margin (a short custom refresh-ahead can be the smaller) by the time it is
    /// installed (after the look and perhaps a lease release, each bounded by the store's
    /// operation timeout), longer-lived than the token being replaced, and not the one the
    /// server rejected.
    fn acceptable(&self, stored: &StoredToken) -> bool {
        let remaining = time_left(stored);
        let lifetime = stored.lifetime();
        let round_trips = self.store_policy.operation_timeout.saturating_mul(2);
        let margin = self
            .policy
            .expiry_margin_for(lifetime)
            .saturating_add(round_trips);
        remaining > self.policy.refresh_ahead_for(lifetime, 0.0).max(margin)
            && self
                .current
                .is_none_or(|(current, left)| digest(stored.token()) != current && remaining > left)
            && self.rejected != Some(digest(stored.token()))
    }

    /// The stored token, adopted, if this instance should take it; `Err` when the store fails.
    /// An entry that is not a token this crate could have stored (an invalid token text) counts
    /// as none, so that the instance fetches (and publishes) one instead of failing on it until
    /// it expires.
    async fn load_acceptable(&self) -> Result<Option<AccessToken>, ()> {
        let asked_at = Instant::now();
        match bounded(self.store_policy.operation_timeout, self.store.load()).await {
            Some(Some(stored)) if self.acceptable(&stored) => match adopt(&stored, asked_at) {
                Ok(token) => Ok(Some(token)),
                Err(err) => {
                    if !self
                        .unusable_reported
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(error = %err, "the shared store holds an unusable token: ignoring it");
                    }
                    Ok(None)
                }
            },
            Some(_) => Ok(None),
            None => Err(()),
        }
    }

    /// Fetches, publishes the token, and releases the lease if it holds one.
    async fn fetch_and_publish(&self, lease: Option<Lease>) -> Result<AccessToken, Error> {
        let result = self.source.fetch().await;
        if let Ok(token) = &result {
            let shared = stored(token);
            let _ = bounded(
                self.store_policy.operation_timeout,
                self.store.save(&shared),
            )
            .await;
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
        result
    }

    pub(crate) async fn refresh(&self) -> (Result<AccessToken, Error>, Via) {
        let timeout = self.store_policy.operation_timeout;
        let lease = self.store_policy.lease;
        match self.load_acceptable().await {
            Ok(Some(token)) => return (Ok(token), Via::Adopted),
            Ok(None) => {}
            Err(()) => return (self.source.fetch().await, Via::Fallback),
        }
        // Never waiting on others for more than three quarters of the attempt: the rest is for
        // a fetch of its own (a lease longer than that would otherwise cut every attempt off
        // while a dead holder's lease runs; a quarter, 15 s of the default 60 s, is many token
        // requests' time, and a short attempt timeout still waits out a live holder's fetch).
        let give_up = later(Instant::now(), self.policy.attempt_timeout.mul_f64(0.75));
        let mut deadline = later(Instant::now(), lease).min(give_up);
        let mut lapsed = false;
        loop {
            match bounded(timeout, self.store.try_lease(lease)).await {
                Some(Some(owner)) => {
                    let lease = Lease {
                        store: Arc::clone(self.store),
                        owner: Some(owner),
                        timeout,
                    };
                    // The holder before us may have published just before it released the
                    // lease, or someone between our look and our lease.
                    if let Ok(Some(token)) = self.load_acceptable().await {
                        lease.release().await;
                        return (Ok(token), Via::Adopted);
                    }
                    return (self.fetch_and_publish(Some(lease)).await, Via::Fetched);
                }
                Some(None) => {}
                None => return (self.source.fetch().await, Via::Fallback),
            }
            // Another instance holds the lease: wait for its token, trying the lease at every
            // look, so that a holder that gives up (its fetch failed) is replaced within one
            // poll interval, and one that died when its lease lapses.
            let now = Instant::now();
            if now >= deadline && !lapsed && now < give_up {
                // The lease waited on has lapsed, and another instance took it meanwhile (this
                // one could not): it gets a lease period too, so that one instance fetches for
                // the fleet, not every one that waited on a holder that died.
                lapsed = true;
                deadline = later(now, lease).min(give_up);
                tracing::debug!(
                    lease_ms = lease.as_millis() as u64,
                    "the refresh lease is still held after a lease period (taken by another \
                     instance when it lapsed, or a slow holder): waiting one more for its token"
                );
            } else if now >= deadline {
                tracing::warn!(
                    lease_ms = lease.as_millis() as u64,
                    "the instance holding the refresh lease published no token in time: fetching"
                );
                return (self.fetch_and_publish(None).await, Via::Fetched);
            }
            tokio::time::sleep(self.store_policy.poll_interval).await;
            match self.load_acceptable().await {
                Ok(Some(token)) => return (Ok(token), Via::Adopted),
                Ok(None) => {}
                Err(()) => return (self.source.fetch().await, Via::Fallback),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_token_expires_when_the_store_says_even_where_the_clock_cannot_go_back() {
        let asked_at = Instant::now();
        let (lifetime, remaining) = (Duration::from_secs(3_600), Duration::from_secs(900));
        for backdated in [asked_at.checked_sub(lifetime - remaining), None] {
            let (lifetime, received_at) = received(lifetime, remaining, asked_at, backdated);
            assert_eq!(
                received_at + lifetime,
                asked_at + remaining,
                "{backdated:?}"
            );
        }
        // Through `adopt`: the stored token's time left, counted from the look.
        let start = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let entry =
            StoredToken::new("shared", remaining, lifetime, None).with_not_before(Some(start));
        let token = adopt(&entry, asked_at).unwrap();
        assert_eq!(token.expires_at(), asked_at + remaining);
        assert_eq!(token.lifetime(), lifetime);
        // Its start too, so that a FHIR server whose clock is behind is waited for.
        assert_eq!(token.not_before(), Some(start));
        assert_eq!(stored(&token).not_before(), Some(start));
    }
}
