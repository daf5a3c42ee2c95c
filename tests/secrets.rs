//! Secret hygiene: run every flow (success, each failure, 401 replay, both adapters) with a
//! TRACE-level capturing subscriber, format every public type with `Debug` and `Display`, and
//! find no access token, client assertion or private key material anywhere. Header values are
//! marked sensitive, and a token never goes over plain HTTP off loopback or to another origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::jwks::{JwkSet, JwksService};
use koppeltaal_auth::testing::{FakeTokenSource, MockResponse};
use koppeltaal_auth::{
    ClientAssertion, ClientCredentials, KeySet, KoppeltaalAuth, RefreshPolicy, TokenSource,
};
use support::{CLIENT_ID, capture_logs, mock, rsa_key};
use tower::{Layer, ServiceExt};

#[tokio::test(flavor = "current_thread")]
async fn no_token_assertion_or_key_appears_in_logs_debug_display_or_errors() {
    let (logs, _guard) = capture_logs();
    let mock = mock().await;
    let key = rsa_key();
    let mut shown: Vec<String> = Vec::new();

    // Success, through the tower layer.
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(key.clone())
        .discover()
        .await
        .unwrap();
    let layer = auth.layer();
    let client = layer
        .clone()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let get = |client: &_| {
        let request = Request::get(format!("{}/Patient/1", mock.fhir_base_url()))
            .body(Full::<Bytes>::default())
            .unwrap();
        tower::ServiceExt::oneshot(Clone::clone(client), request)
    };
    assert_eq!(get(&client).await.unwrap().status(), StatusCode::OK);
    // 401 -> renewal -> replay.
    mock.revoke_all_tokens();
    assert_eq!(get(&client).await.unwrap().status(), StatusCode::OK);
    // The reqwest adapter, and its replay.
    let reqwest_client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build();
    let url = format!("{}/Patient/2", mock.fhir_base_url());
    assert_eq!(reqwest_client.get(&url).send().await.unwrap().status(), 200);
    mock.revoke_all_tokens();
    assert_eq!(reqwest_client.get(&url).send().await.unwrap().status(), 200);

    // Every failure of the token endpoint, one after another.
    let source = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(mock.token_endpoint())
        .signing_key(key.clone())
        .build()
        .unwrap();
    let echoed = ClientAssertion::new(CLIENT_ID, mock.token_endpoint())
        .unwrap()
        .sign(&key)
        .unwrap();
    let issued_so_far = mock.fhir_requests()[0].headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    let failures = [
        MockResponse::new(StatusCode::SERVICE_UNAVAILABLE, "busy"),
        MockResponse::garbage(),
        MockResponse::oversized(100_000),
        // A server that echoes secrets back in its error page.
        MockResponse::new(
            StatusCode::BAD_REQUEST,
            format!(
                "<html>bad assertion {} with {issued_so_far}</html>",
                echoed.as_str()
            ),
        ),
        MockResponse::json(
            &serde_json::json!({"access_token": "leaky-token-123456", "token_type": "DPoP"}),
        ),
        // An OAuth error answered with 200, echoing an assertion and a token.
        MockResponse::json(&serde_json::json!({
            "error": "invalid_client",
            "error_description": format!("bad assertion {} with {issued_so_far}", echoed.as_str()),
        })),
    ];
    for failure in failures {
        mock.push_token_response(failure);
        let error = source.fetch().await.unwrap_err();
        shown.push(format!("{error} {error:?}"));
    }
    let unknown = ClientCredentials::builder()
        .client_id("unknown-client")
        .token_endpoint(mock.token_endpoint())
        .signing_key(key.clone())
        .build()
        .unwrap();
    let error = unknown.fetch().await.unwrap_err();
    shown.push(format!("{error} {error:?}"));
    // A token fetched directly, and the cell's view of it.
    let token = auth.cell().access_token().await.unwrap();
    let header = auth.token().await.unwrap();
    assert!(token.header_value().is_sensitive());
    assert!(header.value().is_sensitive());

    // Every public type that holds or touches a secret, in Debug and Display where it has one.
    let keys = KeySet::new(key.clone());
    let builder = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(key.clone());
    shown.extend([
        format!("{auth:?}"),
        format!("{layer:?}"),
        format!("{client:?}"),
        format!("{:?}", auth.middleware()),
        format!("{:?}", auth.cell()),
        format!("{:?}", auth.stats()),
        format!("{token:?}"),
        format!("{header:?}"),
        format!("{:?}", token.header_value()),
        format!("{source:?}"),
        format!("{builder:?}"),
        format!(
            "{:?}",
            ClientCredentials::builder().signing_key(key.clone())
        ),
        format!("{key:?}"),
        format!("{keys:?}"),
        format!("{echoed:?}"),
        format!(
            "{:?}",
            ClientAssertion::new(CLIENT_ID, "https://a/t").unwrap()
        ),
        format!("{:?}", JwkSet::from_keys([&key]).unwrap()),
        format!("{:?}", JwksService::new(keys)),
        format!("{:?}", RefreshPolicy::default()),
        format!("{:?}", get(&client)),
        format!("{mock:?}"),
        format!("{:?}", FakeTokenSource::new()),
        format!("{} {:?}", key.algorithm(), key.algorithm()),
        // A proxy's credentials, in its URL and as basic auth, and a client's default headers
        // (an API gateway's key) are secrets too.
        format!(
            "{:?}",
            KoppeltaalAuth::builder().proxy(
                reqwest::Proxy::all("http://proxy-user:proxy-url-secret@proxy.internal:3128")
                    .unwrap()
                    .basic_auth("proxy-user", "proxy-basic-secret")
            )
        ),
        format!(
            "{:?}",
            ClientCredentials::builder().http_client_builder(
                reqwest::Client::builder().default_headers(
                    [(
                        http::HeaderName::from_static("x-api-key"),
                        http::HeaderValue::from_static("gateway-key-secret"),
                    )]
                    .into_iter()
                    .collect()
                )
            )
        ),
    ]);
    shown.push(logs.text());

    // The secrets: every token the mock issued, every assertion it received, the private key.
    let mut secrets: Vec<String> = mock
        .fhir_requests()
        .iter()
        .filter_map(|r| r.headers.get("authorization"))
        .map(|v| v.to_str().unwrap()["Bearer ".len()..].to_owned())
        .collect();
    secrets.push(token.as_str().to_owned());
    secrets.push("leaky-token-123456".to_owned());
    secrets.extend(
        [
            "proxy-url-secret",
            "proxy-basic-secret",
            "gateway-key-secret",
        ]
        .map(String::from),
    );
    {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD;
        secrets.push(basic.encode("proxy-user:proxy-basic-secret"));
        secrets.push(basic.encode("proxy-user:proxy-url-secret"));
    }
    for request in mock.token_requests() {
        if let Some(assertion) = request.assertion {
            // The signature and the payload are each a secret-bearing part.
            secrets.extend(assertion.split('.').skip(1).map(str::to_owned));
        }
    }
    secrets.extend(echoed.as_str().split('.').skip(1).map(str::to_owned));
    let pkcs8 = key.to_pkcs8_pem();
    secrets.extend(
        pkcs8
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_owned),
    );
    assert!(secrets.len() > 20, "the test looks for something");
    assert!(
        logs.text().contains("token rejected by the server"),
        "the capture holds the flows"
    );
    // Not only whole secrets: no 24-character piece of one may show (a truncated error snippet
    // would otherwise hide a leak).
    const PIECE: usize = 24;
    let mut pieces_shown = std::collections::HashSet::new();
    for text in &shown {
        let bytes = text.as_bytes();
        for window in bytes.windows(PIECE) {
            pieces_shown.insert(window);
        }
    }
    for secret in &secrets {
        let bytes = secret.as_bytes();
        if bytes.len() < PIECE {
            assert!(
                shown.iter().all(|text| !text.contains(secret.as_str())),
                "a secret leaked"
            );
            continue;
        }
        for piece in bytes.windows(PIECE) {
            assert!(
                !pieces_shown.contains(piece),
                "a piece of a secret leaked: {}",
                String::from_utf8_lossy(piece)
            );
        }
    }
}

