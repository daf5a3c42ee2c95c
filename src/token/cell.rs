//! `TokenCell`: the shared token behind every request.
//!
//! Reads are one arc-swap load. Refreshes are single-flight and run on a spawned task (or on the
//! background refresher's own task, when it starts them), so a dropped caller never cancels one;
//! every waiter of an attempt gets its outcome. A guard resets
//! the in-flight state whatever way the attempt ends (success, error, panic, cancellation).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::policy::RefreshPolicy;
use super::shared_fetch::{self, Via};
use super::{AccessToken, TokenSource};
use crate::error::{Error, ErrorKind};
use crate::store::{StorePolicy, TokenStore};

/// The shared, self-refreshing access token of one client at one token endpoint.
///
/// Built from any [`TokenSource`] and a [`RefreshPolicy`]; cheap to clone (clones share the token).
///
/// - [`current`](Self::current) is the fast path: one lock-free load, no allocation, no
///   `.await`. It returns the token while it is usable and, once the token is past its refresh
///   point, starts one background refresh without waiting for it.
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
/// never handed out in its last `min(10 s, 10% L)`.
///
/// # Failures
///
/// A failed refresh while the token is valid changes nothing for callers: the token is served
/// until its margin while refreshes are retried with exponential backoff (200 ms to 30 s, with
/// jitter, `Retry-After` honoured; permanent errors at 30 s). Without a usable token, callers get
/// the error of the last attempt (see [`Error::is_transient`]); no request is ever given an
/// expired token. A refresh that panics or is cancelled leaves the cell able to refresh again.
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

/// A usable token as the cell hands it out: the ready `Authorization` value and its generation.
///
/// Cloning bumps reference counts only.
#[derive(Clone)]
pub struct TokenHeader {
    value: HeaderValue,
    generation: u64,
}

impl TokenHeader {
    /// `Bearer <token>`, marked sensitive.
    #[must_use]
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    /// Takes the header value.
    #[must_use]
    pub fn into_value(self) -> HeaderValue {
        self.value
    }

    /// The token generation: 1 for the cell's first token, one more for every renewal. Pass it to
    /// [`TokenCell::invalidate`] when the server rejects the token.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for TokenHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenHeader")
            .field("value", &"[redacted]")
            .field("generation", &self.generation)
            .finish()
    }
}

/// Counters of a [`TokenCell`]; see [`TokenCell::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CellStats {
    /// Token requests that produced a token.
    pub fetches_ok: u64,
    /// Token requests that failed.
    pub fetches_failed: u64,
    /// Calls that found no usable token and had to wait (or fail).
    pub waits: u64,
    /// Tokens dropped because the server rejected them (one per generation at most).
    pub invalidations: u64,
    /// Generation of the current token; 0 before the first.
    pub generation: u64,
    /// Time until the current token expires, if there is one.
    pub time_to_expiry: Option<Duration>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// Tokens taken from the shared store (fetched by another instance).
    pub adopted_from_store: u64,
    /// Refreshes that fetched alone because the shared store was unavailable.
    pub store_unavailable: u64,
}

/// A token in the cell, with the instants that govern it.
struct CachedToken {
    token: AccessToken,
    generation: u64,
    refresh_at: Instant,
    usable_until: Instant,
    /// True while the background refresher is responsible for this token and its refresh point
    /// has not come: the fast path may then skip reading the clock (a clock read is a large part
    /// of its cost). The refresher clears it at the refresh point, and when it stops; from then on
    /// every use checks the clock against the expiry margin. The margin is at least 40% of the
    /// lifetime (20 s for long tokens) after the refresh point, so only a timer that late could
    /// let a token be handed out inside its margin.
    clock_free: AtomicBool,
    /// The token as services that have no copy of their own hand it out (see [`TokenReader`]).
    local: LocalToken,
}

impl CachedToken {
    #[inline]
    fn header(&self) -> TokenHeader {
        TokenHeader {
            value: self.token.header_value().clone(),
            generation: self.generation,
        }
    }
}

type Outcome = Result<(), Error>;
type Flight = watch::Receiver<Option<Outcome>>;

