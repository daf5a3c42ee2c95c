//! The `koppeltaal-auth` binary against `MockKoppeltaal`: keygen -> jwks -> register -> token ->
//! get, the documented exit codes, and the environment variables. Key files (`keygen`) are
//! `cli_keygen.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "support/cli.rs"]
mod cli_support;

use std::process::Command;

use cli_support::{BIN, path, run, stderr, stdout};
use koppeltaal_auth::jwks::JwkSet;
use koppeltaal_auth::testing::MockKoppeltaal;
use support::TempDir;

async fn round_trip(alg: &str) {
    let mock = MockKoppeltaal::start().await.unwrap();
    let dir = TempDir::new();
    let key = dir.path("client-key.pem");

    let keygen = run(&["keygen", "--alg", alg, "--out", path(&key)]).await;
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let generated: JwkSet = serde_json::from_str(&stdout(&keygen)).unwrap();
    assert_eq!(generated.keys[0].alg(), Some(alg));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key is readable by its owner only");
    }

    // `jwks` prints the same set again from the file.
    let jwks = run(&["jwks", "--key", path(&key)]).await;
    assert!(jwks.status.success(), "{}", stderr(&jwks));
    let printed: JwkSet = serde_json::from_str(&stdout(&jwks)).unwrap();
    assert_eq!(printed, generated);
    assert!(!stdout(&jwks).contains("PRIVATE"));

    // Register it, as domain management would.
    mock.register_client("cli-client", &printed);
    let credentials = ["--client-id", "cli-client", "--key", path(&key)];
    let base = mock.fhir_base_url();
    let mut args = vec!["token"];
    args.extend(credentials);
    args.extend(["--fhir-base", &base]);
    let token = run(&args).await;
    assert!(token.status.success(), "{}", stderr(&token));
    let response: serde_json::Value = serde_json::from_str(&stdout(&token)).unwrap();
    assert_eq!(response["token_type"], "Bearer");
    assert_eq!(response["expires_in"], 300);
    let access_token = response["access_token"].as_str().unwrap().to_owned();
    let fhir = reqwest::Client::new()
        .get(format!("{base}/Patient/1"))
        .bearer_auth(&access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(fhir.status(), 200, "the printed token works");

    let mut args = vec!["token", "--header", "--token-endpoint"];
    let endpoint = mock.token_endpoint();
    args.push(&endpoint);
    args.extend(credentials);
    let header = run(&args).await;
    assert!(stdout(&header).starts_with("Authorization: Bearer mock-"));

    let url = format!("{base}/Patient/42");
    let mut args = vec!["get", "--verbose", "--fhir-base", &base];
    args.extend(credentials);
    args.push(&url);
    let get = run(&args).await;
    assert!(get.status.success(), "{}", stderr(&get));
    assert!(stdout(&get).contains("200 OK"));
    assert!(stdout(&get).contains("\"id\":\"42\""));
    assert!(stderr(&get).contains("token generation used: 1"));
    assert!(stderr(&get).contains("no renewal or replay was needed"));
    let used = mock.fhir_requests().pop().unwrap();
    let sent = used.headers["authorization"].to_str().unwrap()["Bearer ".len()..].to_owned();
    assert!(
        !stdout(&get).contains(&sent) && !stderr(&get).contains(&sent),
        "--verbose never prints the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_jwks_token_get_round_trip_rs512() {
    round_trip("RS512").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_jwks_token_get_round_trip_es384() {
    round_trip("ES384").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_documented_exit_codes_and_clear_messages() {
    let mock = MockKoppeltaal::start().await.unwrap();
    let dir = TempDir::new();
    let rsa = format!(
        "{}/tests/data/test-only-rsa2048-pkcs8.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let garbage = dir.path("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let big = dir.path("big.pem");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    // A device that never ends, on unix; a file too big to be a key elsewhere.
    let endless = if cfg!(unix) {
        "/dev/zero".to_owned()
    } else {
        path(&big).to_owned()
    };
    let endpoint = mock.token_endpoint();
    let dead = format!("http://127.0.0.1:{}/oauth2/token", support::DEAD_PORT);
    let not_found = endpoint.replace("/oauth2/token", "/oauth2/tokn");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec![
                "token",
                "--client-id",
                "c",
                "--key",
                path(&garbage),
                "--token-endpoint",
                &endpoint,
            ],
            2,
            "garbage.pem",
        ),
        (
            vec![
                "token",
                "--client-id",
                "c",
                "--key",
                "/nonexistent.pem",
                "--token-endpoint",
                &endpoint,
            ],
            2,
            "cannot read the key /nonexistent.pem",
        ),
        (
            vec![
                "token",
                "--client-id",
                "c",
                "--key",
                path(&big),
                "--token-endpoint",
                &endpoint,
            ],
            2,
            "larger than 1024 KiB",
        ),
        (
            vec![
                "token",
                "--client-id",
                "c",
                "--key",
                &endless,
                "--token-endpoint",
                &endpoint,
            ],
            2,
            "larger than 1024 KiB",
        ),
        (
            vec![
                "token",
                "--client-id",
                "c",
                "--key",
                &rsa,
                "--alg",
                "ES384",
                "--token-endpoint",
                &endpoint,
            ],
            2,
            "ES384 needs an EC P-384 key",
        ),
        (
            vec![
                "token",
                "--client-id",
                "c",
                "--key",
                &rsa,
                "--token-endpoint",
                "http://auth.example.org/token",
            ],
            2,
            "https",
        ),
        (
            vec!["token", "--client-id", "c", "--key", &rsa],
            2,
            "--fhir-base",
        ),
        (
            vec![
                "token",
                "--client-id",
                "c",
                "--key",
                &rsa,
                "--token-endpoint",
                &dead,
            ],
            3,
            "could not reach the server",
        ),
        (
            vec![
                "token",
                "--client-id",
                "unregistered",
                "--key",
                &rsa,
                "--token-endpoint",
                &endpoint,
            ],
            4,
            "Access Denied",
        ),
        (
            vec!["keygen", "--alg", "HS256", "--out", "x.pem"],
            2,
            "unsupported algorithm",
        ),
        // A mistyped token endpoint (404) is a configuration error, not rejected credentials.
        (
            vec![
                "token",
                "--client-id",
                "c",
                "--key",
                &rsa,
                "--token-endpoint",
                &not_found,
            ],
            2,
            "404",
        ),
    ];
    for (args, code, message) in cases {
        let output = run(&args).await;
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stdout(&output).is_empty(), "{args:?}: nothing on stdout");
    }
    // A proxy URL that reqwest refuses: the message never shows its password.
    for proxy in [
        "http://user:hunter2@proxy.example:99999",
        "socks5://user:hunter2@proxy example:1080",
    ] {
        let mut args = vec!["token", "--client-id", "c", "--key", &rsa];
        args.extend(["--token-endpoint", &endpoint, "--proxy", proxy]);
        let output = run(&args).await;
        let said = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{proxy}: {said}");
        assert!(said.contains("invalid --proxy"), "{proxy}: {said}");
        assert!(!said.contains("hunter2"), "{proxy}: {said}");
    }
    mock.fail_next_token_requests(1, http::StatusCode::SERVICE_UNAVAILABLE, None);
    let unavailable = run(&[
        "token",
        "--client-id",
        "c",
        "--key",
        &rsa,
        "--token-endpoint",
        &endpoint,
    ])
    .await;
    assert_eq!(
        unavailable.status.code(),
        Some(3),
        "a 503 is a network-class failure"
    );
    // An OAuth error answered with 200 refuses the credentials as a 400 would.
    mock.push_token_response(koppeltaal_auth::testing::MockResponse::json(
        &serde_json::json!({"error": "invalid_client", "error_description": "unknown key"}),
    ));
    let refused = run(&[
        "token",
        "--client-id",
        "c",
        "--key",
        &rsa,
        "--token-endpoint",
        &endpoint,
    ])
    .await;
    assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("unknown key"),
        "{}",
        stderr(&refused)
    );
    // The other documented classes: refusals 4, overload 3, any other 4xx or a redirect 2.
    let token = [
        "token",
        "--client-id",
        "c",
        "--key",
        &rsa,
        "--token-endpoint",
        &endpoint,
    ];
    for (status, code) in [(400, 4), (403, 4), (408, 3), (429, 3), (405, 2)] {
        let status = http::StatusCode::from_u16(status).unwrap();
        mock.fail_next_token_requests(1, status, None);
        let output = run(&token).await;
        assert_eq!(
            output.status.code(),
            Some(code),
            "{status}: {}",
            stderr(&output)
        );
    }
    mock.push_token_response(
        koppeltaal_auth::testing::MockResponse::new(http::StatusCode::TEMPORARY_REDIRECT, "")
            .header("location", "https://elsewhere.example/token"),
    );
    let redirected = run(&token).await;
    assert_eq!(redirected.status.code(), Some(2), "{}", stderr(&redirected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_has_an_environment_variable() {
    let mock = MockKoppeltaal::start().await.unwrap();
    let rsa = format!(
        "{}/tests/data/test-only-rsa2048-pkcs8.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let key =
        koppeltaal_auth::SigningKey::from_pem(std::fs::read(&rsa).unwrap(), "env-kid").unwrap();
    mock.register_key("env-client", &key);
    let base = mock.fhir_base_url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("token")
            .env_clear()
            .env("KOPPELTAAL_CLIENT_ID", "env-client")
            .env("KOPPELTAAL_KEY", &rsa)
            .env("KOPPELTAAL_KID", "env-kid")
            .env("KOPPELTAAL_ALG", "RS512")
            .env("KOPPELTAAL_FHIR_BASE", &base)
            .env("KOPPELTAAL_SCOPE", "system/*.rs")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let request = mock.token_requests().pop().unwrap();
    assert_eq!(request.scope.as_deref(), Some("system/*.rs"));
    assert_eq!(request.assertion_header.unwrap()["kid"], "env-kid");
}