#[tokio::test]
async fn tokens_never_go_over_plain_http_off_loopback_or_to_another_origin() {
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url("https://fhir.example.org/fhir/DEFAULT")
        .token_source(FakeTokenSource::new())
        .build()
        .unwrap();
    // (URI, whether the Authorization header it got was sensitive).
    type Seen = Vec<(String, Option<bool>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let recorder = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let sensitive = request
                .headers()
                .get("authorization")
                .map(http::HeaderValue::is_sensitive);
            seen.lock()
                .unwrap()
                .push((request.uri().to_string(), sensitive));
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        })
    };
    let service = auth.layer().layer(recorder);
    let urls = [
        "https://fhir.example.org/fhir/DEFAULT/Patient/1",
        "http://fhir.example.org/fhir/DEFAULT/Patient/1",
        "https://fhir.example.org.evil.example/fhir/DEFAULT/Patient/1",
        "https://evil.example/fhir/DEFAULT/Patient/1",
        "https://fhir.example.org:444/fhir/DEFAULT/Patient/1",
        "https://fhir.example.org/other/Patient/1",
        "https://user@fhir.example.org/fhir/DEFAULT/Patient/1",
        "https://fhir.example.org/fhir/DEFAULT/../../other",
    ];
    for url in urls {
        let request = Request::get(url).body(Full::default()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].1,
        Some(true),
        "the FHIR base gets the token, marked sensitive"
    );
    for (uri, authorization) in &seen[1..] {
        assert_eq!(*authorization, None, "{uri} must not get the token");
    }
    // Redirects: see tests/layer.rs, works_in_a_tower_http_stack_and_redirects_never_carry_the_token_elsewhere.
}