struct Shared {
    /// The cell's key in [`CELLS`].
    id: u64,
    current: ArcSwapOption<CachedToken>,
    source: Box<dyn TokenSource>,
    store: Option<(Box<dyn TokenStore>, StorePolicy)>,
    policy: RefreshPolicy,
    sched: Mutex<Sched>,
    /// Nanoseconds after `epoch` before which the fast path does not try to start a refresh:
    /// `u64::MAX` while one runs, the end of the backoff after a failure. Saves the fast path a
    /// lock while a token is stale.
    quiet_until: AtomicU64,
    epoch: Instant,
    /// Wakes the background refresher when the schedule changes or the cell is dropped.
    wake: Arc<Notify>,
    background_started: AtomicBool,
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
    waits: AtomicU64,
    invalidations: AtomicU64,
    adopted: AtomicU64,
    store_unavailable: AtomicU64,
}

#[derive(Default)]
struct Sched {
    flight: Option<Flight>,
    failures: u32,
    not_before: Option<Instant>,
    last_error: Option<Error>,
    young_rejections: u32,
    generation: u64,
    /// SHA-256 of the token the server last rejected, so that it is never taken back from a
    /// shared store.
    rejected: Option<[u8; 32]>,
}

/// Why a refresh starts (for tracing).
#[derive(Clone, Copy, Debug)]
enum Reason {
    Empty,
    Proactive,
    Retry,
}

enum Kick {
    /// Nothing to do: a token of the wanted kind was installed meanwhile.
    Ready,
    /// A refresh is in flight; its outcome arrives on the receiver.
    Running(Flight),
    /// No runtime to spawn on: the caller runs the refresh itself.
    RunHere(watch::Sender<Option<Outcome>>, Flight),
    /// No refresh before `until`; `error` is the last failure, when that is the reason.
    Quiet {
        until: Instant,
        error: Option<Error>,
    },
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the background refresher notice that the last handle is gone.
        self.wake.notify_one();
        // (The entry is dropped after the registry's lock is released.)
        let entry = cells().remove(&self.id);
        drop(entry);
    }
}

/// Every live cell by id. A response future keeps the id of the cell its token came from rather
/// than a counted reference to it (a reference count is an atomic write per request, shared by
/// every thread); only after a `401` does it look the cell up.
static CELLS: Mutex<BTreeMap<u64, Weak<Shared>>> = Mutex::new(BTreeMap::new());

/// Ids are never reused, so a stale id finds nothing rather than another cell.
static NEXT_CELL_ID: AtomicU64 = AtomicU64::new(1);

