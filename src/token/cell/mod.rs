//! `TokenCell`: the shared token behind every request, and its fast path.
//!
//! The cell is split by idea:
//!
//! - this module: the state (the current token with the instants that govern it).
//! - [`fast_path`]: handing the token out. Every use compares a usable-until instant with the
//!   clock: a token is never handed out after it, whatever any task, runtime or clock does. No
//!   flag that some task must clear stands in for that comparison.
//! - [`flight`]: the single-flight refresh. An attempt reports its outcome even when its task is
//!   dropped before it ever runs; one whose task is not being run is given up on by the next
//!   caller that needs a token; every wait honours its deadline.
//! - [`attempt`]: one attempt: fetching, supervising, installing its token.
//! - [`rejection`]: a token the server rejected.
//! - [`header`]: the values the cell hands out (and the link to the cell a response future
//!   keeps), and its counters; [`cached`]: a token with its instants.
//! - [`fhir_clock`]: the FHIR server's clock, when it is behind the auth server's.
//! - [`refresher`]: the background refresher, an optimisation only (it moves refreshes off the
//!   request path). It is started again by the next use, on whatever runtime that use runs on,
//!   when its task has ended or its runtime is gone.
//! - [`slots`]: the per-thread slots the fast path finds the token in, each a copy of its own.
//! - [`runtime`]: the runtime a cell may fetch on (the current one, if it has timers).

mod attempt;
mod cached;
mod fast_path;
mod fhir_clock;
mod flight;
mod header;
mod health;
mod refresher;
mod rejection;
mod runtime;
pub(crate) use runtime::has_timers;
mod sched;
mod slots;
mod wait;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::cached::{CachedToken, Usable};
use self::flight::Reason;
pub(crate) use self::header::CellLink;
use self::header::Counters;
pub use self::header::{CellStats, TokenHeader};
pub use self::health::Health;
pub(crate) use self::rejection::{Rejection, RetryPlan};
use self::sched::Sched;
use super::policy::RefreshPolicy;
use super::{AccessToken, TokenSource};
use crate::error::Error;
use crate::store::{StorePolicy, TokenStore};

/// The shared, self-refreshing access token of one client at one token endpoint.
///
/// Built from any [`TokenSource`] and a [`RefreshPolicy`]; cheap to clone (clones share the token).
///
/// - [`current`](Self::current) is the fast path: the calling thread's own slot in the cell
///   (taken with a try-lock, never waited for) and one clock read, no `.await`, and no
///   allocation but a thread's own copy of each new token, made the first time that thread
///   hands it out. It returns the token while it is usable and, once the token is past its
///   refresh point, starts one refresh without waiting for it.
/// - [`token`](Self::token) also waits, when there is no usable token, for the one refresh in
///   flight (starting it if needed), for at most the policy's wait timeout.
/// - [`invalidate`](Self::invalidate) and [`renewed`](Self::renewed) handle a `401` from the
///   server: only the first call for a token generation renews it.
///
/// # Refresh
///
/// A token of lifetime `L` is refreshed once less than `min(max(30 s, 20% L), 50% L)` of it
/// remains, plus up to `10% L` of random jitter, by a background task (on by default when a tokio
/// runtime is present) that holds only a weak reference and ends with the last handle. A token is
/// never handed out in its last `min(10 s, 10% L)`: every use checks the clock.
///
/// # Failures
///
/// A failed refresh while the token is valid changes nothing for callers: the token is served
/// until its margin while refreshes are retried with exponential backoff (200 ms to 30 s, with
/// jitter, `Retry-After` honoured; permanent errors at 30 s). Without a usable token, callers get
/// the error of the last attempt (see [`Error::is_transient`]); no request is ever given an
/// expired token. An attempt that panics, is cancelled, runs past the attempt timeout (60 s), or
/// sits on a runtime that no longer runs it counts as a failed attempt: the cell backs off and
/// then tries again, from whatever runtime needs the token.
///
/// # Runtimes
///
/// The cell may outlive the runtime it was made on, be used from several in turn, or sit on an
/// idle one (a struct owning a runtime and calling `block_on` per method): the guarantees above
/// hold in each case. A refresh needs a tokio runtime to run on: with none at all,
/// [`current`](Self::current) still hands out a usable token, and a caller that needs a new one
/// gets [`ErrorKind::NoRuntime`](crate::ErrorKind::NoRuntime); so does one on a runtime built
/// without timers (`enable_time`), where the cell never makes a timer. While no runtime runs, no
/// token is renewed; the first use on a running one renews it. One case tokio itself cannot
/// serve: waiting through `Handle::block_on` on a current-thread runtime that nobody drives
/// (no `Runtime::block_on` running on it) drives neither its timers nor its tasks, so such a
/// wait ends only when the runtime is driven again, not by the wait timeout; wait from the
/// thread that owns the runtime, or from another runtime.
///
/// # Example
///
/// ```no_run
/// use koppeltaal_auth::{ClientCredentials, RefreshPolicy, TokenCell};
///
/// # async fn run(source: ClientCredentials) -> Result<(), koppeltaal_auth::Error> {
/// let cell = TokenCell::new(source, RefreshPolicy::default());
/// cell.ready().await?; // fail readiness until the first token arrives
/// let token = cell.token().await?;
/// let header = token.value(); // `Bearer ...`, marked sensitive
/// # let _ = header;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenCell {
    shared: Arc<Shared>,
}

