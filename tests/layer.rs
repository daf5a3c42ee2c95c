//! `KoppeltaalAuthLayer` end to end: hyper-util's client through the layer against
//! `MockKoppeltaal` and other loopback servers: which requests get the token, the caller's own
//! header, errors, tower-http stacks and logs. Renewal and replay after a `401`:
//! `tests/layer_renewal.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{Authenticator, ErrorKind, KoppeltaalAuth};
use support::layer::{LayerExt, body_text, get, hyper_client, recording_service};
use support::{CLIENT_ID, RecordingServer, authenticator, capture_logs, mock, rsa_key};
use tower::{ServiceBuilder, ServiceExt};

/// The `Authorization` value of each request an inner service saw.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// An authenticator with fake tokens for `base`.
fn fake_auth(base: &str) -> Authenticator {
    KoppeltaalAuth::builder()
        .fhir_base_url(base)
        .token_source(FakeTokenSource::new())
        .build()
        .unwrap()
}

/// `auth`'s layer over an inner service that records each request's `Authorization` and
/// answers `200`.
fn recorded(
    auth: &Authenticator,
) -> (
    Seen,
    impl tower::Service<Request<Full<Bytes>>, Error = tower::BoxError> + Clone + use<>,
) {
    let seen = Arc::default();
    let service = auth
        .layer()
        .layer_service(recording_service(Arc::clone(&seen), StatusCode::OK));
    (seen, service)
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
    // The FHIR base on a server that records every request, and another server.
    let host = RecordingServer::start().await;
    let other = RecordingServer::start().await;
    let auth = host.authenticator();
    let client = ServiceBuilder::new()
        .layer(auth.layer())
        .service(hyper_client());
    for url in [
        other.url("/fhir/DEFAULT/Patient/1"),
        other.url("/"),
        // The FHIR base's own origin, outside its path.
        host.url("/other/Patient/1"),
        host.url("/fhir/DEFAULTX/Patient/1"),
        host.url("/fhir"),
        // Under it: the only one with the token.
        host.url("/fhir/DEFAULT/Patient/1"),
    ] {
        let _ = client.clone().oneshot(get(&url)).await.unwrap();
    }
    let seen = other.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.authorization.is_none()), "{seen:?}");
    let seen = host.seen();
    let with_token: Vec<_> = seen
        .iter()
        .filter(|r| r.authorization.is_some())
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(with_token, ["/fhir/DEFAULT/Patient/1"], "{seen:?}");
}

#[tokio::test]
async fn plain_http_to_the_fhir_host_gets_no_token() {
    let (seen, service) = recorded(&fake_auth("https://fhir.example.org/fhir"));
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

/// A base written with a trailing slash is handed back without it, so that the README's
/// `format!("{}/Patient/123", auth.fhir_base_url())` makes no `//` in the path.
#[tokio::test]
async fn a_base_with_a_trailing_slash_is_handed_back_without_it() {
    let auth = fake_auth("https://fhir.example.org/fhir/DEFAULT/");
    assert_eq!(
        auth.fhir_base_url(),
        "https://fhir.example.org/fhir/DEFAULT"
    );
    let (seen, service) = recorded(&auth);
    let url = format!("{}/Patient/123", auth.fhir_base_url());
    service.oneshot(get(&url)).await.unwrap();
    assert!(seen.lock().unwrap()[0].is_some(), "{url} gets the token");
}

/// A request to the base with its own `Host` header is routed by that header: the token goes
/// only when it names the base's host and port (any case, the default port or none).
#[tokio::test]
async fn a_host_header_naming_another_host_gets_no_token() {
    let (seen, service) = recorded(&fake_auth("https://fhir.example.org/fhir"));
    let cases: &[(&[&str], bool)] = &[
        (&[], true),
        (&["fhir.example.org"], true),
        (&["FHIR.Example.ORG"], true),
        (&["fhir.example.org:443"], true),
        (&["other-tenant.example.org"], false),
        (&["fhir.example.org:8443"], false),
        (&["fhir.example.org."], false),
        (&["fhir.example.org", "other-tenant.example.org"], false),
    ];
    for (hosts, _) in cases {
        let mut request = get("https://fhir.example.org/fhir/Patient/1");
        for host in *hosts {
            let host = http::HeaderValue::from_str(host).unwrap();
            request.headers_mut().append(http::header::HOST, host);
        }
        service.clone().oneshot(request).await.unwrap();
    }
    let seen = seen.lock().unwrap();
    for ((hosts, token), got) in cases.iter().zip(seen.iter()) {
        assert_eq!(got.is_some(), *token, "Host {hosts:?}");
    }
    assert_eq!(seen.len(), cases.len());
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
    let auth = fake_auth(&fhir.url("/fhir"));
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
