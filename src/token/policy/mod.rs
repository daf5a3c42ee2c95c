//! When to refresh, when to stop using a token, how long to back off: pure functions of their
//! inputs, so that they can be tested without a clock. Every duration is bounded where it is set
//! (see each setter), so that no instant arithmetic on them can overflow.

use std::time::Duration;

use tokio::time::Instant;

use super::MAX_TOKEN_LIFETIME;
use crate::error::Error;

/// Default lower bound of the refresh-ahead window (DESIGN section 3).
pub const DEFAULT_REFRESH_AHEAD_MIN: Duration = Duration::from_secs(30);
/// Default share of the lifetime refreshed ahead (20%).
pub const DEFAULT_REFRESH_AHEAD_FRACTION: f64 = 0.2;
/// Default cap of the refresh-ahead window as a share of the lifetime (50%).
pub const DEFAULT_REFRESH_AHEAD_MAX_FRACTION: f64 = 0.5;
/// Default random extra refresh-ahead as a share of the lifetime (up to 10%), so that a fleet of
/// instances does not refresh in step.
pub const DEFAULT_REFRESH_JITTER_FRACTION: f64 = 0.1;
/// Default cap of the expiry safety margin: a token is never handed out in its last 10 s...
pub const DEFAULT_EXPIRY_MARGIN_MAX: Duration = Duration::from_secs(10);
/// ...or its last 10% of lifetime, whichever is shorter, so that short tokens stay usable.
pub const DEFAULT_EXPIRY_MARGIN_FRACTION: f64 = 0.1;
/// Largest share of a token's lifetime refreshed ahead, whatever the policy says (90%): a token
/// is always used for at least a tenth of its lifetime before it is refreshed, so that no setting
/// of [`RefreshPolicy::refresh_ahead`] and [`RefreshPolicy::refresh_jitter`] refreshes in a loop.
pub const MAX_REFRESH_AHEAD_SHARE: f64 = 0.9;
/// Default first backoff after a failed token request.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Default longest backoff; permanent errors are retried at this pace.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default longest wait of a caller for a token.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default age under which a token rejected with 401 points to a cause other than expiry.
pub const DEFAULT_YOUNG_TOKEN_AGE: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured; a server asking for more gets asked again after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Longest wait timeout: [`RefreshPolicy::wait_timeout`] clamps longer ones to this (an hour).
pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Shortest backoff: [`RefreshPolicy::backoff`] raises shorter ones to this (10 ms), so that a
/// failing source is never retried in a loop.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest backoff: [`RefreshPolicy::backoff`] clamps longer ones to this (an hour).
pub const MAX_BACKOFF: Duration = Duration::from_secs(3_600);
/// Default longest duration of one refresh attempt (the token source's fetch, with the shared
/// store's steps when there is one): longer than a token request's own 10 s timeout plus a
/// 15 s store lease.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest wait of a request refused because its token is not valid yet at a FHIR server
/// whose clock is behind the auth server's, before it is replayed with the same token.
pub const DEFAULT_FHIR_CLOCK_WAIT: Duration = Duration::from_secs(5);
/// Longest [`RefreshPolicy::fhir_clock_wait`]: a minute.
pub const MAX_FHIR_CLOCK_WAIT: Duration = Duration::from_secs(60);
/// Bounds of [`RefreshPolicy::attempt_timeout`]: 100 ms to an hour.
pub const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
/// See [`MIN_ATTEMPT_TIMEOUT`].
pub const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3_600);

/// `at + by`, or far in the future (30 years, as tokio's own "never") if that overflows. The
/// policy's durations are bounded, so this only guards against instants from elsewhere.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(at)
}

/// How a [`TokenCell`](crate::TokenCell) schedules refreshes, retries and waits. Every default is
/// DESIGN.md section 3's; see each setter.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use koppeltaal_auth::RefreshPolicy;
///
/// let policy = RefreshPolicy::default()
///     .refresh_ahead(Duration::from_secs(60), 0.25, 0.5)
///     .wait_timeout(Duration::from_secs(10));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct RefreshPolicy {
    pub(crate) refresh_ahead_min: Duration,
    pub(crate) refresh_ahead_fraction: f64,
    pub(crate) refresh_ahead_max_fraction: f64,
    pub(crate) jitter_fraction: f64,
    pub(crate) margin_max: Duration,
    pub(crate) margin_fraction: f64,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) wait_timeout: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) young_token_age: Duration,
    pub(crate) fhir_clock_wait: Duration,
    pub(crate) background_refresh: bool,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            refresh_ahead_min: DEFAULT_REFRESH_AHEAD_MIN,
            refresh_ahead_fraction: DEFAULT_REFRESH_AHEAD_FRACTION,
            refresh_ahead_max_fraction: DEFAULT_REFRESH_AHEAD_MAX_FRACTION,
            jitter_fraction: DEFAULT_REFRESH_JITTER_FRACTION,
            margin_max: DEFAULT_EXPIRY_MARGIN_MAX,
            margin_fraction: DEFAULT_EXPIRY_MARGIN_FRACTION,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            young_token_age: DEFAULT_YOUNG_TOKEN_AGE,
            fhir_clock_wait: DEFAULT_FHIR_CLOCK_WAIT,
            background_refresh: true,
        }
    }
}

