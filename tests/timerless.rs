//! A tokio runtime built without timers (`Builder::enable_time` not called). tokio panics when a
//! timer is made on one; the cell must not: it hands out the token it holds, fetches nothing
//! there, and a caller that needs a new token gets a typed error. Every use on such a runtime
//! once panicked inside tokio (the wait) or in a spawned task (the refresher, the attempt), one
//! panic per request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{ErrorKind, KoppeltaalAuthLayer, RefreshPolicy, TokenCell};
use tower::{Layer, ServiceExt};

thread_local! {
    /// Panics on this thread whose message says timers are disabled (the hook counts them and
    /// prints nothing). Per thread: the tests of this binary run at once, and each runtime here
    /// runs on the thread that drives it, so a test counts only its own runtimes' panics.
    static TIMER_PANICS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// This thread's count of timer panics.
fn timer_panics() -> usize {
    TIMER_PANICS.with(std::cell::Cell::get)
}

fn count_timer_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if message.contains("timers are disabled") {
                TIMER_PANICS.with(|count| count.set(count.get() + 1));
            } else {
                previous(info);
            }
        }));
    });
}

fn timerless() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn with_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// A cell holding a first token, fetched on a runtime with timers (dropped since).
fn cell_with_a_token(policy: RefreshPolicy) -> (FakeTokenSource, TokenCell) {
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(60));
    let cell = TokenCell::new(source.clone(), policy);
    with_timers().block_on(cell.ready()).unwrap();
    (source, cell)
}

#[test]
fn a_caller_that_needs_a_token_gets_a_typed_error_not_a_panic() {
    count_timer_panics();
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
    let runtime = timerless();
    for _ in 0..100 {
        let err = runtime.block_on(cell.token()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoRuntime);
        assert!(err.to_string().contains("enable_time"), "{err}");
    }
    assert_eq!(source.fetches_started(), 0);
    // The first use probed the runtime (tokio's panic, caught); no use after it made a timer.
    assert_eq!(timer_panics(), 1, "one probe, on the first use");
    // On a runtime with timers the same cell fetches.
    let token = with_timers().block_on(cell.token()).unwrap();
    assert_eq!(token.generation(), 1);
}

/// 1,000 requests through the layer (a clone per request) and `current()` on the timerless
/// runtime: all get the token, `probes` timer panics (tokio's, caught by the cell when it
/// probes the runtime) for all of them, nothing fetched there.
fn serve_a_thousand_requests(source: &FakeTokenSource, cell: &TokenCell, probes: usize) {
    let layer = KoppeltaalAuthLayer::new(cell.clone(), "https://fhir.example.org/fhir").unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(tower::service_fn({
        let answered = Arc::clone(&answered);
        move |request: Request<Full<Bytes>>| {
            assert!(request.headers().contains_key(http::header::AUTHORIZATION));
            answered.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(Full::<
                Bytes,
            >::default(
            ))))
        }
    }));
    let runtime = timerless();
    let (panics_before, fetches_before) = (timer_panics(), source.fetches_started());
    runtime.block_on(async {
        for _ in 0..1_000 {
            assert_eq!(cell.current().unwrap().generation(), 1);
            let request = Request::get("https://fhir.example.org/fhir/Patient/1")
                .body(Full::default())
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            // Let spawned tasks, if any, run (and panic) now.
            tokio::task::yield_now().await;
        }
    });
    assert_eq!(answered.load(Ordering::SeqCst), 1_000);
    let panics = timer_panics() - panics_before;
    assert_eq!(panics, probes, "timer panics for 1,000 requests");
    assert_eq!(
        source.fetches_started(),
        fetches_before,
        "nothing fetched on the timerless runtime"
    );
    assert_eq!(
        cell.stats().fetches_failed,
        0,
        "no attempt started (and failed) there"
    );
}

/// The background refresher (needed again once the first runtime is gone) is not started on a
/// runtime without timers: it would panic in its first sleep, and be started again by the next
/// request.
#[test]
fn no_refresher_is_started_request_after_request() {
    count_timer_panics();
    let (source, cell) = cell_with_a_token(RefreshPolicy::default());
    // The refresher's start probes the runtime once.
    serve_a_thousand_requests(&source, &cell, 1);
}

/// A token past its refresh point (from the start: it arrived half a lifetime old) starts no
/// attempt on a runtime without timers: it would panic at its timeout.
#[test]
fn no_refresh_is_started_request_after_request() {
    count_timer_panics();
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(60));
    source.push_stale_token(Duration::from_secs(60), Duration::from_secs(30));
    let cell = TokenCell::new(
        source.clone(),
        RefreshPolicy::default().background_refresh(false),
    );
    with_timers().block_on(cell.ready()).unwrap();
    // No refresher, and the fast path's refresh start finds no usable runtime without a panic.
    serve_a_thousand_requests(&source, &cell, 0);
}

/// Several runtimes without timers (a thread each, as a sync program with one runtime per
/// worker might have) sharing one cell: each is probed once, not once per request.
#[test]
fn each_runtime_without_timers_is_probed_once() {
    count_timer_panics();
    let (source, cell) = cell_with_a_token(RefreshPolicy::default());
    let served = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (cell, served) = (cell.clone(), Arc::clone(&served));
            std::thread::spawn(move || {
                let runtime = timerless();
                runtime.block_on(async {
                    for _ in 0..250 {
                        assert!(cell.current().is_some());
                        assert_eq!(
                            cell.token().await.unwrap().generation(),
                            1,
                            "the token it holds, without a wait"
                        );
                        tokio::task::yield_now().await;
                    }
                    // Every thread served; then the token is rejected (once for all).
                    served.wait();
                    cell.invalidate(1);
                    let err = cell.token().await.unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::NoRuntime);
                });
                timer_panics()
            })
        })
        .collect();
    let panics: Vec<usize> = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    assert_eq!(panics, [1; 4], "one probe per runtime");
    assert_eq!(source.fetches_started(), 1);
}

/// A runtime that is shut down while a handle on it is still used: its timers panic when polled,
/// so the cell fetches nothing there either.
#[test]
fn a_runtime_shut_down_behind_a_handle_gets_a_typed_error() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
    let runtime = with_timers();
    let handle = runtime.handle().clone();
    drop(runtime);
    let err = handle.block_on(cell.token()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoRuntime);
    assert_eq!(source.fetches_started(), 0);
}

/// The background refresher, parked while the cell was used on a runtime without timers, comes
/// back once the cell is used on one with timers: the refresh after next happens with no caller.
#[test]
fn the_refresher_comes_back_on_a_runtime_with_timers() {
    count_timer_panics();
    let (source, cell) = cell_with_a_token(RefreshPolicy::default().refresh_jitter(0.0));
    timerless().block_on(async {
        for _ in 0..100 {
            assert!(cell.current().is_some());
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        // 60 s tokens refresh 30 s ahead: the first use past the refresh point starts one.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(cell.current().unwrap().generation(), 1);
        let token = cell.token().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while cell.current().unwrap().generation() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the refresh started at the refresh point completes");
        let fetched = source.fetches_completed();
        // No caller from here on: only a running background refresher fetches the next token.
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert_eq!(
            source.fetches_completed(),
            fetched + 1,
            "refreshed in the background"
        );
        drop(token);
    });
}
