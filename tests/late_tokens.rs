//! Refreshes given up on (they stalled: their runtime idle or blocked) that end with a token
//! after all: the token is used, unless a token was rejected since; and callers waiting out the
//! backoff of the give-up are woken by it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::token::BoxFuture;
use koppeltaal_auth::{AccessToken, Error, RefreshPolicy, TokenCell, TokenSource};
use tokio::time::Instant;

use support::runtimes::{paused_runtime, real_runtime, within};
use support::{ms, secs};

/// A cell whose renewal started its fetch on `idle` (the fetch waits for the source's gate),
/// after which `idle` is not driven any more.
fn renewal_stalled_mid_fetch() -> (FakeTokenSource, tokio::runtime::Runtime, TokenCell) {
    let source = FakeTokenSource::new();
    let idle = paused_runtime();
    let cell = idle.block_on(async {
        let cell = TokenCell::new(
            source.clone(),
            RefreshPolicy::default().background_refresh(false),
        );
        cell.ready().await.unwrap();
        source.close_gate();
        assert!(cell.invalidate(1));
        while source.fetches_started() < 2 {
            tokio::task::yield_now().await;
        }
        cell
    });
    (source, idle, cell)
}

/// A renewal that stalled mid-fetch on a runtime that stopped being driven is given up on by a
/// caller on another runtime, whose own fetch then hangs; when the first runtime runs again and
/// its fetch completes, that token is used (it used to be dropped: a wasted token request, and
/// no token until the second fetch ended).
#[test]
fn a_token_from_a_refresh_given_up_on_is_used_when_it_comes_after_all() {
    let (source, idle, cell) = renewal_stalled_mid_fetch();
    let waited = within(secs(20), {
        let cell = cell.clone();
        move || {
            paused_runtime().block_on(async {
                // Gives up on the stalled renewal (3 s), starts its own, which hangs too.
                tokio::time::timeout(secs(5), cell.token()).await.is_err()
            })
        }
    });
    assert!(waited, "no token yet");
    assert_eq!(source.fetches_started(), 3);
    source.open_gate();
    idle.block_on(async {
        while source.fetches_completed() < 2 {
            tokio::task::yield_now().await;
        }
    });
    assert_eq!(cell.current().map(|token| token.generation()), Some(2));
    assert_eq!(cell.stats().fetches_ok, 2);
}

/// The same, but the token that replaced the stalled renewal's is rejected before the stalled
/// one ends: a token fetched before a rejection may be refused too (a revocation of all
/// tokens), so the late one is not used.
#[test]
fn a_token_from_a_refresh_given_up_on_is_not_used_after_a_rejection() {
    let (source, idle, cell) = renewal_stalled_mid_fetch();
    let other = paused_runtime();
    other.block_on(async {
        // Gives up on the stalled renewal, fetches its own: generation 2, then rejected.
        let waiting = tokio::spawn({
            let cell = cell.clone();
            async move { cell.token().await.map(|token| token.generation()) }
        });
        while source.fetches_started() < 3 {
            tokio::time::sleep(ms(100)).await;
        }
        source.open_gate();
        assert_eq!(waiting.await.unwrap().unwrap(), 2);
        assert!(cell.invalidate(2));
    });
    idle.block_on(async {
        while source.fetches_completed() < 3 {
            tokio::task::yield_now().await;
        }
    });
    assert!(
        cell.current().is_none(),
        "the late token, fetched before the rejection"
    );
    assert_eq!(cell.stats().fetches_ok, 2);
}

/// A source whose first fetch answers at once and whose second waits until released; later
/// ones answer at once.
#[derive(Clone, Default)]
struct Held {
    fetches: Arc<std::sync::atomic::AtomicU64>,
    release: Arc<tokio::sync::Notify>,
}

impl TokenSource for Held {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async move {
            let n = self
                .fetches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            if n == 2 {
                self.release.notified().await;
            }
            AccessToken::new(&format!("held-{n}"), secs(300), Instant::now())
        })
    }
}

