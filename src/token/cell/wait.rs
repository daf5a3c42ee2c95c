//! Waiting for a token: a caller that has none it can use kicks the refresh (or joins the one in
//! flight) and waits for its outcome, bounded by the policy's wait timeout on every iteration;
//! each iteration awaits something that takes time, so the loop cannot spin.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use tokio::time::Instant;

use super::flight::{Ending, Kick, Reason};
use super::runtime::Unusable;
use super::{Shared, Usable};
use crate::error::{Error, ErrorKind};
use crate::token::policy::later;

impl Shared {
    /// Waits for a usable token of a generation after `after`, starting refreshes as needed,
    /// until the policy's wait timeout. Counts the wait and its time.
    ///
    /// A generation the cell has not reached counts as its latest: one renewal serves it, never
    /// one fetch per generation up to it.
    pub(super) async fn wait_for(self: &Arc<Self>, after: u64) -> Result<Usable, Error> {
        // Before any timer is made: tokio panics on a runtime without timers.
        self.runtimes.usable().map_err(Unusable::error)?;
        let after = after.min(self.lock().generation);
        self.unpark_refresher();
        self.counters.waits.fetch_add(1, Ordering::Relaxed);
        // Counted on drop: a wait whose caller gives up counts too.
        let _clock = WaitClock {
            total: &self.counters.wait_nanos,
            started: Instant::now(),
        };
        self.wait_for_token(after).await
    }

    async fn wait_for_token(self: &Arc<Self>, after: u64) -> Result<Usable, Error> {
        self.ensure_refresher();
        let deadline = later(Instant::now(), self.policy.wait_timeout);
        let timed_out = |why: &str| {
            Error::new(
                ErrorKind::WaitTimeout,
                format!("no token within {:?}{why}", self.policy.wait_timeout),
            )
        };
        // The first look always kicks, so that even a zero wait timeout starts the refresh that
        // serves the callers after it.
        let mut kicked = false;
        loop {
            let now = Instant::now();
            if let Some(usable) = self.usable(now, after) {
                return Ok(usable);
            }
            if kicked && now >= deadline {
                return Err(timed_out(""));
            }
            kicked = true;
            match self.kick(now, Reason::Empty, after, true) {
                Kick::Ready => {}
                Kick::Pending(at) => tokio::time::sleep_until(at.min(deadline)).await,
                Kick::Running(mut flight) => {
                    let look_again = flight.stalls_at(self).min(deadline);
                    let id = flight.id;
                    // Until the flight ends, or a token is installed meanwhile (the late one of
                    // a flight given up on), registered before looking again.
                    let installed = self.installed.notified();
                    let mut installed = pin!(installed);
                    installed.as_mut().enable();
                    if let Some(usable) = self.usable(Instant::now(), after) {
                        return Ok(usable);
                    }
                    let mut outcome = pin!(flight.outcome.wait_for(Option::is_some));
                    let woke = std::future::poll_fn(|cx| {
                        if let Poll::Ready(outcome) = outcome.as_mut().poll(cx) {
                            return Poll::Ready(Some(outcome));
                        }
                        installed.as_mut().poll(cx).map(|()| None)
                    });
                    match tokio::time::timeout_at(look_again, woke).await {
                        Ok(Some(Ok(outcome))) => {
                            if let Some(Err(error)) = &*outcome {
                                return Err(error.clone());
                            }
                        }
                        // The guard always reports, so its sender cannot go first; if it did,
                        // the flight is over without a result.
                        Ok(Some(Err(_))) => self.give_up(id),
                        // A token installed, time to see whether the flight still runs, or the
                        // deadline: look again.
                        Ok(None) | Err(_) => {}
                    }
                }
                Kick::Quiet {
                    error: Some(error), ..
                } => return Err(error),
                Kick::Quiet { until, error: None } => {
                    if until >= deadline {
                        return Err(timed_out(": the next refresh attempt is due after that"));
                    }
                    // Until the backoff ends, or a token is installed meanwhile (registered
                    // before looking again, so that none is missed).
                    let installed = self.installed.notified();
                    let mut installed = pin!(installed);
                    installed.as_mut().enable();
                    if let Some(usable) = self.usable(Instant::now(), after) {
                        return Ok(usable);
                    }
                    let _ = tokio::time::timeout_at(until, installed).await;
                }
                Kick::NoRuntime(why) => return Err(why.error()),
            }
        }
    }

    /// Ends flight `id`, if it is still the one in flight, as an attempt without a result.
    fn give_up(&self, id: u64) {
        let mut sched = self.lock();
        if sched.flight.as_ref().is_some_and(|flight| flight.id == id) {
            let _ = self.end_flight(&mut sched, Instant::now(), Ending::CutOff);
        }
    }
}

/// Adds the time from `started` to `total` (nanoseconds) when dropped.
struct WaitClock<'a> {
    total: &'a AtomicU64,
    pub(super) started: Instant,
}

impl Drop for WaitClock<'_> {
    fn drop(&mut self) {
        let waited = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.total.fetch_add(waited, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::FakeTokenSource;
    use crate::token::{RefreshPolicy, TokenCell};

    /// A generation from elsewhere (another cell, a stale counter) asks for one renewal, not a
    /// fetch per generation up to it.
    #[tokio::test(start_paused = true)]
    async fn a_generation_the_cell_has_not_reached_costs_one_renewal() {
        let source = FakeTokenSource::new();
        let policy = RefreshPolicy::default().background_refresh(false);
        let cell = TokenCell::new(source.clone(), policy);
        cell.ready().await.unwrap();
        assert_eq!(cell.renewed(10).await.unwrap().generation(), 2);
        assert_eq!(source.fetches_started(), 2);
        assert_eq!(cell.current().map(|token| token.generation()), Some(2));
    }
}
