//! One refresh attempt: what it runs (the token source, or the shared store and then the
//! source), how it is supervised (a heartbeat while it runs, a panic turned into an error, a cut-off
//! at the attempt timeout), and how its token goes into the cell.

use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::fhir_clock::MAX_FHIR_LAG;
use super::flight::{Ending, Outcome};
use super::sched::Sched;
use super::{CachedToken, Shared, TokenHeader};
use crate::error::{Error, ErrorKind};
use crate::token::AccessToken;
use crate::token::policy::{MAX_REFRESH_AHEAD_SHARE, later, random_fraction};
use crate::token::shared_fetch::{self, Via};

/// How often a running attempt shows that its task is being run.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);

impl Shared {
    /// Records the end of the flight in the schedule, and clears it.
    pub(super) fn end_flight(&self, sched: &mut Sched, now: Instant, ending: Ending) -> Outcome {
        let started = sched.flight_started().unwrap_or(now);
        let elapsed_ms = now.saturating_duration_since(started).as_millis() as u64;
        let outcome = match ending {
            Ending::Fetched(result) => {
                let result = result.and_then(|token| self.install(sched, token, now));
                match &result {
                    Ok(()) => {
                        self.succeeded(sched, now);
                        tracing::debug!(
                            generation = sched.generation,
                            elapsed_ms,
                            "token refreshed"
                        );
                    }
                    Err(error) => {
                        self.back_off(sched, now, error, elapsed_ms);
                        sched.last_error = Some(error.clone());
                    }
                }
                result
            }
            Ending::CutOff => {
                let error = Error::new(
                    ErrorKind::RefreshAborted,
                    "the refresh ended without a result (cancelled, or not run)",
                );
                self.back_off(sched, now, &error, elapsed_ms);
                sched.last_error = None;
                Ok(())
            }
        };
        // Cleared last: an attempt whose bookkeeping panicked is still in flight, and its guard
        // then records it as cut off.
        sched.clear_flight();
        self.set_quiet(sched);
        self.wake.notify_one();
        outcome
    }

    /// Counts a successful attempt: the failures are over (a backoff still running stays).
    fn succeeded(&self, sched: &mut Sched, now: Instant) {
        self.counters.fetches_ok.fetch_add(1, Ordering::Relaxed);
        sched.failures = 0;
        sched.failing_since = None;
        sched.last_error = None;
        sched.not_before = sched.not_before.filter(|until| now < *until);
    }

    /// The end of a flight that was given up on (it stalled: its runtime was idle or blocked)
    /// and ran to its end after all: its token is made current rather than wasted, unless the
    /// cell holds one received later; anything else is dropped. The flight given up on was
    /// counted as failed already, and another may be in the air.
    pub(super) fn end_given_up(&self, sched: &mut Sched, now: Instant, ending: Ending) {
        let Ending::Fetched(Ok(token)) = ending else {
            tracing::debug!("a token refresh that was given up on ended without a token");
            return;
        };
        let later_in_place = self
            .current
            .load()
            .as_ref()
            .is_some_and(|current| current.token.received_at() >= token.received_at());
        if later_in_place {
            tracing::debug!(
                "a token refresh that was given up on ended; a later token is in place"
            );
            return;
        }
        // Not one the server rejected since the flight started (it may have adopted it from a
        // store before the rejection), nor one fetched before a rejection: it may be refused too.
        // (Strictly before: a renewal started by a rejection counts from that same instant.)
        let rejected_since = sched.rejected_at.is_some_and(|at| at > token.received_at());
        if rejected_since || sched.rejected == Some(shared_fetch::digest(token.as_str())) {
            tracing::debug!(
                "a token refresh that was given up on ended; a token was rejected since it began"
            );
            return;
        }
        match self.install(sched, token, now) {
            Ok(()) => {
                self.succeeded(sched, now);
                tracing::info!(
                    generation = sched.generation,
                    "a token refresh that was given up on ended after all: its token is used"
                );
                self.set_quiet(sched);
                self.wake.notify_one();
            }
            Err(error) => {
                tracing::debug!(%error, "a token refresh that was given up on ended too late");
            }
        }
    }

    /// Counts a failed attempt and schedules the next one.
    fn back_off(&self, sched: &mut Sched, now: Instant, error: &Error, elapsed_ms: u64) {
        self.counters.fetches_failed.fetch_add(1, Ordering::Relaxed);
        sched.failures = sched.failures.saturating_add(1);
        sched.failing_since.get_or_insert(now);
        let delay = self
            .policy
            .backoff_for(sched.failures, error, random_fraction());
        sched.not_before = Some(later(now, delay));
        let valid = self
            .current
            .load()
            .as_ref()
            .is_some_and(|cached| now < cached.usable_until);
        tracing::warn!(
            error = %error,
            failures = sched.failures,
            retry_in_ms = delay.as_millis() as u64,
            serving_current_token = valid,
            elapsed_ms,
            "token refresh failed"
        );
    }

    /// One attempt: the source, or the shared store and the source.
    pub(super) async fn fetch(&self) -> Result<AccessToken, Error> {
        tracing::debug!("requesting a new token");
        let Some((store, store_policy)) = &self.store else {
            return self.source.fetch().await;
        };
        let now = Instant::now();
        let current = self.current.load().as_ref().map(|cached| {
            (
                shared_fetch::digest(cached.token.as_str()),
                cached.token.expires_at().saturating_duration_since(now),
            )
        });
        let rejected = self.lock().rejected;
        let context = shared_fetch::Context {
            source: &*self.source,
            store,
            store_policy: *store_policy,
            policy: &self.policy,
            current,
            rejected,
            unusable_reported: std::sync::atomic::AtomicBool::new(false),
        };
        let (result, via) = context.refresh().await;
        match via {
            Via::Adopted => {
                self.counters.adopted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("took the token another instance published");
            }
            Via::Fallback => {
                self.counters
                    .store_unavailable
                    .fetch_add(1, Ordering::Relaxed);
            }
            Via::Fetched => {}
        }
        result
    }

