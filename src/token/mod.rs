//! Access tokens and where they come from.

mod cell;
mod client;
pub(crate) mod issued;
mod policy;
mod response;
mod shared_fetch;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use tokio::time::Instant;

use crate::error::Error;

#[cfg(feature = "opentelemetry")]
pub(crate) use cell::WeakCell;
pub(crate) use cell::has_timers;
pub(crate) use cell::{CellLink, Rejection, RetryPlan};
pub use cell::{CellStats, Health, TokenCell, TokenHeader};
pub use client::{ClientCredentials, ClientCredentialsBuilder};
pub use client::{DEFAULT_TOKEN_LIFETIME, MAX_REQUEST_TIMEOUT};
pub(crate) use policy::later;
pub use policy::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MIN,
    DEFAULT_EXPIRY_MARGIN_FRACTION, DEFAULT_EXPIRY_MARGIN_MAX, DEFAULT_FHIR_CLOCK_WAIT,
    DEFAULT_REFRESH_AHEAD_FRACTION, DEFAULT_REFRESH_AHEAD_MAX_FRACTION, DEFAULT_REFRESH_AHEAD_MIN,
    DEFAULT_REFRESH_JITTER_FRACTION, DEFAULT_WAIT_TIMEOUT, DEFAULT_YOUNG_TOKEN_AGE,
    MAX_ATTEMPT_TIMEOUT, MAX_BACKOFF, MAX_FHIR_CLOCK_WAIT, MAX_REFRESH_AHEAD_SHARE,
    MAX_RETRY_AFTER, MAX_WAIT_TIMEOUT, MIN_ATTEMPT_TIMEOUT, MIN_BACKOFF, RefreshPolicy,
};
#[cfg(test)]
pub(crate) use response::{
    parse_error_response, parse_oauth_error, parse_retry_after, parse_token_response,
};

/// Longest token lifetime: [`AccessToken::new`] clamps longer ones to this (a year, the longest
/// `expires_in` a token response may carry), so that expiry arithmetic never overflows.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A boxed, `Send` future, as returned by [`TokenSource::fetch`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An OAuth 2.0 bearer access token with its lifetime.
///
/// The token is opaque to this crate. Its expiry is computed from the local instant the token
/// response arrived plus `expires_in`, never from the server's clock.
///
/// # Security
///
/// `Debug` never shows the token and there is no `Display`; use [`as_str`](Self::as_str) when you
/// need it. The ready-made `Authorization` value from [`header_value`](Self::header_value) is
/// marked sensitive, so HTTP libraries leave it out of their logs. Its bytes are wiped from
/// memory when the last clone of the token or of that value is dropped; a copy you make of
/// [`as_str`](Self::as_str) is yours to wipe.
#[derive(Clone)]
pub struct AccessToken {
    header: HeaderValue,
    lifetime: Duration,
    received_at: Instant,
    scope: Option<Arc<str>>,
    /// Epoch seconds, by the issuer's clock, from which the token is valid (see
    /// [`not_before`](Self::not_before)).
    not_before: Option<u64>,
}

const BEARER_PREFIX: &str = "Bearer ";