fn cells() -> MutexGuard<'static, BTreeMap<u64, Weak<Shared>>> {
    CELLS.lock().unwrap_or_else(PoisonError::into_inner)
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
        let id = NEXT_CELL_ID.fetch_add(1, Ordering::Relaxed);
        let cell = Self {
            shared: Arc::new_cyclic(|me| {
                cells().insert(id, me.clone());
                Shared {
                    id,
                    current: ArcSwapOption::empty(),
                    source,
                    store,
                    policy,
                    sched: Mutex::new(Sched::default()),
                    quiet_until: AtomicU64::new(0),
                    epoch: Instant::now(),
                    wake: Arc::new(Notify::new()),
                    background_started: AtomicBool::new(false),
                    fetches_ok: AtomicU64::new(0),
                    fetches_failed: AtomicU64::new(0),
                    waits: AtomicU64::new(0),
                    invalidations: AtomicU64::new(0),
                    adopted: AtomicU64::new(0),
                    store_unavailable: AtomicU64::new(0),
                }
            }),
        };
        cell.shared.ensure_background();
        cell
    }

    /// The token, if one is usable now. Never waits, locks or allocates; starts one background
    /// refresh when the token is past its refresh point.
    #[must_use]
    #[inline]
    pub fn current(&self) -> Option<TokenHeader> {
        let guard = self.shared.current.load();
        let cached = guard.as_ref()?;
        if cached.clock_free.load(Ordering::Relaxed) {
            return Some(cached.header());
        }
        let now = Instant::now();
        if now >= cached.usable_until {
            return None;
        }
        let header = cached.header();
        if now >= cached.refresh_at {
            drop(guard);
            self.shared.refresh_soon(now, Reason::Proactive, 0);
        }
        Some(header)
    }

    /// A usable token: the current one, or the outcome of the refresh in flight (started if
    /// needed).
    ///
    /// # Errors
    ///
    /// The error of the failed refresh attempt (all waiters of one attempt get the same one), the
    /// last failure while the cell backs off, or [`ErrorKind::WaitTimeout`] after the policy's
    /// wait timeout.
    pub async fn token(&self) -> Result<TokenHeader, Error> {
        match self.current() {
            Some(token) => Ok(token),
            None => self.shared.wait_for_token(0).await,
        }
    }

    /// The current [`AccessToken`] itself (for callers that need the token string), waiting as
    /// [`token`](Self::token) does.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn access_token(&self) -> Result<AccessToken, Error> {
        loop {
            let header = self.token().await?;
            let guard = self.shared.current.load();
            if let Some(cached) = guard.as_ref().filter(|c| c.generation == header.generation) {
                return Ok(cached.token.clone());
            }
            // Replaced in between: take whatever is usable now.
        }
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
    /// renewal points to a cause other than expiry: its renewal waits out a backoff.
    pub fn invalidate(&self, generation: u64) -> bool {
        let now = Instant::now();
        if !self.shared.drop_rejected(now, generation) {
            return false;
        }
        self.shared.refresh_soon(now, Reason::Empty, generation);
        true
    }

    /// [`invalidate`](Self::invalidate)s `generation` and waits for a usable token of a later
    /// generation (the renewal, or one another caller already got).
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn renewed(&self, generation: u64) -> Result<TokenHeader, Error> {
        self.invalidate(generation);
        self.shared.wait_for_token(generation).await
    }

    /// Reports that a request with the token of `generation` was accepted after a renewal, so
    /// that the next rejection is renewed without delay.
    pub fn confirm(&self, generation: u64) {
        let mut sched = self.shared.lock();
        if sched.generation == generation {
            sched.young_rejections = 0;
        }
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> CellStats {
        let shared = &*self.shared;
        let consecutive_failures = shared.lock().failures;
        let guard = shared.current.load();
        let now = Instant::now();
        CellStats {
            fetches_ok: shared.fetches_ok.load(Ordering::Relaxed),
            fetches_failed: shared.fetches_failed.load(Ordering::Relaxed),
            waits: shared.waits.load(Ordering::Relaxed),
            invalidations: shared.invalidations.load(Ordering::Relaxed),
            generation: guard.as_ref().map_or(0, |cached| cached.generation),
            time_to_expiry: guard
                .as_ref()
                .map(|cached| cached.token.expires_at().saturating_duration_since(now)),
            consecutive_failures,
            adopted_from_store: shared.adopted.load(Ordering::Relaxed),
            store_unavailable: shared.store_unavailable.load(Ordering::Relaxed),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RefreshPolicy {
        &self.shared.policy
    }

    /// The live cell with `id` (a [`LocalToken`]'s), if any.
    pub(crate) fn by_id(id: u64) -> Option<Self> {
        let weak = cells().get(&id).cloned()?;
        // Upgraded (and so possibly dropped again) outside the registry's lock.
        weak.upgrade().map(|shared| Self { shared })
    }
}

/// A per-service view of a [`TokenCell`] for the layer's fast path: it keeps the last token it
/// saw, and checks with one relaxed atomic load that the cell still holds that token (arc-swap's
/// `Cache`), instead of a full arc-swap load. Behaves as [`TokenCell::current`].
///
/// From its second call on, a reader hands the token out as a [`LocalToken`] of its own (one
/// copy per token), so that services used on different threads do not all count references on
/// one header value: under contention such shared counts are most of what a token holder costs.
/// (The response future keeps only the cell's id, see [`TokenCell::by_id`], for the same
/// reason.) A service's first call uses the cell's shared copy, so that a service cloned for one
/// call (`oneshot`) allocates nothing.
pub(crate) struct TokenReader {
    cache: arc_swap::Cache<CurrentRef, Option<Arc<CachedToken>>>,
    /// This reader's own copy of the token, once it has made one.
    local: Option<LocalToken>,
    /// Whether this reader has handed out a token.
    used: bool,
}

impl Clone for TokenReader {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            local: None,
            used: false,
        }
    }
}

