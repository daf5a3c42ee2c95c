//! Sharing tokens between instances: the `TokenStore` extension point.
//!
//! By default every [`TokenCell`](crate::TokenCell) keeps its token in local memory only, and a
//! deployment of N instances fetches N tokens per lifetime. With a store, the instances share one
//! token: at a refresh point one instance takes a short lease and fetches, the others wait for
//! the new token to appear in the store, and an instance whose store is slow or down falls back
//! to fetching on its own. The store is consulted only when a token is needed, never on the
//! request fast path. `RedisTokenStore` (feature `redis`) is the implementation this crate ships.

use std::fmt;
use std::time::{Duration, SystemTime};

use zeroize::Zeroize;

use crate::error::Error;
use crate::token::{BoxFuture, MAX_TOKEN_LIFETIME};

/// A token as it is shared: the value, how much of its life is left, and the lifetime it was
/// issued with.
///
/// The time left is measured by the store itself (Redis: the key's TTL), never from any
/// instance's wall clock, so that instances whose clocks disagree by any amount still agree on
/// when a shared token expires. Each instance applies its own safety margin on adoption.
///
/// # Security
///
/// It holds the bearer token: `Debug` redacts it, and the token is wiped from memory when the
/// value is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    token: String,
    expires_in: Duration,
    lifetime: Duration,
    scope: Option<String>,
    /// The token's start by its issuer's clock (epoch seconds).
    not_before: Option<u64>,
}

impl StoredToken {
    /// A shared token that expires `expires_in` from now and was issued for `lifetime` (each
    /// clamped to [`MAX_TOKEN_LIFETIME`], a year).
    #[must_use]
    pub fn new(
        token: impl Into<String>,
        expires_in: Duration,
        lifetime: Duration,
        scope: Option<String>,
    ) -> Self {
        // Bounded as every token is: what a store hands back cannot overflow instant arithmetic.
        Self {
            token: token.into(),
            expires_in: expires_in.min(MAX_TOKEN_LIFETIME),
            lifetime: lifetime.min(MAX_TOKEN_LIFETIME),
            scope,
            not_before: None,
        }
    }

    /// With the instant the token starts by its issuer's clock (its `iat`, or the token
    /// response's `Date`; see [`AccessToken::with_not_before`](crate::AccessToken::with_not_before)),
    /// so that an instance adopting it knows, as the one that fetched it does, that a FHIR server
    /// whose clock is behind refuses it until its clock gets there (and waits instead of renewing).
    /// An absolute time from the issuer, not from any instance's clock; whole seconds.
    #[must_use]
    pub fn with_not_before(mut self, not_before: Option<SystemTime>) -> Self {
        self.not_before = not_before.and_then(crate::token::issued::epoch_seconds);
        self
    }

    /// See [`with_not_before`](Self::with_not_before).
    #[must_use]
    pub fn not_before(&self) -> Option<SystemTime> {
        self.not_before
            .map(crate::token::issued::from_epoch_seconds)
    }

    /// The token.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How long it is valid from when it was saved, or, from [`TokenStore::load`], from when it
    /// was read.
    #[must_use]
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// The lifetime it was issued with.
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The scope it was granted, if known.
    #[must_use]
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

/// The token is wiped from memory when dropped.
impl Drop for StoredToken {
    fn drop(&mut self) {
        self.token.zeroize();
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field("lifetime", &self.lifetime)
            .field("scope", &self.scope)
            .field("not_before", &self.not_before)
            .finish()
    }
}

/// Where instances share the token of one client at one token endpoint.
///
/// Implementations keep one token per key and a lease (a short exclusive claim with an owner),
/// with these semantics:
///
/// - [`load`](Self::load): the stored token with the time it has left *as the store measures it*
///   (for Redis, the key's TTL), or `None` once it has expired;
/// - [`save`](Self::save): replace the stored token, kept for its
///   [`expires_in`](StoredToken::expires_in), with its lifetime, scope and
///   [`not_before`](StoredToken::not_before) (which `load` hands back: an instance adopting a
///   token without it takes a FHIR server's refusal of a brand-new token for a rejection);
/// - [`try_lease`](Self::try_lease): take the lease for `ttl` if nobody holds it, returning a
///   fresh owner value, else `None`;
/// - [`release_lease`](Self::release_lease): give the lease back, only if `owner` still holds it.
///
/// Errors are treated as "the store is unavailable": the cell then fetches on its own.
pub trait TokenStore: Send + Sync + 'static {
    /// The shared token, if there is one.
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredToken>, Error>>;

