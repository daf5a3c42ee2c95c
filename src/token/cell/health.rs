//! [`Health`]: what a readiness probe needs to know about a cell, read without waiting.

use std::time::Duration;

use tokio::time::Instant;

use super::TokenCell;
use crate::error::ErrorKind;

/// The state of a [`TokenCell`], from [`TokenCell::health`]: cheap (one short lock, no I/O) and
/// synchronous, for readiness probes and dashboards.
///
/// # Readiness and liveness
///
/// An instance that cannot get a token cannot serve FHIR requests: take it out of the load
/// balancer while [`is_ready`](Self::is_ready) is `false` (readiness probe). Do **not** restart
/// it for that (liveness probe): a token endpoint outage is not the instance's fault, a restart
/// cannot fix it, and a fleet restarting at once turns an outage into a storm of token requests
/// against a server that is down. The cell keeps retrying with backoff and recovers on its own.
///
/// A cell fetches its first token when something first asks for one: call
/// [`ready`](TokenCell::ready) at start-up, or have the readiness probe start a fetch when it
/// finds [`Health::Absent`] with nothing in flight, as `examples/health.rs` does. From then on
/// (with background refresh on, the default) the cell supplies itself: a token rejected while
/// no request comes is renewed in the background too.
///
/// ```
/// use koppeltaal_auth::token::Health;
///
/// fn readiness(health: &Health) -> http::StatusCode {
///     if health.is_ready() {
///         http::StatusCode::OK
///     } else {
///         http::StatusCode::SERVICE_UNAVAILABLE
///     }
/// }
/// # assert_eq!(readiness(&Health::Absent { refreshing: true }), http::StatusCode::SERVICE_UNAVAILABLE);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// A usable token, not yet due for a refresh, and the last attempt succeeded.
    Fresh {
        /// How long the token is still handed out (until its expiry less the safety margin).
        usable_for: Duration,
    },
    /// A usable token past its refresh point, or with a refresh in flight.
    Refreshing {
        /// How long the token is still handed out.
        usable_for: Duration,
    },
    /// The last attempt failed (and maybe those before it).
    Failing {
        /// How long the attempts have been failing: since the first failure after the last
        /// success.
        failing_for: Duration,
        /// Failed attempts since the last success.
        failures: u32,
        /// The last error's kind; `None` when the last attempt was cut off (cancelled, or its
        /// task not run) rather than failing.
        last_error: Option<ErrorKind>,
        /// How long the current token is still handed out; `None`: no usable token, requests
        /// fail (or wait).
        usable_for: Option<Duration>,
    },
    /// No usable token and no failure yet: starting up, or just renewed after a `401`.
    Absent {
        /// Whether a fetch is in flight.
        refreshing: bool,
    },
}

impl Health {
    /// Whether requests get a token now without waiting: the readiness answer.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.usable_for().is_some()
    }

    /// How long the current token is still handed out, if there is one.
    #[must_use]
    pub fn usable_for(&self) -> Option<Duration> {
        match self {
            Self::Fresh { usable_for } | Self::Refreshing { usable_for } => Some(*usable_for),
            Self::Failing { usable_for, .. } => *usable_for,
            Self::Absent { .. } => None,
        }
    }

    /// A short name of the state: `fresh`, `refreshing`, `failing` or `absent`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fresh { .. } => "fresh",
            Self::Refreshing { .. } => "refreshing",
            Self::Failing { .. } => "failing",
            Self::Absent { .. } => "absent",
        }
    }
}

impl TokenCell {
    /// The cell's [`Health`]. Never waits, never starts a fetch.
    #[must_use]
    pub fn health(&self) -> Health {
        let shared = &*self.shared;
        let now = Instant::now();
        let (in_flight, failures, failing_since, last_error) = {
            let sched = shared.lock();
            (
                sched.in_flight(),
                sched.failures,
                sched.failing_since,
                sched.last_error.as_ref().map(crate::Error::kind),
            )
        };
        let guard = shared.current.load();
        let (usable_until, due) = match guard.as_ref() {
            Some(cached) if now < cached.valid_from => match cached.previous_at(now) {
                Some(previous) => (Some(previous.usable_until), true),
                None => (None, true),
            },
            Some(cached) if now < cached.usable_until => {
                (Some(cached.usable_until), now >= cached.refresh_at)
            }
            _ => (None, false),
        };
        let usable_for = usable_until.map(|until| until.saturating_duration_since(now));
        if failures > 0 {
            return Health::Failing {
                failing_for: failing_since
                    .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)),
                failures,
                last_error,
                usable_for,
            };
        }
        match usable_for {
            Some(usable_for) if due || in_flight => Health::Refreshing { usable_for },
            Some(usable_for) => Health::Fresh { usable_for },
            None => Health::Absent {
                refreshing: in_flight,
            },
        }
    }
}
