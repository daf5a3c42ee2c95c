//! Property tests: every parser of untrusted input never panics, and accepts only what is valid,
//! on arbitrary bytes and on structured mutations of valid documents. The scope check's property
//! is `scope/proptests.rs`.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::error::ErrorKind;
use crate::smart::SmartConfiguration;
use crate::token::{
    parse_error_response, parse_oauth_error, parse_retry_after, parse_token_response,
};

const DEFAULT: Duration = Duration::from_secs(300);
const MAX_EXPIRES_IN: u64 = 365 * 24 * 60 * 60;

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        "[0-9]{1,25}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Values that sit on the edges of what the parsers accept, mixed with arbitrary JSON.
fn edgy_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => json_value(),
        1 => prop::sample::select(vec![
            json!(""),
            json!(" "),
            json!("Bearer "),
            json!(" bearer"),
            json!("DPoP"),
            json!("mac"),
            json!(0),
            json!(-1),
            json!(1),
            json!(MAX_EXPIRES_IN),
            json!(MAX_EXPIRES_IN + 1),
            json!(1.5),
            json!(300.0),
            json!(1e30),
            json!("300s"),
            json!("-5"),
            json!("0"),
            json!(" 300"),
            json!(null),
            json!(true),
            json!([]),
            json!({}),
            json!("tok en"),
            json!("tok\u{7f}en"),
            json!("t\u{e9}"),
        ]),
    ]
}

/// A valid token response, in the shapes servers send.
fn valid_token_doc() -> impl Strategy<Value = Value> {
    (
        "[A-Za-z0-9._~+/-]{1,80}=*",
        prop::sample::select(vec!["Bearer", "bearer", "BEARER", "bEaReR"]),
        prop_oneof![
            Just(None),
            (1u64..=MAX_EXPIRES_IN).prop_map(|n| Some(json!(n))),
            (1u64..=MAX_EXPIRES_IN).prop_map(|n| Some(json!(n.to_string()))),
        ],
        prop::option::of("[a-z/*. ]{0,30}"),
    )
        .prop_map(|(token, kind, expires_in, scope)| {
            let mut doc = json!({"access_token": token, "token_type": kind});
            if let Some(expires_in) = expires_in {
                doc["expires_in"] = expires_in;
            }
            if let Some(scope) = scope {
                doc["scope"] = json!(scope);
            }
            doc
        })
}

/// A valid document with one structured mutation: a member removed, replaced by arbitrary JSON,
/// or added.
fn mutated(
    doc: impl Strategy<Value = Value>,
    names: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    (doc, prop::sample::select(names), 0u8..4, edgy_value()).prop_map(
        |(mut doc, name, how, value)| {
            if let Value::Object(object) = &mut doc {
                match how {
                    0 => {
                        object.remove(name);
                    }
                    1 | 2 => {
                        object.insert(name.to_owned(), value);
                    }
                    _ => {
                        object.insert(format!("x-{name}"), value);
                    }
                }
            }
            doc
        },
    )
}

const TOKEN_MEMBERS: &[&str] = &[
    "access_token",
    "token_type",
    "expires_in",
    "scope",
    "refresh_token",
];

/// What a valid token response is, stated independently of the parser.
fn expected_lifetime(doc: &Value) -> Option<Duration> {
    let object = doc.as_object()?;
    let token = object.get("access_token")?.as_str()?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    if !object
        .get("token_type")?
        .as_str()?
        .eq_ignore_ascii_case("bearer")
    {
        return None;
    }
    match object.get("scope") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => return None,
    }
    let seconds = match object.get("expires_in") {
        None | Some(Value::Null) => return Some(DEFAULT),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s) => s,
            None => {
                let f = n.as_f64()?;
                if f.fract() != 0.0 || !(1.0..=MAX_EXPIRES_IN as f64).contains(&f) {
                    return None;
                }
                f as u64
            }
        },
        Some(Value::String(s)) => s.parse().ok()?,
        Some(_) => return None,
    };
    (1..=MAX_EXPIRES_IN)
        .contains(&seconds)
        .then(|| Duration::from_secs(seconds))
}

