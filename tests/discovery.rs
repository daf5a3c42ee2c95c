//! SMART discovery against `MockKoppeltaal`: the token endpoint found (relative or absolute),
//! every wrong document a typed error, the endpoint found used for a token request, and the
//! algorithms an auth server lists binding every key of a key set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::StatusCode;
use koppeltaal_auth::{
    Algorithm, ClientCredentials, ErrorKind, KeySet, KoppeltaalAuth, SigningKey, TokenSource, smart,
};
use serde_json::json;
use support::{CLIENT_ID, key_for, mock, rsa_key};

#[tokio::test]
async fn discovery_finds_the_token_endpoint() {
    let mock = mock().await;
    for base in [mock.fhir_base_url(), format!("{}/", mock.fhir_base_url())] {
        let config = smart::discover(&base).await.unwrap();
        assert_eq!(config.token_endpoint, mock.token_endpoint());
        assert_eq!(
            config.token_endpoint_auth_methods_supported.as_deref(),
            Some(&["private_key_jwt".to_owned()][..])
        );
        assert!(
            config
                .token_endpoint_auth_signing_alg_values_supported
                .is_none()
        );
    }
    assert_eq!(mock.stats().discovery_requests, 2);

    mock.set_smart_configuration(Some(json!({"token_endpoint": "/oauth2/token"})));
    let config = smart::discover(&mock.fhir_base_url()).await.unwrap();
    assert_eq!(
        config.token_endpoint,
        mock.token_endpoint(),
        "relative endpoint resolved"
    );

    mock.set_smart_configuration(Some(json!({"issuer": "x"})));
    let err = smart::discover(&mock.fhir_base_url()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Discovery);
    assert!(err.to_string().contains("no token_endpoint"), "{err}");

    mock.set_smart_configuration(Some(json!({
        "token_endpoint": mock.token_endpoint(),
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    })));
    let err = smart::discover(&mock.fhir_base_url()).await.unwrap_err();
    assert!(err.to_string().contains("private_key_jwt"), "{err}");

    let missing = format!("http://{}/fhir/OTHER", mock.addr());
    let err = smart::discover(&missing).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.status()),
        (ErrorKind::Discovery, Some(StatusCode::NOT_FOUND))
    );

    let err = smart::discover("http://fhir.example.org/fhir")
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Config,
        "plain http to a non-loopback host"
    );
}

#[tokio::test]
async fn discovered_endpoint_works_for_the_token_request() {
    let mock = mock().await;
    let config = smart::discover(&mock.fhir_base_url()).await.unwrap();
    let source = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(config.token_endpoint)
        .signing_key(rsa_key())
        .build()
        .unwrap();
    assert!(source.fetch().await.is_ok());
}

/// A server that accepts connections and never answers, on a loopback port.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// A client from the caller's builder with no timeout of its own, and no `request_timeout`:
/// discovery and token requests to a server that never answers used to hang for ever; they are
/// cut off at `MAX_REQUEST_TIMEOUT` (5 minutes, on tokio's paused clock here).
#[tokio::test(start_paused = true)]
async fn a_callers_client_without_timeouts_cannot_hang_discovery_or_a_token_request() {
    let (url, _server) = silent_server().await;
    let started = tokio::time::Instant::now();
    let err = koppeltaal_auth::KoppeltaalAuth::builder()
        .fhir_base_url(format!("{url}/fhir"))
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .http_client_builder(reqwest::Client::builder().no_proxy())
        .discover()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(
        started.elapsed(),
        koppeltaal_auth::token::MAX_REQUEST_TIMEOUT
    );
    let source = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(format!("{url}/token"))
        .signing_key(rsa_key())
        .http_client_builder(reqwest::Client::builder().no_proxy())
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = source.fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(
        started.elapsed(),
        koppeltaal_auth::token::MAX_REQUEST_TIMEOUT
    );
}

/// A URL read from a file or a secret with a trailing newline: the URL parser would drop it
/// silently, but the text goes on as set (the token endpoint into the assertion's `aud`, which
/// the server compares byte for byte: a bare 401 that looks like bad credentials). Refused.
#[test]
fn urls_with_whitespace_or_control_characters_are_configuration_errors() {
    for (base, endpoint) in [
        (
            "https://fhir.example.org/fhir\n",
            "https://auth.example.org/token",
        ),
        (
            "https://fhir.example.org/fhir",
            "https://auth.example.org/token\n",
        ),
        (
            "https://fhir.example.org/fhir",
            " https://auth.example.org/token",
        ),
        (
            "https://fhir.example.org/fh\tir",
            "https://auth.example.org/token",
        ),
    ] {
        let err = koppeltaal_auth::KoppeltaalAuth::builder()
            .fhir_base_url(base)
            .client_id(CLIENT_ID)
            .signing_key(rsa_key())
            .token_endpoint(endpoint)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{base:?} {endpoint:?}");
        assert!(err.to_string().contains("whitespace"), "{err}");
    }
}

