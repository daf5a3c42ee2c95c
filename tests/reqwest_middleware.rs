//! `KoppeltaalAuthMiddleware` end to end: a reqwest-middleware client against `MockKoppeltaal`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use koppeltaal_auth::{ErrorKind, KoppeltaalAuth};
use reqwest_middleware::ClientWithMiddleware;
use support::middleware::client;
use support::{CLIENT_ID, RecordingServer, authenticator, capture_logs, mock, rsa_key};

#[tokio::test]
async fn reads_and_creates_with_one_token_and_only_for_the_base() {
    let mock = mock().await;
    let other = RecordingServer::start().await;
    let auth = authenticator(&mock).await;
    let client = client(&auth);
    let base = mock.fhir_base_url();
    let patient = client
        .get(format!("{base}/Patient/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(patient.status(), StatusCode::OK);
    let task = client
        .post(format!("{base}/Task"))
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType":"Task"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(task.status(), StatusCode::CREATED);
    other_requests(&client, &other).await;
    assert!(other.seen().iter().all(|r| r.authorization.is_none()));
    assert_eq!(mock.stats().tokens_issued, 1);
    assert!(
        mock.fhir_requests()
            .iter()
            .all(|r| r.token_number == Some(1))
    );
}

async fn other_requests(client: &ClientWithMiddleware, other: &RecordingServer) {
    for path in ["/fhir/DEFAULT/Patient/1", "/"] {
        let response = client.get(other.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(other.seen().len(), 2);
}

#[tokio::test]
async fn a_callers_own_authorization_is_left_alone() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let response = client(&auth)
        .get(format!("{}/Patient/1", mock.fhir_base_url()))
        .bearer_auth("mine")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(mock.stats().fhir_requests, 1);
    assert_eq!(mock.stats().token_requests, 0);
}

#[tokio::test]
async fn a_401_renews_once_and_replays_the_same_request() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    auth.ready().await.unwrap();
    mock.revoke_all_tokens();
    let body = r#"{"resourceType":"Task","status":"requested"}"#;
    let response = client(&auth)
        .post(format!("{}/Task?x=1", mock.fhir_base_url()))
        .header("x-request-id", "abc")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let received = mock.fhir_requests();
    assert_eq!(received.len(), 2);
    assert_eq!(
        (received[0].token_number, received[1].token_number),
        (Some(1), Some(2))
    );
    for request in &received {
        assert_eq!(request.method, http::Method::POST);
        assert_eq!(request.path_and_query, "/fhir/DEFAULT/Task?x=1");
        assert_eq!(request.body, body.as_bytes());
        assert_eq!(request.headers["x-request-id"], "abc");
    }
    assert_eq!(mock.stats().tokens_issued, 2);
}

#[tokio::test]
async fn a_403_is_passed_through_without_renewal() {
    let mock = mock().await;
    mock.set_forbidden(CLIENT_ID, true);
    let auth = authenticator(&mock).await;
    let response = client(&auth)
        .get(format!("{}/Patient/1", mock.fhir_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        (mock.stats().fhir_requests, mock.stats().tokens_issued),
        (1, 1)
    );
    assert_eq!(auth.stats().invalidations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_requests_on_an_empty_cell_fetch_one_token() {
    let mock = mock().await;
    mock.set_token_delay(Duration::from_millis(200));
    let auth = authenticator(&mock).await;
    let client = client(&auth);
    let base = mock.fhir_base_url();
    let tasks: Vec<_> = (0..1_000)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/Patient/{i}");
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(mock.stats().token_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_during_200_concurrent_requests_renews_exactly_once() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    auth.ready().await.unwrap();
    mock.revoke_all_tokens();
    let client = client(&auth);
    let base = mock.fhir_base_url();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/Patient/{i}");
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let stats = mock.stats();
    assert_eq!(stats.tokens_issued, 2, "exactly one renewal");
    assert!(stats.fhir_unauthorized >= 1);
    assert_eq!(
        stats.fhir_requests,
        200 + stats.fhir_unauthorized,
        "each 401 replayed once"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_streaming_body_gets_its_401_back() {
    let (logs, _guard) = capture_logs();
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    auth.ready().await.unwrap();
    mock.revoke_all_tokens();
    let stream = reqwest::Body::wrap(http_body_util::Full::new(Bytes::from_static(b"{}")));
    let response = client(&auth)
        .post(format!("{}/Task", mock.fhir_base_url()))
        .body(stream)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(mock.stats().fhir_requests, 1);
    assert!(logs.text().contains("cannot be replayed"));
    let next = client(&auth)
        .get(format!("{}/Patient/1", mock.fhir_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        next.status(),
        StatusCode::OK,
        "renewed for the next request"
    );
}

#[tokio::test]
async fn no_token_is_a_middleware_error_wrapping_ours() {
    let mock = mock().await;
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id("unregistered")
        .signing_key(rsa_key())
        .discover()
        .await
        .unwrap();
    let err = client(&auth)
        .get(format!("{}/Patient/1", mock.fhir_base_url()))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = err else {
        panic!("expected a middleware error, got {err:?}");
    };
    let ours = inner.downcast_ref::<koppeltaal_auth::Error>().unwrap();
    assert_eq!(ours.kind(), ErrorKind::TokenRejected);
    assert_eq!(mock.stats().fhir_requests, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_appears_in_trace_logs() {
    let (logs, _guard) = capture_logs();
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = client(&auth);
    let url = format!("{}/Patient/1", mock.fhir_base_url());
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    mock.revoke_all_tokens();
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    let text = logs.text();
    assert!(text.contains("token rejected by the server"));
    for request in mock.fhir_requests() {
        let token =
            request.headers["authorization"].to_str().unwrap()["Bearer ".len()..].to_owned();
        assert!(!text.contains(&token), "a token leaked into the logs");
    }
}

/// reqwest sends a caller's own `Host` header, and the server routes by it: the token goes only
/// when it names the FHIR base's host and port.
#[tokio::test]
async fn a_host_header_naming_another_host_gets_no_token() {
    let server = RecordingServer::start().await;
    let auth = server.authenticator();
    let url = server.url("/fhir/DEFAULT/Patient/1");
    let own = url::Url::parse(&url).unwrap();
    let own = format!("{}:{}", own.host_str().unwrap(), own.port().unwrap());
    for host in [own.as_str(), "other-tenant.example.org"] {
        let response = client(&auth).get(&url).header("host", host).send().await;
        assert_eq!(response.unwrap().status(), StatusCode::OK, "{host}");
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].authorization.is_some(), "its own host: {seen:?}");
    assert!(seen[1].authorization.is_none(), "another host: {seen:?}");
}
