//! The refresh schedule: what the cell knows about its refreshes (the flight in the air, the
//! backoff, the failures, the FHIR server's clock), kept under the cell's lock.

use tokio::time::Instant;

use super::fhir_clock::FhirClock;
use super::flight::Flight;
use crate::error::Error;

/// The refresh schedule, under the cell's lock.
#[derive(Default)]
pub(super) struct Sched {
    pub(super) flight: Option<Flight>,
    /// How many flights were ever started (the last one's id).
    pub(super) flights: u64,
    pub(super) failures: u32,
    /// When the first of the current run of failures happened; `None` after a success.
    pub(super) failing_since: Option<Instant>,
    pub(super) not_before: Option<Instant>,
    /// The last attempt's error, handed to callers during the backoff. `None` after a success,
    /// and after an attempt that was cut off (callers then wait out the backoff instead).
    pub(super) last_error: Option<Error>,
    pub(super) young_rejections: u32,
    pub(super) generation: u64,
    /// SHA-256 of the token the server last rejected, so that it is never taken back from a
    /// shared store.
    pub(super) rejected: Option<[u8; 32]>,
    /// When the server last rejected a token: a token fetched before then may be refused too
    /// (a revocation of all tokens).
    pub(super) rejected_at: Option<Instant>,
    /// The last reading of the FHIR server's clock.
    pub(super) fhir_clock: Option<FhirClock>,
    /// The generation whose `401`s wait for the FHIR server's clock, and until when.
    pub(super) clock_wait: Option<(u64, Instant)>,
    /// Whether a FHIR clock too far behind to work around was reported.
    pub(super) lag_reported: bool,
    /// The current-thread runtime a flight was last given up on for not being run: a
    /// synchronous look from it (a thread inside `Runtime::enter` that never drives it) starts
    /// no flight there, until a flight there runs.
    pub(super) stalled_runtime: Option<tokio::runtime::Id>,
}

impl Sched {
    pub(super) fn in_flight(&self) -> bool {
        self.flight.is_some()
    }

    /// Whether any attempt was ever started.
    pub(super) fn has_flown(&self) -> bool {
        self.flights > 0
    }

    /// When the flight in the air started.
    pub(super) fn flight_started(&self) -> Option<Instant> {
        self.flight.as_ref().map(|flight| flight.started)
    }

    pub(super) fn clear_flight(&mut self) {
        self.flight = None;
    }
}