/// The same mistake in the client id (read from a file or `KOPPELTAAL_CLIENT_ID`): it goes into
/// the assertion's `iss` and `sub`, and the server answers a bare 401. Refused: control
/// characters, whitespace around it, and one too long to be an id.
#[test]
fn client_ids_with_whitespace_or_control_characters_are_configuration_errors() {
    let too_long = "x".repeat(koppeltaal_auth::MAX_CLIENT_ID_LEN + 1);
    for client_id in ["app\n", " app", "my\tapp", "app\0", "app\u{a0}", &too_long] {
        let err = koppeltaal_auth::KoppeltaalAuth::builder()
            .fhir_base_url("https://fhir.example.org/fhir")
            .client_id(client_id)
            .signing_key(rsa_key())
            .token_endpoint("https://auth.example.org/token")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{client_id:?}");
        assert!(err.to_string().contains("client id"), "{err}");
        let direct = koppeltaal_auth::ClientAssertion::new(client_id, "https://a/t").unwrap_err();
        assert_eq!(direct.kind(), ErrorKind::Config, "{client_id:?}");
    }
    // RFC 6749 allows spaces inside one (VSCHAR).
    let longest = "x".repeat(koppeltaal_auth::MAX_CLIENT_ID_LEN);
    for client_id in [longest.as_str(), "my app"] {
        assert!(koppeltaal_auth::ClientAssertion::new(client_id, "https://a/t").is_ok());
    }
}

/// A FHIR base that the URL parser rewrites: the scope comes from the parsed URL, but requests
/// are built from the text as set (`format!("{}/Patient", auth.fhir_base_url())`), so every one
/// went out without the token. Refused, with the form to write; spellings that only differ in
/// case, a default port or a trailing slash are fine, and requests built from them are covered.
#[test]
fn a_fhir_base_the_url_parser_would_rewrite_is_a_configuration_error() {
    let build = |base: &str| {
        koppeltaal_auth::KoppeltaalAuth::builder()
            .fhir_base_url(base)
            .client_id(CLIENT_ID)
            .signing_key(rsa_key())
            .token_endpoint("https://auth.example.org/token")
            .build()
    };
    let cell = koppeltaal_auth::TokenCell::new(
        koppeltaal_auth::testing::FakeTokenSource::new(),
        koppeltaal_auth::RefreshPolicy::default(),
    );
    for (base, normal) in [
        (
            "https://fhir.example.org/fhir/x/../DEFAULT",
            "https://fhir.example.org/fhir/DEFAULT",
        ),
        (
            "https://fhir.example.org/fhir/./DEFAULT",
            "https://fhir.example.org/fhir/DEFAULT",
        ),
        (
            "https://fhir.example.org/fhir/{tenant}",
            "https://fhir.example.org/fhir/%7Btenant%7D",
        ),
        (
            "https://fhir.example.org/zürich",
            "https://fhir.example.org/z%C3%BCrich",
        ),
        (
            "https://fhir.example.org:0443/fhir",
            "https://fhir.example.org/fhir",
        ),
        (
            "https://fhir.example.org\\fhir",
            "https://fhir.example.org/fhir",
        ),
    ] {
        let err = build(base).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{base}");
        assert!(
            err.to_string().contains(&format!("write it as {normal}")),
            "{base}: {err}"
        );
        // The layers made from a base of one's own check the same.
        let layer = koppeltaal_auth::KoppeltaalAuthLayer::new(cell.clone(), base).unwrap_err();
        let trace = koppeltaal_auth::trace::KoppeltaalTraceLayer::new(base).unwrap_err();
        for err in [layer, trace] {
            assert!(
                err.to_string().contains(&format!("write it as {normal}")),
                "{base}: {err}"
            );
        }
    }
    for base in [
        "https://fhir.example.org/fhir",
        "https://fhir.example.org/fhir/",
        "HTTPS://FHIR.Example.org/fhir",
        "https://fhir.example.org:443/fhir",
        "https://fhir.example.org",
        "https://fhir.example.org/f%68ir",
    ] {
        assert!(koppeltaal_auth::KoppeltaalAuthLayer::new(cell.clone(), base).is_ok());
        let auth = build(base).unwrap();
        let request = format!("{}/Patient", auth.fhir_base_url().trim_end_matches('/'));
        assert!(auth.covers(&request), "{base}: {request}");
    }
}

/// An auth server that lists the algorithms it accepts: discovery refuses a key set with a key
/// of another, also one published to sign only later; and after discovery the set refuses to
/// publish one (once its delay was over, every token request would be refused).
#[tokio::test]
async fn a_listed_algorithm_binds_every_key_of_the_set() {
    let mock = mock().await;
    mock.set_smart_configuration(Some(json!({
        "token_endpoint": mock.token_endpoint(),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES384"],
    })));
    let discover = |keys: &KeySet| {
        KoppeltaalAuth::builder()
            .fhir_base_url(mock.fhir_base_url())
            .client_id(CLIENT_ID)
            .key_set(keys.clone())
            .discover()
    };
    let pending_rsa = KeySet::new(key_for(Algorithm::ES384));
    pending_rsa.publish(rsa_key()).unwrap();
    let err = discover(&pending_rsa).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Discovery);
    assert!(err.to_string().contains("RS512 assertions"), "{err}");

    let keys = KeySet::new(key_for(Algorithm::ES384));
    discover(&keys).await.unwrap();
    let err = keys.publish(rsa_key()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Key);
    assert!(err.to_string().contains("it lists ES384"), "{err}");
    keys.publish(SigningKey::generate(Algorithm::ES384).unwrap())
        .unwrap();
    assert_eq!(keys.kids().len(), 2);
}
