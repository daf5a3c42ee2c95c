//! SMART discovery against `MockKoppeltaal`: the token endpoint found (relative or absolute),
//! every wrong document a typed error, and the endpoint found used for a token request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::StatusCode;
use koppeltaal_auth::{ClientCredentials, ErrorKind, TokenSource, smart};
use serde_json::json;
use support::{CLIENT_ID, mock, rsa_key};

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
