//! Fault injection: the token endpoint failing in every way while FHIR requests keep flowing
//! through the layer. Each test is bounded in time and in the number of requests, and asserts
//! exactly what the caller saw and what the servers received. Revocation storms and cancellation
//! are `storms.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "support/fault_proxy.rs"]
mod fault_proxy;

use std::time::Duration;

use bytes::Bytes;
use fault_proxy::{FaultProxy, Mode};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{
    Authenticator, BoxError, ClientCredentials, ErrorKind, KoppeltaalAuth, RefreshPolicy,
};
use support::{CLIENT_ID, rsa_key};
use tokio::time::{Instant, sleep, timeout};
use tower::{Layer, ServiceExt};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_millis(800);
const WAIT: Duration = Duration::from_secs(1);

/// A mock with `lifetime` tokens behind a fault proxy, and an authenticator using the proxy as
/// its token endpoint with a fast policy: backoff 100-800 ms, wait timeout 1 s, token request
/// timeout 300 ms.
async fn setup(lifetime: Duration) -> (MockKoppeltaal, FaultProxy, Authenticator) {
    let mock = MockKoppeltaal::builder()
        .token_lifetime(lifetime)
        .start()
        .await
        .unwrap();
    mock.register_key(CLIENT_ID, &rsa_key());
    let proxy = FaultProxy::start(mock.addr()).await;
    // The client knows the proxy as the token endpoint: that is the assertion's audience.
    mock.set_audience(&proxy.url("/oauth2/token"));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(300));
    let source = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(proxy.url("/oauth2/token"))
        .signing_key(rsa_key())
        .http_client_builder(http)
        .build()
        .unwrap();
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .token_source(source)
        .refresh_policy(
            RefreshPolicy::default()
                .refresh_jitter(0.0)
                .backoff(BACKOFF_MIN, BACKOFF_MAX)
                .wait_timeout(WAIT),
        )
        .build()
        .unwrap();
    (mock, proxy, auth)
}

/// One FHIR read through the layer: the status, or our error.
async fn read(
    auth: &Authenticator,
    mock: &MockKoppeltaal,
) -> Result<StatusCode, koppeltaal_auth::Error> {
    let client = auth
        .layer()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let request = Request::get(format!("{}/Patient/1", mock.fhir_base_url()))
        .body(Full::default())
        .unwrap();
    match client.oneshot(request).await {
        Ok(response) => Ok(response.status()),
        Err(err) => Err(*err
            .downcast::<koppeltaal_auth::Error>()
            .unwrap_or_else(|other: BoxError| panic!("not our error: {other}"))),
    }
}

/// What a failing token endpoint must look like from both sides.
struct Expect {
    kind: ErrorKind,
    status: Option<StatusCode>,
    /// The shortest gap the endpoint may see between two attempts.
    min_gap: Duration,
    /// Whether the error says the fault may pass (it is retried at the shortest backoff, or
    /// after the server's `Retry-After`).
    transient: bool,
    /// The server's `Retry-After`, as the error keeps it.
    retry_after: Option<Duration>,
}