/// What every handle on one cell shares.
struct Shared {
    /// The fast path's per-thread copies of `current` (see [`slots`]); a cache of it that the
    /// cell clears whenever `current` changes.
    slots: slots::Slots,
    /// The link handed out with a token that no slot holds (a count shared by the threads
    /// whose slot is busy).
    link: CellLink,
    current: ArcSwapOption<CachedToken>,
    /// Set while the cell should have a background refresher and none runs: the next use starts
    /// one (see [`refresher`]). Always false with background refresh off.
    needs_refresher: AtomicBool,
    /// Set while a wanted refresher waits for a runtime with timers (see [`refresher`]).
    refresher_parked: AtomicBool,
    /// Nanoseconds after `epoch` before which the fast path does not try to start a refresh:
    /// while one runs, the instant it may have stalled; the end of the backoff after a failure. Saves the fast path a
    /// lock while a token is stale. A hint only: callers that need a token always take the lock.
    quiet_until: AtomicU64,
    epoch: Instant,
    source: Box<dyn TokenSource>,
    /// Shared with the task that releases a lease its attempt left held (see `shared_fetch`).
    store: Option<(Arc<dyn TokenStore>, StorePolicy)>,
    policy: RefreshPolicy,
    sched: Mutex<Sched>,
    /// Wakes the background refresher when the schedule changes or the cell is dropped.
    wake: Arc<Notify>,
    /// Wakes every caller waiting out a backoff when a token is installed (a late one, of a
    /// flight given up on).
    installed: Notify,
    counters: Counters,
    /// Which runtimes have timers, as far as the cell has seen (see [`runtime`]).
    runtimes: runtime::Runtimes,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the background refresher notice that the last handle is gone.
        self.wake.notify_one();
    }
}

impl TokenCell {
    /// A cell that gets its tokens from `source`. The first token is fetched on first use (or by
    /// [`ready`](Self::ready)).
    pub fn new(source: impl TokenSource, policy: RefreshPolicy) -> Self {
        Self::build(Box::new(source), policy, None)
    }

    /// A cell that shares its token with other instances through `store` (see
    /// [`TokenStore`](crate::store::TokenStore)): at a refresh point one instance fetches and the
    /// others take its token from the store; when the store fails, the cell fetches on its own.
    pub fn with_store(
        source: impl TokenSource,
        policy: RefreshPolicy,
        store: impl TokenStore,
        store_policy: StorePolicy,
    ) -> Self {
        Self::build(
            Box::new(source),
            policy,
            Some((Box::new(store), store_policy)),
        )
    }

    pub(crate) fn build(
        source: Box<dyn TokenSource>,
        policy: RefreshPolicy,
        store: Option<(Box<dyn TokenStore>, StorePolicy)>,
    ) -> Self {
        let cell = Self {
            shared: Arc::new_cyclic(|me| Shared {
                slots: slots::Slots::new(slots::slot_count()),
                link: CellLink::new(me.clone()),
                current: ArcSwapOption::empty(),
                needs_refresher: AtomicBool::new(policy.background_refresh),
                refresher_parked: AtomicBool::new(false),
                quiet_until: AtomicU64::new(0),
                epoch: Instant::now(),
                source,
                store: store.map(|(store, policy)| (Arc::from(store), policy)),
                policy,
                sched: Mutex::new(Sched::default()),
                wake: Arc::new(Notify::new()),
                installed: Notify::new(),
                counters: Counters::default(),
                runtimes: runtime::Runtimes::default(),
            }),
        };
        cell.shared.ensure_refresher();
        cell
    }

