//! A token the server rejected (`401`): dropped once per generation, and renewed after a
//! backoff when brand-new tokens keep being rejected (the cause is then not expiry).

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Shared;
use crate::token::policy::{later, random_fraction};
use crate::token::shared_fetch;

impl Shared {
    /// Drops the current token if it is of `generation`. Schedules a backoff when young tokens
    /// keep being rejected.
    pub(super) fn drop_rejected(&self, now: Instant, generation: u64) -> bool {
        let mut sched = self.lock();
        let guard = self.current.load();
        let Some(cached) = guard.as_ref().filter(|c| c.generation == generation) else {
            return false;
        };
        let age = now.saturating_duration_since(cached.token.received_at());
        if age < self.policy.young_token_age {
            sched.young_rejections = sched.young_rejections.saturating_add(1);
        } else {
            sched.young_rejections = 0;
        }
        if sched.young_rejections >= 2 {
            let delay = self
                .policy
                .exponential(sched.young_rejections - 1, random_fraction());
            let until = later(now, delay);
            sched.not_before = Some(sched.not_before.map_or(until, |at| at.max(until)));
            tracing::warn!(
                generation,
                age_ms = age.as_millis() as u64,
                delay_ms = delay.as_millis() as u64,
                "a fresh token was rejected again: renewing after a backoff"
            );
        } else {
            tracing::info!(
                generation,
                age_ms = age.as_millis() as u64,
                "token rejected by the server: renewing"
            );
        }
        sched.rejected = Some(shared_fetch::digest(cached.token.as_str()));
        let _ = self.current.compare_and_swap(&*guard, None);
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