    /// Publishes `token`.
    fn save<'a>(&'a self, token: &'a StoredToken) -> BoxFuture<'a, Result<(), Error>>;

    /// Takes the refresh lease for `ttl` if it is free: `Some(owner)`, else `None`.
    fn try_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<Option<String>, Error>>;

    /// Releases the lease if `owner` still holds it.
    fn release_lease<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<(), Error>>;
}

/// What a shared token belongs to: the token endpoint, the client id, and the requested scope.
/// Stores key their entries by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreKey {
    token_endpoint: String,
    client_id: String,
    scope: Option<String>,
}

impl StoreKey {
    /// The key for `client_id` at `token_endpoint` requesting `scope`.
    #[must_use]
    pub fn new(
        token_endpoint: impl Into<String>,
        client_id: impl Into<String>,
        scope: Option<String>,
    ) -> Self {
        Self {
            token_endpoint: token_endpoint.into(),
            client_id: client_id.into(),
            scope,
        }
    }

    /// The token endpoint.
    #[must_use]
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The client id.
    #[must_use]
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The requested scope.
    #[must_use]
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

/// A store that can hold the tokens of any client: the builder binds it to the client's
/// [`StoreKey`] once the token endpoint is known (after discovery).
pub trait SharedStore: Send + Sync + 'static {
    /// The store for one key.
    fn for_key(&self, key: &StoreKey) -> Box<dyn TokenStore>;
}

/// How a cell uses its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct StorePolicy {
    pub(crate) lease: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) poll_interval: Duration,
}

impl Default for StorePolicy {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            operation_timeout: Duration::from_millis(300),
            poll_interval: Duration::from_millis(50),
        }
    }
}

/// Bounds of [`StorePolicy::lease`]: 100 ms to 5 minutes.
pub const MIN_LEASE: Duration = Duration::from_millis(100);
/// See [`MIN_LEASE`].
pub const MAX_LEASE: Duration = Duration::from_secs(300);
/// Bounds of [`StorePolicy::operation_timeout`] and [`StorePolicy::poll_interval`]: 1 ms to a
/// minute.
pub const MIN_STORE_INTERVAL: Duration = Duration::from_millis(1);
/// See [`MIN_STORE_INTERVAL`].
pub const MAX_STORE_INTERVAL: Duration = Duration::from_secs(60);

impl StorePolicy {
    /// How long one instance may hold the refresh lease. Others wait for its token, and take
    /// the lease as soon as it is released without one (the holder's fetch failed) or lapses
    /// (the holder died). When it lapses while several wait, the one that takes it fetches and
    /// the others wait for its token one more lease period at most, then fetch alone; and none
    /// waits longer than three quarters of its
    /// [`attempt_timeout`](crate::RefreshPolicy::attempt_timeout) (the rest is for its own
    /// fetch). Defaults
    /// to 15 s (longer than a token request's timeout); kept between [`MIN_LEASE`] and
    /// [`MAX_LEASE`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.clamp(MIN_LEASE, MAX_LEASE);
        self
    }

    /// How long one store operation may take before the store counts as unavailable. Defaults
    /// to 300 ms; kept between [`MIN_STORE_INTERVAL`] and [`MAX_STORE_INTERVAL`].
    ///
    /// A store may bound its operations more tightly itself: `RedisTokenStore` gives up on a
    /// connection attempt or a reply after 250 ms.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout.clamp(MIN_STORE_INTERVAL, MAX_STORE_INTERVAL);
        self
    }

    /// How often an instance waiting for another's token looks in the store (and tries the
    /// lease). Defaults to 50 ms; kept between [`MIN_STORE_INTERVAL`] and
    /// [`MAX_STORE_INTERVAL`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.clamp(MIN_STORE_INTERVAL, MAX_STORE_INTERVAL);
        self
    }
}