/// A token as [`TokenReader`] hands it out: the header value, its generation and the id of its
/// cell (see [`TokenCell::by_id`]).
pub(crate) struct LocalToken {
    value: HeaderValue,
    generation: u64,
    cell: u64,
}

impl LocalToken {
    /// A copy for one service, with a header value of its own.
    fn copy_of(cached: &CachedToken) -> Self {
        let shared = cached.token.header_value();
        // A deep copy: a header value of its own, with its own reference count.
        let value = HeaderValue::from_bytes(shared.as_bytes()).map_or_else(
            |_| shared.clone(),
            |mut value| {
                value.set_sensitive(true);
                value
            },
        );
        // Share the new bytes now, so that clones on the fast path never allocate.
        drop(value.clone());
        Self {
            value,
            generation: cached.generation,
            cell: cached.local.cell,
        }
    }

    /// The `Authorization` value.
    #[inline]
    pub(crate) fn value(&self) -> HeaderValue {
        self.value.clone()
    }

    /// The token's generation.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The id of the cell the token came from.
    #[inline]
    pub(crate) fn cell(&self) -> u64 {
        self.cell
    }
}

impl fmt::Debug for LocalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalToken")
            .field("value", &"[redacted]")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Lets `arc_swap::Cache` reach the cell's token slot.
#[derive(Clone)]
struct CurrentRef(Arc<Shared>);

impl std::ops::Deref for CurrentRef {
    type Target = ArcSwapOption<CachedToken>;

    fn deref(&self) -> &Self::Target {
        &self.0.current
    }
}

impl TokenReader {
    pub(crate) fn new(cell: &TokenCell) -> Self {
        Self {
            cache: arc_swap::Cache::new(CurrentRef(Arc::clone(&cell.shared))),
            local: None,
            used: false,
        }
    }

    /// As [`TokenCell::current`], the token as this reader's [`LocalToken`]. `cell` is the cell
    /// the reader was made from (passed in rather than kept, so that cloning a reader counts one
    /// reference less on the cell).
    #[inline]
    pub(crate) fn current(&mut self, cell: &TokenCell) -> Option<&LocalToken> {
        let cached = self.cache.load().as_ref()?;
        if !cached.clock_free.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= cached.usable_until {
                return None;
            }
            if now >= cached.refresh_at {
                cell.shared.refresh_soon(now, Reason::Proactive, 0);
            }
        }
        let own = matches!(&self.local, Some(local) if local.generation == cached.generation);
        if !own {
            if !std::mem::replace(&mut self.used, true) {
                return Some(&cached.local);
            }
            self.local = Some(LocalToken::copy_of(cached));
        }
        self.local.as_ref()
    }
}

