//! The pace of refreshes, whatever the settings, the FHIR server's clock or the runtimes do: the
//! background refresher never spins, no setting refreshes in a loop, a zero wait timeout still
//! starts the fetch that serves later callers, a proactive refresh stuck on an idle runtime is
//! taken over before the token runs out, and a request that waited for the FHIR server's clock
//! is never replayed with a token the cell has dropped meanwhile, and a safety margin larger
//! than the refresh-ahead window still refreshes ahead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{ErrorKind, RefreshPolicy, TokenCell};
use tokio::time::Instant;
use tower::ServiceExt;

use support::fhir_servers::{Issuing, Servers, fhir_request, layered};
use support::runtimes::{paused_runtime, real_runtime, within};
use support::{ms, secs};

/// A FHIR server 3 s behind the auth server, and 8 s tokens refreshed 90% ahead: each new
/// token's refresh point (0.8 s after it arrives) comes before the FHIR server takes it (3 s).
/// The refresher used to find the refresh "due" and "done" at once, over and over, without
/// waiting: on the real clock it held a current-thread runtime (this ticker's) for seconds.
/// Real time, since tokio's paused clock stands still while the refresher runs and so hid it.
#[test]
fn a_refresh_point_before_the_fhir_server_takes_the_token_never_spins() {
    let (longest_gap, fetches, failed) = within(secs(30), || {
        real_runtime().block_on(async {
            let servers = Servers::new(-3_000, secs(8), 0);
            let policy = RefreshPolicy::default()
                .refresh_ahead(secs(8), 1.0, 1.0)
                .refresh_jitter(0.0);
            let cell = TokenCell::new(Issuing(Arc::clone(&servers)), policy);
            let client = layered(&servers, cell);
            let ticker = tokio::spawn(async {
                let mut last = Instant::now();
                let mut longest = Duration::ZERO;
                for _ in 0..100 {
                    tokio::time::sleep(ms(50)).await;
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                }
                longest
            });
            let mut failed = 0;
            // Until 4.5 s, and the count taken at once: the next fetch is due at 6 s, and a late
            // loop on a loaded machine must not reach it.
            let end = Instant::now() + ms(4_500);
            while Instant::now() < end {
                let response = client.clone().oneshot(fhir_request()).await.unwrap();
                failed += u32::from(response.status() != StatusCode::OK);
                tokio::time::sleep(ms(250)).await;
            }
            let fetches = servers.fetches.load(Ordering::SeqCst);
            let longest_gap = ticker.await.unwrap();
            (longest_gap, fetches, failed)
        })
    });
    assert!(
        longest_gap < ms(700),
        "the runtime was held for {longest_gap:?}"
    );
    // At 0 s, at the first refresh point (0.8 s), then once the FHIR server took that token
    // (3 s); the next is due at 6 s.
    assert_eq!(fetches, 3);
    assert_eq!(failed, 0);
}

/// The whole lifetime as refresh-ahead, plus the largest jitter: the refresh point used to be
/// the token's arrival, so each success started the next fetch at once (a fetch loop at the
/// token endpoint's pace). At most 90% is refreshed ahead: one fetch per tenth of a lifetime.
#[tokio::test(start_paused = true)]
async fn refreshing_the_whole_lifetime_ahead_refreshes_ten_times_a_lifetime_not_in_a_loop() {
    let source = FakeTokenSource::new().with_lifetime(secs(60));
    let policy = RefreshPolicy::default()
        .refresh_ahead(secs(60), 1.0, 1.0)
        .refresh_jitter(1.0);
    let cell = TokenCell::new(source.clone(), policy);
    cell.ready().await.unwrap();
    tokio::time::sleep(secs(60) - ms(1)).await;
    // At 0, 6, 12, ..., 54 s.
    assert_eq!(source.fetches_completed(), 10);
    assert_eq!(cell.current().unwrap().generation(), 10);
}

