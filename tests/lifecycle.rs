//! `TokenCell` across the lifecycles real programs put it through: a cell that outlives its
//! runtime, spans several in sequence, sits on an idle one (the `block_on` wrapper pattern), on
//! one whose workers are all blocked, under a clock that jumps, and with no runtime at all. The
//! guarantees: never an expired token, never a wedge (every wait ends by its timeout, and a
//! waiting thread burns no CPU), and the background refresher comes back on the runtime the cell
//! is used from next.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/runtimes.rs"]
mod runtimes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::token::BoxFuture;
use koppeltaal_auth::{AccessToken, Error, ErrorKind, RefreshPolicy, TokenCell, TokenHeader};
use koppeltaal_auth::{TokenSource, token::DEFAULT_WAIT_TIMEOUT};
use tokio::time::Instant;

use runtimes::{cpu_time_of_this_thread, paused_runtime, real_runtime, within};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A source that remembers when each of its tokens expires, so that every token handed out can
/// be checked against the clock.
#[derive(Clone)]
struct Recording {
    lifetime: Duration,
    state: Arc<Mutex<HashMap<String, Instant>>>,
    fetches: Arc<AtomicU64>,
}

impl Recording {
    fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            state: Arc::default(),
            fetches: Arc::default(),
        }
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Panics if `header` carries a token that has expired.
    fn assert_unexpired(&self, header: &TokenHeader) {
        let value = header.value().to_str().unwrap();
        let token = value.strip_prefix("Bearer ").unwrap();
        let expires_at = self.state.lock().unwrap()[token];
        let now = Instant::now();
        assert!(
            now < expires_at,
            "{token} handed out {:?} after it expired",
            now - expires_at
        );
    }
}

impl TokenSource for Recording {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async move {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("recorded-{n}");
            let now = Instant::now();
            self.state
                .lock()
                .unwrap()
                .insert(token.clone(), now + self.lifetime);
            AccessToken::new(&token, self.lifetime, now)
        })
    }
}

/// Finding 1: a refresh spawned on a runtime that is dropped before the task is ever polled.
#[test]
fn a_refresh_scheduled_on_a_runtime_dropped_before_it_ran_does_not_wedge_the_cell() {
    let source = FakeTokenSource::new();
    let policy = RefreshPolicy::default().wait_timeout(secs(2));
    let first = real_runtime();
    let cell = first.block_on(async {
        let cell = TokenCell::new(source.clone(), policy);
        cell.ready().await.unwrap();
        // Spawns the renewal, which this runtime never gets to poll.
        assert!(cell.invalidate(1));
        cell
    });
    drop(first);
    let result = within(secs(10), move || {
        let second = real_runtime();
        let before = cpu_time_of_this_thread();
        let started = std::time::Instant::now();
        let token = second.block_on(cell.token());
        (token, started.elapsed(), cpu_time_of_this_thread() - before)
    });
    let (token, waited, cpu) = result;
    assert_eq!(
        token.unwrap().generation(),
        2,
        "a fresh token on the next runtime"
    );
    assert!(waited < secs(2), "within the wait timeout: {waited:?}");
    assert!(cpu < ms(200), "no busy loop: {cpu:?} of CPU");
}

/// Finding 2: a cell built (and its refresher spawned) on a runtime that is dropped at once.
#[test]
fn a_cell_built_on_a_dropped_runtime_never_hands_out_an_expired_token() {
    let source = Recording::new(secs(2));
    let first = real_runtime();
    let cell = first.block_on(async { TokenCell::new(source.clone(), RefreshPolicy::default()) });
    drop(first);
    let second = paused_runtime();
    second.block_on(async {
        let token = cell.token().await.unwrap();
        source.assert_unexpired(&token);
        // Past the expiry, without yielding in between.
        tokio::time::advance(secs(3)).await;
        if let Some(token) = cell.current() {
            source.assert_unexpired(&token);
        }
        // The refresher runs again, on this runtime: a proactive refresh with nobody asking.
        let fetches = source.fetches();
        let token = cell.token().await.unwrap();
        source.assert_unexpired(&token);
        tokio::time::sleep(ms(1_100)).await;
        assert_eq!(
            source.fetches(),
            fetches + 2,
            "renewed after expiry, then refreshed ahead in the background"
        );
        source.assert_unexpired(&cell.current().unwrap());
    });
}