impl fmt::Debug for TokenReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReader").finish_non_exhaustive()
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

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn set_quiet(&self, sched: &Sched) {
        let until = if sched.flight.is_some() {
            u64::MAX
        } else {
            sched.not_before.map_or(0, |at| self.nanos(at))
        };
        self.quiet_until.store(until, Ordering::Release);
    }

    /// A usable token of a generation after `after`.
    fn usable_after(&self, now: Instant, after: u64) -> Option<TokenHeader> {
        let guard = self.current.load();
        let cached = guard.as_ref()?;
        (cached.generation > after && now < cached.usable_until).then(|| cached.header())
    }

    /// Starts a refresh from a synchronous caller if none runs and no backoff holds it back.
    fn refresh_soon(self: &Arc<Self>, now: Instant, reason: Reason, after: u64) {
        if self.nanos(now) < self.quiet_until.load(Ordering::Acquire) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            // Nothing to spawn on; the next waiting caller runs the refresh.
            return;
        }
        let _ = self.kick(now, reason, after);
    }

    /// Joins the refresh in flight, or starts one (spawned when a runtime is present), unless
    /// the backoff says not yet, or the token the caller lacked (usable, of a generation after
    /// `after`, and for a proactive refresh not yet stale) was installed since it looked.
    fn kick(self: &Arc<Self>, now: Instant, reason: Reason, after: u64) -> Kick {
        self.kick_with(now, reason, after, true)
    }

    /// As [`kick`](Self::kick); with `spawn` false a new refresh is never spawned but handed back
    /// as [`Kick::RunHere`] for the caller to run.
    fn kick_with(self: &Arc<Self>, now: Instant, reason: Reason, after: u64, spawn: bool) -> Kick {
        let tx = {
            let mut sched = self.lock();
            // Tokens are installed under this lock, so this check cannot race with one.
            let satisfied = self.current.load().as_ref().is_some_and(|cached| {
                cached.generation > after
                    && now < cached.usable_until
                    && (!matches!(reason, Reason::Proactive) || now < cached.refresh_at)
            });
            if satisfied {
                return Kick::Ready;
            }
            if let Some(flight) = &sched.flight {
                return Kick::Running(flight.clone());
            }
            if let Some(until) = sched.not_before.filter(|until| now < *until) {
                return Kick::Quiet {
                    until,
                    error: sched.last_error.clone(),
                };
            }
            let (tx, rx) = watch::channel(None);
            sched.flight = Some(rx);
            self.set_quiet(&sched);
            tx
        };
        let rx = tx.subscribe();
        // Spawned outside the lock: a runtime shutting down drops the task at once, and the
        // flight guard's drop takes the lock.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if spawn => {
                runtime.spawn(run_flight(Arc::clone(self), tx, reason));
                Kick::Running(rx)
            }
            _ => Kick::RunHere(tx, rx),
        }
    }

    async fn wait_for_token(self: &Arc<Self>, after: u64) -> Result<TokenHeader, Error> {
        self.ensure_background();
        self.waits.fetch_add(1, Ordering::Relaxed);
        // Without a tokio runtime there are no timers: a custom source can still be driven, but
        // waits are not bounded and backoffs are not waited out.
        let timers = tokio::runtime::Handle::try_current().is_ok();
        let deadline = Instant::now() + self.policy.wait_timeout;
        let timed_out = || {
            Error::new(
                ErrorKind::WaitTimeout,
                format!("no token within {:?}", self.policy.wait_timeout),
            )
        };
        loop {
            let now = Instant::now();
            if let Some(token) = self.usable_after(now, after) {
                return Ok(token);
            }
            let mut flight = match self.kick(now, Reason::Empty, after) {
                Kick::Ready => continue,
                Kick::Running(flight) => flight,
                Kick::RunHere(tx, flight) => {
                    run_flight(Arc::clone(self), tx, Reason::Empty).await;
                    flight
                }
                Kick::Quiet {
                    error: Some(error), ..
                } => return Err(error),
                Kick::Quiet { until, error: None } => {
                    if until > deadline || !timers {
                        return Err(timed_out());
                    }
                    tokio::time::sleep_until(until).await;
                    continue;
                }
            };
            let outcome = if timers {
                match tokio::time::timeout_at(deadline, outcome_of(&mut flight)).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(timed_out()),
                }
            } else {
                outcome_of(&mut flight).await
            };
            // `None`: the sender went away without an outcome. The flight guard always sends, so
            // this cannot happen; if it did, looking again is the right thing.
            if let Some(Err(error)) = outcome {
                return Err(error);
            }
        }
    }

    /// Drops the current token if it is of `generation`. Schedules a backoff when young tokens
    /// keep being rejected.
    fn drop_rejected(&self, now: Instant, generation: u64) -> bool {
        let mut sched = self.lock();
        let guard = self.current.load();
        let Some(cached) = guard.as_ref().filter(|c| c.generation == generation) else {
            return false;
        };
        let age = now.saturating_duration_since(cached.token.received_at());
        let young = age < self.policy.young_token_age;
        if young {
            sched.young_rejections += 1;
        } else {
            sched.young_rejections = 0;
        }
        if sched.young_rejections >= 2 {
            let delay = self
                .policy
                .exponential(sched.young_rejections - 1, random_fraction());
            let until = now + delay;
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
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.set_quiet(&sched);
        drop(sched);
        self.wake.notify_one();
        true
    }

    /// Records the end of an attempt: installs the token or schedules the retry, then clears the
    /// flight. Runs exactly once per attempt (see [`FlightGuard`]).
    fn finish(&self, result: Result<AccessToken, Error>, started: Instant) -> Outcome {
        let now = Instant::now();
        let elapsed_ms = now.saturating_duration_since(started).as_millis() as u64;
        let mut sched = self.lock();
        sched.flight = None;
        let result = result.and_then(|token| self.install(&mut sched, token, now));
        match &result {
            Ok(()) => {
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                sched.failures = 0;
                sched.last_error = None;
                sched.not_before = sched.not_before.filter(|until| now < *until);
                tracing::debug!(generation = sched.generation, elapsed_ms, "token refreshed");
            }
            Err(error) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                sched.failures = sched.failures.saturating_add(1);
                let delay = self
                    .policy
                    .backoff_for(sched.failures, error, random_fraction());
                sched.not_before = Some(now + delay);
                sched.last_error = Some(error.clone());
                let valid = self
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|c| now < c.usable_until);
                tracing::warn!(
                    error = %error,
                    failures = sched.failures,
                    retry_in_ms = delay.as_millis() as u64,
                    serving_current_token = valid,
                    elapsed_ms,
                    "token refresh failed"
                );
            }
        }
        self.set_quiet(&sched);
        drop(sched);
        self.wake.notify_one();
        result
    }

    fn install(&self, sched: &mut Sched, token: AccessToken, now: Instant) -> Result<(), Error> {
        let lifetime = token.lifetime();
        let expires_at = token.expires_at();
        let usable_until = expires_at - self.policy.expiry_margin_for(lifetime);
        if now >= usable_until {
            return Err(Error::new(
                ErrorKind::InvalidTokenResponse,
                format!("the token (lifetime {lifetime:?}) expired before it could be used"),
            ));
        }
        let ahead = self.policy.refresh_ahead_for(lifetime, random_fraction());
        let refresh_at = expires_at.checked_sub(ahead).unwrap_or(token.received_at());
        // Share the header bytes now, so that clones on the fast path never allocate.
        drop(token.header_value().clone());
        sched.generation += 1;
        tracing::debug!(
            generation = sched.generation,
            lifetime_s = lifetime.as_secs_f64(),
            refresh_in_s = refresh_at.saturating_duration_since(now).as_secs_f64(),
            "new token"
        );
        // Read under the lock that `BackgroundGuard` takes too: a token is never left clock-free
        // by a refresher that is gone.
        let clock_free = self.background_started.load(Ordering::Acquire);
        let local = LocalToken {
            value: token.header_value().clone(),
            generation: sched.generation,
            cell: self.id,
        };
        self.current.store(Some(Arc::new(CachedToken {
            token,
            generation: sched.generation,
            refresh_at,
            usable_until,
            clock_free: AtomicBool::new(clock_free),
            local,
        })));
        Ok(())
    }

    /// A refresh through the shared store: counts how it went.
    async fn refresh_through(
        &self,
        store: &dyn TokenStore,
        store_policy: StorePolicy,
    ) -> Result<AccessToken, Error> {
        let now = Instant::now();
        let current = self.current.load().as_ref().map(|cached| {
            (
                shared_fetch::digest(cached.token.as_str()),
                std::time::SystemTime::now()
                    + cached.token.expires_at().saturating_duration_since(now),
            )
        });
        let rejected = self.lock().rejected;
        let context = shared_fetch::Context {
            source: &*self.source,
            store,
            store_policy,
            policy: &self.policy,
            current,
            rejected,
        };
        let (result, via) = context.refresh().await;
        match via {
            Via::Adopted => {
                self.adopted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("took the token another instance published");
            }
            Via::Fallback => {
                self.store_unavailable.fetch_add(1, Ordering::Relaxed);
            }
            Via::Fetched => {}
        }
        result
    }

    fn ensure_background(self: &Arc<Self>) {
        if !self.policy.background_refresh || self.background_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.background_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(background(Arc::downgrade(self), Arc::clone(&self.wake)));
    }

    /// When the background refresher should act next: `None` to sleep until woken.
    fn background_due(&self) -> Option<(Instant, Reason)> {
        let sched = self.lock();
        if sched.flight.is_some() {
            return None;
        }
        let due = match self.current.load().as_ref() {
            Some(cached) => (cached.refresh_at, Reason::Proactive),
            // Failing without a token: keep retrying at the backoff pace, so recovery is
            // automatic.
            None if sched.last_error.is_some() => (Instant::now(), Reason::Retry),
            None => return None,
        };
        Some(match sched.not_before {
            Some(until) => (due.0.max(until), due.1),
            None => due,
        })
    }
}