    /// The token, if one is usable now. Never waits (the thread's slot is taken with a
    /// try-lock: a busy one is passed by); allocates only the first time this thread hands out
    /// this token (its own copy, so that threads share no count). Starts one refresh (without
    /// waiting for it, and only inside a tokio runtime) when the token is past its refresh
    /// point. Without a usable token it returns `None`; [`token`](Self::token) then fetches one.
    #[must_use]
    #[inline]
    pub fn current(&self) -> Option<TokenHeader> {
        self.shared.hand_out(|header, _| header.clone())
    }

    /// [`current`](Self::current), with a link to the cell for the request's response future
    /// (should the server reject the token).
    #[inline]
    pub(crate) fn current_linked(&self) -> Option<(TokenHeader, CellLink)> {
        self.shared
            .hand_out(|header, link| (header.clone(), link.clone()))
    }

    /// A usable token: the current one, or the outcome of the refresh in flight (started if
    /// needed).
    ///
    /// # Errors
    ///
    /// The error of the failed refresh attempt (all waiters of one attempt get the same one), the
    /// last failure while the cell backs off, [`ErrorKind::WaitTimeout`] after the policy's wait
    /// timeout, or [`ErrorKind::NoRuntime`] when a token must be fetched outside a tokio runtime.
    ///
    /// [`ErrorKind::WaitTimeout`]: crate::ErrorKind::WaitTimeout
    /// [`ErrorKind::NoRuntime`]: crate::ErrorKind::NoRuntime
    pub async fn token(&self) -> Result<TokenHeader, Error> {
        match self.current() {
            Some(token) => Ok(token),
            None => self.shared.wait_for(0).await.map(|usable| usable.header),
        }
    }

    /// The current [`AccessToken`] itself (for callers that need the token string), waiting as
    /// [`token`](Self::token) does.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn access_token(&self) -> Result<AccessToken, Error> {
        // For its side effects: a refresh when one is due.
        let _ = self.current();
        let usable = match self.shared.usable(Instant::now(), 0) {
            Some(usable) => usable,
            None => self.shared.wait_for(0).await?,
        };
        Ok(usable.token)
    }

    /// Fetches the first token if there is none; resolves when a usable token is there. For
    /// readiness checks.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn ready(&self) -> Result<(), Error> {
        self.token().await.map(drop)
    }

    /// Reports that the server rejected (`401`) the token of `generation`. If it is still the
    /// current token, it is dropped and a renewal starts; for any older generation nothing
    /// happens. Returns whether the token was dropped.
    ///
    /// A token younger than the policy's young-token age (5 s) that is rejected right after a
    /// renewal points to a cause other than expiry: its renewal waits out a backoff, and
    /// meanwhile [`current`](Self::current) and [`token`](Self::token) still hand it out (the
    /// server may refuse one request, not the token), while [`renewed`](Self::renewed) waits
    /// for its successor. Returns `true` then too; a later call for it returns `false`.
    pub fn invalidate(&self, generation: u64) -> bool {
        let now = Instant::now();
        if !self.shared.drop_rejected(now, generation) {
            return false;
        }
        self.shared.refresh_soon(now, Reason::Empty);
        true
    }

    /// [`invalidate`](Self::invalidate)s `generation` and waits for a usable token of a later
    /// generation (the renewal, or one another caller already got). A generation this cell has
    /// not handed out yet counts as its latest: the current token is kept, and one renewal
    /// serves the call.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn renewed(&self, generation: u64) -> Result<TokenHeader, Error> {
        self.invalidate(generation);
        self.shared
            .wait_for(generation)
            .await
            .map(|usable| usable.header)
    }

    /// Reports that a request with the token of `generation` was accepted after a renewal, so
    /// that the next rejection is renewed without delay.
    pub fn confirm(&self, generation: u64) {
        self.shared.confirm(generation);
    }

    /// The policy.
    pub fn policy(&self) -> &RefreshPolicy {
        &self.shared.policy
    }

    /// A handle that does not keep the cell alive.
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakCell {
        WeakCell(Arc::downgrade(&self.shared))
    }
}

/// A [`TokenCell`] that is not kept alive by this handle.
#[derive(Clone)]
#[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
pub(crate) struct WeakCell(Weak<Shared>);

#[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
impl WeakCell {
    /// The cell, if any handle on it is left.
    pub(crate) fn upgrade(&self) -> Option<TokenCell> {
        self.0.upgrade().map(|shared| TokenCell { shared })
    }
}

impl fmt::Debug for TokenCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCell")
            .field("stats", &self.stats())
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `at` as nanoseconds after the cell's epoch (0 before it, `u64::MAX` centuries on).
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The token handed out at `now`, if it is of a generation after `after`.
    fn usable(&self, now: Instant, after: u64) -> Option<Usable> {
        self.current.load().as_ref()?.usable_at(now, after)
    }
}