    /// Makes `token` the current one, unless it is already inside its safety margin. Checked
    /// arithmetic only: nothing here can panic.
    pub(super) fn install(
        &self,
        sched: &mut Sched,
        token: AccessToken,
        now: Instant,
    ) -> Result<(), Error> {
        let lifetime = token.lifetime();
        let expires_at = token.expires_at();
        let received_at = token.received_at();
        let margin = self.policy.expiry_margin_for(lifetime);
        let usable_until = expires_at.checked_sub(margin).unwrap_or(received_at);
        if now >= usable_until {
            return Err(Error::new(
                ErrorKind::InvalidTokenResponse,
                format!("the token (lifetime {lifetime:?}) expired before it could be used"),
            ));
        }
        // Share the header bytes now, so that clones on the fast path never allocate.
        drop(token.header_value().clone());
        sched.generation = sched.generation.saturating_add(1);
        let previous = self
            .current
            .load()
            .as_ref()
            .and_then(|current| current.previous_for_successor(now));
        let valid_from = self.valid_from(sched, &token, now, usable_until, previous.is_some());
        let previous = previous.filter(|_| valid_from > now);
        let ahead = self.policy.refresh_ahead_for(lifetime, random_fraction());
        // Not before the FHIR server takes the token: a refresh is "done" until then (see
        // `ready_at`), so an earlier refresh point would be due, and do nothing, over and over.
        // Nor within a tenth of the lifetime from now: a slow token endpoint (the lifetime counts
        // from when the request went out) would otherwise install tokens already due, and fetch
        // back to back.
        let soonest = later(now, lifetime.mul_f64(1.0 - MAX_REFRESH_AHEAD_SHARE)).min(usable_until);
        let refresh_at = expires_at
            .checked_sub(ahead)
            .unwrap_or(received_at)
            .max(valid_from)
            .max(soonest);
        tracing::debug!(
            generation = sched.generation,
            lifetime_s = lifetime.as_secs_f64(),
            refresh_in_s = refresh_at.saturating_duration_since(now).as_secs_f64(),
            "new token"
        );
        let local = TokenHeader {
            value: token.header_value().clone(),
            generation: sched.generation,
        };
        self.current.store(Some(Arc::new(CachedToken {
            token,
            generation: sched.generation,
            refresh_at,
            usable_until,
            valid_from,
            previous,
            local,
            refused: false,
        })));
        // No thread's slot hands out the token this one replaced.
        self.slots.clear();
        self.installed.notify_waiters();
        Ok(())
    }

    /// When the FHIR server will take `token`, as far as its clock is known: `now` unless its
    /// clock is behind the token's start. With a previous token serving meanwhile, the instant by
    /// which its clock has surely passed the start; with none, the earliest it may have (so that
    /// nobody waits longer than the offset; a `401` a moment too early then waits the rest).
    fn valid_from(
        &self,
        sched: &mut Sched,
        token: &AccessToken,
        now: Instant,
        usable_until: Instant,
        previous: bool,
    ) -> Instant {
        let clock = sched.fhir_clock.filter(|clock| clock.trusted_at(now));
        let (Some(clock), Some(start)) = (clock, token.not_before_secs()) else {
            return now;
        };
        let at = if previous {
            clock.surely_reaches(start)
        } else {
            clock.may_reach(start)
        };
        let lag = at.saturating_duration_since(now);
        if lag.is_zero() {
            return now;
        }
        if lag > MAX_FHIR_LAG || at >= usable_until {
            if !std::mem::replace(&mut sched.lag_reported, true) {
                tracing::warn!(
                    lag_s = lag.as_secs(),
                    "the FHIR server's clock is too far behind the auth server's to wait for: \
                 new tokens are used at once (check the servers' clocks)"
                );
            }
            return now;
        }
        tracing::debug!(
            lag_ms = lag.as_millis() as u64,
            serving_previous = previous,
            "the FHIR server's clock is behind: the new token is used once it takes it"
        );
        at
    }
}

/// Runs `fetch` to its end, calling `beat` at least every [`HEARTBEAT`] while it runs, turning a panic into an
/// error, and cutting it off at `deadline`.
pub(super) async fn supervised(
    fetch: impl Future<Output = Result<AccessToken, Error>>,
    beat: impl Fn(),
    timeout: Duration,
    deadline: Instant,
) -> Result<AccessToken, Error> {
    let mut fetch = pin!(fetch);
    let mut timer = pin!(tokio::time::sleep_until(
        later(Instant::now(), HEARTBEAT).min(deadline)
    ));
    poll_fn(|cx| {
        match catch_unwind(AssertUnwindSafe(|| fetch.as_mut().poll(cx))) {
            Ok(Poll::Ready(result)) => return Poll::Ready(result),
            Ok(Poll::Pending) => {}
            Err(_) => {
                return Poll::Ready(Err(Error::new(
                    ErrorKind::RefreshAborted,
                    "the token source panicked",
                )));
            }
        }
        loop {
            let now = Instant::now();
            beat();
            if now >= deadline {
                return Poll::Ready(Err(Error::new(
                    ErrorKind::Timeout,
                    format!("the token source did not answer within {timeout:?}"),
                )));
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            timer.as_mut().reset(later(now, HEARTBEAT).min(deadline));
        }
    })
    .await
}
