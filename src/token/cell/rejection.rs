//! A `401` from the FHIR server: first judged against the server's clock (a token it does not
//! take *yet* is waited for, not renewed: see [`super::fhir_clock`]); otherwise the token is
//! dropped, once per generation, and renewed, after a backoff when brand-new tokens keep being
//! rejected (the cause is then not expiry).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::HeaderMap;
use tokio::time::Instant;

use super::fhir_clock::FhirClock;
use super::{Shared, TokenCell};
use crate::token::policy::{later, random_fraction};
use crate::token::shared_fetch;

/// What a `401` to a request with the cell's token means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The FHIR server's clock had not reached the token's start: send the request again with
    /// the same token at `until`, when its clock surely has.
    NotYetValid {
        /// When to replay.
        until: Instant,
    },
    /// A real rejection: renew the token.
    Renew,
}

impl TokenCell {
    /// Judges a `401` to a request that carried the token of `generation`, from the response's
    /// headers (their `Date` is a reading of the FHIR server's clock, which the cell keeps).
    /// `may_wait` is false for a request that already waited once. All `401`s for one token
    /// that wait, wait for the same instant.
    pub(crate) fn judge_401(
        &self,
        generation: u64,
        headers: &HeaderMap,
        may_wait: bool,
    ) -> Rejection {
        let now = Instant::now();
        let Some(reading) = FhirClock::read(headers, now) else {
            return Rejection::Renew;
        };
        let shared = &*self.shared;
        // Waiting needs tokio's timer, where the request runs.
        let timers = shared.runtimes.usable().is_ok();
        let mut sched = shared.lock();
        sched.fhir_clock = Some(reading);
        let wait = shared.policy.fhir_clock_wait;
        let Some(start) = shared.start_of(generation) else {
            return Rejection::Renew;
        };
        if !may_wait || !timers || wait.is_zero() || reading.date() >= start {
            // Its clock had passed the token's start: the token itself was refused.
            return Rejection::Renew;
        }
        let until = match sched.clock_wait {
            Some((waiting, at)) if waiting == generation => at.min(reading.surely_reaches(start)),
            _ => reading.surely_reaches(start),
        };
        let needed = until.saturating_duration_since(now);
        if needed > wait {
            if std::mem::replace(&mut sched.lag_reported, true) {
                return Rejection::Renew;
            }
            tracing::warn!(
                generation,
                needed_ms = needed.as_millis() as u64,
                "the FHIR server refused a token its clock has not reached yet, and would take \
                 it later than the longest wait: renewing (check the servers' clocks; reported \
                 once)"
            );
            return Rejection::Renew;
        }
        if sched
            .clock_wait
            .is_none_or(|(waiting, _)| waiting != generation)
        {
            tracing::info!(
                generation,
                behind_s = start.saturating_sub(reading.date()),
                wait_ms = needed.as_millis() as u64,
                "the FHIR server's clock is behind the auth server's: waiting until it takes \
                 the token, then sending the request again with it"
            );
        }
        sched.clock_wait = Some((generation, until));
        Rejection::NotYetValid { until }
    }
}

/// The replays one request gets after `401`s: per token, at most one wait for the FHIR server's
/// clock (then the same token again), and at most one renewal. A request is sent at most four
/// times: with its token, after the wait, with the renewed token, after a wait for that one
/// ([`MAX_REPLAYS`], also when a replay went out with a newer token than planned).
#[derive(Debug)]
pub(crate) struct RetryPlan {
    generation: u64,
    waited: bool,
    renewed: bool,
    replays: u8,
}

/// Most replays of one request.
const MAX_REPLAYS: u8 = 3;

impl RetryPlan {
    /// For a request sent with the token of `generation`.
    pub(crate) fn new(generation: u64) -> Self {
        Self {
            generation,
            waited: false,
            renewed: false,
            replays: 0,
        }
    }

    /// The generation of the token the request was last sent with.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The request was sent again with the token of `generation` (a newer one than planned,
    /// when the planned one ran out before the service was ready).
    pub(crate) fn sent_with(&mut self, generation: u64) {
        self.replays = self.replays.saturating_add(1);
        if generation != self.generation {
            self.generation = generation;
            self.waited = false;
        }
    }

