//! Key rotation end to end: a `KeySet` served by `JwksService` over HTTP, a mock auth server that
//! fetches and caches that JWK Set by URL as the reference server does, and a token source that
//! signs with whatever key is active.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::StatusCode;
use koppeltaal_auth::jwks::JwksService;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{
    Algorithm, ClientAssertion, ClientCredentials, KeySet, SigningKey, TokenSource,
};

const CLIENT: &str = "rotating-client";

/// Serves `keys` with `JwksService` at an unguessable path on loopback; returns the URL.
async fn serve(keys: KeySet, max_age: Duration) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route_service(
        "/keys/k7Qx/jwks.json",
        JwksService::new(keys).max_age(max_age),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/keys/k7Qx/jwks.json",
        listener.local_addr().unwrap()
    );
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, task)
}

fn last_kid(mock: &MockKoppeltaal) -> String {
    let request = mock.token_requests().pop().unwrap();
    request.assertion_header.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn tokens_verify_against_the_served_set_before_during_and_after_a_rotation() {
    // Long enough that the steps before the "too early" check run well within one cache period.
    let max_age = Duration::from_secs(2);
    let old = SigningKey::generate(Algorithm::ES384).unwrap();
    let keys = KeySet::new(old.clone()).with_propagation_delay(max_age);
    let (jwks_url, _server) = serve(keys.clone(), max_age).await;
    let mock = MockKoppeltaal::start().await.unwrap();
    mock.register_jwks_url(CLIENT, &jwks_url);
    let source = ClientCredentials::builder()
        .client_id(CLIENT)
        .token_endpoint(mock.token_endpoint())
        .key_set(keys.clone())
        .build()
        .unwrap();

    // Before: the old key signs; the auth server fetched and cached the set.
    source.fetch().await.unwrap();
    assert_eq!(last_kid(&mock), old.kid());
    assert_eq!(mock.stats().jwks_fetches, 1);

    // Rotation starts: the new key is published at once...
    let new = SigningKey::generate(Algorithm::ES384).unwrap();
    keys.publish(new.clone()).unwrap();
    let served: serde_json::Value = reqwest::get(&jwks_url).await.unwrap().json().await.unwrap();
    assert_eq!(served["keys"].as_array().unwrap().len(), 2);
    // ...but the old one keeps signing, because the server's cached copy lacks the new key.
    source.fetch().await.unwrap();
    assert_eq!(last_kid(&mock), old.kid());
    let too_early = ClientAssertion::new(CLIENT, mock.token_endpoint())
        .unwrap()
        .sign(&new)
        .unwrap();
    let status = reqwest::Client::new()
        .post(mock.token_endpoint())
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", too_early.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "signing with the new key at once would fail"
    );

    // After the propagation delay (= max-age) the new key signs, and the server knows it. A real
    // wait: the key set's delay and the mock's HTTP cache both run on real time here (the token
    // requests are real loopback HTTP, which a paused clock would time out).
    tokio::time::sleep(max_age + Duration::from_millis(50)).await;
    assert_eq!(keys.signing_key().kid(), new.kid());
    source.fetch().await.unwrap();
    assert_eq!(last_kid(&mock), new.kid());

    // The old key stays published until it is retired.
    let served: serde_json::Value = reqwest::get(&jwks_url).await.unwrap().json().await.unwrap();
    let kids: Vec<&str> = served["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [old.kid(), new.kid()]);
    keys.retire(old.kid()).unwrap();
    let served: serde_json::Value = reqwest::get(&jwks_url).await.unwrap().json().await.unwrap();
    assert_eq!(served["keys"].as_array().unwrap().len(), 1);
    assert_eq!(served["keys"][0]["kid"], new.kid());
    tokio::time::sleep(max_age + Duration::from_millis(50)).await;
    source.fetch().await.unwrap();
    assert_eq!(last_kid(&mock), new.kid());
    let accepted = mock
        .token_requests()
        .iter()
        .filter(|r| r.refusal.is_none())
        .count();
    assert_eq!(
        accepted, 4,
        "every token request of the source was accepted"
    );
}

#[tokio::test]
async fn an_unreachable_jwks_url_means_access_denied() {
    let mock = MockKoppeltaal::start().await.unwrap();
    let port = support::DEAD_PORT;
    mock.register_jwks_url(CLIENT, &format!("http://127.0.0.1:{port}/jwks.json"));
    let source = ClientCredentials::builder()
        .client_id(CLIENT)
        .token_endpoint(mock.token_endpoint())
        .signing_key(SigningKey::generate(Algorithm::ES256).unwrap())
        .build()
        .unwrap();
    let err = source.fetch().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.body_snippet(), Some("Access Denied"));
}
