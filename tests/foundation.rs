//! The token flow end to end against `MockKoppeltaal` over loopback HTTP: tokens per algorithm,
//! every rejection as a typed error, the mock's own strictness, discovery, and secrets kept out
//! of `Debug`, errors and logs. Malformed and oversized answers: `token_responses.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::StatusCode;
use koppeltaal_auth::testing::{MockKoppeltaal, MockResponse};
use koppeltaal_auth::{
    Algorithm, ClientAssertion, ClientCredentials, Error, ErrorKind, KeyId, SigningKey, TokenSource,
};
use serde_json::json;
use support::{CLIENT_ID, capture_logs, key_for, mock, rsa_key, source};

async fn fetch_err(source: &ClientCredentials) -> Error {
    source.fetch().await.expect_err("token request should fail")
}

#[tokio::test]
async fn a_token_for_each_algorithm() {
    let mock = MockKoppeltaal::builder()
        .allowed_algorithms(&Algorithm::ALL)
        .start()
        .await
        .unwrap();
    for alg in Algorithm::ALL {
        let key = key_for(alg);
        let client_id = format!("client-{alg}");
        mock.register_key(&client_id, &key);
        let source = ClientCredentials::builder()
            .client_id(&client_id)
            .token_endpoint(mock.token_endpoint())
            .signing_key(key)
            .build()
            .unwrap();
        let token = source
            .fetch()
            .await
            .unwrap_or_else(|err| panic!("{alg}: {err}"));
        assert_eq!(token.lifetime(), Duration::from_secs(300), "{alg}");
        assert_eq!(token.scope(), Some("system/*.cruds"));
    }
    assert_eq!(mock.stats().tokens_issued, 8);
    assert_eq!(mock.stats().token_requests_failed, 0);
}

#[tokio::test]
async fn the_request_is_exactly_smart_backend_services() {
    let mock = mock().await;
    source(&mock, rsa_key()).fetch().await.unwrap();
    let scoped = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(mock.token_endpoint())
        .signing_key(rsa_key())
        .scope("system/*.rs")
        .build()
        .unwrap();
    scoped.fetch().await.unwrap();
    let requests = mock.token_requests();
    assert_eq!(
        requests[0].params,
        ["grant_type", "client_assertion_type", "client_assertion"],
        "no scope unless configured, no client secret"
    );
    assert_eq!(requests[1].scope.as_deref(), Some("system/*.rs"));
    let header = requests[0].assertion_header.as_ref().unwrap();
    assert_eq!(
        header,
        &json!({"alg": "RS512", "kid": "test-rsa", "typ": "JWT"})
    );
    let claims = requests[0].assertion_claims.as_ref().unwrap();
    assert_eq!(claims["aud"], mock.token_endpoint());
    assert_ne!(
        requests[0].assertion_claims.as_ref().unwrap()["jti"],
        requests[1].assertion_claims.as_ref().unwrap()["jti"],
        "a new jti for every request"
    );
}

#[tokio::test]
async fn rejections_become_typed_errors() {
    let mock = mock().await;

    // Unknown client.
    let unknown = ClientCredentials::builder()
        .client_id("not-registered")
        .token_endpoint(mock.token_endpoint())
        .signing_key(rsa_key())
        .build()
        .unwrap();
    let err = fetch_err(&unknown).await;
    assert_eq!(err.kind(), ErrorKind::TokenRejected);
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.body_snippet(), Some("Access Denied"));
    assert!(err.oauth_error().is_none());
    assert!(!err.is_transient());

    // A kid the registered JWK Set does not hold.
    let other_kid =
        SigningKey::from_pem(support::pem("test-only-rsa2048-pkcs8.pem"), "other").unwrap();
    let err = fetch_err(&source(&mock, other_kid)).await;
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));

    // An algorithm the server does not allow (default: RS384, ES384, RS512).
    let rs256 = SigningKey::from_pem_with_algorithm(
        support::pem("test-only-rsa2048-pkcs8.pem"),
        Algorithm::RS256,
        "test-rsa",
    )
    .unwrap();
    let err = fetch_err(&source(&mock, rs256)).await;
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));

    // A key that is not the registered one, under the registered kid: bad signature.
    let impostor = SigningKey::generate(Algorithm::RS512).unwrap();
    let impostor = SigningKey::from_pem(impostor.to_pkcs8_pem().as_bytes(), "test-rsa").unwrap();
    let err = fetch_err(&source(&mock, impostor)).await;
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));

    let refusals: Vec<String> = mock
        .token_requests()
        .into_iter()
        .map(|r| r.refusal.unwrap())
        .collect();
    assert_eq!(refusals[0], "unknown client");
    assert_eq!(refusals[1], "kid not in the client's JWK Set");
    assert!(refusals[2].contains("not allowed"), "{}", refusals[2]);
    assert!(refusals[3].starts_with("signature"), "{}", refusals[3]);
    assert_eq!(mock.stats().tokens_issued, 0);
}

