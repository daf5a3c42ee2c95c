//! `KoppeltaalAuthLayer` after a `401`: one renewal per token generation for any number of
//! requests, the replay (or not: streaming bodies, replay off), every service and clone following
//! the renewal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{KoppeltaalAuth, KoppeltaalAuthLayer, NotReplayable};
use support::layer::{
    LayerExt, SlowToReady, get, hyper_client, hyper_client_for, recording_service,
};
use support::{CLIENT_ID, authenticator, capture_logs, mock, rsa_key};
use tower::{Layer, Service, ServiceExt};

#[tokio::test]
async fn a_401_renews_once_and_replays_the_same_request() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = auth.layer().layer_service(hyper_client());
    auth.ready().await.unwrap();
    mock.revoke_all_tokens();
    let body = r#"{"resourceType":"Task","status":"requested","intent":"order"}"#;
    let request = Request::post(format!("{}/Task?_pretty=true", mock.fhir_base_url()))
        .header("content-type", "application/fhir+json")
        .header("x-request-id", "req-42")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let received = mock.fhir_requests();
    assert_eq!(received.len(), 2, "sent, rejected, replayed once");
    let (first, replay) = (&received[0], &received[1]);
    assert_eq!(
        (first.status, replay.status),
        (StatusCode::UNAUTHORIZED, StatusCode::CREATED)
    );
    assert_eq!(
        (first.token_number, replay.token_number),
        (Some(1), Some(2))
    );
    assert_eq!(first.method, Method::POST);
    assert_eq!(replay.method, Method::POST);
    assert_eq!(first.path_and_query, replay.path_and_query);
    assert_eq!(replay.path_and_query, "/fhir/DEFAULT/Task?_pretty=true");
    assert_eq!(replay.body, body.as_bytes());
    assert_eq!(first.body, replay.body);
    assert_eq!(replay.headers["x-request-id"], "req-42");
    assert_eq!(replay.headers["content-type"], "application/fhir+json");
    assert_ne!(
        first.headers["authorization"],
        replay.headers["authorization"]
    );
    assert_eq!(mock.stats().tokens_issued, 2);
    assert_eq!(auth.stats().invalidations, 1);
}

