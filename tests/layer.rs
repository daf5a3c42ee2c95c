//! `KoppeltaalAuthLayer` end to end: hyper-util's client through the layer against
//! `MockKoppeltaal` and other loopback servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{ErrorKind, KoppeltaalAuth, NotReplayable};
use support::{CLIENT_ID, RecordingServer, authenticator, capture_logs, mock, rsa_key};
use tower::{Service, ServiceBuilder, ServiceExt};

type HyperClient<B = Full<Bytes>> = Client<HttpConnector, B>;

fn hyper_client() -> HyperClient {
    hyper_client_for()
}

fn hyper_client_for<B>() -> HyperClient<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

async fn body_text(response: Response<hyper::body::Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn reads_and_creates_with_one_token() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    assert_eq!(auth.token_endpoint(), Some(mock.token_endpoint().as_str()));
    let client = ServiceBuilder::new()
        .layer(auth.layer())
        .service(hyper_client());
    let base = mock.fhir_base_url();
    let patient = client
        .clone()
        .oneshot(get(&format!("{base}/Patient/123")))
        .await
        .unwrap();
    assert_eq!(patient.status(), StatusCode::OK);
    assert!(body_text(patient).await.contains("\"id\":\"123\""));
    let task = Request::post(format!("{base}/Task"))
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from_static(
            br#"{"resourceType":"Task","status":"requested"}"#,
        )))
        .unwrap();
    let created = client.clone().oneshot(task).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    for _ in 0..20 {
        let response = client
            .clone()
            .oneshot(get(&format!("{base}/Patient/9")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let stats = mock.stats();
    assert_eq!((stats.tokens_issued, stats.fhir_requests), (1, 22));
    assert!(
        mock.fhir_requests()
            .iter()
            .all(|r| r.token_number == Some(1))
    );
    assert_eq!(
        auth.stats().waits,
        1,
        "only the very first request waited for the token"
    );
    assert!(auth.covers(&format!("{base}/Patient/1")));
    assert!(!auth.covers(&format!("http://{}/other", mock.addr())));
}

#[tokio::test]
async fn the_token_goes_only_to_the_fhir_base() {
    let mock = mock().await;
    let other = RecordingServer::start().await;
    let auth = authenticator(&mock).await;
    let client = ServiceBuilder::new()
        .layer(auth.layer())
        .service(hyper_client());
    auth.ready().await.unwrap();
    for url in [
        other.url("/fhir/DEFAULT/Patient/1"),
        other.url("/"),
        // The mock's own origin, outside the FHIR base path.
        format!("http://{}/other/Patient/1", mock.addr()),
        format!("http://{}/fhir/DEFAULTX/Patient/1", mock.addr()),
    ] {
        let _ = client.clone().oneshot(get(&url)).await.unwrap();
    }
    let seen = other.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.authorization.is_none()), "{seen:?}");
    assert_eq!(
        mock.stats().fhir_requests,
        0,
        "nothing reached the FHIR endpoint"
    );
}

/// An inner service that records the `Authorization` header of each request and answers `status`.
fn recording_service(
    seen: Arc<Mutex<Vec<Option<String>>>>,
    status: StatusCode,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(
                request
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            let mut response = Response::new(Full::default());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    })
}

#[tokio::test]
async fn plain_http_to_the_fhir_host_gets_no_token() {
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url("https://fhir.example.org/fhir")
        .token_source(FakeTokenSource::new())
        .build()
        .unwrap();
    let seen = Arc::default();
    let service = auth
        .layer()
        .layer_service(recording_service(Arc::clone(&seen), StatusCode::OK));
    for url in [
        "http://fhir.example.org/fhir/Patient/1",
        "https://fhir.example.org/fhir/Patient/1",
        "https://fhir.example.org:8443/fhir/Patient/1",
        "https://fhir.example.org/fhir/../admin",
    ] {
        service.clone().oneshot(get(url)).await.unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some("Bearer fake-token-1".to_owned()), None, None]
    );
    let err = KoppeltaalAuth::builder()
        .fhir_base_url("http://fhir.example.org/fhir")
        .token_source(FakeTokenSource::new())
        .build()
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Config,
        "a plain-http FHIR base off loopback is refused"
    );
}

/// `ServiceExt`-style helper: apply a layer to a service.
trait LayerExt {
    fn layer_service<S>(&self, service: S) -> KoppeltaalAuth<S>;
}

impl LayerExt for koppeltaal_auth::KoppeltaalAuthLayer {
    fn layer_service<S>(&self, service: S) -> KoppeltaalAuth<S> {
        tower::Layer::layer(self, service)
    }
}

#[tokio::test]
async fn a_callers_own_authorization_is_left_alone_and_never_retried() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = auth.layer().layer_service(hyper_client());
    let request = Request::get(format!("{}/Patient/1", mock.fhir_base_url()))
        .header("authorization", "Bearer my-own-token")
        .body(Full::default())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let received = mock.fhir_requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].headers["authorization"], "Bearer my-own-token");
    assert_eq!(mock.stats().token_requests, 0);
    assert_eq!(auth.stats().invalidations, 0);
}

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
/// uses the cell's): every such copy must follow a renewal made through any other clone.
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

