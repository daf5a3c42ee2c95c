//! The single-flight refresh: at most one attempt at a time per cell, its outcome shared by every
//! caller waiting on it.
//!
//! Nothing here depends on a task being polled on time:
//!
//! - an attempt (a *flight*) is registered and its [`FlightGuard`] made before its task is
//!   spawned, and the guard moves into the task: completed, panicked, cancelled, or dropped
//!   unpolled with its runtime, the flight reports an outcome, and one that ended without a result
//!   counts as a failed attempt (the backoff applies; then anyone may start the next);
//! - a running flight beats a heartbeat; one whose heartbeat stops (its runtime idle, blocked or
//!   gone) or that outlives the attempt timeout is given up on by the next caller that needs a
//!   token, the next request past the refresh point, or the background refresher, whichever
//!   comes first, which starts another on its own runtime (after the backoff of one failed
//!   attempt); a caller on the idle current-thread runtime the flight waits on does not give up
//!   on it (the flight runs as soon as that caller awaits); a flight given up on that ends with
//!   a token after all has its token used, unless a later one is in place;
//! - every wait (see `wait.rs`) is bounded by the caller's deadline, on every iteration, and
//!   every iteration awaits something that takes time: no loop can spin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::{Handle, Id, RuntimeFlavor};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::Shared;
use super::attempt::supervised;
use super::runtime::Unusable;
use super::sched::Sched;
use crate::error::Error;
use crate::token::AccessToken;
use crate::token::policy::later;

/// A flight whose heartbeat is older than this is not being run, and is given up on.
const STALLED_AFTER: Duration = Duration::from_secs(3);

/// What waiters of a flight learn: its error, or `Ok` ("look at the cell again": a token was
/// installed, or the flight ended without one and the backoff applies).
pub(super) type Outcome = Result<(), Error>;

/// A flight as the schedule and its waiters see it.
#[derive(Clone)]
pub(super) struct Flight {
    pub(super) id: u64,
    pub(super) outcome: watch::Receiver<Option<Outcome>>,
    pub(super) started: Instant,
    /// When the flight last showed its task is being run (nanoseconds after the cell's epoch).
    heartbeat: Arc<AtomicU64>,
    /// The current-thread runtime the task was spawned on, if it was: a caller running on that
    /// runtime knows the task runs as soon as the caller awaits anything.
    current_thread: Option<Id>,
}

/// Why a refresh starts (for tracing).
#[derive(Clone, Copy, Debug)]
pub(super) enum Reason {
    /// No usable token.
    Empty,
    /// The token is past its refresh point.
    Proactive,
    /// Retrying, without a token, after a failure.
    Retry,
}

/// What [`Shared::kick`] found.
pub(super) enum Kick {
    /// Nothing to do: a token of the wanted kind is there.
    Ready,
    /// A token of the wanted kind is handed out from this instant (the FHIR server's clock is
    /// behind).
    Pending(Instant),
    /// A refresh is in flight.
    Running(Flight),
    /// No refresh before `until`; `error` is the last failure, to hand to callers at once.
    Quiet {
        until: Instant,
        error: Option<Error>,
    },
    /// No tokio runtime to run a refresh on (or one without timers).
    NoRuntime(Unusable),
}

/// How an attempt ended.
pub(super) enum Ending {
    /// The source answered (or panicked, or timed out: an error).
    Fetched(Result<AccessToken, Error>),
    /// Without a result: cancelled, dropped unpolled, or given up on.
    CutOff,
}

impl Flight {
    fn beat(&self, shared: &Shared) -> Instant {
        later(
            shared.epoch,
            Duration::from_nanos(self.heartbeat.load(Ordering::Acquire)),
        )
    }

    /// Whether the caller runs on the current-thread runtime the flight's task waits on: the
    /// task then runs as soon as the caller awaits anything, however long the runtime sat idle.
    /// (On a multi-thread runtime a caller on one worker says nothing about a task queued on
    /// another, blocked one.)
    fn runs_with_caller(&self) -> bool {
        self.current_thread
            .is_some_and(|id| Handle::try_current().is_ok_and(|handle| handle.id() == id))
    }

    /// When the flight counts as not being run any more, unless its heartbeat moves on.
    pub(super) fn stalls_at(&self, shared: &Shared) -> Instant {
        later(self.beat(shared), STALLED_AFTER).min(self.overdue_at(shared))
    }