/// A caller on another runtime gives up on the stalled renewal and then waits out the backoff
/// of that give-up (10 s here); the stalled renewal ends meanwhile. The caller gets its token
/// then (it used to sleep out the backoff and fetch another). Real time: two runtimes, one on a
/// thread that is blocked, then released.
#[test]
fn a_caller_waiting_out_a_backoff_gets_a_late_token_at_once() {
    let source = Held::default();
    let policy = RefreshPolicy::default()
        .background_refresh(false)
        .backoff(secs(10), secs(10));
    let cell = TokenCell::new(source.clone(), policy);
    let (go, gone) = std::sync::mpsc::channel::<()>();
    let (blocked, blocking) = std::sync::mpsc::channel::<()>();
    let stalled = std::thread::spawn({
        let cell = cell.clone();
        move || {
            let runtime = real_runtime();
            runtime.block_on(async {
                cell.ready().await.unwrap();
                assert!(cell.invalidate(1));
                while source.fetches.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                    tokio::task::yield_now().await;
                }
                // The runtime's only thread blocks: the renewal stalls.
                blocked.send(()).unwrap();
                gone.recv().unwrap();
                source.release.notify_one();
                tokio::time::sleep(ms(200)).await;
            });
        }
    });
    blocking.recv().unwrap();
    let (token, waited) = within(secs(30), move || {
        let waiter = std::thread::spawn(move || {
            // Past the give-up (3 s without a heartbeat), inside the backoff.
            std::thread::sleep(ms(4_000));
            go.send(()).unwrap();
        });
        let result = real_runtime().block_on(async {
            let started = Instant::now();
            let token = cell.token().await.map(|token| token.generation());
            (token, started.elapsed())
        });
        waiter.join().unwrap();
        result
    });
    stalled.join().unwrap();
    assert_eq!(token.unwrap(), 2, "the late token, not a new fetch");
    assert!(waited < ms(6_000), "waited {waited:?}: the whole backoff");
}

/// A source like [`Held`] whose third fetch never answers.
#[derive(Clone, Default)]
struct HeldThenHung(Held);

impl TokenSource for HeldThenHung {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async move {
            if self.0.fetches.load(std::sync::atomic::Ordering::SeqCst) == 2 {
                self.0
                    .fetches
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            self.0.fetch().await
        })
    }
}

/// The same while the caller waits on a refresh of its own that hangs (not a backoff): the late
/// token wakes it at once (it used to look again only when its own refresh might have stalled,
/// 3 s later).
#[test]
fn a_caller_waiting_on_another_refresh_gets_a_late_token_at_once() {
    let source = HeldThenHung::default();
    let fetches = Arc::clone(&source.0.fetches);
    let release = Arc::clone(&source.0.release);
    let cell = TokenCell::new(source, RefreshPolicy::default().background_refresh(false));
    let (go, gone) = std::sync::mpsc::channel::<()>();
    let (blocked, blocking) = std::sync::mpsc::channel::<()>();
    let stalled = std::thread::spawn({
        let cell = cell.clone();
        let fetches = Arc::clone(&fetches);
        move || {
            real_runtime().block_on(async {
                cell.ready().await.unwrap();
                assert!(cell.invalidate(1));
                while fetches.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                    tokio::task::yield_now().await;
                }
                // The runtime's only thread blocks: the renewal stalls.
                blocked.send(()).unwrap();
                gone.recv().unwrap();
                release.notify_one();
                tokio::time::sleep(ms(200)).await;
            });
        }
    });
    blocking.recv().unwrap();
    let (token, late_by) = within(secs(30), move || {
        // Once the caller has given up on the stalled renewal and started its own (the third
        // fetch), the stalled one ends.
        let released_at = std::thread::spawn(move || {
            while fetches.load(std::sync::atomic::Ordering::SeqCst) < 3 {
                std::thread::sleep(ms(10));
            }
            std::thread::sleep(ms(300));
            go.send(()).unwrap();
            std::time::Instant::now()
        });
        let token = real_runtime().block_on(async { cell.token().await.map(|t| t.generation()) });
        let returned_at = std::time::Instant::now();
        (token, returned_at - released_at.join().unwrap())
    });
    stalled.join().unwrap();
    assert_eq!(token.unwrap(), 2, "the late token");
    assert!(
        late_by < ms(1_500),
        "{late_by:?} after the late token: not at once"
    );
}