#[tokio::test]
async fn a_403_is_passed_through_without_renewal() {
    let mock = mock().await;
    mock.set_forbidden(CLIENT_ID, true);
    let auth = authenticator(&mock).await;
    let client = auth.layer().layer_service(hyper_client());
    let response = client
        .oneshot(get(&format!("{}/Patient/1", mock.fhir_base_url())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(mock.stats().fhir_requests, 1);
    assert_eq!(mock.stats().tokens_issued, 1);
    assert_eq!(auth.stats().invalidations, 0);
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

/// A response future keeps only the id of its token's cell: a `401` that arrives after the
/// authenticator and every service are gone is handed back as is.
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

#[tokio::test]
async fn no_token_means_a_typed_error_and_nothing_sent() {
    let mock = mock().await;
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id("unregistered-client")
        .signing_key(rsa_key())
        .discover()
        .await
        .unwrap();
    let client = auth.layer().layer_service(hyper_client());
    let err = client
        .oneshot(get(&format!("{}/Patient/1", mock.fhir_base_url())))
        .await
        .unwrap_err();
    let auth_error = err
        .downcast_ref::<koppeltaal_auth::Error>()
        .expect("our error type");
    assert_eq!(auth_error.kind(), ErrorKind::TokenRejected);
    assert_eq!(auth_error.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(
        mock.stats().fhir_requests,
        0,
        "no request is sent without a token"
    );
}

#[tokio::test]
async fn works_in_a_tower_http_stack_and_redirects_never_carry_the_token_elsewhere() {
    let fhir = RecordingServer::start().await;
    let elsewhere = RecordingServer::start().await;
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(fhir.url("/fhir"))
        .token_source(FakeTokenSource::new())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(tower_http::follow_redirect::FollowRedirectLayer::new())
        .layer(tower_http::set_header::SetRequestHeaderLayer::overriding(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("kt-test"),
        ))
        .layer(auth.layer())
        // tower-http's timeout answers with an empty body of the response type: box `Incoming`.
        .layer(tower_http::map_response_body::MapResponseBodyLayer::new(
            |body: hyper::body::Incoming| body.boxed(),
        ))
        .service(hyper_client());
    let to = |url: String| url::form_urlencoded::byte_serialize(url.as_bytes()).collect::<String>();
    // Cross-origin redirect: the second hop must not carry the token.
    let cross = fhir.url(&format!(
        "/fhir/redirect?to={}",
        to(elsewhere.url("/landing"))
    ));
    assert_eq!(
        client.clone().oneshot(get(&cross)).await.unwrap().status(),
        StatusCode::OK
    );
    // Same-origin redirect under the base: both hops carry it.
    let same = fhir.url(&format!(
        "/fhir/redirect?to={}",
        to(fhir.url("/fhir/target"))
    ));
    assert_eq!(
        client.clone().oneshot(get(&same)).await.unwrap().status(),
        StatusCode::OK
    );
    // Same origin, outside the base path: no token.
    let outside = fhir.url(&format!("/fhir/redirect?to={}", to(fhir.url("/admin"))));
    assert_eq!(
        client.oneshot(get(&outside)).await.unwrap().status(),
        StatusCode::OK
    );
    let landed = elsewhere.seen();
    assert_eq!(landed.len(), 1);
    assert_eq!(
        landed[0].authorization, None,
        "the token must not follow a redirect elsewhere"
    );
    let hops: Vec<(String, bool)> = fhir
        .seen()
        .into_iter()
        .map(|r| (r.path, r.authorization.is_some()))
        .collect();
    assert_eq!(
        hops,
        [
            ("/fhir/redirect".to_owned(), true),
            ("/fhir/redirect".to_owned(), true),
            ("/fhir/target".to_owned(), true),
            ("/fhir/redirect".to_owned(), true),
            ("/admin".to_owned(), false),
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_appears_in_trace_logs() {
    let (logs, _guard) = capture_logs();
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = ServiceBuilder::new()
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                tower_http::trace::DefaultMakeSpan::new()
                    .level(tracing::Level::TRACE)
                    .include_headers(true),
            ),
        )
        .layer(auth.layer())
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                tower_http::trace::DefaultMakeSpan::new()
                    .level(tracing::Level::TRACE)
                    .include_headers(true),
            ),
        )
        .service(hyper_client());
    let url = format!("{}/Patient/1", mock.fhir_base_url());
    assert_eq!(
        client.clone().oneshot(get(&url)).await.unwrap().status(),
        StatusCode::OK
    );
    mock.revoke_all_tokens();
    assert_eq!(
        client.clone().oneshot(get(&url)).await.unwrap().status(),
        StatusCode::OK
    );
    let text = logs.text();
    assert!(
        text.contains("authorization"),
        "headers are logged, so the test means something"
    );
    assert!(text.contains("token rejected by the server"));
    let tokens: Vec<String> = mock
        .fhir_requests()
        .iter()
        .map(|r| {
            r.headers["authorization"]
                .to_str()
                .unwrap()
                .trim_start_matches("Bearer ")
                .to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 3);
    for token in tokens {
        assert!(!text.contains(&token), "a token leaked into the logs");
    }
}