fn check_token_response(body: &[u8]) -> Result<(), TestCaseError> {
    let result = parse_token_response(body, Instant::now(), DEFAULT, &[]);
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    match (result, doc.as_ref().and_then(expected_lifetime)) {
        (Ok(token), Some(lifetime)) => {
            let doc = doc.unwrap_or_default();
            prop_assert_eq!(Some(token.as_str()), doc["access_token"].as_str());
            prop_assert_eq!(token.lifetime(), lifetime);
            prop_assert_eq!(token.scope(), doc.get("scope").and_then(Value::as_str));
            prop_assert!(token.header_value().is_sensitive());
        }
        (Err(error), None) => {
            // An OAuth error answered with 2xx (no token, a string `error`) is the rejection
            // it states; anything else is an invalid response.
            let states_error = doc.as_ref().is_some_and(|doc| {
                doc.get("access_token").is_none() && doc.get("error").is_some_and(Value::is_string)
            });
            let expected = if states_error {
                ErrorKind::TokenRejected
            } else {
                ErrorKind::InvalidTokenResponse
            };
            prop_assert_eq!(error.kind(), expected);
        }
        (Ok(_), None) => prop_assert!(false, "accepted an invalid token response"),
        (Err(error), Some(_)) => prop_assert!(false, "refused a valid token response: {error}"),
    }
    Ok(())
}

const SMART_MEMBERS: &[&str] = &[
    "token_endpoint",
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "grant_types_supported",
    "issuer",
];

fn valid_smart_doc() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("https://auth.example.org/oauth2/token".to_owned()),
            Just("/oauth2/token".to_owned()),
            Just("oauth2/token".to_owned()),
            Just("http://127.0.0.1:8080/token".to_owned()),
        ],
        any::<bool>(),
    )
        .prop_map(|(endpoint, methods)| {
            let mut doc = json!({"token_endpoint": endpoint, "issuer": "https://auth.example.org"});
            if methods {
                doc["token_endpoint_auth_methods_supported"] = json!(["private_key_jwt"]);
            }
            doc
        })
}

fn check_smart(body: &[u8]) -> Result<(), TestCaseError> {
    let base =
        url::Url::parse("https://fhir.example.org/fhir/DEFAULT").unwrap_or_else(|_| unreachable!());
    if let Ok(config) = SmartConfiguration::from_json(body, &base) {
        let url = url::Url::parse(&config.token_endpoint);
        prop_assert!(
            url.is_ok(),
            "accepted a token endpoint that is not an absolute URL"
        );
        let url = url.unwrap_or_else(|_| unreachable!());
        prop_assert!(crate::endpoint::check_secure("token endpoint", &url).is_ok());
        if let Some(methods) = &config.token_endpoint_auth_methods_supported {
            prop_assert!(methods.iter().any(|m| m == "private_key_jwt"));
        }
    }
    Ok(())
}

