//! `FakeTokenSource`: a scripted, gateable token source for deterministic tests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::token::{AccessToken, BoxFuture, TokenSource};

/// A [`TokenSource`] for tests: tokens on demand, scripted failures and panics, and a gate that
/// holds fetches until released. Works under tokio's paused clock.
///
/// Tokens are `fake-token-1`, `fake-token-2`, ... with the configured lifetime (300 s by
/// default), received at the instant the fetch completes.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use koppeltaal_auth::testing::FakeTokenSource;
/// use koppeltaal_auth::{RefreshPolicy, TokenCell};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(60));
/// let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
/// source.close_gate();
/// let waiting = tokio::spawn({
///     let cell = cell.clone();
///     async move { cell.token().await }
/// });
/// tokio::task::yield_now().await;
/// assert_eq!(source.fetches_started(), 1);
/// source.open_gate();
/// assert_eq!(waiting.await.unwrap().unwrap().generation(), 1);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct FakeTokenSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    gate: watch::Sender<bool>,
    started: AtomicU64,
    completed: AtomicU64,
}

#[derive(Debug)]
enum Step {
    Token(Duration),
    Stale(Duration, Duration),
    Fail(Error),
    Panic,
}

#[derive(Debug)]
struct State {
    lifetime: Duration,
    script: VecDeque<Step>,
    failing: Option<Error>,
    delay: Duration,
    started_at: Vec<Instant>,
    issued: u64,
}

impl Default for FakeTokenSource {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeTokenSource {
    /// A source that issues a 300 s token on every fetch, gate open.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    lifetime: Duration::from_secs(300),
                    script: VecDeque::new(),
                    failing: None,
                    delay: Duration::ZERO,
                    started_at: Vec::new(),
                    issued: 0,
                }),
                gate: watch::channel(true).0,
                started: AtomicU64::new(0),
                completed: AtomicU64::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the lifetime of unscripted tokens.
    #[must_use]
    pub fn with_lifetime(self, lifetime: Duration) -> Self {
        self.lock().lifetime = lifetime;
        self
    }

    /// Makes every fetch take `delay` (after the gate).
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Queues a token of `lifetime` for the next unscripted fetch.
    pub fn push_token(&self, lifetime: Duration) {
        self.lock().script.push_back(Step::Token(lifetime));
    }

    /// Queues a token of `lifetime` that is already `age` old when the fetch returns (a slow
    /// network, or a source measuring from when it sent the request).
    pub fn push_stale_token(&self, lifetime: Duration, age: Duration) {
        self.lock().script.push_back(Step::Stale(lifetime, age));
    }

    /// Queues a failure.
    pub fn push_error(&self, error: Error) {
        self.lock().script.push_back(Step::Fail(error));
    }

    /// Queues a panic inside `fetch`.
    pub fn push_panic(&self) {
        self.lock().script.push_back(Step::Panic);
    }

    /// Fails every unscripted fetch with `error` until [`heal`](Self::heal).
    pub fn fail_with(&self, error: Error) {
        self.lock().failing = Some(error);
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.lock().failing = None;
    }

    /// Holds every fetch (started or new) at the gate until [`open_gate`](Self::open_gate).
    pub fn close_gate(&self) {
        self.inner.gate.send_replace(false);
    }

    /// Lets held and new fetches through.
    pub fn open_gate(&self) {
        self.inner.gate.send_replace(true);
    }

    /// Fetches started so far.
    #[must_use]
    pub fn fetches_started(&self) -> u64 {
        self.inner.started.load(Ordering::SeqCst)
    }

    /// Fetches that returned (a token or an error) so far.
    #[must_use]
    pub fn fetches_completed(&self) -> u64 {
        self.inner.completed.load(Ordering::SeqCst)
    }

    /// The instant each fetch started, oldest first.
    #[must_use]
    pub fn fetch_instants(&self) -> Vec<Instant> {
        self.lock().started_at.clone()
    }

    /// How many handles to this source exist (this one included): lets a test see that a cell
    /// holding a clone has been dropped.
    #[must_use]
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    async fn run(&self) -> Result<AccessToken, Error> {
        self.inner.started.fetch_add(1, Ordering::SeqCst);
        self.lock().started_at.push(Instant::now());
        let mut gate = self.inner.gate.subscribe();
        // The sender lives in `inner`, which `self` keeps alive.
        let _ = gate.wait_for(|open| *open).await;
        let delay = self.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let step = {
            let mut state = self.lock();
            match state.script.pop_front() {
                Some(step) => step,
                None => match &state.failing {
                    Some(error) => Step::Fail(error.clone()),
                    None => Step::Token(state.lifetime),
                },
            }
        };
        let _completed = Completed(&self.inner.completed);
        let token = |lifetime: Duration, age: Duration| {
            let number = {
                let mut state = self.lock();
                state.issued += 1;
                state.issued
            };
            let received_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            AccessToken::new(&format!("fake-token-{number}"), lifetime, received_at)
        };
        match step {
            Step::Token(lifetime) => token(lifetime, Duration::ZERO),
            Step::Stale(lifetime, age) => token(lifetime, age),
            Step::Fail(error) => Err(error),
            Step::Panic => panic!("FakeTokenSource: scripted panic"),
        }
    }
}

/// Counts a fetch as completed when it ends, panics included.
struct Completed<'a>(&'a AtomicU64);

impl Drop for Completed<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl TokenSource for FakeTokenSource {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(self.run())
    }
}
