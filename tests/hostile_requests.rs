//! Requests a caller can build that must not make the layers panic or lose what the caller set:
//! a header map filled to http's limit (32,768 entries), and several `Authorization` values of
//! the caller's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::Full;
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{Authenticator, KoppeltaalAuth};
use support::layer::authorization_recorder;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Body = Full<Bytes>;
const BASE: &str = "https://fhir.example.org/fhir";

fn authenticator() -> Authenticator {
    KoppeltaalAuth::builder()
        .fhir_base_url(BASE)
        .token_source(FakeTokenSource::new().with_lifetime(Duration::from_secs(3_600)))
        .build()
        .unwrap()
}

/// A request whose header map takes no further entry.
fn full_request() -> Request<Body> {
    let mut request = Request::get(format!("{BASE}/Patient/1"))
        .body(Body::default())
        .unwrap();
    let mut n = 0u32;
    while request
        .headers_mut()
        .try_append(
            HeaderName::try_from(format!("x-{n}")).unwrap(),
            HeaderValue::from_static("v"),
        )
        .is_ok()
    {
        n += 1;
    }
    request
}

#[tokio::test]
async fn a_full_header_map_is_sent_without_a_token_on_the_slow_and_the_fast_path() {
    let auth = authenticator();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = ServiceBuilder::new()
        .layer(auth.layer())
        .layer(auth.trace_layer())
        .service(authorization_recorder(Arc::clone(&seen), |_, _| {
            http::StatusCode::OK
        }));
    // The cell is empty: the slow path (wait for the token, then set it).
    service.clone().oneshot(full_request()).await.unwrap();
    // Now warm: the fast path, on a fresh clone and on a used service.
    service.clone().oneshot(full_request()).await.unwrap();
    let mut used = service.clone();
    for _ in 0..2 {
        used.ready()
            .await
            .unwrap()
            .call(full_request())
            .await
            .unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), vec![Vec::<String>::new(); 4]);
}

/// Sent without the token, the request's `401` says nothing about the token: returned as it is
/// on both paths, the token kept (the slow path used to take it for a rejection and renew).
#[tokio::test]
async fn a_401_to_a_request_sent_without_the_token_renews_nothing() {
    let auth = authenticator();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = auth
        .layer()
        .layer(authorization_recorder(Arc::clone(&seen), |_, _| {
            http::StatusCode::UNAUTHORIZED
        }));
    // The slow path (the cell is empty), then the fast path.
    for _ in 0..2 {
        let response = service.clone().oneshot(full_request()).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
    }
    assert_eq!(*seen.lock().unwrap(), vec![Vec::<String>::new(); 2]);
    let stats = auth.stats();
    assert_eq!((stats.invalidations, stats.fetches_ok), (0, 1), "{stats:?}");
}

#[tokio::test]
async fn a_callers_own_authorization_values_are_all_kept_in_order() {
    let auth = authenticator();
    auth.ready().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut service = auth
        .layer()
        .layer(authorization_recorder(Arc::clone(&seen), |_, _| {
            http::StatusCode::OK
        }));
    let own = ["Basic dXNlcjpwdw==", "Bearer theirs"];
    for _ in 0..3 {
        let mut request = Request::get(format!("{BASE}/Patient/1"))
            .body(Body::default())
            .unwrap();
        for value in own {
            request
                .headers_mut()
                .append(AUTHORIZATION, HeaderValue::from_static(value));
        }
        service.ready().await.unwrap().call(request).await.unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![own.map(String::from).to_vec(); 3]
    );
}

/// Answers `401` to the first token it sees (and to any request carrying it), `200` otherwise.
fn rejecting_the_first_token(values: &[String], earlier: &[Vec<String>]) -> http::StatusCode {
    if earlier.first().is_none_or(|first| first == values) {
        http::StatusCode::UNAUTHORIZED
    } else {
        http::StatusCode::OK
    }
}

#[tokio::test]
async fn a_request_with_25_000_values_of_one_header_is_replayed_after_a_401() {
    let auth = authenticator();
    auth.ready().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    // How many `x-many` values each send carried, in order.
    let many = Arc::new(Mutex::new(Vec::new()));
    let counting = {
        let many = Arc::clone(&many);
        tower::util::MapRequestLayer::new(move |request: Request<Body>| {
            let values = request.headers().get_all("x-many");
            let all_v = values.iter().all(|value| value == "v");
            many.lock().unwrap().push((values.iter().count(), all_v));
            request
        })
    };
    let service = auth.layer().layer(counting.layer(authorization_recorder(
        Arc::clone(&seen),
        rejecting_the_first_token,
    )));
    let mut request = Request::get(format!("{BASE}/Patient/1"))
        .body(Body::default())
        .unwrap();
    for _ in 0..25_000 {
        request
            .headers_mut()
            .append("x-many", HeaderValue::from_static("v"));
    }
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        http::StatusCode::OK,
        "replayed with a new token"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1]);
    assert_eq!(
        *many.lock().unwrap(),
        [(25_000, true), (25_000, true)],
        "every value sent, and sent again"
    );
}