fn pem_key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        include_str!("../tests/data/test-only-p256-pkcs8.pem"),
        include_str!("../tests/data/test-only-p384-sec1.pem"),
        include_str!("../tests/data/test-only-rsa2048-pkcs1.pem"),
        include_str!("../tests/data/test-only-cert.pem"),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn token_responses_from_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..300)) {
        check_token_response(&body)?;
    }

    #[test]
    fn token_responses_from_arbitrary_json(doc in json_value()) {
        check_token_response(doc.to_string().as_bytes())?;
    }

    #[test]
    fn valid_token_responses_are_accepted(doc in valid_token_doc()) {
        let token = parse_token_response(doc.to_string().as_bytes(), Instant::now(), DEFAULT, &[]);
        prop_assert!(token.is_ok(), "{doc}: {token:?}");
    }

    #[test]
    fn mutated_token_responses(doc in mutated(valid_token_doc(), TOKEN_MEMBERS)) {
        check_token_response(doc.to_string().as_bytes())?;
    }

    #[test]
    fn oauth_errors_from_arbitrary_input(
        body in prop::collection::vec(any::<u8>(), 0..300),
        doc in mutated(Just(json!({"error": "invalid_client", "error_description": "d", "error_uri": "u"})), &["error", "error_description", "error_uri"]),
        status in 400u16..600,
        retry_after in ".{0,40}",
    ) {
        for body in [body, doc.to_string().into_bytes()] {
            let parsed = parse_oauth_error(&body);
            if let Some(oauth) = &parsed {
                // Accepted only when the body is an object with a string `error`.
                let value: Value = serde_json::from_slice(&body).unwrap_or_default();
                prop_assert_eq!(value["error"].is_string(), true);
                prop_assert!(oauth.description.as_ref().is_none_or(|d| d.chars().count() <= 201));
            }
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&retry_after) {
                headers.insert(http::header::RETRY_AFTER, value);
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let error = parse_error_response(status, &headers, &body, SystemTime::now(), &[]);
            prop_assert_eq!(error.kind(), ErrorKind::TokenRejected);
            prop_assert!(error.retry_after().is_none_or(|d| d <= Duration::from_secs(86_400)));
            prop_assert!(error.body_snippet().is_none_or(|s| !s.chars().any(char::is_control)));
            let _ = parse_retry_after(&headers, SystemTime::now());
        }
    }

    #[test]
    fn smart_configurations_from_arbitrary_input(
        body in prop::collection::vec(any::<u8>(), 0..300),
        doc in json_value(),
        mutation in mutated(valid_smart_doc(), SMART_MEMBERS),
    ) {
        check_smart(&body)?;
        check_smart(doc.to_string().as_bytes())?;
        check_smart(mutation.to_string().as_bytes())?;
    }

    #[test]
    fn pem_loading_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = crate::SigningKey::from_pem(&body, "k");
        let mut armoured = b"-----BEGIN PRIVATE KEY-----\n".to_vec();
        armoured.extend_from_slice(&body);
        armoured.extend_from_slice(b"\n-----END PRIVATE KEY-----\n");
        let _ = crate::SigningKey::from_pem(&armoured, "k");
    }

    #[test]
    fn pem_loading_never_panics_on_damaged_keys(
        pem in pem_key(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = pem.as_bytes().to_vec();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        // Either a working key or a typed error.
        match crate::SigningKey::from_pem(&bytes, "k") {
            Ok(key) => prop_assert!(!key.kid().is_empty()),
            Err(error) => prop_assert!(matches!(error.kind(), ErrorKind::Key)),
        }
    }

    #[test]
    fn no_piece_of_a_secret_survives_in_an_error(
        prefix in "[ -~\\n\\t]{0,900}",
        suffix in "[ -~\\n]{0,300}",
        jwt in "[A-Za-z0-9_-]{20,300}\\.[A-Za-z0-9_-]{20,300}\\.[A-Za-z0-9_-]{20,300}",
        opaque in "[!-~]{16,80}",
        which in 0..3usize,
        form in 0..3usize,
        json in any::<bool>(),
    ) {
        use crate::redact::{holds_piece_of, json_escaped, url_encoded};
        // The assertion is known to the sanitizer; an access token is not (a JWT-shaped one is
        // caught by its shape); an opaque token with any characters is caught when known.
        let (secret, known): (&str, Vec<&str>) = match which {
            0 => (&jwt, vec![jwt.as_str()]),
            1 => (&jwt, vec![]),
            _ => (&opaque, vec![opaque.as_str()]),
        };
        let echoed = match form {
            0 => secret.to_owned(),
            1 => url_encoded(secret),
            _ => json_escaped(secret),
        };
        let body = if json {
            format!(
                r#"{{"error":"invalid_client","error_description":"{}{echoed}{}","error_uri":"{echoed}"}}"#,
                json_escaped(&prefix), json_escaped(&suffix)
            )
        } else {
            format!("{prefix}{echoed}{suffix}")
        };
        let error = parse_error_response(
            http::StatusCode::UNAUTHORIZED,
            &http::HeaderMap::new(),
            body.as_bytes(),
            SystemTime::now(),
            &known,
        );
        let mut kept = vec![error.to_string(), format!("{error:?}")];
        kept.extend(error.body_snippet().map(str::to_owned));
        if let Some(oauth) = error.oauth_error() {
            kept.extend(oauth.description.clone());
            kept.extend(oauth.uri.clone());
        }
        for text in kept {
            prop_assert!(!holds_piece_of(&text, secret), "{} kept in {:?}", secret, text);
        }
    }
}