/// A zero wait timeout fails a caller without a token at once, and still starts the fetch that
/// serves the callers after it (it used to give up before starting any: no token, ever).
#[tokio::test(start_paused = true)]
async fn a_zero_wait_timeout_fails_fast_and_still_starts_the_fetch() {
    let source = FakeTokenSource::new();
    let policy = RefreshPolicy::default().wait_timeout(Duration::ZERO);
    let cell = TokenCell::new(source.clone(), policy);
    let started = Instant::now();
    let err = cell.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WaitTimeout);
    assert_eq!(Instant::now(), started, "no wait");
    // The fetch it started runs as soon as the runtime gets to it.
    tokio::task::yield_now().await;
    assert_eq!(cell.token().await.unwrap().generation(), 1);
    assert_eq!(source.fetches_started(), 1);
}

/// A proactive refresh started on a runtime that is never driven again (the `block_on` wrapper
/// pattern), with no background refresher: requests on another runtime used to hand out the
/// old token until it ran out and then wait. The first request after the refresh stalled (3 s
/// without a heartbeat) gives up on it and refreshes, long before the token runs out.
#[test]
fn a_proactive_refresh_stuck_on_an_idle_runtime_is_taken_over_by_the_next_request() {
    let source = FakeTokenSource::new().with_lifetime(secs(20));
    let idle = paused_runtime();
    let cell = idle.block_on(async {
        let policy = RefreshPolicy::default()
            .refresh_jitter(0.0)
            .background_refresh(false);
        let cell = TokenCell::new(source.clone(), policy);
        cell.ready().await.unwrap();
        // Past the refresh point (10 s of 20 s): this use starts the refresh on `idle`.
        tokio::time::advance(ms(10_500)).await;
        assert_eq!(cell.current().unwrap().generation(), 1);
        cell
    });
    let seen = within(secs(20), move || {
        paused_runtime().block_on(async {
            // Every 100 ms for 17 s (the first token is usable for 18 s).
            let mut seen = Vec::new();
            for _ in 0..170 {
                seen.push(cell.current().map(|token| token.generation()));
                tokio::time::sleep(ms(100)).await;
            }
            seen
        })
    });
    assert!(seen.iter().all(Option::is_some), "a request had no token");
    assert_eq!(
        seen.last(),
        Some(&Some(2)),
        "refreshed on the other runtime"
    );
    assert_eq!(source.fetches_started(), 2, "the stuck refresh never ran");
    drop(idle);
}