    /// When the flight has outlived the attempt timeout (with the slack of a heartbeat), however
    /// it beats.
    fn overdue_at(&self, shared: &Shared) -> Instant {
        later(
            later(self.started, shared.policy.attempt_timeout),
            STALLED_AFTER,
        )
    }
}

impl Shared {
    /// When a token that satisfies a caller who lacked one (`reason`, `after`) is handed out:
    /// now, later (a new token the FHIR server does not take yet), or `None` if there is none.
    fn ready_at(&self, now: Instant, reason: Reason, after: u64) -> Option<Instant> {
        let guard = self.current.load();
        let cached = guard.as_ref()?;
        if cached.generation <= after || now >= cached.usable_until {
            return None;
        }
        if now < cached.valid_from {
            // Fetched already: a proactive refresh is done; anyone else waits for it.
            return Some(if matches!(reason, Reason::Proactive) {
                now
            } else {
                cached.valid_from
            });
        }
        (!matches!(reason, Reason::Proactive) || now < cached.refresh_at).then_some(now)
    }

    /// Joins the refresh in flight, or starts one on the current runtime, unless the backoff
    /// says not yet or the token the caller lacked was installed since it looked. A flight that
    /// has stopped running is given up on first. `awaits`: the caller awaits next (a waiter, the
    /// refresher), so that its runtime runs (see [`running_flight`](Self::running_flight)).
    pub(super) fn kick(
        self: &Arc<Self>,
        now: Instant,
        reason: Reason,
        after: u64,
        awaits: bool,
    ) -> Kick {
        let mut sched = self.lock();
        // Tokens are installed under this lock, so this check cannot race with one.
        match self.ready_at(now, reason, after) {
            Some(at) if at <= now => return Kick::Ready,
            Some(at) => return Kick::Pending(at),
            None => {}
        }
        if let Some(flight) = self.running_flight(&mut sched, now, awaits).cloned() {
            // The fast path's next look is when the flight may have stalled.
            self.set_quiet(&sched);
            return Kick::Running(flight);
        }
        if let Some(until) = sched.not_before.filter(|until| now < *until) {
            return Kick::Quiet {
                until,
                error: sched.last_error.clone(),
            };
        }
        let runtime = match self.runtimes.usable() {
            Ok(runtime) => runtime,
            Err(why) => return Kick::NoRuntime(why),
        };
        let current_thread =
            (runtime.runtime_flavor() == RuntimeFlavor::CurrentThread).then(|| runtime.id());
        if !awaits && current_thread.is_some() && current_thread == sched.stalled_runtime {
            // A synchronous look on the runtime whose last flight was not run: a flight there
            // would likely stall too, and hold back the callers on a runtime that runs. They,
            // or a caller here that awaits, start it.
            return Kick::Pending(later(now, STALLED_AFTER));
        }
        self.unpark_refresher();
        sched.flights += 1;
        let (tx, rx) = watch::channel(None);
        let flight = Flight {
            id: sched.flights,
            outcome: rx,
            started: now,
            heartbeat: Arc::new(AtomicU64::new(self.nanos(now))),
            current_thread,
        };
        let guard = FlightGuard {
            shared: Arc::downgrade(self),
            flight: flight.clone(),
            tx,
            reported: false,
        };
        sched.flight = Some(flight.clone());
        self.set_quiet(&sched);
        drop(sched);
        // Spawned outside the lock: a runtime shutting down drops the task (and the guard, which
        // takes the lock) at once.
        runtime.spawn(run(guard, reason));
        Kick::Running(flight)
    }