/// The background refresher: sleeps until the refresh point, refreshes, repeats; holds only a
/// weak reference, so it ends when the last [`TokenCell`] is dropped.
async fn background(weak: Weak<Shared>, wake: Arc<Notify>) {
    tracing::trace!("background refresher started");
    // If the task is dropped (its runtime shut down) while the cell lives on, let the cell start
    // a new one on the runtime it is used from next.
    let _restart = BackgroundGuard(weak.clone());
    loop {
        let due = {
            let Some(shared) = weak.upgrade() else { break };
            let due = shared.background_due();
            if let Some((at, reason)) = due
                && at <= Instant::now()
            {
                // The refresh point: from here on, uses of the token check the clock.
                if let Some(cached) = shared.current.load().as_ref() {
                    cached.clock_free.store(false, Ordering::Relaxed);
                }
                // Run the refresh on this task rather than a spawned one: one task and two
                // wakeups less per refresh. Waiters and callers see it as any other flight.
                if let Kick::RunHere(tx, _) = shared.kick_with(Instant::now(), reason, 0, false) {
                    run_flight(shared, tx, reason).await;
                    continue;
                }
                None
            } else {
                due.map(|(at, _)| at)
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

struct BackgroundGuard(Weak<Shared>);

impl Drop for BackgroundGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            let _sched = shared.lock();
            shared.background_started.store(false, Ordering::Release);
            // Nobody will mark the current token stale any more: check the clock from now on.
            if let Some(cached) = shared.current.load().as_ref() {
                cached.clock_free.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// The outcome of a flight, once it has one (`None` if its sender vanished).
async fn outcome_of(flight: &mut Flight) -> Option<Outcome> {
    flight
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|outcome| outcome.clone())
}

/// Runs one attempt against the source and reports its outcome.
async fn run_flight(shared: Arc<Shared>, tx: watch::Sender<Option<Outcome>>, reason: Reason) {
    let mut guard = FlightGuard {
        shared: Arc::clone(&shared),
        tx: Some(tx),
        started: Instant::now(),
    };
    let span = tracing::debug_span!("token_refresh", reason = ?reason);
    let result = async {
        tracing::debug!("requesting a new token");
        match &shared.store {
            None => shared.source.fetch().await,
            Some((store, store_policy)) => shared.refresh_through(&**store, *store_policy).await,
        }
    }
    .instrument(span)
    .await;
    guard.complete(result);
}

/// Reports the outcome of an attempt exactly once: on completion, or from `drop` when the attempt
/// panicked or was cancelled, so the cell never stays "refreshing".
struct FlightGuard {
    shared: Arc<Shared>,
    tx: Option<watch::Sender<Option<Outcome>>>,
    started: Instant,
}

impl FlightGuard {
    fn complete(&mut self, result: Result<AccessToken, Error>) {
        if let Some(tx) = self.tx.take() {
            let outcome = self.shared.finish(result, self.started);
            tx.send_replace(Some(outcome));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.complete(Err(Error::new(
                ErrorKind::RefreshAborted,
                "the token source panicked or its task was cancelled",
            )));
        }
    }
}

/// A uniform draw from `0.0..1.0` for jitter.
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeTokenSource;

    #[tokio::test]
    async fn a_cell_is_found_by_id_while_it_lives_and_ids_are_not_reused() {
        let cell = TokenCell::new(FakeTokenSource::new(), RefreshPolicy::default());
        let id = cell.shared.id;
        let found = TokenCell::by_id(id).expect("a live cell");
        assert!(Arc::ptr_eq(&found.shared, &cell.shared));
        drop((found, cell));
        assert!(TokenCell::by_id(id).is_none());
        let next = TokenCell::new(FakeTokenSource::new(), RefreshPolicy::default());
        assert!(next.shared.id > id);
        assert!(TokenCell::by_id(id).is_none());
    }
}
