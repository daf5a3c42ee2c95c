//! The server's clock, as far as its `Date` headers tell.
//!
//! The Koppeltaal reference auth server checks `iat` and `exp` with zero leeway, so a client clock
//! a few seconds off breaks authentication. `iat` is back-dated by 5 s for small errors; larger
//! ones, up to 5 minutes, are measured from the `Date` header of token-endpoint responses (never
//! from the FHIR server's) and corrected in the next assertion.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// Seconds the server's clock runs ahead of ours (negative: behind), once measured.
#[derive(Debug, Default)]
pub(crate) struct ClockSkew {
    offset: AtomicI64,
    known: AtomicBool,
    /// Whether an offset too large to follow was reported.
    reported: AtomicBool,
}

/// Largest clock offset of the token endpoint that assertion times are corrected for.
pub(crate) const MAX_CORRECTION: Duration = Duration::from_secs(300);

impl ClockSkew {
    /// Learns the offset from a response's `Date` header, taken at local time `local`. Returns it.
    /// The header has one-second resolution: so has the offset.
    pub(crate) fn observe(&self, headers: &HeaderMap, local: SystemTime) -> Option<i64> {
        let date = headers.get(http::header::DATE)?.to_str().ok()?;
        let server = httpdate::parse_http_date(date).ok()?;
        let offset = match server.duration_since(local) {
            Ok(ahead) => i64::try_from(ahead.as_secs()).ok()?,
            Err(behind) => -i64::try_from(behind.duration().as_secs()).ok()?,
        };
        let previous = self.offset.swap(offset, Ordering::Relaxed);
        let was_known = self.known.swap(true, Ordering::Relaxed);
        if !was_known || previous != offset {
            tracing::debug!(offset_s = offset, "server clock offset measured");
        }
        Some(offset)
    }

    /// The measured offset, if any.
    pub(crate) fn offset(&self) -> Option<i64> {
        self.known
            .load(Ordering::Relaxed)
            .then(|| self.offset.load(Ordering::Relaxed))
    }

    /// The offset to apply to assertion times: the measured one when it is larger than what the
    /// `iat` back-dating absorbs, else none. An offset over [`MAX_CORRECTION`] is a server (or
    /// someone between) with a broken clock: never followed, so that no assertion is signed far
    /// in the future (where it could be collected for later), and reported once.
    pub(crate) fn correction(&self, backdate: Duration) -> i64 {
        match self.offset() {
            Some(offset) if offset.unsigned_abs() > MAX_CORRECTION.as_secs() => {
                if !self.reported.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        offset_s = offset,
                        "the token endpoint's clock differs from ours by more than 5 minutes: \
                         not correcting assertion times for it (check both clocks)"
                    );
                }
                0
            }
            Some(offset) if offset.unsigned_abs() > backdate.as_secs() => offset,
            _ => 0,
        }
    }
}

/// `local` moved by `offset` seconds.
pub(crate) fn shifted(local: SystemTime, offset: i64) -> SystemTime {
    let by = Duration::from_secs(offset.unsigned_abs());
    if offset >= 0 {
        local + by
    } else {
        local.checked_sub(by).unwrap_or(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(at: SystemTime) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::DATE,
            httpdate::fmt_http_date(at).parse().unwrap(),
        );
        headers
    }

    #[test]
    fn measures_ahead_and_behind() {
        let local = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let skew = ClockSkew::default();
        assert_eq!(skew.offset(), None);
        assert_eq!(
            skew.observe(&date(local - Duration::from_secs(30)), local),
            Some(-30)
        );
        assert_eq!(skew.correction(Duration::from_secs(5)), -30);
        assert_eq!(
            skew.observe(&date(local + Duration::from_secs(30)), local),
            Some(30)
        );
        assert_eq!(
            skew.observe(&date(local + Duration::from_secs(3)), local),
            Some(3)
        );
        assert_eq!(
            skew.correction(Duration::from_secs(5)),
            0,
            "the back-date absorbs it"
        );
        assert_eq!(skew.observe(&HeaderMap::new(), local), None);
        // A year ahead: not followed.
        let year = Duration::from_secs(365 * 86_400);
        skew.observe(&date(local + year), local);
        assert_eq!(skew.correction(Duration::from_secs(5)), 0);
        skew.observe(&date(local - Duration::from_secs(301)), local);
        assert_eq!(skew.correction(Duration::from_secs(5)), 0);
        skew.observe(&date(local - Duration::from_secs(299)), local);
        assert_eq!(skew.correction(Duration::from_secs(5)), -299);
        skew.observe(&date(local + Duration::from_secs(3)), local);
        let mut bad = HeaderMap::new();
        bad.insert(http::header::DATE, "yesterday".parse().unwrap());
        assert_eq!(skew.observe(&bad, local), None);
        assert_eq!(skew.offset(), Some(3), "unusable headers change nothing");
        assert_eq!(shifted(local, -30), local - Duration::from_secs(30));
        assert_eq!(shifted(local, 30), local + Duration::from_secs(30));
    }
}