    /// Judges a `401` to the request's last send (see [`TokenCell::judge_401`]).
    pub(crate) fn judge(&self, cell: &TokenCell, headers: &HeaderMap) -> Rejection {
        cell.judge_401(self.generation, headers, !self.waited)
    }

    /// The token to send the request again with after a `401` judged `verdict`: the same one
    /// once the FHIR server's clock has reached it, or a renewed one; `None` when the request
    /// has had its replays (return the `401`).
    ///
    /// # Errors
    ///
    /// When the token cannot be renewed.
    pub(crate) async fn next(
        &mut self,
        cell: &TokenCell,
        verdict: Rejection,
    ) -> Result<Option<super::TokenHeader>, crate::Error> {
        if self.replays >= MAX_REPLAYS {
            return Ok(None);
        }
        // (Waiting needs a timer: on a runtime without, the token is renewed instead, which
        // fails there with a typed error.)
        if let Rejection::NotYetValid { until } = verdict
            && !self.waited
            && cell.shared.runtimes.usable().is_ok()
            && cell.header_of(self.generation).is_some()
        {
            self.waited = true;
            tokio::time::sleep_until(until).await;
            // Looked up again after the wait: the token may have reached its usable-until
            // instant meanwhile, or been rejected by another request; then it is renewed.
            if let Some(token) = cell.header_of(self.generation) {
                return Ok(Some(token));
            }
        }
        if std::mem::replace(&mut self.renewed, true) {
            return Ok(None);
        }
        let token = cell.renewed(self.generation).await?;
        self.generation = token.generation();
        self.waited = false;
        Ok(Some(token))
    }
}

impl TokenCell {
    /// The token of `generation` while it is handed out (current, or previous while its
    /// successor waits for the FHIR server's clock).
    pub(crate) fn header_of(&self, generation: u64) -> Option<super::TokenHeader> {
        let now = Instant::now();
        let guard = self.shared.current.load();
        let cached = guard.as_ref()?;
        if cached.generation == generation && cached.serves_at(now) && !cached.refused {
            return Some(cached.header());
        }
        cached
            .previous_at(now)
            .filter(|previous| previous.generation == generation)
            .map(super::cached::Previous::header)
    }
}

impl Shared {
    /// The start (issuer's epoch seconds) of the token of `generation`, current or previous.
    fn start_of(&self, generation: u64) -> Option<u64> {
        let guard = self.current.load();
        let cached = guard.as_ref()?;
        if cached.generation == generation {
            return cached.token.not_before_secs();
        }
        cached
            .previous
            .as_ref()
            .filter(|previous| previous.generation == generation)
            .and_then(|previous| previous.token.not_before_secs())
    }

