//! The proxy environment variables never reach a client assertion: the built-in HTTP clients
//! (token, discovery, the mock's JWKS fetch, the CLI) use no proxy unless one is configured
//! explicitly; and token requests never follow a redirect, whatever client builder the caller
//! passes. Its own test binary: it sets process-wide environment variables.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)]

mod support;

use koppeltaal_auth::{ClientCredentials, ErrorKind, KoppeltaalAuth, TokenSource};
use support::{CLIENT_ID, RecordingServer, rsa_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_from_the_environment_and_no_redirect_for_token_requests() {
    let proxy = RecordingServer::start().await;
    let proxy_url = proxy.url("");
    // SAFETY: nothing else in this binary reads the environment while this runs: its only other
    // test fails its build before any HTTP client is made (the one place that could read the
    // proxy variables), and this test sets them before its own threads start.
    unsafe {
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            std::env::set_var(name, &proxy_url);
        }
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
    }
    let mock = support::mock().await;

    // The default client: token request and discovery go straight to the server.
    let source = support::source(&mock, rsa_key());
    source.fetch().await.unwrap();
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .discover()
        .await
        .unwrap();
    auth.ready().await.unwrap();
    assert!(proxy.seen().is_empty(), "the proxy saw {:?}", proxy.seen());
    assert_eq!(mock.stats().tokens_issued, 2);

    // A proxy configured explicitly is used.
    let through = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(mock.token_endpoint())
        .signing_key(rsa_key())
        .proxy(reqwest::Proxy::all(&proxy_url).unwrap())
        .build()
        .unwrap();
    let _ = through.fetch().await;
    assert_eq!(
        proxy.seen().len(),
        1,
        "the configured proxy got the request"
    );

    // A caller's client builder that would follow redirects (reqwest's default) does not: the
    // 307 is an error, and the assertion never reaches where it points.
    let redirecting = RecordingServer::start().await;
    let before = mock.stats().token_requests;
    let endpoint = redirecting.url(&format!(
        "/oauth2/token?to={}",
        url::form_urlencoded::byte_serialize(mock.token_endpoint().as_bytes()).collect::<String>()
    ));
    let redirected = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(endpoint)
        .signing_key(rsa_key())
        .http_client_builder(reqwest::Client::builder().no_proxy())
        .build()
        .unwrap();
    let err = redirected.fetch().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenRejected);
    assert_eq!(err.status(), Some(http::StatusCode::TEMPORARY_REDIRECT));
    assert!(!err.is_transient());
    assert!(err.to_string().contains("redirect"), "{err}");
    assert_eq!(redirecting.seen().len(), 1);
    assert_eq!(mock.stats().token_requests, before, "not followed");

    // The CLI, with the variables in its environment.
    #[cfg(feature = "cli")]
    {
        let dir = std::env::temp_dir().join(format!("kt-proxy-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, support::pem("test-only-rsa2048-pkcs8.pem")).unwrap();
        let run = |extra: Vec<String>| {
            let mut args = vec![
                "token".to_owned(),
                "--client-id".to_owned(),
                CLIENT_ID.to_owned(),
                "--key".to_owned(),
                key.to_str().unwrap().to_owned(),
                "--kid".to_owned(),
                "test-rsa".to_owned(),
                "--fhir-base".to_owned(),
                mock.fhir_base_url(),
            ];
            args.extend(extra);
            let proxy_url = proxy_url.clone();
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_koppeltaal-auth"))
                    .args(&args)
                    .env_clear()
                    .env("HTTP_PROXY", &proxy_url)
                    .env("http_proxy", &proxy_url)
                    .env("ALL_PROXY", &proxy_url)
                    .output()
                    .unwrap()
            })
        };
        let seen = proxy.seen().len();
        let output = run(Vec::new()).await.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            proxy.seen().len(),
            seen,
            "the CLI ignores the proxy variables"
        );
        let output = run(vec!["--proxy".to_owned(), proxy_url.clone()])
            .await
            .unwrap();
        assert!(
            !output.status.success(),
            "the recording proxy answers no token"
        );
        assert!(proxy.seen().len() > seen, "--proxy is used");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A proxy and a client builder together: the proxy would be dropped (the builder's client is
/// used as it is) and token requests would go direct, so the build refuses.
#[test]
fn a_proxy_with_a_client_builder_is_a_configuration_error() {
    let err = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint("https://auth.example.org/token")
        .signing_key(rsa_key())
        .proxy(reqwest::Proxy::all("http://proxy.example.org:3128").unwrap())
        .http_client_builder(reqwest::Client::builder().no_proxy())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("proxy"), "{err}");
}