impl AccessToken {
    /// A bearer token that arrived at `received_at` and lives for `lifetime` (at most
    /// [`MAX_TOKEN_LIFETIME`]: a longer one is clamped to it). A `received_at` later than now is
    /// taken as now: no token outlives its lifetime from the moment it is made. ("Now" is
    /// tokio's clock where this runs: an instant read on a paused clock that was advanced, then
    /// used outside that runtime, is pulled back to the real time.)
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidTokenResponse`](crate::ErrorKind::InvalidTokenResponse) if `token` is
    /// empty or holds anything but visible ASCII (it must fit in an HTTP header), or if `lifetime`
    /// is zero.
    pub fn new(token: &str, lifetime: Duration, received_at: Instant) -> Result<Self, Error> {
        let invalid = |what: &'static str| Error::new(crate::ErrorKind::InvalidTokenResponse, what);
        if token.is_empty() {
            return Err(invalid("`access_token` is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "`access_token` holds characters that cannot go into an HTTP header",
            ));
        }
        if lifetime.is_zero() {
            return Err(invalid("the token lifetime is zero"));
        }
        // Sensitive, and wiped from memory when the last clone is dropped.
        let header = crate::wipe::sensitive_header(&[BEARER_PREFIX.as_bytes(), token.as_bytes()])
            .map_err(|_| invalid("`access_token` cannot go into an HTTP header"))?;
        Ok(Self {
            header,
            lifetime: lifetime.min(MAX_TOKEN_LIFETIME),
            received_at: received_at.min(Instant::now()),
            scope: None,
            not_before: None,
        })
    }

    /// Sets the instant, by the issuer's clock, from which a resource server takes the token:
    /// its `iat`/`nbf` when it is a JWT, else when the token response was sent (its `Date`).
    /// [`ClientCredentials`] sets it. Used only to time the token's first use at a FHIR server
    /// whose clock is behind the issuer's, never to decide whether the token is valid.
    #[must_use]
    pub fn with_not_before(mut self, not_before: Option<SystemTime>) -> Self {
        self.not_before = not_before.and_then(issued::epoch_seconds);
        self
    }

    /// See [`with_not_before`](Self::with_not_before).
    #[must_use]
    pub fn not_before(&self) -> Option<SystemTime> {
        self.not_before.map(issued::from_epoch_seconds)
    }

    /// [`not_before`](Self::not_before) in epoch seconds.
    pub(crate) fn not_before_secs(&self) -> Option<u64> {
        self.not_before
    }

    /// Sets the granted `scope` from the token response.
    #[must_use]
    pub fn with_scope(mut self, scope: Option<&str>) -> Self {
        self.scope = scope.map(Arc::from);
        self
    }

    /// The token itself.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Built from visible ASCII in `new`, so `to_str` cannot fail.
        self.header
            .to_str()
            .map_or("", |value| &value[BEARER_PREFIX.len()..])
    }

    /// `Bearer <token>`, ready for the `Authorization` header, marked sensitive. Cloning it bumps
    /// a reference count; it does not copy the token.
    #[must_use]
    pub fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// How long the token lives, from `expires_in` (or the configured default when the server
    /// sent none).
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The instant its lifetime counts from (local monotonic clock): for
    /// [`ClientCredentials`], when the token request went out (the server counts from a moment
    /// after that, so the token expires early here, never late).
    #[must_use]
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// When the token expires: [`received_at`](Self::received_at) plus
    /// [`lifetime`](Self::lifetime).
    #[must_use]
    pub fn expires_at(&self) -> Instant {
        policy::later(self.received_at, self.lifetime)
    }

    /// The scope the server granted, if it said.
    #[must_use]
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[redacted]")
            .field("lifetime", &self.lifetime)
            .field("received_at", &self.received_at)
            .field("scope", &self.scope)
            .field("not_before", &self.not_before)
            .finish()
    }
}

/// Where access tokens come from.
///
/// [`ClientCredentials`] is the SMART Backend Services implementation Koppeltaal uses. Implement
/// the trait to plug in another flow (the Koppeltaal IG plans user-level tokens) or a fake for
/// tests. The token cell calls `fetch` at most once at a time and never caches a failure.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use koppeltaal_auth::{AccessToken, Error, TokenSource};
/// use koppeltaal_auth::token::BoxFuture;
///
/// struct Static;
///
/// impl TokenSource for Static {
///     fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
///         Box::pin(async {
///             AccessToken::new("static-token", Duration::from_secs(300), tokio::time::Instant::now())
///         })
///     }
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Obtains a new access token. Called for every renewal; must not return a cached token
    /// that the caller already has.
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>>;
}

impl<T: TokenSource + ?Sized> TokenSource for Arc<T> {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        (**self).fetch()
    }
}

impl<T: TokenSource + ?Sized> TokenSource for Box<T> {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        (**self).fetch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_value_is_sensitive_and_debug_redacted() {
        let token = AccessToken::new("s3cr3t-t0ken", Duration::from_secs(300), Instant::now())
            .unwrap()
            .with_scope(Some("system/*.cruds"));
        assert!(token.header_value().is_sensitive());
        assert_eq!(token.header_value(), "Bearer s3cr3t-t0ken");
        assert_eq!(token.as_str(), "s3cr3t-t0ken");
        let debug = format!("{token:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(!format!("{:?}", token.header_value()).contains("s3cr3t"));
        assert_eq!(
            token.expires_at() - token.received_at(),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn tokens_that_cannot_be_headers_are_refused() {
        let now = Instant::now();
        for bad in ["", "two words", "line\nbreak", "caf\u{e9}", "tab\there"] {
            assert!(
                AccessToken::new(bad, Duration::from_secs(1), now).is_err(),
                "{bad:?}"
            );
        }
        assert!(AccessToken::new("ok", Duration::ZERO, now).is_err());
    }
}