fn fraction(f: f64) -> f64 {
    if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

impl RefreshPolicy {
    /// Sets the refresh-ahead window: refresh once less than
    /// `min(max(min, fraction × lifetime), max_fraction × lifetime)` remains. Defaults to 30 s,
    /// 0.2 and 0.5: a 300 s token is refreshed 60 s early (plus jitter), a 5 s token at 2.5 s.
    /// Fractions are clamped to `0.0..=1.0`, `min` to [`MAX_TOKEN_LIFETIME`]. With the jitter
    /// (see [`refresh_jitter`](Self::refresh_jitter)) at most [`MAX_REFRESH_AHEAD_SHARE`] (90%)
    /// of the lifetime is refreshed ahead; and a token that the FHIR server does not take yet
    /// (its clock is behind) is not refreshed before it does.
    ///
    /// The window (with its jitter) is never less than the
    /// [expiry margin](Self::expiry_margin) plus the smaller of the two, so that the refresh
    /// comes before the token stops being handed out: with a 120 s margin and a 60 s window, a
    /// 300 s token is refreshed 180 s early, 60 s before the margin begins. Zero (with no
    /// jitter) refreshes exactly when the margin begins, and requests then wait for the fetch.
    pub fn refresh_ahead(
        mut self,
        min: Duration,
        fraction_of_lifetime: f64,
        max_fraction: f64,
    ) -> Self {
        self.refresh_ahead_min = min.min(MAX_TOKEN_LIFETIME);
        self.refresh_ahead_fraction = fraction(fraction_of_lifetime);
        self.refresh_ahead_max_fraction = fraction(max_fraction);
        self
    }

    /// Sets the random extra refresh-ahead, as a share of the lifetime. Defaults to 0.1 (up to
    /// 30 s for a 300 s token). Zero makes the refresh point exact.
    pub fn refresh_jitter(mut self, fraction_of_lifetime: f64) -> Self {
        self.jitter_fraction = fraction(fraction_of_lifetime);
        self
    }

    /// Sets the expiry safety margin: a token is never handed out once less than
    /// `min(max, fraction × lifetime)` of it remains. Defaults to 10 s and 0.1. `max` is clamped
    /// to [`MAX_TOKEN_LIFETIME`].
    pub fn expiry_margin(mut self, max: Duration, fraction_of_lifetime: f64) -> Self {
        self.margin_max = max.min(MAX_TOKEN_LIFETIME);
        self.margin_fraction = fraction(fraction_of_lifetime);
        self
    }

    /// Sets the backoff between failed token requests: it starts at `min` and doubles up to
    /// `max`, each wait drawn at random between `min` and the doubled value (jitter). Permanent
    /// errors wait `max`. A `Retry-After` from the server is honoured (up to 5 minutes).
    /// Defaults to 200 ms and 30 s. Both are kept between [`MIN_BACKOFF`] (10 ms) and
    /// [`MAX_BACKOFF`] (an hour); `max` is raised to `min` if smaller.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.clamp(MIN_BACKOFF, MAX_BACKOFF);
        self.backoff_max = max.clamp(self.backoff_min, MAX_BACKOFF);
        self
    }

    /// Sets how long a caller waits for a token before getting
    /// [`ErrorKind::WaitTimeout`](crate::ErrorKind::WaitTimeout). Defaults to 30 s; clamped to
    /// [`MAX_WAIT_TIMEOUT`] (an hour). Zero never waits: a caller without a token gets the error
    /// at once, and the fetch it started serves the callers after it.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout.min(MAX_WAIT_TIMEOUT);
        self
    }

    /// Sets how long one refresh attempt may take (the token source's fetch, and the shared
    /// store's steps when there is one) before it counts as failed with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout), so that a source that never answers
    /// cannot hold up the cell. Defaults to 60 s ([`DEFAULT_ATTEMPT_TIMEOUT`]); kept between
    /// 100 ms and an hour.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout.clamp(MIN_ATTEMPT_TIMEOUT, MAX_ATTEMPT_TIMEOUT);
        self
    }

    /// Sets the age under which a token rejected with 401 is suspicious: a second such rejection
    /// in a row is renewed only after a backoff. Defaults to 5 s; clamped to
    /// [`MAX_TOKEN_LIFETIME`].
    pub fn young_token_age(mut self, age: Duration) -> Self {
        self.young_token_age = age.min(MAX_TOKEN_LIFETIME);
        self
    }

    /// Sets how long, at most, a request refused with `401` because its token is not valid yet
    /// at the FHIR server waits before it is replayed with the same token. That happens when the
    /// FHIR server's clock is behind the auth server's: Koppeltaal's HAPI server allows no leeway
    /// on `iat`/`nbf`, and the `Date` of its `401` tells that its clock had not reached the
    /// token's start. A longer wait would be needed: the token is renewed instead. Defaults to
    /// 5 s; zero turns the wait off; clamped to [`MAX_FHIR_CLOCK_WAIT`] (a minute).
    pub fn fhir_clock_wait(mut self, wait: Duration) -> Self {
        self.fhir_clock_wait = wait.min(MAX_FHIR_CLOCK_WAIT);
        self
    }

    /// Turns the background refresher on or off. On by default: a task on the tokio runtime
    /// refreshes the token at its refresh point, so that no request waits for the token endpoint.
    /// Off, the first request past the refresh point starts the refresh (still without waiting
    /// for it while the token is valid).
    pub fn background_refresh(mut self, enabled: bool) -> Self {
        self.background_refresh = enabled;
        self
    }

    /// How long before expiry a token of `lifetime` stops being handed out.
    pub(crate) fn expiry_margin_for(&self, lifetime: Duration) -> Duration {
        self.margin_max.min(lifetime.mul_f64(self.margin_fraction))
    }

    /// How long before expiry a token of `lifetime` is refreshed, for a jitter draw `random` in
    /// `0.0..1.0`. Never more than [`MAX_REFRESH_AHEAD_SHARE`] of the lifetime: a token is used
    /// for at least a tenth of its lifetime before it is refreshed, so that no setting makes
    /// the cell refresh in a loop (a refresh point at arrival would start the next refresh as
    /// soon as one succeeds).
    ///
    /// Never less than the expiry margin plus the smaller of the window and the margin: a
    /// window at or below the margin counts back from the instant the token stops being handed
    /// out (else the refresh point would come after it, and every lifetime requests would wait
    /// for a fetch), and the default window, larger than twice the margin, is unchanged.
    pub(crate) fn refresh_ahead_for(&self, lifetime: Duration, random: f64) -> Duration {
        let window = self
            .refresh_ahead_min
            .max(lifetime.mul_f64(self.refresh_ahead_fraction))
            .min(lifetime.mul_f64(self.refresh_ahead_max_fraction));
        let jitter = lifetime.mul_f64(self.jitter_fraction * fraction(random));
        let ahead = window + jitter;
        let margin = self.expiry_margin_for(lifetime);
        ahead
            .max(margin.saturating_add(ahead.min(margin)))
            .min(lifetime.mul_f64(MAX_REFRESH_AHEAD_SHARE))
    }

    /// How long to wait before attempt `failures + 1`, after `failures` (>= 1) failed attempts
    /// ending in `error`, for a jitter draw `random` in `0.0..1.0`.
    pub(crate) fn backoff_for(&self, failures: u32, error: &Error, random: f64) -> Duration {
        let computed = if error.is_transient() {
            self.exponential(failures, random)
        } else {
            // Permanent errors (rejected credentials, a broken response) are retried, since a
            // JWKS cache or a registration may heal, but only at the slowest pace.
            self.backoff_max
        };
        match error.retry_after() {
            Some(asked) => computed.max(asked.min(MAX_RETRY_AFTER)),
            None => computed,
        }
    }

    /// `min(max, min_backoff × 2^(n-1))` with jitter: a draw between `min_backoff` and that.
    pub(crate) fn exponential(&self, n: u32, random: f64) -> Duration {
        let doubling = 2u32.saturating_pow(n.saturating_sub(1).min(30));
        let ceiling = self
            .backoff_min
            .saturating_mul(doubling)
            .min(self.backoff_max);
        let span = ceiling.saturating_sub(self.backoff_min);
        self.backoff_min + span.mul_f64(fraction(random))
    }
}

/// A uniform draw from `0.0..1.0` for jitter.
pub(crate) fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests;
