//! Storms against the layer: a revocation every 200 ms under 100 concurrent requests, and a
//! thousand callers dropped mid-refresh. Each test is bounded in time and in the number of
//! requests, and asserts exactly what the caller saw and what the servers received. The token
//! endpoint failing in every way is `faults.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::KoppeltaalAuth;
use koppeltaal_auth::testing::{FakeTokenSource, MockKoppeltaal};
use support::{CLIENT_ID, rsa_key};
use tokio::time::{Instant, sleep, timeout};
use tower::{Layer, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_every_200_ms_under_100_concurrent_requests() {
    let run = async {
        let mock = MockKoppeltaal::start().await.unwrap();
        mock.register_key(CLIENT_ID, &rsa_key());
        let auth = KoppeltaalAuth::builder()
            .fhir_base_url(mock.fhir_base_url())
            .client_id(CLIENT_ID)
            .signing_key(rsa_key())
            .token_endpoint(mock.token_endpoint())
            .build()
            .unwrap();
        auth.ready().await.unwrap();
        let client = auth
            .layer()
            .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..100)
            .map(|i| {
                let client = client.clone();
                let done = Arc::clone(&done);
                let sent = Arc::clone(&sent);
                let url = format!("{}/Patient/{i}", mock.fhir_base_url());
                tokio::spawn(async move {
                    while !done.load(Ordering::Relaxed) {
                        let request = Request::get(&url).body(Full::default()).unwrap();
                        let status = client.clone().oneshot(request).await.unwrap().status();
                        assert_eq!(status, StatusCode::OK, "no request fails");
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // A fixed count, not a time span: a loaded machine runs fewer rounds in one.
        for _ in 0..25 {
            sleep(Duration::from_millis(200)).await;
            mock.revoke_all_tokens();
        }
        // Let the last revocation be noticed, then stop.
        sleep(Duration::from_millis(200)).await;
        done.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.unwrap();
        }
        let stats = mock.stats();
        assert!(
            sent.load(Ordering::Relaxed) > 1_000,
            "under load: {} requests",
            sent.load(Ordering::Relaxed)
        );
        assert_eq!(stats.revocations, 25);
        assert_eq!(
            stats.tokens_issued,
            1 + stats.revocations,
            "one renewal per revocation, not per request"
        );
        assert_eq!(auth.stats().invalidations, stats.revocations);
    };
    timeout(Duration::from_secs(30), run)
        .await
        .expect("bounded in time");
}

#[tokio::test(start_paused = true)]
async fn a_thousand_requests_dropped_mid_refresh_leave_the_cell_healthy() {
    // Short tokens from a slow source, so that refreshes are in flight all the time; every
    // request gets a timeout between 1 and 50 ms and most are dropped somewhere inside the layer.
    let source = FakeTokenSource::new().with_lifetime(Duration::from_millis(200));
    source.set_delay(Duration::from_millis(30));
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url("https://fhir.example.org/fhir")
        .token_source(source.clone())
        .build()
        .unwrap();
    let service = auth
        .layer()
        .layer(tower::service_fn(|_request: Request<Full<Bytes>>| async {
            sleep(Duration::from_millis(5)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
        }));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: deterministic "random" timeouts.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut tasks = Vec::new();
    for _ in 0..1_000 {
        let limit = Duration::from_millis(1 + next() % 50);
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let request = Request::get("https://fhir.example.org/fhir/Patient/1")
                .body(Full::default())
                .unwrap();
            timeout(limit, service.oneshot(request)).await.is_ok()
        }));
        sleep(Duration::from_millis(next() % 3)).await;
    }
    let mut completed = 0;
    for task in tasks {
        completed += usize::from(task.await.unwrap());
    }
    assert!(
        completed < 1_000 && completed > 0,
        "some dropped, some completed: {completed}"
    );
    // The cell is healthy: the next request succeeds, with a usable token.
    let request = Request::get("https://fhir.example.org/fhir/Patient/1")
        .body(Full::default())
        .unwrap();
    let response = timeout(Duration::from_secs(1), service.oneshot(request)).await;
    assert_eq!(response.unwrap().unwrap().status(), StatusCode::OK);
    let stats = auth.stats();
    assert_eq!(
        stats.fetches_failed, 0,
        "no refresh was aborted by a dropped caller"
    );
    assert_eq!(
        stats.fetches_ok,
        source.fetches_completed(),
        "every fetch was recorded"
    );
    assert!(
        source.fetches_started() - source.fetches_completed() <= 1,
        "at most one refresh in flight"
    );
}

/// One resource the FHIR server always refuses with `401`, whatever the token (Koppeltaal's
/// HAPI answers `401` to a `Device` request with a token without `azp`), polled every second
/// while other requests run: the refused requests renew the token, at a backoff pace once fresh
/// tokens keep being refused, and the backoff never takes the token from the other requests.
#[tokio::test(start_paused = true)]
async fn one_resource_always_refused_stalls_no_other_request_and_storms_nothing() {
    use koppeltaal_auth::{KoppeltaalAuthLayer, RefreshPolicy, TokenCell};
    let source = FakeTokenSource::new();
    // A fixed backoff (no jitter), so that the renewals can be counted exactly.
    let backoff = Duration::from_secs(10);
    let policy = RefreshPolicy::default().backoff(backoff, backoff);
    let cell = TokenCell::new(source.clone(), policy);
    cell.ready().await.unwrap();
    let fhir = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let refused = request.uri().path().contains("/Device");
        let status = if refused {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let response = http::Response::builder()
            .status(status)
            .body(Full::<Bytes>::default());
        Ok::<_, std::convert::Infallible>(response.unwrap())
    });
    let base = "https://fhir.example/fhir/DEFAULT";
    let client = KoppeltaalAuthLayer::new(cell.clone(), base)
        .unwrap()
        .layer(fhir);
    let get = |path: &str| {
        let request = Request::get(format!("{base}/{path}")).body(Full::default());
        client.clone().oneshot(request.unwrap())
    };
    // Every second, a request for the refused resource, each on its own.
    let poller = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut refused = Vec::new();
            for _ in 0..180 {
                let request = Request::get(format!("{base}/Device/1")).body(Full::default());
                refused.push(tokio::spawn(client.clone().oneshot(request.unwrap())));
                sleep(Duration::from_secs(1)).await;
            }
            for device in refused {
                let device = device.await.unwrap().unwrap();
                assert_eq!(device.status(), StatusCode::UNAUTHORIZED);
            }
        })
    };
    let mut slowest = Duration::ZERO;
    for read in 0..1_800 {
        let started = Instant::now();
        let response = get("Patient/1").await;
        let response = response.unwrap_or_else(|e| panic!("read {read}: {e}"));
        assert_eq!(response.status(), StatusCode::OK);
        slowest = slowest.max(started.elapsed());
        sleep(Duration::from_millis(100)).await;
    }
    poller.await.unwrap();
    assert!(
        slowest < Duration::from_millis(100),
        "a read waited {slowest:?}"
    );
    // The first token, and its renewal at once after the first refusal (not a fresh token
    // refused again); the next fresh token refused at 1 s, renewed after the backoff at 11 s;
    // from then on each renewal lands on a poll, which refuses it at once: renewals every 10 s,
    // 21 s to 181 s (the last one for the requests still waiting). 20, not one a second.
    assert_eq!(source.fetches_started(), 20);
}
