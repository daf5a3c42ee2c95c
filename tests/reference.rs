//! Against Koppeltaal's own reference auth server (Python/Flask, vendored unmodified, started by
//! `support/reference.rs`): tokens for every algorithm it accepts, through the cell, the layer,
//! the reqwest middleware and the CLI, by discovery and by explicit endpoint; its refusals as the
//! typed errors and exit codes we document; key rotation against a consumer that fetches the JWK
//! Set on every request; one token request for a burst; and `MockKoppeltaal` proven to answer a
//! table of crafted token requests exactly as it does. Skipped, with a message, when Python 3 or
//! the server's source is missing.
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

/// `MockKoppeltaal` and the reference server answer the same table of crafted token requests
/// the same way (status, and body for refusals). Rows where the mock is stricter on purpose are
/// listed in its docs and checked to differ exactly that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_answers_crafted_token_requests_as_the_reference_server_does() {
    let Some(server) = reference() else { return };
    let mock = MockKoppeltaal::start().await.unwrap();
    let key = server.client("rs512").key();
    let client_id = server.client("rs512").id.clone();
    mock.register_key(&client_id, &key);
    let pem = support::pem("test-only-rsa2048-pkcs8.pem");
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let jwt_bearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

    /// Claims to change, from the moment of sending.
    type Claims = fn(u64) -> serde_json::Value;
    /// One crafted request: claims to change at the moment it is sent (`null` removes one),
    /// header changes, and how it is sent.
    struct Row {
        what: &'static str,
        claims: Claims,
        alg: jsonwebtoken::Algorithm,
        kid: &'static str,
        grant_type: &'static str,
        assertion_type: &'static str,
        content_type: &'static str,
        /// Send the same assertion twice (the second answer is compared).
        replay: bool,
    }
    let row = |what, claims: Claims| Row {
        what,
        claims,
        alg: jsonwebtoken::Algorithm::RS512,
        kid: "kt-rs512",
        grant_type: "client_credentials",
        assertion_type: jwt_bearer,
        content_type: "application/x-www-form-urlencoded",
        replay: false,
    };
    let none = |_| serde_json::json!({});
    let rows = vec![
        row("a good one", none),
        Row {
            replay: true,
            ..row("a reused jti", none)
        },
        row("iat 2 s ahead", |now| serde_json::json!({"iat": now + 2})),
        row("nbf ahead", |now| serde_json::json!({"nbf": now + 2})),
        row("aud as an array", |_| serde_json::json!({"aud": ["AUD"]})),
        row(
            "aud with a trailing slash",
            |_| serde_json::json!({"aud": "AUD/"}),
        ),
        row("no jti", |_| serde_json::json!({"jti": null})),
        row(
            "a float iat in the past",
            |now| serde_json::json!({"iat": (now - 5) as f64 + 0.5}),
        ),
        row(
            "a float iat ahead",
            |now| serde_json::json!({"iat": (now + 2) as f64 + 0.5}),
        ),
        row(
            "a string iat in the past",
            |now| serde_json::json!({"iat": (now - 5).to_string()}),
        ),
        row(
            "a string iat ahead",
            |now| serde_json::json!({"iat": (now + 2).to_string()}),
        ),
        Row {
            kid: "no-such-kid",
            ..row("an unknown kid", none)
        },
        Row {
            alg: jsonwebtoken::Algorithm::RS256,
            ..row("an algorithm it refuses", none)
        },
        Row {
            content_type: "text/plain",
            ..row("a text/plain body", none)
        },
        Row {
            content_type: "application/json",
            ..row("a JSON body", none)
        },
        Row {
            grant_type: "password",
            ..row("a wrong grant_type", none)
        },
        Row {
            assertion_type: "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            ..row("a wrong client_assertion_type", none)
        },
    ];
    let send = |endpoint: String, row: &Row, jti: String| {
        let now = epoch();
        let mut claims = serde_json::json!({
            "iss": client_id, "sub": client_id, "aud": endpoint,
            "iat": now - 5, "exp": now + 60, "jti": jti,
        });
        for (name, value) in (row.claims)(now).as_object().unwrap() {
            let value = match value {
                serde_json::Value::String(s) if s == "AUD" => endpoint.clone().into(),
                serde_json::Value::String(s) if s == "AUD/" => format!("{endpoint}/").into(),
                serde_json::Value::Array(a) if a == &[serde_json::json!("AUD")] => {
                    serde_json::json!([endpoint])
                }
                other => other.clone(),
            };
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value;
            }
        }
        let mut header = jsonwebtoken::Header::new(row.alg);
        header.kid = Some(row.kid.to_owned());
        let jwt = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", row.grant_type)
            .append_pair("client_assertion_type", row.assertion_type)
            .append_pair("client_assertion", &jwt)
            .finish();
        let content_type = row.content_type;
        let times = if row.replay { 2 } else { 1 };
        async move {
            let mut last = None;
            for _ in 0..times {
                let response = reqwest::Client::new()
                    .post(&endpoint)
                    .header("content-type", content_type)
                    .body(form.clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body = response.text().await.unwrap();
                last = Some((
                    status,
                    if status.is_success() {
                        String::new()
                    } else {
                        body
                    },
                ));
            }
            last.unwrap()
        }
    };
    for row in &rows {
        let reference = send(
            server.token_endpoint.clone(),
            row,
            uuid::Uuid::new_v4().to_string(),
        )
        .await;
        let ours = send(mock.token_endpoint(), row, uuid::Uuid::new_v4().to_string()).await;
        assert_eq!(
            ours, reference,
            "{}: the mock differs from the reference server",
            row.what
        );
    }
    // The deliberate differences (MockKoppeltaal's docs): it requires exp, at most 300 s ahead.
    let differences: [(&str, Claims); 2] = [
        ("no exp", |_| serde_json::json!({"exp": null})),
        (
            "exp 400 s ahead",
            |now| serde_json::json!({"exp": now + 400}),
        ),
    ];
    for (what, claims) in differences {
        let row = row(what, claims);
        let reference = send(
            server.token_endpoint.clone(),
            &row,
            uuid::Uuid::new_v4().to_string(),
        )
        .await;
        let ours = send(
            mock.token_endpoint(),
            &row,
            uuid::Uuid::new_v4().to_string(),
        )
        .await;
        assert_eq!(
            reference.0,
            StatusCode::OK,
            "{what}: the reference server takes it"
        );
        assert_eq!(
            ours,
            (StatusCode::UNAUTHORIZED, "Access Denied".to_owned()),
            "{what}"
        );
    }
}
