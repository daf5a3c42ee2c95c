//! `TokenCell` over real loopback HTTP against `MockKoppeltaal`, on a multi-thread runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use koppeltaal_auth::testing::MockResponse;
use koppeltaal_auth::{RefreshPolicy, TokenCell};
use serde_json::json;
use support::{mock, rsa_key, source};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_load_the_endpoint_sees_one_request_per_token() {
    let mock = mock().await;
    mock.set_token_lifetime(Duration::from_secs(2));
    // 2 s tokens are refreshed when 1 s remains (50% of the lifetime), jitter off.
    let cell = TokenCell::new(
        source(&mock, rsa_key()),
        RefreshPolicy::default().refresh_jitter(0.0),
    );
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let cell = cell.clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                let mut last = 0;
                while last < 5 {
                    let token = cell.token().await.expect("no request fails");
                    assert!(token.generation() >= last, "generations only grow");
                    last = token.generation();
                    calls += 1;
                    tokio::task::yield_now().await;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for task in tasks {
        calls += task.await.unwrap();
    }
    drop(cell);
    assert!(calls > 1_000, "the cell was hammered: {calls} calls");
    let requests = mock.token_requests();
    let stats = mock.stats();
    assert_eq!(stats.token_requests_failed, 0);
    assert_eq!(
        stats.token_requests, stats.tokens_issued,
        "no request was wasted"
    );
    assert!(stats.tokens_issued >= 5);
    // One request per token: each after the previous token's refresh point (1 s after it
    // arrived), and well before it expired (2 s).
    for pair in requests.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        // Measured where the mock reads the request: its own scheduling on a loaded machine
        // moves each reading by tens of milliseconds.
        assert!(gap >= Duration::from_millis(900), "early refresh: {gap:?}");
        assert!(gap < Duration::from_millis(1_500), "late refresh: {gap:?}");
    }
}

#[tokio::test]
async fn a_token_response_without_expires_in_lives_the_default_300_s() {
    let mock = mock().await;
    mock.push_token_response(MockResponse::json(&json!({
        "access_token": "no-expiry", "token_type": "Bearer"
    })));
    let cell = TokenCell::new(source(&mock, rsa_key()), RefreshPolicy::default());
    cell.ready().await.unwrap();
    let left = cell.stats().time_to_expiry.unwrap();
    assert!(
        left > Duration::from_secs(295) && left <= Duration::from_secs(300),
        "{left:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_cell_never_logs_a_token() {
    let (logs, _guard) = support::capture_logs();
    let mock = mock().await;
    let cell = TokenCell::new(source(&mock, rsa_key()), RefreshPolicy::default());
    let first = cell.access_token().await.unwrap();
    let renewed = cell.renewed(1).await.unwrap();
    let second = cell.access_token().await.unwrap();
    assert_eq!(renewed.generation(), 2);
    mock.fail_next_token_requests(1, http::StatusCode::SERVICE_UNAVAILABLE, None);
    // Refused young again: its renewal, after a backoff, fails.
    assert!(cell.renewed(2).await.is_err());
    let text = logs.text();
    assert!(
        text.contains("token rejected by the server"),
        "the capture works: {text}"
    );
    assert!(text.contains("token refresh failed"));
    for secret in [first.as_str(), second.as_str()] {
        assert!(!text.contains(secret), "token leaked into the logs");
    }
    assert!(!format!("{cell:?} {renewed:?}").contains(second.as_str()));
}