/// The same when the idle runtime's thread keeps looking at the token without ever awaiting
/// (`cell.current()` inside `Runtime::enter`): those looks must not keep the stuck refresh
/// "alive" (they used to move its heartbeat on, so that requests on a runtime that runs did not
/// take it over until the token ran out), nor start the next one there once the backoff after
/// the give-up ends. Real time: the two threads look concurrently.
#[test]
fn synchronous_looks_on_the_idle_runtime_do_not_keep_a_stuck_refresh_alive() {
    let source = FakeTokenSource::new().with_lifetime(secs(12));
    // Refreshed 6 s after arrival, usable for 10.8 s.
    let policy = RefreshPolicy::default()
        .refresh_ahead(Duration::ZERO, 0.5, 0.5)
        .refresh_jitter(0.0)
        .expiry_margin(secs(1), 0.1)
        .background_refresh(false);
    let idle = real_runtime();
    let cell = idle.block_on(async {
        let cell = TokenCell::new(source.clone(), policy);
        cell.ready().await.unwrap();
        cell
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looking = std::thread::spawn({
        let (cell, stop) = (cell.clone(), Arc::clone(&stop));
        move || {
            // Inside the idle runtime, never driving it: the refresh starts here, at 6 s.
            let _entered = idle.enter();
            // Every millisecond: so that this thread, not the runtime that runs, is the first
            // to look once the backoff after the give-up ends.
            while !stop.load(Ordering::Relaxed) {
                assert!(cell.current().is_some());
                std::thread::sleep(ms(1));
            }
        }
    });
    let seen = within(secs(20), move || {
        std::thread::sleep(ms(7_000));
        let other = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        other.block_on(async {
            // Every 100 ms until 12 s (the first token is usable until 10.8 s).
            let mut seen = Vec::new();
            for _ in 0..50 {
                seen.push(cell.current().map(|token| token.generation()));
                tokio::time::sleep(ms(100)).await;
            }
            seen
        })
    });
    stop.store(true, Ordering::Relaxed);
    looking.join().unwrap();
    assert!(
        seen.iter().all(Option::is_some),
        "a request had no token: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&Some(2)),
        "refreshed on the runtime that runs"
    );
}

/// The same with the background refresher on a runtime that runs: it used to wait for the
/// stuck flight to report, forever; it gives up on it once it stalls, and refreshes.
#[test]
fn a_proactive_refresh_stuck_on_an_idle_runtime_is_taken_over_by_the_refresher() {
    let source = FakeTokenSource::new().with_lifetime(secs(20));
    let home = paused_runtime();
    let cell = home.block_on(async {
        let cell = TokenCell::new(source.clone(), RefreshPolicy::default().refresh_jitter(0.0));
        cell.ready().await.unwrap();
        cell
    });
    let idle = paused_runtime();
    idle.block_on(async {
        tokio::time::advance(ms(10_500)).await;
        assert_eq!(cell.current().unwrap().generation(), 1);
    });
    let generation = within(secs(20), move || {
        home.block_on(async {
            // No request at all on this runtime: only its refresher can act.
            tokio::time::sleep(secs(17)).await;
            cell.current().map(|token| token.generation())
        })
    });
    assert_eq!(generation, Some(2));
    assert_eq!(source.fetches_started(), 2, "the stuck refresh never ran");
    drop(idle);
}

/// A request whose brand-new token the FHIR server (2 s behind) refuses waits for its clock;
/// meanwhile the cell drops that token (another request's `401`). The replay used to go out
/// with the dropped token anyway; it is renewed instead.
#[tokio::test(start_paused = true)]
async fn a_replay_after_the_clock_wait_never_carries_a_token_dropped_meanwhile() {
    let servers = Servers::new(-2_000, secs(300), 0);
    let cell = TokenCell::new(
        Issuing(Arc::clone(&servers)),
        RefreshPolicy::default().refresh_jitter(0.0),
    );
    let client = layered(&servers, cell.clone());
    cell.ready().await.unwrap();
    let request = tokio::spawn(client.oneshot(fhir_request()));
    tokio::time::sleep(ms(500)).await;
    assert_eq!(
        servers.refused.load(Ordering::SeqCst),
        1,
        "refused, waiting"
    );
    assert!(cell.invalidate(1));
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sent = servers.sent.lock().unwrap().clone();
    assert_eq!(sent.first().map(String::as_str), Some("token-1"));
    assert!(sent[1..].iter().all(|token| token != "token-1"), "{sent:?}");
}

/// tokio's sync wrapper pattern with a refresh in flight across calls: the refresh starts in one
/// `block_on`, which returns before the token endpoint answers; the next call comes 3.5 s later
/// (longer than a flight may go without a heartbeat). That call's runtime runs the flight as
/// soon as the call awaits anything, so the flight is not given up on (it used to be: a wasted
/// token request, a warning, a backoff, every time). Real time: the program sleeps between calls.
#[test]
fn a_refresh_spanning_two_block_on_calls_is_finished_not_given_up_on() {
    let source = FakeTokenSource::new().with_lifetime(secs(10));
    source.set_delay(ms(300));
    let (logs, _guard) = support::capture_logs();
    let runtime = real_runtime();
    // Refreshed 1 s after arrival (90% ahead), usable for 9 s.
    let policy = RefreshPolicy::default()
        .refresh_ahead(secs(9), 0.0, 0.9)
        .refresh_jitter(0.0);
    let cell = runtime.block_on(async {
        let cell = TokenCell::new(source.clone(), policy);
        cell.ready().await.unwrap();
        cell
    });
    let call = |cell: &TokenCell| {
        runtime.block_on(async {
            let token = cell.token().await.unwrap();
            // The FHIR request.
            tokio::time::sleep(ms(50)).await;
            token.generation()
        })
    };
    std::thread::sleep(ms(1_200));
    assert_eq!(call(&cell), 1, "the refresh starts here");
    std::thread::sleep(ms(3_500));
    call(&cell);
    assert_eq!(cell.current().map(|token| token.generation()), Some(2));
    assert_eq!(source.fetches_started(), 2);
    assert_eq!(cell.stats().fetches_failed, 0);
    let text = logs.text();
    assert!(!text.contains("giving up on it"), "{text}");
}

/// A token endpoint that takes 11 s to answer, its 20 s tokens counted from when each request
/// went out (as `ClientCredentials` counts them).
#[derive(Clone, Default)]
struct SlowEndpoint(Arc<std::sync::Mutex<Vec<Instant>>>);

impl koppeltaal_auth::TokenSource for SlowEndpoint {
    fn fetch(
        &self,
    ) -> koppeltaal_auth::token::BoxFuture<
        '_,
        Result<koppeltaal_auth::AccessToken, koppeltaal_auth::Error>,
    > {
        Box::pin(async move {
            let asked = Instant::now();
            self.0.lock().unwrap().push(asked);
            tokio::time::sleep(ms(11_000)).await;
            koppeltaal_auth::AccessToken::new("slow", secs(20), asked)
        })
    }
}

/// With the slow endpoint the refresh point (10 s after the request went out) has passed when
/// the token arrives: the next fetch used to start at once, back to back. A token is used for a
/// tenth of its lifetime first.
#[tokio::test(start_paused = true)]
async fn a_slow_token_endpoint_is_not_asked_again_the_moment_it_answers() {
    let source = SlowEndpoint::default();
    let cell = TokenCell::new(source.clone(), RefreshPolicy::default().refresh_jitter(0.0));
    cell.ready().await.unwrap();
    tokio::time::sleep(secs(60)).await;
    let starts = source.0.lock().unwrap().clone();
    assert!(starts.len() >= 4, "{starts:?}");
    for pair in starts.windows(2) {
        // 11 s for the fetch, then 2 s (a tenth of 20 s) of use.
        assert!(pair[1] - pair[0] >= secs(13), "{:?}", pair[1] - pair[0]);
    }
}

/// A safety margin larger than the refresh-ahead window (120 s against 60 s for 300 s tokens):
/// the refresh point used to come after the token stopped being handed out, so nothing refreshed
/// it ahead, and every lifetime requests waited for a fetch. Now the refresher renews it before.
#[tokio::test(start_paused = true)]
async fn a_margin_larger_than_the_window_still_refreshes_ahead() {
    let source = FakeTokenSource::new().with_lifetime(secs(300));
    let policy = RefreshPolicy::default()
        .expiry_margin(secs(120), 0.5)
        .refresh_jitter(0.0);
    let cell = TokenCell::new(source.clone(), policy);
    cell.ready().await.unwrap();
    let waits = cell.stats().waits;
    // Each token is refreshed 180 s ahead, 60 s before its margin begins: every 120 s.
    for second in 1..=900 {
        tokio::time::sleep(secs(1)).await;
        assert!(cell.current().is_some(), "a token at {second} s");
    }
    assert_eq!(source.fetches_started(), 8, "at 0, 120, ..., 840 s");
    assert_eq!(
        cell.stats().waits,
        waits,
        "nothing waited for a fetch after the first"
    );
}