    /// Drops the current token if it is of `generation`. Schedules a backoff when young tokens
    /// keep being rejected, and then keeps the token for callers that do not need a later one,
    /// marked refused, until its renewal.
    pub(super) fn drop_rejected(&self, now: Instant, generation: u64) -> bool {
        let mut sched = self.lock();
        let guard = self.current.load();
        // The token serving while its successor waits for the FHIR server's clock is rejected:
        // the successor was fetched before the rejection and may be refused as well (a
        // revocation of all tokens): both go, and a new one is fetched. Once the successor
        // serves, a late rejection of its predecessor is of an older generation: nothing.
        fn serving_previous(
            cached: &super::CachedToken,
            now: Instant,
            generation: u64,
        ) -> Option<&crate::token::AccessToken> {
            cached
                .previous_at(now)
                .filter(|previous| previous.generation == generation)
                .map(|previous| &previous.token)
        }
        let Some(cached) = guard.as_ref().filter(|cached| {
            cached.generation == generation || serving_previous(cached, now, generation).is_some()
        }) else {
            return false;
        };
        if cached.refused {
            // Refused already: its renewal waits out the backoff.
            return false;
        }
        // The age of the token the server refused (not its successor's, which is dropped too).
        let refused = serving_previous(cached, now, generation).unwrap_or(&cached.token);
        let age = now.saturating_duration_since(refused.received_at());
        if age < self.policy.young_token_age {
            sched.young_rejections = sched.young_rejections.saturating_add(1);
        } else {
            sched.young_rejections = 0;
        }
        let backoff = sched.young_rejections >= 2;
        if backoff {
            let delay = self
                .policy
                .exponential(sched.young_rejections - 1, random_fraction());
            let until = later(now, delay);
            sched.not_before = Some(sched.not_before.map_or(until, |at| at.max(until)));
            tracing::warn!(
                generation,
                age_ms = age.as_millis() as u64,
                delay_ms = delay.as_millis() as u64,
                "a fresh token was rejected again: renewing after a backoff (other requests keep \
                 using it meanwhile; a refused request is not sent with it again)"
            );
        } else {
            tracing::info!(
                generation,
                age_ms = age.as_millis() as u64,
                "token rejected by the server: renewing"
            );
        }
        // Never taken back from a shared store: the newest token dropped (the successor, when
        // the previous one was refused: it may be refused as well, and the store holds the
        // newest token, not the one it replaced).
        sched.rejected = Some(shared_fetch::digest(cached.token.as_str()));
        sched.rejected_at = Some(now);
        // A fresh token refused again is likely refused for the request, not for itself (a
        // server that refuses one resource whatever the token): during the backoff it is still
        // handed out to other requests, which may well be accepted, rather than taking the
        // token from all of them for up to the longest backoff. A replay never gets it, nor
        // does a caller who needs a later token; its renewal is due at once, after the backoff.
        let keep =
            (backoff && cached.generation == generation && cached.serves_at(now)).then(|| {
                Arc::new(super::CachedToken {
                    token: cached.token.clone(),
                    generation,
                    refresh_at: now,
                    usable_until: cached.usable_until,
                    valid_from: cached.valid_from,
                    previous: None,
                    local: cached.local.clone(),
                    refused: true,
                })
            });
        let _ = self.current.compare_and_swap(&*guard, keep);
        self.slots.clear();
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        self.set_quiet(&sched);
        drop(sched);
        self.wake.notify_one();
        true
    }

    /// See [`TokenCell::confirm`](super::TokenCell::confirm).
    pub(super) fn confirm(&self, generation: u64) {
        let mut sched = self.lock();
        if sched.generation == generation {
            sched.young_rejections = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeTokenSource;
    use crate::token::RefreshPolicy;

    /// A fresh token refused again: renewed after the backoff, and meanwhile still handed out,
    /// but never for a replay, and refused only once.
    #[tokio::test(start_paused = true)]
    async fn a_young_token_refused_again_serves_others_until_its_renewal_but_no_replay() {
        let source = FakeTokenSource::new();
        let backoff = std::time::Duration::from_secs(10);
        let policy = RefreshPolicy::default()
            .backoff(backoff, backoff)
            .background_refresh(false);
        let cell = TokenCell::new(source.clone(), policy);
        cell.ready().await.unwrap();
        assert!(cell.invalidate(1), "young once: renewed at once");
        assert_eq!(cell.token().await.unwrap().generation(), 2);
        assert!(cell.invalidate(2), "young again: after the backoff");
        assert!(!cell.invalidate(2), "once per generation");
        assert_eq!(cell.current().map(|token| token.generation()), Some(2));
        assert_eq!(cell.token().await.unwrap().generation(), 2);
        assert!(cell.header_of(2).is_none(), "never for a replay");
        let started = Instant::now();
        assert_eq!(cell.renewed(2).await.unwrap().generation(), 3);
        let waited = started.elapsed();
        assert!(waited >= backoff && waited < backoff * 2, "{waited:?}");
        assert_eq!(source.fetches_started(), 3);
        assert_eq!(cell.current().map(|token| token.generation()), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_replayed_at_most_three_times_whatever_tokens_it_went_out_with() {
        let source = FakeTokenSource::new();
        let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
        cell.ready().await.unwrap();
        let mut plan = RetryPlan::new(1);
        // Three replays, each with a newer token than planned (the planned one ran out while
        // the service got ready), each resetting the clock wait.
        for generation in 2..=4 {
            plan.sent_with(generation);
        }
        assert!(plan.next(&cell, Rejection::Renew).await.unwrap().is_none());
        assert_eq!(source.fetches_started(), 1, "no renewal for a fifth send");
    }
}