/// A service used for many calls keeps a copy of the token of its own (a clone for one call
/// uses its thread's): every such copy must follow a renewal made through any other clone.
#[tokio::test]
async fn long_lived_services_and_one_call_clones_all_follow_a_renewal() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let mut long_lived = auth.layer().layer_service(hyper_client());
    let url = format!("{}/Patient/1", mock.fhir_base_url());
    for _ in 0..3 {
        let response = long_lived.ready().await.unwrap().call(get(&url)).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    let mut other = long_lived.clone();
    for _ in 0..3 {
        let response = other.ready().await.unwrap().call(get(&url)).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    mock.revoke_all_tokens();
    // The renewal goes through `other`; `long_lived` and a fresh clone must pick it up.
    let response = other.ready().await.unwrap().call(get(&url)).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    let response = long_lived.ready().await.unwrap().call(get(&url)).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    let response = long_lived.clone().oneshot(get(&url)).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    let tokens: Vec<_> = mock
        .fhir_requests()
        .iter()
        .map(|r| (r.token_number, r.status.as_u16()))
        .collect();
    let mut expected = vec![(Some(1), 200); 6];
    expected.extend([
        (Some(1), 401),
        (Some(2), 200),
        (Some(2), 200),
        (Some(2), 200),
    ]);
    assert_eq!(tokens, expected);
    assert_eq!(mock.stats().tokens_issued, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_requests_on_an_empty_cell_fetch_one_token() {
    let mock = mock().await;
    mock.set_token_delay(Duration::from_millis(200));
    let auth = authenticator(&mock).await;
    let client = auth.layer().layer_service(hyper_client());
    let base = mock.fhir_base_url();
    let tasks: Vec<_> = (0..1_000)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/Patient/{i}");
            tokio::spawn(async move { client.oneshot(get(&url)).await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(mock.stats().token_requests, 1);
    assert_eq!(mock.stats().fhir_requests, 1_000);
    assert_eq!(mock.stats().fhir_unauthorized, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_during_200_concurrent_requests_renews_exactly_once() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = auth.layer().layer_service(hyper_client());
    auth.ready().await.unwrap();
    mock.revoke_all_tokens();
    let base = mock.fhir_base_url();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/Patient/{i}");
            tokio::spawn(async move { client.oneshot(get(&url)).await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK, "no request fails");
    }
    let stats = mock.stats();
    assert_eq!(stats.tokens_issued, 2, "exactly one renewal");
    assert_eq!(stats.token_requests, 2);
    // Requests that started after the renewal went out with the new token at once; every one
    // that met the revoked token was replayed exactly once.
    assert!(stats.fhir_unauthorized >= 1);
    assert_eq!(stats.fhir_requests, 200 + stats.fhir_unauthorized);
    assert_eq!(auth.stats().invalidations, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_streaming_body_gets_its_401_back_and_the_reason_is_logged() {
    let (logs, _guard) = capture_logs();
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = auth
        .layer()
        .layer_service(hyper_client_for::<NotReplayable<Full<Bytes>>>());
    auth.ready().await.unwrap();
    mock.revoke_all_tokens();
    let request = Request::post(format!("{}/Task", mock.fhir_base_url()))
        .body(NotReplayable::new(Full::new(Bytes::from_static(b"{}"))))
        .unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(mock.stats().fhir_requests, 1, "sent once, not replayed");
    assert!(
        logs.text().contains("the request body cannot be replayed"),
        "{}",
        logs.text()
    );
    // The rejected token was dropped: the next request gets a new one.
    let request = Request::post(format!("{}/Task", mock.fhir_base_url()))
        .body(NotReplayable::new(Full::new(Bytes::from_static(b"{}"))))
        .unwrap();
    assert_eq!(
        client.oneshot(request).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(mock.stats().tokens_issued, 2);
}

#[tokio::test]
async fn replay_can_be_turned_off() {
    let mock = mock().await;
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .token_endpoint(mock.token_endpoint())
        .replay_on_401(false)
        .build()
        .unwrap();
    let client = auth.layer().layer_service(hyper_client());
    auth.ready().await.unwrap();
    mock.revoke_all_tokens();
    let url = format!("{}/Patient/1", mock.fhir_base_url());
    assert_eq!(
        client.clone().oneshot(get(&url)).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client.oneshot(get(&url)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(mock.stats().fhir_requests, 2);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_always_answers_401_sees_each_request_at_most_twice() {
    let seen = Arc::default();
    let source = FakeTokenSource::new();
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url("https://fhir.example.org/fhir")
        .token_source(source.clone())
        .build()
        .unwrap();
    let service = auth.layer().layer_service(recording_service(
        Arc::clone(&seen),
        StatusCode::UNAUTHORIZED,
    ));
    for _ in 0..3 {
        let response = service
            .clone()
            .oneshot(get("https://fhir.example.org/fhir/Patient"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        6,
        "each of 3 requests sent exactly twice"
    );
    let instants = source.fetch_instants();
    assert_eq!(instants.len(), 4, "first token + one renewal per request");
    // Renewals of brand-new tokens after the first are spaced by the backoff.
    assert!(instants[2] - instants[1] >= Duration::from_millis(200));
    assert!(instants[3] - instants[2] >= Duration::from_millis(200));
}

/// A response future keeps only a weak link to its token's cell: a `401` that arrives after
/// the authenticator and every service are gone is handed back as is.
#[tokio::test]
async fn a_401_after_every_handle_is_dropped_is_returned_as_is() {
    let source = FakeTokenSource::new();
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url("https://fhir.example.org/fhir")
        .token_source(source.clone())
        .build()
        .unwrap();
    let (release, gate) = tokio::sync::oneshot::channel::<()>();
    let gate = Arc::new(tokio::sync::Mutex::new(Some(gate)));
    let inner = tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let gate = Arc::clone(&gate);
        async move {
            let gate = gate.lock().await.take().unwrap();
            gate.await.unwrap();
            let mut response = Response::new(Full::<Bytes>::default());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            Ok::<_, Infallible>(response)
        }
    });
    let mut service = auth.layer().layer_service(inner);
    auth.ready().await.unwrap();
    let future = service
        .ready()
        .await
        .unwrap()
        .call(get("https://fhir.example.org/fhir/Patient"));
    drop((service, auth));
    release.send(()).unwrap();
    let response = future.await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        source.fetch_instants().len(),
        1,
        "no renewal without a cell"
    );
}

/// The other side of the weak link: a layer made from a cell, and its service, dropped (as
/// `oneshot` drops it) before the `401` arrives: the request is still renewed and replayed while
/// someone holds the cell.
#[tokio::test]
async fn a_401_after_the_layer_is_dropped_still_renews_while_the_cell_lives() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let cell = auth.cell().clone();
    drop(auth);
    cell.ready().await.unwrap();
    mock.revoke_all_tokens();
    let response = KoppeltaalAuthLayer::new(cell.clone(), &mock.fhir_base_url())
        .unwrap()
        .layer(hyper_client())
        .oneshot(get(&format!("{}/Patient", mock.fhir_base_url())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(mock.stats().tokens_issued, 2, "renewed once");
    assert_eq!(cell.stats().invalidations, 1);
}

/// One request from `source`'s tokens through the layer into a [`SlowToReady`] service: its
/// answer, and the service (which recorded the tokens sent).
async fn through_slow_to_ready(
    source: FakeTokenSource,
) -> (
    Result<Response<Full<Bytes>>, koppeltaal_auth::BoxError>,
    SlowToReady,
) {
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url("https://fhir.example.org/fhir")
        .token_source(source)
        .refresh_policy(koppeltaal_auth::RefreshPolicy::default().background_refresh(false))
        .build()
        .unwrap();
    let service = SlowToReady::default();
    let request = Request::get("https://fhir.example.org/fhir/Patient/1")
        .body(Full::default())
        .unwrap();
    let response = auth.layer().layer(service.clone()).oneshot(request).await;
    (response, service)
}

/// The renewed token is usable for 9 s, the service gets ready for the replay 15 s later: the
/// replay carries a token usable then (it used to carry the renewed one, expired by then).
#[tokio::test(start_paused = true)]
async fn a_replay_waiting_long_for_readiness_carries_a_token_usable_when_it_is_sent() {
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(10));
    let (response, service) = through_slow_to_ready(source).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(
        service.sent(),
        ["Bearer fake-token-1", "Bearer fake-token-3"],
        "renewed (2), which ran out while the service got ready: sent with a fresh one"
    );
}

/// The same, with the source failing once the renewed token is out: the caller gets the `401`
/// back, not an error (the `401` used to be dropped before the token for the replay was known).
#[tokio::test(start_paused = true)]
async fn a_replay_that_finds_no_usable_token_after_readiness_returns_the_401() {
    let source = FakeTokenSource::new();
    source.push_token(Duration::from_secs(10));
    source.push_token(Duration::from_secs(10));
    source.fail_with(koppeltaal_auth::Error::new(
        koppeltaal_auth::ErrorKind::Transport,
        "scripted outage",
    ));
    let (response, service) = through_slow_to_ready(source).await;
    assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        service.sent(),
        ["Bearer fake-token-1"],
        "no replay without a usable token"
    );
}