/// Finding 3: tokio's documented sync wrapper, a struct owning a current-thread runtime and
/// calling `block_on` per method, with the program doing other things in between. The
/// refresher's runtime is alive but not driven; over 10 token lifetimes no expired token.
#[test]
fn the_block_on_wrapper_pattern_never_hands_out_an_expired_token() {
    struct SyncClient {
        runtime: tokio::runtime::Runtime,
        cell: TokenCell,
    }
    impl SyncClient {
        fn token(&self) -> TokenHeader {
            self.runtime.block_on(self.cell.token()).unwrap()
        }
    }
    let lifetime = ms(300);
    let source = Recording::new(lifetime);
    let runtime = real_runtime();
    // A 120 ms margin (the default's 10% would be 30 ms): the check reads the clock again after
    // the cell did, and a loaded machine may deschedule the thread in between.
    let policy = RefreshPolicy::default().expiry_margin(ms(120), 0.4);
    let cell = runtime.block_on(async { TokenCell::new(source.clone(), policy) });
    let client = SyncClient { runtime, cell };
    let start = std::time::Instant::now();
    let mut pauses = [10u64, 90, 170, 260, 290, 310, 450, 40, 130, 220]
        .iter()
        .cycle();
    let mut uses = 0;
    while start.elapsed() < lifetime * 10 {
        let token = client.token();
        source.assert_unexpired(&token);
        uses += 1;
        // The program is busy elsewhere: the runtime is not driven.
        std::thread::sleep(ms(*pauses.next().unwrap()));
    }
    assert!(uses >= 15, "{uses}");
    assert!(source.fetches() >= 5, "{} fetches", source.fetches());
}

/// Finding 3: a clock that jumps by an hour, then a request before anything else runs.
#[test]
fn a_clock_jump_of_an_hour_never_hands_out_an_expired_token() {
    let source = Recording::new(secs(300));
    paused_runtime().block_on(async {
        let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
        source.assert_unexpired(&cell.token().await.unwrap());
        tokio::time::advance(secs(3_600)).await;
        assert!(
            cell.current().is_none(),
            "the old token expired an hour ago"
        );
        let token = cell.token().await.unwrap();
        source.assert_unexpired(&token);
        assert_eq!(token.generation(), 2);
    });
}

