//! `MockKoppeltaal` against Koppeltaal's own reference auth server (vendored unmodified, started
//! by `support/reference.rs`): both answer a table of crafted token requests the same way, and
//! where the mock is stricter on purpose it differs exactly as its docs say. Skipped, with a
//! message, when Python 3 or the server's source is missing. The reference server's tokens
//! through the cell, layer, middleware and CLI are `reference.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/reference.rs"]
mod reference_server;
mod support;

use http::StatusCode;
use koppeltaal_auth::testing::MockKoppeltaal;
use reference_server::reference;

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