    /// The flight in the air, unless it has stopped running (its heartbeat stopped: its runtime
    /// is idle, blocked or gone; or it outlived the attempt timeout): then it is given up on,
    /// as an attempt without a result (the backoff applies), and there is none. A flight waiting
    /// on the current-thread runtime the caller runs on is not given up on for its heartbeat: it
    /// runs as soon as the caller awaits anything. Only a caller that `awaits` next moves its
    /// heartbeat on; a synchronous look (the fast path) on that runtime leaves it as it is, so
    /// that a caller on a runtime that runs still takes it over.
    pub(super) fn running_flight<'s>(
        &self,
        sched: &'s mut Sched,
        now: Instant,
        awaits: bool,
    ) -> Option<&'s Flight> {
        let flight = sched.flight.as_ref()?;
        let stalled = now >= flight.stalls_at(self);
        if stalled && now < flight.overdue_at(self) && flight.runs_with_caller() {
            // Not run lately because its runtime was not driven (a `block_on` per call, with
            // the program doing other things in between), but it is now if this caller awaits:
            // it runs on it.
            if awaits {
                flight
                    .heartbeat
                    .fetch_max(self.nanos(now), Ordering::AcqRel);
            }
        } else if stalled {
            sched.stalled_runtime = flight.current_thread;
            tracing::warn!(
                running_for_ms = now.saturating_duration_since(flight.started).as_millis() as u64,
                "the token refresh in flight is not being run (its runtime is idle, blocked or \
                 gone, or the source hangs): giving up on it"
            );
            let _ = self.end_flight(sched, now, Ending::CutOff);
        }
        sched.flight.as_ref()
    }

    /// Starts a refresh from a synchronous caller if none runs and no backoff holds it back.
    pub(super) fn refresh_soon(self: &Arc<Self>, now: Instant, reason: Reason) {
        if self.nanos(now) < self.quiet_until.load(Ordering::Acquire) {
            return;
        }
        let _ = self.kick(now, reason, 0, false);
    }

    /// Until when the fast path starts no refresh: while a flight runs, until it may have
    /// stalled (so that one that stops running is given up on, and the refresh started again,
    /// by the next request past the refresh point, not only by a caller without a token); else
    /// until the backoff ends.
    pub(super) fn set_quiet(&self, sched: &Sched) {
        let until = match &sched.flight {
            Some(flight) => self.nanos(flight.stalls_at(self)),
            None => sched.not_before.map_or(0, |at| self.nanos(at)),
        };
        self.quiet_until.store(until, Ordering::Release);
    }

    fn is_in_flight(&self, id: u64) -> bool {
        self.lock()
            .flight
            .as_ref()
            .is_some_and(|flight| flight.id == id)
    }
}

/// Reports the outcome of a flight exactly once: when it completes, or from `drop` when it
/// panicked, was cancelled, or was dropped before it ever ran. It holds the cell weakly: a task
/// that is never run (its runtime idle for good) does not keep the cell, its token and its
/// source (a private key) alive after the last handle. Once the task has started its fetch it
/// holds the cell until the fetch ends: a runtime that stops being driven mid-fetch keeps the
/// cell alive until it is driven again (the fetch ends by the attempt timeout) or dropped.
struct FlightGuard {
    shared: Weak<Shared>,
    flight: Flight,
    tx: watch::Sender<Option<Outcome>>,
    reported: bool,
}

impl FlightGuard {
    fn report(&mut self, ending: Ending) {
        if self.reported {
            return;
        }
        // Without the cell there is no one to report to: every waiter holds it.
        let Some(shared) = self.shared.upgrade() else {
            self.reported = true;
            return;
        };
        let outcome = {
            let mut sched = shared.lock();
            if sched
                .flight
                .as_ref()
                .is_some_and(|flight| flight.id == self.flight.id)
            {
                shared.end_flight(&mut sched, Instant::now(), ending)
            } else {
                shared.end_given_up(&mut sched, Instant::now(), ending);
                Ok(())
            }
        };
        // Set only now: if recording the end panicked, the flight is still registered, and the
        // drop records it as cut off.
        self.reported = true;
        self.tx.send_replace(Some(outcome));
    }

    fn beat(&self, shared: &Shared) {
        let now = shared.nanos(Instant::now());
        self.flight.heartbeat.store(now, Ordering::Release);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.report(Ending::CutOff);
    }
}

/// The flight's task.
async fn run(mut guard: FlightGuard, reason: Reason) {
    let Some(shared) = guard.shared.upgrade() else {
        // The cell is gone.
        return;
    };
    if !shared.is_in_flight(guard.flight.id) {
        // Given up on before it ran.
        guard.report(Ending::CutOff);
        return;
    }
    guard.beat(&shared);
    if let Some(id) = guard.flight.current_thread {
        // Its runtime runs after all.
        let mut sched = shared.lock();
        if sched.stalled_runtime == Some(id) {
            sched.stalled_runtime = None;
        }
    }
    let deadline = later(guard.flight.started, shared.policy.attempt_timeout);
    let span = tracing::debug_span!("token_refresh", reason = ?reason);
    let result = supervised(
        shared.fetch(),
        || guard.beat(&shared),
        shared.policy.attempt_timeout,
        deadline,
    )
    .instrument(span)
    .await;
    guard.report(Ending::Fetched(result));
}
