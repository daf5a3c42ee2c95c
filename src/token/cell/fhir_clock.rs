//! The FHIR server's clock, as its `Date` headers tell it, and what it means for a new token.
//!
//! Koppeltaal's FHIR server checks a token's `iat`/`nbf` with no leeway: when its clock is behind
//! the auth server's, it refuses a brand-new token with a plain `401` until its own clock passes
//! the token's start. The cell learns the FHIR server's clock from the `Date` of its `401`s (on
//! the slow path only, never per request) and uses it twice:
//!
//! - a `401` whose `Date` is before the token's start is "not valid yet there", not a rejection:
//!   the request waits until the FHIR server's clock has passed the start (bounded by
//!   [`RefreshPolicy::fhir_clock_wait`](crate::RefreshPolicy::fhir_clock_wait)) and is replayed
//!   with the same token; all such `401`s for one token wait for the same instant;
//! - a token fetched later is handed out only once the FHIR server will take it; until then the
//!   previous token, while usable, serves.
//!
//! The `Date` header has one-second resolution: at the instant a response arrived, the FHIR
//! server's clock read at least its `Date` and less than a second more. Waits use the first bound
//! (never too early); a caller that has no token at all uses the second (never longer than the
//! offset). An offset of more than [`MAX_FHIR_LAG`] is a configuration problem: it is logged once
//! and not applied.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use crate::token::issued::epoch_seconds;
use crate::token::policy::later;

/// Largest lag of the FHIR server's clock behind the token issuer's that the cell works around.
pub(crate) const MAX_FHIR_LAG: Duration = Duration::from_secs(120);

/// How long an observation of the FHIR server's clock is trusted without a new one.
const TRUSTED_FOR: Duration = Duration::from_secs(3_600);

/// One reading of the FHIR server's clock: its `Date` (epoch seconds) and the local instant the
/// response arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FhirClock {
    date: u64,
    at: Instant,
}

impl FhirClock {
    /// The reading in a response's `Date` header, if it has a usable one.
    pub(crate) fn read(headers: &HeaderMap, at: Instant) -> Option<Self> {
        let value = headers.get(http::header::DATE)?.to_str().ok()?;
        let date = epoch_seconds(httpdate::parse_http_date(value).ok()?)?;
        Some(Self { date, at })
    }

    /// The FHIR server's clock, in whole seconds, when the response was sent.
    pub(crate) fn date(&self) -> u64 {
        self.date
    }

    /// Whether the reading is recent enough to go by at `now`.
    pub(crate) fn trusted_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) < TRUSTED_FOR
    }

    /// The local instant by which the FHIR server's clock has surely reached `seconds`.
    pub(crate) fn surely_reaches(&self, seconds: u64) -> Instant {
        later(
            self.at,
            Duration::from_secs(seconds.saturating_sub(self.date)),
        )
    }

    /// The earliest local instant at which the FHIR server's clock may have reached `seconds`
    /// (a second before [`surely_reaches`](Self::surely_reaches): the `Date` resolution).
    pub(crate) fn may_reach(&self, seconds: u64) -> Instant {
        later(
            self.at,
            Duration::from_secs(seconds.saturating_sub(self.date.saturating_add(1))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::issued::from_epoch_seconds;

    fn date(seconds: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let text = httpdate::fmt_http_date(from_epoch_seconds(seconds));
        headers.insert(http::header::DATE, text.parse().unwrap());
        headers
    }

    #[test]
    fn a_reading_bounds_when_the_fhir_clock_reaches_a_second() {
        let at = Instant::now();
        let clock = FhirClock::read(&date(1_800_000_000), at).unwrap();
        assert_eq!(clock.date(), 1_800_000_000);
        assert_eq!(
            clock.surely_reaches(1_800_000_002),
            at + Duration::from_secs(2)
        );
        assert_eq!(clock.may_reach(1_800_000_002), at + Duration::from_secs(1));
        // Already reached: now.
        assert_eq!(clock.surely_reaches(1_799_999_990), at);
        assert_eq!(clock.may_reach(1_800_000_000), at);
        assert!(clock.trusted_at(at + Duration::from_secs(3_599)));
        assert!(!clock.trusted_at(at + TRUSTED_FOR));
    }

    #[test]
    fn a_missing_or_broken_date_is_no_reading() {
        let at = Instant::now();
        assert_eq!(FhirClock::read(&HeaderMap::new(), at), None);
        let mut bad = HeaderMap::new();
        bad.insert(http::header::DATE, "yesterday".parse().unwrap());
        assert_eq!(FhirClock::read(&bad, at), None);
    }
}