/// Healthy first token; then the fault: requests keep succeeding until the token expires, then
/// fail fast with the typed error; the endpoint sees attempts no closer than the policy allows;
/// once healed, everything works again without intervention.
async fn token_endpoint_fault(fault: Mode, expect: Expect) {
    let run = async {
        let lifetime = Duration::from_secs(2);
        let (mock, proxy, auth) = setup(lifetime).await;
        auth.ready().await.unwrap();
        let start = Instant::now();
        proxy.set_mode(fault).await;

        // While the token is valid (2 s token, usable for 1.8 s): no request fails.
        let mut ok = 0;
        while start.elapsed() < Duration::from_millis(1_500) {
            assert_eq!(
                read(&auth, &mock).await.unwrap(),
                StatusCode::OK,
                "no request fails while the token is valid"
            );
            ok += 1;
            sleep(Duration::from_millis(50)).await;
        }
        assert!(ok >= 5, "requests were made: {ok}");

        // After expiry: typed errors, each within the wait timeout, and nothing sent without a
        // token.
        sleep(Duration::from_millis(2_100).saturating_sub(start.elapsed())).await;
        let fhir_before = mock.stats().fhir_requests;
        let failing_since = Instant::now();
        let mut failures = 0;
        while failing_since.elapsed() < Duration::from_millis(1_500) {
            let asked = Instant::now();
            let err = read(&auth, &mock)
                .await
                .expect_err("no valid token: a typed error");
            assert!(
                asked.elapsed() <= WAIT + Duration::from_millis(500),
                "answered within the wait timeout"
            );
            assert_eq!(err.kind(), expect.kind, "{err}");
            assert_eq!(err.status(), expect.status, "{err}");
            assert_eq!(err.is_transient(), expect.transient, "{err}");
            assert_eq!(err.retry_after(), expect.retry_after, "{err}");
            failures += 1;
            sleep(Duration::from_millis(50)).await;
        }
        assert!(failures >= 5);
        assert_eq!(
            mock.stats().fhir_requests,
            fhir_before,
            "no request went out without a token"
        );

        // The refresh was retried, never faster than the policy allows: count the failed
        // attempts (a refused connection reaches no server), and check the spacing the server
        // saw when it saw them.
        let failed = auth.stats().fetches_failed;
        let window = start.elapsed();
        let allowed = (window.as_millis() / expect.min_gap.as_millis()) as u64 + 1;
        assert!(failed >= 2, "the refresh was retried: {failed}");
        assert!(
            failed <= allowed,
            "{failed} attempts in {window:?}, the policy allows {allowed}"
        );
        let attempts = proxy.attempts();
        for pair in attempts.get(1..).unwrap_or_default().windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap + Duration::from_millis(5) >= expect.min_gap,
                "attempts {gap:?} apart, policy minimum {:?}",
                expect.min_gap
            );
        }
        if !matches!(expect.kind, ErrorKind::Transport) || expect.status.is_some() {
            // The first (good) token, every failed attempt, and perhaps one that started after
            // the failures were counted and has not failed yet.
            let seen = attempts.len() as u64;
            assert!(
                seen == failed + 1 || seen == failed + 2,
                "the server saw every attempt: {seen} for {failed} failures"
            );
        }

        // Healed: recovery without intervention, within the longest backoff (plus a request).
        proxy.set_mode(Mode::Forward).await;
        let healed = Instant::now();
        loop {
            if read(&auth, &mock).await.is_ok() {
                break;
            }
            assert!(
                healed.elapsed() < expect.min_gap.max(BACKOFF_MAX) + Duration::from_millis(1_500),
                "recovered"
            );
            sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..5 {
            assert_eq!(read(&auth, &mock).await.unwrap(), StatusCode::OK);
        }
    };
    timeout(Duration::from_secs(20), run)
        .await
        .expect("bounded in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down() {
    token_endpoint_fault(
        Mode::Refuse,
        Expect {
            kind: ErrorKind::Transport,
            status: None,
            min_gap: BACKOFF_MIN,
            transient: true,
            retry_after: None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_hanging() {
    token_endpoint_fault(
        Mode::Hang,
        Expect {
            kind: ErrorKind::Timeout,
            status: None,
            min_gap: BACKOFF_MIN,
            transient: true,
            retry_after: None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_resetting_mid_body() {
    token_endpoint_fault(
        Mode::ResetMidBody,
        Expect {
            kind: ErrorKind::Transport,
            status: None,
            min_gap: BACKOFF_MIN,
            transient: true,
            retry_after: None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_truncated_json() {
    // A broken response is not transient: retried only at the longest backoff.
    token_endpoint_fault(
        Mode::TruncatedJson,
        Expect {
            kind: ErrorKind::InvalidTokenResponse,
            status: None,
            min_gap: BACKOFF_MAX,
            transient: false,
            retry_after: None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_5xx_burst() {
    // Every status of the burst is transient; callers see the latest attempt's.
    let run = async {
        let (mock, proxy, auth) = setup(Duration::from_secs(2)).await;
        auth.ready().await.unwrap();
        proxy
            .set_mode(Mode::Status(vec![500, 502, 503], None))
            .await;
        sleep(Duration::from_millis(2_100)).await;
        let mut seen = std::collections::BTreeSet::new();
        let failing = Instant::now();
        while failing.elapsed() < Duration::from_millis(1_500) {
            let err = read(&auth, &mock).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::TokenRejected);
            assert!(err.is_transient());
            seen.insert(err.status().unwrap().as_u16());
            sleep(Duration::from_millis(20)).await;
        }
        assert!(
            seen.len() >= 2,
            "callers saw the burst's statuses: {seen:?}"
        );
        for pair in proxy.attempts()[1..].windows(2) {
            assert!(pair[1] - pair[0] + Duration::from_millis(5) >= BACKOFF_MIN);
        }
        proxy.set_mode(Mode::Forward).await;
        sleep(BACKOFF_MAX + Duration::from_millis(300)).await;
        assert_eq!(read(&auth, &mock).await.unwrap(), StatusCode::OK);
    };
    timeout(Duration::from_secs(20), run)
        .await
        .expect("bounded in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_rate_limited_with_retry_after() {
    // 429 with Retry-After: 2 is honoured even though the policy's longest backoff is 0.8 s.
    token_endpoint_fault(
        Mode::Status(vec![429], Some(2)),
        Expect {
            kind: ErrorKind::TokenRejected,
            status: Some(StatusCode::TOO_MANY_REQUESTS),
            min_gap: Duration::from_secs(2),
            transient: true,
            retry_after: Some(Duration::from_secs(2)),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_plain_text_401() {
    // Koppeltaal's "401 Access Denied": permanent, retried only at the longest backoff.
    token_endpoint_fault(
        Mode::Status(vec![401], None),
        Expect {
            kind: ErrorKind::TokenRejected,
            status: Some(StatusCode::UNAUTHORIZED),
            min_gap: BACKOFF_MAX,
            transient: false,
            retry_after: None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_slow() {
    // A 2 s token request, against 6 s tokens refreshed at 3 s: the refresh finishes before the
    // old token's margin (5.4 s), so no request notices, and no second request piles up.
    let run = async {
        let (mock, proxy, auth) = setup(Duration::from_secs(6)).await;
        // The slow endpoint needs a longer request timeout than the other scenarios.
        let _ = &auth;
        let slow_source = ClientCredentials::builder()
            .client_id(CLIENT_ID)
            .token_endpoint(proxy.url("/oauth2/token"))
            .signing_key(rsa_key())
            .http_client_builder(reqwest::Client::builder().pool_max_idle_per_host(0))
            .build()
            .unwrap();
        let auth = KoppeltaalAuth::builder()
            .fhir_base_url(mock.fhir_base_url())
            .token_source(slow_source)
            .refresh_policy(RefreshPolicy::default().refresh_jitter(0.0))
            .build()
            .unwrap();
        auth.ready().await.unwrap();
        proxy.set_mode(Mode::Slow(Duration::from_secs(2))).await;
        let start = Instant::now();
        let mut ok = 0;
        while start.elapsed() < Duration::from_millis(5_800) {
            assert_eq!(read(&auth, &mock).await.unwrap(), StatusCode::OK);
            ok += 1;
            sleep(Duration::from_millis(50)).await;
        }
        assert!(ok >= 50);
        assert_eq!(
            auth.stats().generation,
            2,
            "refreshed once, in the background"
        );
        assert_eq!(
            proxy.attempts().len(),
            2,
            "the first token and one slow refresh"
        );
        assert_eq!(auth.stats().waits, 1, "only the very first request waited");
    };
    timeout(Duration::from_secs(20), run)
        .await
        .expect("bounded in time");
}
