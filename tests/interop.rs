//! Interop with an authorization server nobody on this project wrote: `oidc-provider` (a certified
//! OpenID/OAuth 2.0 implementation) and a resource server validating its JWT access tokens, both
//! from `tests/interop/servers.mjs`.
//!
//! The servers are started by the test process (`support/servers.rs`: `npm ci` in
//! `tests/interop` the first time, then `node servers.mjs`), or found at
//! `KOPPELTAAL_INTEROP_FHIR_BASE` and `KOPPELTAAL_INTEROP_ADMIN`. Skipped, with a message, when
//! Node.js and npm are not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::{
    Algorithm, Authenticator, ClientAssertion, KoppeltaalAuth, RefreshPolicy, SigningKey,
};
use serde_json::Value;
use tower::{Layer, ServiceExt};

#[path = "support/servers.rs"]
mod servers;

struct Servers {
    fhir_base: String,
    admin: String,
}

fn servers() -> Option<Servers> {
    let (fhir_base, admin) = servers::interop()?;
    Some(Servers { fhir_base, admin })
}

fn key(alg: Algorithm) -> SigningKey {
    let (file, kid) = match alg {
        Algorithm::ES384 => ("test-only-p384-pkcs8.pem", "interop-ec"),
        _ => ("test-only-rsa2048-pkcs8.pem", "interop-rsa"),
    };
    let pem = std::fs::read(format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    SigningKey::from_pem_with_algorithm(pem, alg, kid).unwrap()
}

async fn authenticator(
    servers: &Servers,
    client_id: &str,
    alg: Algorithm,
    policy: RefreshPolicy,
) -> Authenticator {
    KoppeltaalAuth::builder()
        .fhir_base_url(&servers.fhir_base)
        .client_id(client_id)
        .signing_key(key(alg))
        .refresh_policy(policy)
        .discover()
        .await
        .unwrap()
}

async fn stats(servers: &Servers, client_id: &str) -> Value {
    reqwest::get(format!("{}/stats?client={client_id}", servers.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Counters of `client_id` since `before`.
fn since(before: &Value, after: &Value, field: &str) -> u64 {
    after[field].as_u64().unwrap() - before[field].as_u64().unwrap()
}

async fn read(auth: &Authenticator, path: &str) -> StatusCode {
    let client = auth
        .layer()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let request = Request::get(format!("{}/{path}", auth.fhir_base_url()))
        .body(Full::default())
        .unwrap();
    client.oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn a_token_with_each_algorithm_opens_the_resource_server() {
    let Some(servers) = servers() else { return };
    for (client_id, alg) in [
        ("interop-rs512", Algorithm::RS512),
        ("interop-rs384", Algorithm::RS384),
        ("interop-es384", Algorithm::ES384),
    ] {
        let before = stats(&servers, client_id).await;
        let auth = authenticator(&servers, client_id, alg, RefreshPolicy::default()).await;
        assert_eq!(read(&auth, "Patient/1").await, StatusCode::OK, "{alg}");
        let token = auth.cell().access_token().await.unwrap();
        assert_eq!(
            token.lifetime(),
            Duration::from_secs(4),
            "the provider's short lifetime"
        );
        let after = stats(&servers, client_id).await;
        assert_eq!(since(&before, &after, "tokens_issued"), 1, "{alg}: {after}");
        assert_eq!(
            since(&before, &after, "token_failures"),
            0,
            "{alg}: {after}"
        );
    }
}

#[tokio::test]
async fn the_reqwest_middleware_works_against_the_real_server() {
    let Some(servers) = servers() else { return };
    let before = stats(&servers, "interop-middleware").await;
    let auth = authenticator(
        &servers,
        "interop-middleware",
        Algorithm::ES384,
        RefreshPolicy::default(),
    )
    .await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build();
    for _ in 0..5 {
        let response = client
            .post(format!("{}/Task", auth.fhir_base_url()))
            .body(r#"{"resourceType":"Task"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let after = stats(&servers, "interop-middleware").await;
    assert_eq!(since(&before, &after, "tokens_issued"), 1);
    assert_eq!(since(&before, &after, "fhir_requests"), 5);
}

#[tokio::test]
async fn proactive_refresh_survives_expiry_with_one_token_request_per_token() {
    let Some(servers) = servers() else { return };
    // 4 s tokens are refreshed when half their life is left; no jitter, so the spacing is exact.
    let before = stats(&servers, "interop-refresh").await;
    let auth = authenticator(
        &servers,
        "interop-refresh",
        Algorithm::ES384,
        RefreshPolicy::default().refresh_jitter(0.0),
    )
    .await;
    let start = std::time::Instant::now();
    let mut reads = 0;
    while start.elapsed() < Duration::from_secs(9) {
        assert_eq!(
            read(&auth, "Patient/1").await,
            StatusCode::OK,
            "no request fails across expiries"
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = stats(&servers, "interop-refresh").await;
    let issued = since(&before, &seen, "tokens_issued");
    assert_eq!(since(&before, &seen, "token_failures"), 0);
    assert_eq!(
        since(&before, &seen, "token_requests"),
        issued,
        "no wasted request"
    );
    assert_eq!(
        issued,
        auth.stats().fetches_ok,
        "one request per token the cell used"
    );
    assert!(
        (4..=6).contains(&issued),
        "a token every ~2 s over 9 s: {issued}"
    );
    let earlier = before["token_request_times_ms"].as_array().unwrap().len();
    let times: Vec<u64> = seen["token_request_times_ms"].as_array().unwrap()[earlier..]
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        // Read by node when it has the body: its event loop's lag moves each reading.
        assert!(
            (1_800..3_000).contains(&gap),
            "one request per refresh point: {gap} ms"
        );
    }
    assert_eq!(since(&before, &seen, "fhir_unauthorized"), 0);
    assert!(reads > 50);
}

#[tokio::test]
async fn a_server_side_rejection_costs_one_renewal_and_one_replay() {
    let Some(servers) = servers() else { return };
    let before = stats(&servers, "interop-reject").await;
    let auth = authenticator(
        &servers,
        "interop-reject",
        Algorithm::RS512,
        RefreshPolicy::default(),
    )
    .await;
    assert_eq!(read(&auth, "Patient/1").await, StatusCode::OK);
    reqwest::Client::new()
        .post(format!("{}/reject?client=interop-reject", servers.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read(&auth, "Patient/2").await,
        StatusCode::OK,
        "renewed and replayed"
    );
    let seen = stats(&servers, "interop-reject").await;
    assert_eq!(since(&before, &seen, "tokens_issued"), 2, "one renewal");
    assert_eq!(
        since(&before, &seen, "fhir_unauthorized"),
        1,
        "one rejected request..."
    );
    assert_eq!(
        since(&before, &seen, "fhir_requests"),
        3,
        "...replayed once"
    );
    assert_eq!(auth.stats().invalidations, 1);
}

#[tokio::test]
async fn the_provider_is_as_strict_as_koppeltaal_about_assertions() {
    let Some(servers) = servers() else { return };
    let smart: Value = reqwest::get(format!(
        "{}/.well-known/smart-configuration",
        servers.fhir_base
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let endpoint = smart["token_endpoint"].as_str().unwrap().to_owned();
    let key = key(Algorithm::ES384);
    let post = |assertion: String| {
        let endpoint = endpoint.clone();
        async move {
            reqwest::Client::new()
                .post(endpoint)
                .form(&[
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.as_str()),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let good = ClientAssertion::new("interop-strict", endpoint.clone()).unwrap();
    let jwt = good
        .sign_at(
            &key,
            SystemTime::now(),
            &format!("strict-{}-1", uuid::Uuid::new_v4()),
        )
        .unwrap();
    assert_eq!(post(jwt.as_str().to_owned()).await.status(), StatusCode::OK);
    // The same jti again.
    let replay = post(jwt.as_str().to_owned()).await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let body: Value = replay.json().await.unwrap();
    assert_eq!(
        body["error"], "invalid_client",
        "RFC 6749 JSON, where Koppeltaal answers plain text"
    );
    // aud with a trailing slash.
    let slash = ClientAssertion::new("interop-strict", format!("{endpoint}/")).unwrap();
    let jwt = slash
        .sign_at(
            &key,
            SystemTime::now(),
            &format!("strict-{}-2", uuid::Uuid::new_v4()),
        )
        .unwrap();
    assert_eq!(
        post(jwt.as_str().to_owned()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // An assertion that expired a second ago (no clock tolerance).
    let jwt = good
        .sign_at(
            &key,
            SystemTime::now() - Duration::from_secs(61),
            &format!("strict-{}-3", uuid::Uuid::new_v4()),
        )
        .unwrap();
    assert_eq!(
        post(jwt.as_str().to_owned()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // iat in the future (the provider's hook, as Koppeltaal's PyJWT does).
    let ahead = good.clone().with_iat_backdate(Duration::ZERO).unwrap();
    let jwt = ahead
        .sign_at(
            &key,
            SystemTime::now() + Duration::from_secs(30),
            &format!("strict-{}-4", uuid::Uuid::new_v4()),
        )
        .unwrap();
    assert_eq!(
        post(jwt.as_str().to_owned()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // And the crate's own flow still works after all that.
    let auth = authenticator(
        &servers,
        "interop-strict",
        Algorithm::ES384,
        RefreshPolicy::default(),
    )
    .await;
    assert_eq!(read(&auth, "Patient/1").await, StatusCode::OK);
}