#[tokio::test]
async fn server_faults_are_transient_and_carry_retry_after() {
    let mock = mock().await;
    let source = source(&mock, rsa_key());
    for status in [500, 502, 503] {
        let status = StatusCode::from_u16(status).unwrap();
        mock.fail_next_token_requests(1, status, None);
        let err = fetch_err(&source).await;
        assert_eq!(
            (err.kind(), err.status()),
            (ErrorKind::TokenRejected, Some(status))
        );
        assert!(err.is_transient());
    }
    mock.fail_next_token_requests(
        1,
        StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_secs(2)),
    );
    let err = fetch_err(&source).await;
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    mock.push_token_response(
        MockResponse::json(&json!({
            "error": "invalid_client", "error_description": "assertion expired"
        }))
        .header("x", "y"),
    );
    // A 200 carrying an error object is still not a token: the rejection it states, with the
    // server's reason, and as permanent as the same error under a 400.
    let err = fetch_err(&source).await;
    assert_eq!(
        (err.kind(), err.status()),
        (ErrorKind::TokenRejected, Some(StatusCode::OK))
    );
    let oauth = err.oauth_error().expect("the server's error");
    assert_eq!(oauth.description.as_deref(), Some("assertion expired"));
    assert!(!err.is_transient());
    mock.push_token_response(MockResponse::new(
        StatusCode::BAD_REQUEST,
        r#"{"error":"invalid_client","error_description":"assertion expired"}"#,
    ));
    let err = fetch_err(&source).await;
    let oauth = err.oauth_error().unwrap();
    assert_eq!(oauth.code, koppeltaal_auth::OAuthErrorCode::InvalidClient);
    assert_eq!(oauth.description.as_deref(), Some("assertion expired"));
    assert!(!err.is_transient());
    // And it recovers.
    assert!(source.fetch().await.is_ok());
}

#[tokio::test]
async fn slow_token_endpoint_times_out() {
    let mock = mock().await;
    mock.set_token_delay(Duration::from_secs(5));
    let source = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(mock.token_endpoint())
        .signing_key(rsa_key())
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = fetch_err(&source).await;
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_transient());
}

/// A slow answer shortens the token's life here, never lengthens it: its lifetime counts from
/// when the request went out (the server's `expires_in` counts from a moment after that).
#[tokio::test]
async fn a_token_lives_from_when_it_was_asked_for_not_from_a_slow_answer() {
    let mock = mock().await;
    mock.set_token_delay(Duration::from_millis(300));
    let asked = tokio::time::Instant::now();
    let token = source(&mock, rsa_key()).fetch().await.unwrap();
    let answered = tokio::time::Instant::now();
    assert!(
        token.received_at() >= asked,
        "{:?}",
        token.received_at() - asked
    );
    assert!(
        answered - token.received_at() >= Duration::from_millis(300),
        "counted from the answer: {:?} before it",
        answered - token.received_at()
    );
}

#[tokio::test]
async fn unreachable_token_endpoint_is_a_transport_error() {
    let port = support::DEAD_PORT;
    let source = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(format!("http://127.0.0.1:{port}/oauth2/token"))
        .signing_key(rsa_key())
        .build()
        .unwrap();
    let err = fetch_err(&source).await;
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert!(err.is_transient());
}

#[test]
fn configuration_errors_are_typed() {
    let key = rsa_key();
    let cases = [
        ClientCredentials::builder()
            .token_endpoint("https://a/t")
            .signing_key(key.clone())
            .build(),
        ClientCredentials::builder()
            .client_id("c")
            .signing_key(key.clone())
            .build(),
        ClientCredentials::builder()
            .client_id("c")
            .token_endpoint("https://a/t")
            .build(),
        ClientCredentials::builder()
            .client_id("c")
            .token_endpoint("http://auth.example.org/t")
            .signing_key(key.clone())
            .build(),
        ClientCredentials::builder()
            .client_id("c")
            .token_endpoint("https://a/t")
            .signing_key(key)
            .assertion_lifetime(Duration::from_secs(301))
            .build(),
    ];
    for result in cases {
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Config);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_never_reach_debug_errors_or_logs() {
    let (logs, _guard) = capture_logs();
    let mock = mock().await;
    let key = rsa_key();
    let source = source(&mock, key.clone());
    let token = source.fetch().await.unwrap();
    let secret_token = token.as_str().to_owned();
    let assertion = ClientAssertion::new(CLIENT_ID, mock.token_endpoint())
        .unwrap()
        .sign(&key)
        .unwrap();
    // A server that echoes the assertion back in its error page.
    mock.push_token_response(MockResponse::new(
        StatusCode::BAD_REQUEST,
        format!(
            "invalid assertion {} for {}",
            assertion.as_str(),
            secret_token
        ),
    ));
    let err = fetch_err(&source).await;
    let pkcs8 = key.to_pkcs8_pem();
    let key_body: String = pkcs8.lines().nth(1).unwrap().to_owned();
    let shown = [
        format!("{key:?}"),
        format!("{assertion:?}"),
        format!("{token:?}"),
        format!("{:?}", token.header_value()),
        format!("{source:?}"),
        format!("{err} {err:?}"),
        logs.text(),
    ];
    assert!(
        logs.text().contains("token endpoint answered"),
        "the capture works"
    );
    let assertion_signature = assertion.as_str().rsplit('.').next().unwrap();
    for text in shown {
        assert!(!text.contains(&secret_token), "token leaked: {text}");
        assert!(
            !text.contains(assertion_signature),
            "assertion leaked: {text}"
        );
        assert!(!text.contains(&key_body), "key leaked: {text}");
    }
    assert!(err.body_snippet().unwrap().contains("[redacted]"));
}

#[test]
fn keys_load_with_kid_or_thumbprint() {
    let key =
        SigningKey::from_pem(support::pem("test-only-p384-pkcs8.pem"), KeyId::Thumbprint).unwrap();
    assert_eq!(key.kid(), key.thumbprint());
    assert_eq!(key.algorithm(), Algorithm::ES384);
}
