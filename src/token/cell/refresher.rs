//! The background refresher: one task per cell that starts a refresh at the token's refresh
//! point (and, without a token, retries at the backoff pace), so that requests never wait for the
//! token endpoint.
//!
//! It is an optimisation, never a guarantee: the fast path checks every token against the clock
//! and starts refreshes itself, so a refresher that runs late, or not at all (its runtime idle,
//! blocked or gone), costs a request a wait at worst, never an expired token. It holds only a weak
//! reference, so it ends with the last handle on the cell. Its guard is made before it is
//! spawned: when its task ends or is dropped (unpolled or not) while the cell lives on, the next
//! use of the cell starts a new one, on whatever runtime that use runs on. At most one runs per
//! cell.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;
use super::flight::Reason;
use super::runtime::Unusable;
use crate::token::policy::{MIN_BACKOFF, later};

impl Shared {
    /// Starts a refresher on the current runtime if the cell should have one and none runs.
    pub(super) fn ensure_refresher(self: &Arc<Self>) {
        if !self.needs_refresher.load(Ordering::Acquire) {
            return;
        }
        let runtime = match self.runtimes.usable() {
            Ok(runtime) => runtime,
            // Outside any runtime: the next use inside one starts it (the check is a
            // thread-local read).
            Err(Unusable::NoRuntime) => return,
            // Not on a runtime without timers (the refresher sleeps). Parked, so that the fast
            // path checks nothing more on it, until a slow path on a runtime with timers
            // unparks it (see `unpark_refresher`).
            Err(Unusable::NoTimers) => {
                if self.needs_refresher.swap(false, Ordering::AcqRel) {
                    self.refresher_parked.store(true, Ordering::Release);
                }
                return;
            }
        };
        if !self.needs_refresher.swap(false, Ordering::AcqRel) {
            return;
        }
        let guard = RefresherGuard(Arc::downgrade(self));
        runtime.spawn(refresher(guard, Arc::clone(&self.wake)));
    }

    /// Wants a refresher again after it was parked on a runtime without timers: called by the
    /// slow paths once they are on a runtime with timers. The next use starts it.
    pub(super) fn unpark_refresher(&self) {
        if self.refresher_parked.swap(false, Ordering::AcqRel) {
            self.want_refresher();
        }
    }

    /// Lets the next use start a refresher: the flag, then every slot emptied (a slot hit skips
    /// the upkeep that would start it; see `Shared::may_slot`).
    fn want_refresher(&self) {
        self.needs_refresher.store(true, Ordering::Release);
        self.slots.clear();
    }

    /// The fast path's upkeep after handing out a token at `now`: a refresh when the token is
    /// `stale` (past its refresh point), and a background refresher when none runs.
    #[inline]
    pub(super) fn tend(self: &Arc<Self>, stale: bool, now: Instant) {
        if stale {
            self.refresh_soon(now, Reason::Proactive);
        }
        self.keep_refresher();
    }

    /// [`ensure_refresher`](Self::ensure_refresher) for the fast path: one relaxed load when a
    /// refresher runs (or none is wanted).
    #[inline]
    pub(super) fn keep_refresher(self: &Arc<Self>) {
        if self.needs_refresher.load(Ordering::Relaxed) {
            self.ensure_refresher();
        }
    }

    /// When the refresher should act next: `None` to sleep until woken.
    fn refresher_due(&self, now: Instant) -> Option<(Instant, Reason)> {
        let mut sched = self.lock();
        if let Some(flight) = self.running_flight(&mut sched, now, true) {
            // Look again when it may have stalled: one that stops running (on an idle runtime,
            // say) is given up on then, and the refresh started here.
            return Some((flight.stalls_at(self), Reason::Proactive));
        }
        let due = match self.current.load().as_ref() {
            Some(cached) => (cached.refresh_at, Reason::Proactive),
            // Failing without a token: keep retrying at the backoff pace, so recovery is
            // automatic.
            None if sched.last_error.is_some() => (now, Reason::Retry),
            // Emptied once it had started (a token rejected, an attempt cut off): fetch again
            // (after the backoff, if any), so that a cell nobody asks, say one whose readiness
            // probe keeps traffic away, recovers too. A cell nobody ever asked stays lazy.
            None if sched.has_flown() => (now, Reason::Empty),
            None => return None,
        };
        Some(match sched.not_before {
            Some(until) => (due.0.max(until), due.1),
            None => due,
        })
    }
}

/// The refresher's task: sleeps until the refresh point, starts the refresh, repeats.
async fn refresher(guard: RefresherGuard, wake: Arc<Notify>) {
    tracing::trace!("background refresher started");
    // The instant of the last refresh this task started: never another within `MIN_BACKOFF`,
    // so that no schedule, setting or clock can make this loop spin.
    let mut kicked_at: Option<Instant> = None;
    loop {
        let due = {
            let Some(shared) = guard.0.upgrade() else {
                break;
            };
            let now = Instant::now();
            match shared.refresher_due(now) {
                Some((at, reason)) if at <= now => match kicked_at {
                    // Due again right after a kick: never loop without waiting.
                    Some(last) if now < later(last, MIN_BACKOFF) => Some(later(last, MIN_BACKOFF)),
                    _ => {
                        kicked_at = Some(now);
                        let _ = shared.kick(now, reason, 0, true);
                        continue;
                    }
                },
                due => due.map(|(at, _)| at),
            }
        };
        match due {
            Some(at) => {
                let _ = tokio::time::timeout_at(at, wake.notified()).await;
            }
            None => wake.notified().await,
        }
    }
    tracing::trace!("background refresher stopped: the cell is gone");
}

/// Lets the next use start a new refresher once this one's task is gone, however it went.
struct RefresherGuard(Weak<Shared>);

impl Drop for RefresherGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade()
            && shared.policy.background_refresh
        {
            shared.want_refresher();
        }
    }
}