/// Finding 3: every worker of a multi-thread runtime blocked for longer than the token lives.
#[test]
fn a_runtime_with_every_worker_blocked_never_hands_out_an_expired_token() {
    let source = Recording::new(ms(400));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A 150 ms margin, for the same reason as above.
    let policy = RefreshPolicy::default().expiry_margin(ms(150), 0.4);
    let cell = runtime.block_on(async { TokenCell::new(source.clone(), policy) });
    runtime.block_on(cell.ready()).unwrap();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let cell = cell.clone();
            let source = source.clone();
            runtime.spawn(async move {
                // Blocks the worker (and with it the refresher's timers) past the expiry.
                std::thread::sleep(ms(600));
                if let Some(token) = cell.current() {
                    source.assert_unexpired(&token);
                }
                let token = cell.token().await.unwrap();
                source.assert_unexpired(&token);
            })
        })
        .collect();
    runtime.block_on(async {
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// Finding 1, as a test suite meets it: one `static` cell used by a sequence of runtimes (one
/// per `#[tokio::test]`), one of them dropped mid-refresh and one right after scheduling one.
#[test]
fn twenty_runtimes_in_sequence_share_one_static_cell() {
    static SOURCE: OnceLock<FakeTokenSource> = OnceLock::new();
    static CELL: OnceLock<TokenCell> = OnceLock::new();
    let source = SOURCE.get_or_init(|| FakeTokenSource::new().with_lifetime(secs(300)));
    let policy = RefreshPolicy::default().wait_timeout(secs(2));
    for round in 0..20 {
        let runtime = real_runtime();
        let cell = CELL.get_or_init(|| TokenCell::new(source.clone(), policy.clone()));
        let (token, waited) = within(secs(10), {
            let cell = cell.clone();
            move || {
                let started = std::time::Instant::now();
                let token = runtime.block_on(async {
                    let token = cell.token().await;
                    match round {
                        // A renewal is scheduled; the runtime ends before it runs.
                        7 => {
                            cell.invalidate(cell.current().unwrap().generation());
                        }
                        // The runtime ends while the renewal waits at the gate.
                        13 => {
                            source.close_gate();
                            let generation = cell.current().unwrap().generation();
                            // Requests with it were accepted: its rejection renews at once
                            // (rather than after the backoff for young tokens rejected again).
                            cell.confirm(generation);
                            cell.invalidate(generation);
                            let before = source.fetches_started();
                            while source.fetches_started() == before {
                                tokio::task::yield_now().await;
                            }
                        }
                        _ => {}
                    }
                    token
                });
                drop(runtime);
                source.open_gate();
                (token, started.elapsed())
            }
        });
        let token = token.unwrap_or_else(|err| panic!("round {round}: {err}"));
        assert!(token.generation() >= 1, "round {round}");
        assert!(waited < secs(2), "round {round}: waited {waited:?}");
    }
    // The first token; round 7's renewal (cut off before it fetched) done in round 8; round 13's
    // (cut off at the gate) done again in round 14.
    assert_eq!(source.fetches_started(), 4);
}

/// A renewal spawned on a runtime that stays alive but is never driven again: a caller on
/// another runtime gives up on it (its heartbeat stopped) and renews on its own runtime, well
/// within its wait timeout.
#[test]
fn a_refresh_stuck_on_an_idle_runtime_is_taken_over_by_the_next_runtime() {
    let source = FakeTokenSource::new();
    let idle = real_runtime();
    let cell = idle.block_on(async {
        let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
        cell.ready().await.unwrap();
        assert!(cell.invalidate(1));
        cell
    });
    // `idle` lives on, undriven.
    let (token, waited) = within(secs(10), move || {
        let other = paused_runtime();
        other.block_on(async {
            let started = Instant::now();
            let token = cell.token().await;
            (token, Instant::now() - started)
        })
    });
    assert_eq!(token.unwrap().generation(), 2);
    // 3 s without a heartbeat, then the backoff of one failed attempt (200 ms).
    assert!(waited >= secs(3) && waited <= ms(3_200), "{waited:?}");
    assert_eq!(source.fetches_started(), 2);
    drop(idle);
}

/// A refresh stuck on a runtime that lives on, never driven, does not keep the cell (and its
/// source, a private key) alive once the last handle is dropped.
#[test]
fn a_refresh_stuck_on_an_idle_runtime_does_not_keep_a_dropped_cell_alive() {
    let source = FakeTokenSource::new();
    let idle = real_runtime();
    idle.block_on(async {
        let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
        cell.ready().await.unwrap();
        assert!(cell.invalidate(1), "a renewal spawned here, never run");
    });
    assert_eq!(source.fetches_started(), 1);
    assert_eq!(source.handles(), 1, "only the test's own: the cell is gone");
    drop(idle);
}

/// Without any runtime the fast path still hands out the token; a caller that needs a new one
/// gets a clear error instead of a hang or a panic.
#[test]
fn without_a_runtime_the_token_is_served_and_a_fetch_is_a_clear_error() {
    let source = Recording::new(secs(300));
    let runtime = real_runtime();
    let cell = runtime.block_on(async {
        let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
        cell.ready().await.unwrap();
        cell
    });
    drop(runtime);
    source.assert_unexpired(&cell.current().unwrap());
    assert!(cell.invalidate(1));
    assert!(cell.current().is_none());
    let err = within(secs(5), move || block_on_without_tokio(cell.token())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoRuntime);
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

/// Waiting for a token that does not come costs no CPU.
#[test]
fn a_waiting_thread_burns_no_cpu() {
    let source = FakeTokenSource::new();
    source.close_gate();
    let (timed_out, cpu) = within(secs(10), move || {
        let runtime = real_runtime();
        let before = cpu_time_of_this_thread();
        let result = runtime.block_on(async {
            let cell = TokenCell::new(source, RefreshPolicy::default());
            tokio::time::timeout(secs(1), cell.token()).await
        });
        (result.is_err(), cpu_time_of_this_thread() - before)
    });
    assert!(timed_out, "still waiting after 1 s (the gate is closed)");
    assert!(cpu < ms(200), "{cpu:?} of CPU while waiting");
    assert_eq!(DEFAULT_WAIT_TIMEOUT, secs(30));
}

/// A single-future executor: no tokio anywhere.
fn block_on_without_tokio<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
