//! Against Koppeltaal's own reference auth server (Python/Flask, vendored unmodified, started by
//! `support/reference.rs`): tokens for every algorithm it accepts, through the cell, the layer,
//! the reqwest middleware and the CLI, by discovery and by explicit endpoint; its refusals as the
//! typed errors and exit codes we document; key rotation against a consumer that fetches the JWK
//! Set on every request; one token request for a burst. Skipped, with a message, when Python 3 or
//! the server's source is missing. `MockKoppeltaal` proven to answer crafted token requests as it
//! does is `reference_mock_parity.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/reference.rs"]
mod reference_server;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{
    ClientCredentials, ErrorKind, KoppeltaalAuth, RefreshPolicy, SigningKey, TokenCell, TokenSource,
};
use reference_server::{Reference, reference};
use tower::{Layer, ServiceExt};

fn source(server: &Reference, client: &str, key: SigningKey) -> ClientCredentials {
    ClientCredentials::builder()
        .client_id(&server.client(client).id)
        .token_endpoint(&server.token_endpoint)
        .signing_key(key)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_it_accepts_gets_a_token_through_the_cell() {
    let Some(server) = reference() else { return };
    for name in ["rs512", "rs384", "es384"] {
        let client = server.client(name);
        let cell = TokenCell::new(source(server, name, client.key()), RefreshPolicy::default());
        let token = cell.access_token().await.unwrap();
        // Its access tokens are JWTs for the FHIR server, valid 300 s.
        assert_eq!(token.lifetime(), Duration::from_secs(300), "{name}");
        assert!(token.as_str().split('.').count() == 3, "{name}");
        assert!(
            token.not_before().is_some(),
            "{name}: iat read from the JWT"
        );
    }
    // Registered by public key (RS512 only) rather than JWKS URL.
    let by_public_key = ClientCredentials::builder()
        .client_id("kt-public-key")
        .token_endpoint(&server.token_endpoint)
        .signing_key(server.client("rs512").key())
        .build()
        .unwrap();
    by_public_key.fetch().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_and_the_middleware_by_discovery_and_by_endpoint() {
    let Some(server) = reference() else { return };
    // A FHIR server that checks its tokens as Koppeltaal's HAPI server does.
    let fhir = MockKoppeltaal::start().await.unwrap();
    fhir.trust_issuer(&server.issuer(), &server.jwks_url());
    let key = server.client("rs512").key();
    // Discovery: its SMART configuration names its token endpoint.
    let discovered = koppeltaal_auth::smart::discover(&server.base)
        .await
        .unwrap();
    assert_eq!(discovered.token_endpoint, server.token_endpoint);
    let by_discovery = KoppeltaalAuth::builder()
        .fhir_base_url(&server.base)
        .client_id(&server.client("rs512").id)
        .signing_key(key.clone())
        .discover()
        .await
        .unwrap();
    by_discovery.ready().await.unwrap();
    // The layer and the middleware, against the FHIR server.
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(fhir.fhir_base_url())
        .client_id(&server.client("rs512").id)
        .signing_key(key)
        .token_endpoint(&server.token_endpoint)
        .build()
        .unwrap();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let client = auth.layer().layer(http);
    let url = format!("{}/Patient/1", fhir.fhir_base_url());
    let response = client
        .oneshot(Request::get(&url).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let middleware = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build();
    assert_eq!(
        middleware.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    // Without our token, the FHIR server refuses: it really checked.
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_refusals_are_the_typed_errors_we_document() {
    let Some(server) = reference() else { return };
    let cases: Vec<(&str, &str, SigningKey)> = vec![
        (
            "RS256, which it does not accept",
            "rs256",
            server.client("rs256").key(),
        ),
        ("PS384", "ps384", server.client("ps384").key()),
        ("ES256", "es256", server.client("es256").key()),
        (
            "a client not approved",
            "pending",
            server.client("pending").key(),
        ),
        (
            "a kid not in the client's set",
            "rs512",
            SigningKey::from_pem(support::pem("test-only-rsa2048-pkcs8.pem"), "no-such-kid")
                .unwrap(),
        ),
        (
            "another key under the client's kid",
            "rs512",
            SigningKey::from_pem(support::pem("test-only-rsa3072-pkcs8.pem"), "kt-rs512").unwrap(),
        ),
    ];
    for (what, client, key) in cases {
        let err = source(server, client, key).fetch().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TokenRejected, "{what}");
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{what}");
        assert_eq!(err.body_snippet(), Some("Access Denied"), "{what}");
        assert!(!err.is_transient(), "{what}");
    }
    let unknown = ClientCredentials::builder()
        .client_id("no-such-client")
        .token_endpoint(&server.token_endpoint)
        .signing_key(server.client("rs512").key())
        .build()
        .unwrap();
    let err = unknown.fetch().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
}

#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_gets_tokens_and_exits_with_the_documented_codes() {
    let Some(server) = reference() else { return };
    let key = format!(
        "{}/tests/data/test-only-rsa2048-pkcs8.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let p256 = format!(
        "{}/tests/data/test-only-p256-pkcs8.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let nothing_here = format!("{}/oauth2/nothing-here", server.base);
    let cases: Vec<(Vec<&str>, i32)> = vec![
        // Discovery from its SMART configuration.
        (
            vec![
                "--client-id",
                "kt-rs512",
                "--key",
                &key,
                "--kid",
                "kt-rs512",
                "--fhir-base",
                &server.base,
            ],
            0,
        ),
        (
            vec![
                "--client-id",
                "kt-rs384",
                "--key",
                &key,
                "--kid",
                "kt-rs384",
                "--alg",
                "RS384",
                "--token-endpoint",
                &server.token_endpoint,
            ],
            0,
        ),
        (
            vec![
                "--client-id",
                "kt-es256",
                "--key",
                &p256,
                "--kid",
                "kt-es256",
                "--token-endpoint",
                &server.token_endpoint,
            ],
            4,
        ),
        (
            vec![
                "--client-id",
                "kt-pending",
                "--key",
                &key,
                "--kid",
                "kt-pending",
                "--token-endpoint",
                &server.token_endpoint,
            ],
            4,
        ),
        (
            vec![
                "--client-id",
                "kt-rs512",
                "--key",
                &key,
                "--kid",
                "kt-rs512",
                "--token-endpoint",
                &nothing_here,
            ],
            2,
        ),
    ];
    for (args, code) in cases {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_koppeltaal-auth"));
        command.arg("token").args(&args).env_clear();
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Rotation against a consumer that fetches the JWK Set on every token request: the new key is
/// in the set at once and signs only after the propagation delay (1 s here), so no assertion is
/// ever signed with a key the server does not know yet (that would be a refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_never_signs_with_a_key_before_it_is_published() {
    let Some(server) = reference() else { return };
    let client = server.client("rotating");
    let source = ClientCredentials::builder()
        .client_id(&client.id)
        .token_endpoint(&server.token_endpoint)
        .key_set(client.keys.clone())
        .build()
        .unwrap();
    source.fetch().await.unwrap();
    let next =
        SigningKey::from_pem(support::pem("test-only-rsa2048-pkcs1.pem"), "kt-rotating-2").unwrap();
    client.keys.publish(next).unwrap();
    let started = std::time::Instant::now();
    let mut kids = Vec::new();
    while started.elapsed() < Duration::from_millis(2_500) {
        kids.push(client.keys.signing_key().kid().to_owned());
        source.fetch().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kids.first().map(String::as_str), Some("kt-rotating-1"));
    assert_eq!(kids.last().map(String::as_str), Some("kt-rotating-2"));
    // The old key can go once the new one signs; requests go on working.
    client.keys.retire("kt-rotating-1").unwrap();
    source.fetch().await.unwrap();
}

/// 50 requests at once on a cold cell: exactly one token request (the server fetches the
/// client's JWK Set once per token request, so the fetches count them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_fifty_on_a_cold_cell_makes_one_token_request() {
    let Some(server) = reference() else { return };
    let client = server.client("burst");
    let before = client.fetches();
    let cell = TokenCell::new(
        source(server, "burst", client.key()),
        RefreshPolicy::default(),
    );
    let done = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let (cell, done) = (cell.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                cell.token().await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for request in burst {
        request.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 50);
    assert_eq!(client.fetches() - before, 1);
    assert_eq!(cell.stats().fetches_ok, 1);
}
