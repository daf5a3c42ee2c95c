//! Requests a caller can build that must not make the layers panic or lose what the caller set:
//! a header map filled to http's limit (32,768 entries), and several `Authorization` values of
//! the caller's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{Authenticator, KoppeltaalAuth};
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

/// An inner service that keeps the `Authorization` values it got.
fn recording(
    seen: Arc<Mutex<Vec<Vec<String>>>>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<Body>| {
        let values = request
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .collect();
        seen.lock().unwrap().push(values);
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::default())))
    })
}

#[tokio::test]
async fn a_full_header_map_is_sent_without_a_token_on_the_slow_and_the_fast_path() {
    let auth = authenticator();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = ServiceBuilder::new()
        .layer(auth.layer())
        .layer(auth.trace_layer())
        .service(recording(Arc::clone(&seen)));
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

#[tokio::test]
async fn a_callers_own_authorization_values_are_all_kept_in_order() {
    let auth = authenticator();
    auth.ready().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut service = auth.layer().layer(recording(Arc::clone(&seen)));
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
