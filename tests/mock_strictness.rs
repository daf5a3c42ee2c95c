//! `MockKoppeltaal`'s own strictness, checked with hand-made requests: what its token endpoint
//! refuses exactly as Koppeltaal's reference server does, and how its FHIR endpoint checks tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime};

use http::StatusCode;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{ClientAssertion, TokenSource};
use serde_json::json;
use support::{CLIENT_ID, mock, rsa_key, source};

/// Posts a hand-made assertion, to check what the mock itself accepts.
async fn post_assertion(
    mock: &MockKoppeltaal,
    grant_type: &str,
    assertion_type: &str,
    jwt: &str,
) -> StatusCode {
    reqwest::Client::new()
        .post(mock.token_endpoint())
        .form(&[
            ("grant_type", grant_type),
            ("client_assertion_type", assertion_type),
            ("client_assertion", jwt),
        ])
        .send()
        .await
        .unwrap()
        .status()
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[tokio::test]
async fn the_mock_is_as_strict_as_the_reference_server() {
    let mock = mock().await;
    let key = rsa_key();
    let now = SystemTime::now();
    let good = ClientAssertion::new(CLIENT_ID, mock.token_endpoint()).unwrap();
    let sign = |a: &ClientAssertion, at: SystemTime, jti: &str| a.sign_at(&key, at, jti).unwrap();

    let jwt = sign(&good, now, "jti-1");
    assert_eq!(
        post_assertion(&mock, "client_credentials", JWT_BEARER, jwt.as_str()).await,
        StatusCode::OK
    );
    // The same jti again.
    assert_eq!(
        post_assertion(&mock, "client_credentials", JWT_BEARER, jwt.as_str()).await,
        StatusCode::UNAUTHORIZED
    );
    // aud with a trailing slash.
    let slash = ClientAssertion::new(CLIENT_ID, format!("{}/", mock.token_endpoint())).unwrap();
    let jwt = sign(&slash, now, "jti-2");
    assert_eq!(
        post_assertion(&mock, "client_credentials", JWT_BEARER, jwt.as_str()).await,
        StatusCode::UNAUTHORIZED
    );
    // exp more than 300 s ahead: crafted by hand, as this crate never signs such an assertion
    // (lifetime plus back-dating is at most 300 s).
    let craft = |exp_ahead: u64, jti: &str| {
        let now = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS512);
        header.kid = Some("test-rsa".to_owned());
        header.typ = Some("JWT".to_owned());
        let claims = json!({
            "iss": CLIENT_ID, "sub": CLIENT_ID, "aud": mock.token_endpoint(),
            "iat": now - 60, "exp": now + exp_ahead, "jti": jti,
        });
        let pem = support::pem("test-only-rsa2048-pkcs8.pem");
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    assert_eq!(
        post_assertion(
            &mock,
            "client_credentials",
            JWT_BEARER,
            &craft(302, "jti-3c")
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "exp 302 s ahead"
    );
    let long = good
        .clone()
        .with_iat_backdate(Duration::ZERO)
        .unwrap()
        .with_lifetime(Duration::from_secs(300))
        .unwrap();
    let long_ok = sign(&long, now, "jti-3b");
    assert_eq!(
        post_assertion(&mock, "client_credentials", JWT_BEARER, long_ok.as_str()).await,
        StatusCode::OK,
        "exp 300 s ahead is fine"
    );
    // iat in the future (no back-date, clock 10 s ahead).
    let ahead = good.clone().with_iat_backdate(Duration::ZERO).unwrap();
    let jwt = sign(&ahead, now + Duration::from_secs(10), "jti-4");
    assert_eq!(
        post_assertion(&mock, "client_credentials", JWT_BEARER, jwt.as_str()).await,
        StatusCode::UNAUTHORIZED
    );
    // Expired.
    let jwt = sign(&good, now - Duration::from_secs(61), "jti-5");
    assert_eq!(
        post_assertion(&mock, "client_credentials", JWT_BEARER, jwt.as_str()).await,
        StatusCode::UNAUTHORIZED
    );
    // Wrong client_assertion_type, wrong grant_type.
    let jwt = sign(&good, now, "jti-6");
    assert_eq!(
        post_assertion(&mock, "client_credentials", "urn:other", jwt.as_str()).await,
        StatusCode::UNAUTHORIZED
    );
    let jwt = sign(&good, now, "jti-7");
    assert_eq!(
        post_assertion(&mock, "authorization_code", JWT_BEARER, jwt.as_str()).await,
        StatusCode::BAD_REQUEST
    );
    let refusals: Vec<Option<String>> = mock
        .token_requests()
        .into_iter()
        .map(|r| r.refusal)
        .collect();
    assert_eq!(refusals[0], None);
    assert_eq!(refusals[1].as_deref(), Some("jti replayed"));
    assert!(refusals[2].as_deref().unwrap().starts_with("aud"));
    assert_eq!(refusals[3].as_deref(), Some("exp more than 300 s ahead"));
    assert_eq!(refusals[4], None);
    assert_eq!(refusals[5].as_deref(), Some("iat in the future"));
    assert_eq!(refusals[6].as_deref(), Some("expired"));
    assert_eq!(
        refusals[7].as_deref(),
        Some("client_assertion_type is not jwt-bearer")
    );
    assert_eq!(
        refusals[8].as_deref(),
        Some("grant_type is not client_credentials")
    );
}

#[tokio::test]
async fn the_mock_fhir_endpoint_checks_tokens() {
    let mock = mock().await;
    let token = source(&mock, rsa_key()).fetch().await.unwrap();
    let http = reqwest::Client::new();
    let get = |auth: Option<String>| {
        let mut request = http.get(format!("{}/Patient/123", mock.fhir_base_url()));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move { request.send().await.unwrap() }
    };
    let bearer = format!("Bearer {}", token.as_str());
    let ok = get(Some(bearer.clone())).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let missing = get(None).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(missing.headers().get("www-authenticate").is_none());
    assert_eq!(
        get(Some("Bearer forged".into())).await.status(),
        StatusCode::UNAUTHORIZED
    );
    mock.set_forbidden(CLIENT_ID, true);
    assert_eq!(
        get(Some(bearer.clone())).await.status(),
        StatusCode::FORBIDDEN
    );
    mock.set_forbidden(CLIENT_ID, false);
    mock.advance_token_clock(Duration::from_secs(300));
    assert_eq!(
        get(Some(bearer.clone())).await.status(),
        StatusCode::UNAUTHORIZED,
        "expired"
    );
    let fresh = source(&mock, rsa_key()).fetch().await.unwrap();
    assert_eq!(
        get(Some(format!("Bearer {}", fresh.as_str())))
            .await
            .status(),
        StatusCode::OK
    );
    mock.revoke_all_tokens();
    assert_eq!(
        get(Some(format!("Bearer {}", fresh.as_str())))
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "revoked"
    );
    let metadata = http
        .get(format!("{}/metadata", mock.fhir_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), StatusCode::OK, "metadata is public");
    let stats = mock.stats();
    assert_eq!((stats.fhir_unauthorized, stats.fhir_forbidden), (4, 1));
    let issued = mock.issued_tokens();
    assert_eq!(issued[0].fhir_requests, 2, "the OK and the 403");
    assert_eq!(issued[1].fhir_requests, 1);
    assert!(issued.iter().all(|t| t.revoked));
}

/// What Koppeltaal's reference server refuses and the mock once took: a float or string `iat`
/// in the future (PyJWT reads time claims with Python's `int()`), and a body that is not a form
/// (Flask's `request.values` reads only form bodies: the parameters are then missing).
#[tokio::test]
async fn the_mock_refuses_odd_time_claims_and_bodies_that_are_not_forms() {
    let mock = mock().await;
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pem = support::pem("test-only-rsa2048-pkcs8.pem");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let craft = |extra: serde_json::Value, jti: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS512);
        header.kid = Some("test-rsa".to_owned());
        let mut claims = json!({
            "iss": CLIENT_ID, "sub": CLIENT_ID, "aud": mock.token_endpoint(),
            "iat": now - 5, "exp": now + 60, "jti": jti,
        });
        for (name, value) in extra.as_object().unwrap() {
            claims[name] = value.clone();
        }
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    for (extra, expected) in [
        (json!({}), StatusCode::OK),
        (
            json!({"iat": (now + 10) as f64 + 0.5}),
            StatusCode::UNAUTHORIZED,
        ),
        (json!({"iat": (now - 5) as f64 + 0.5}), StatusCode::OK),
        (
            json!({"iat": format!("{}", now + 10)}),
            StatusCode::UNAUTHORIZED,
        ),
        (json!({"iat": format!("{}", now - 5)}), StatusCode::OK),
        (json!({"iat": "soon"}), StatusCode::UNAUTHORIZED),
        (json!({"iat": null}), StatusCode::UNAUTHORIZED),
        (
            json!({"nbf": format!(" {} ", now + 10)}),
            StatusCode::UNAUTHORIZED,
        ),
        (json!({"exp": format!("{}", now + 60)}), StatusCode::OK),
        (json!({"exp": [now + 60]}), StatusCode::UNAUTHORIZED),
    ] {
        let jwt = craft(extra.clone(), &uuid::Uuid::new_v4().to_string());
        assert_eq!(
            post_assertion(&mock, "client_credentials", JWT_BEARER, &jwt).await,
            expected,
            "{extra}"
        );
    }
    // A form body sent as text/plain or JSON: no parameters, Access Denied.
    let jwt = craft(json!({}), "jti-body-1");
    let form = format!(
        "grant_type=client_credentials&client_assertion_type={}&client_assertion={jwt}",
        url::form_urlencoded::byte_serialize(JWT_BEARER.as_bytes()).collect::<String>()
    );
    for content_type in ["text/plain", "application/json"] {
        let response = reqwest::Client::new()
            .post(mock.token_endpoint())
            .header("content-type", content_type)
            .body(form.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{content_type}"
        );
        assert_eq!(response.text().await.unwrap(), "Access Denied");
    }
    // As Flask does, parameters in the query string count too.
    let response = reqwest::Client::new()
        .post(format!("{}?{form}", mock.token_endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
