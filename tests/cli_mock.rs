//! `koppeltaal-auth mock` as a separate process, driven by the CLI's own `keygen`, `token` and
//! `get`: what a test in another language or a docker-compose set-up does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_koppeltaal-auth");

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The running mock process, killed if a test fails before stopping it.
struct MockProcess {
    child: Option<Child>,
    fhir_base: String,
    token_endpoint: String,
    banner: String,
}

impl MockProcess {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("mock")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut fhir_base, mut token_endpoint, mut banner) = (None, None, String::new());
        while let Some(Ok(line)) = lines.next() {
            banner.push_str(&line);
            banner.push('\n');
            if let Some(base) = line.strip_prefix("FHIR base:") {
                fhir_base = Some(base.trim().to_owned());
            }
            if let Some(endpoint) = line.strip_prefix("token endpoint:") {
                token_endpoint = Some(endpoint.trim().to_owned());
            }
            if line.contains("stop with Ctrl-C") {
                break;
            }
        }
        let mut process = Self {
            child: Some(child),
            fhir_base: fhir_base.unwrap_or_default(),
            token_endpoint: token_endpoint.unwrap_or_default(),
            banner,
        };
        if process.fhir_base.is_empty() {
            let output = process.child.take().unwrap().wait_with_output().unwrap();
            panic!(
                "the mock did not start: {}\n{}",
                process.banner,
                text(&output.stderr)
            );
        }
        process
    }

    /// Ctrl-C, and the exit status and standard error.
    fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let output = child.wait_with_output().unwrap();
        (output.status, text(&output.stderr))
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_standalone_mock_serves_the_cli_and_stops_on_ctrl_c() {
    let dir = TempDir::new();
    let key = dir.path("key.pem").to_str().unwrap().to_owned();
    let keygen = cli(&["keygen", "--alg", "ES384", "--out", &key]);
    assert!(keygen.status.success(), "{}", text(&keygen.stderr));
    let jwks = dir.path("jwks.json").to_str().unwrap().to_owned();
    std::fs::write(&jwks, &keygen.stdout).unwrap();

    let client = format!("my-app={jwks}");
    let mock = MockProcess::start(&["--client", &client, "--token-lifetime", "120"]);
    assert!(
        mock.fhir_base.starts_with("http://127.0.0.1:"),
        "{}",
        mock.banner
    );
    assert!(
        mock.banner.contains("client:          my-app"),
        "{}",
        mock.banner
    );
    assert!(mock.banner.contains("register a client"), "{}", mock.banner);

    // A token through discovery, as a client in another language would get it.
    let token = cli(&[
        "token",
        "--client-id",
        "my-app",
        "--key",
        &key,
        "--fhir-base",
        &mock.fhir_base,
    ]);
    assert!(token.status.success(), "{}", text(&token.stderr));
    let response: serde_json::Value = serde_json::from_slice(&token.stdout).unwrap();
    assert_eq!(response["expires_in"], 120);
    assert_eq!(response["token_type"], "Bearer");

    // A FHIR read through the layer.
    let url = format!("{}/Patient/123", mock.fhir_base);
    let get = cli(&[
        "get",
        "--client-id",
        "my-app",
        "--key",
        &key,
        "--fhir-base",
        &mock.fhir_base,
        &url,
    ]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert!(
        text(&get.stdout).contains("\"id\":\"123\""),
        "{}",
        text(&get.stdout)
    );

    // An unregistered client: refused, exit code 4.
    let refused = cli(&[
        "token",
        "--client-id",
        "nobody",
        "--key",
        &key,
        "--token-endpoint",
        &mock.token_endpoint,
    ]);
    assert_eq!(refused.status.code(), Some(4), "{}", text(&refused.stderr));

    let (status, stderr) = mock.interrupt();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("mock Koppeltaal stopped"), "{stderr}");
}

#[test]
fn the_fault_knobs_work_from_outside() {
    let dir = TempDir::new();
    let key = dir.path("key.pem").to_str().unwrap().to_owned();
    let keygen = cli(&["keygen", "--alg", "RS512", "--out", &key]);
    assert!(keygen.status.success());
    let jwks = dir.path("jwks.json").to_str().unwrap().to_owned();
    std::fs::write(&jwks, &keygen.stdout).unwrap();
    let client = format!("app={jwks}");
    let mock = MockProcess::start(&[
        "--client",
        &client,
        "--fail-token-requests",
        "1",
        "--forbidden",
        "app",
    ]);
    let token = |endpoint: &str| {
        cli(&[
            "token",
            "--client-id",
            "app",
            "--key",
            &key,
            "--token-endpoint",
            endpoint,
        ])
    };
    // The first token request gets a 503 (exit 3: network/transient), the next a token.
    assert_eq!(token(&mock.token_endpoint).status.code(), Some(3));
    assert!(token(&mock.token_endpoint).status.success());
    // A forbidden client's token is answered 403 by the FHIR endpoint (exit 1).
    let url = format!("{}/Patient/1", mock.fhir_base);
    let get = cli(&[
        "get",
        "--client-id",
        "app",
        "--key",
        &key,
        "--fhir-base",
        &mock.fhir_base,
        &url,
    ]);
    assert_eq!(get.status.code(), Some(1), "{}", text(&get.stderr));
    assert!(text(&get.stdout).contains("403"), "{}", text(&get.stdout));
    let (status, _) = mock.interrupt();
    assert!(status.success());
}

#[test]
fn bad_mock_arguments_are_refused_before_it_listens() {
    let missing = cli(&["mock", "--client", "app=/nonexistent/jwks.json"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr).contains("cannot read the JWK Set"),
        "{}",
        text(&missing.stderr)
    );
    let malformed = cli(&["mock", "--client", "no-equals-sign"]);
    assert_eq!(malformed.status.code(), Some(2));
    let zero = cli(&["mock", "--token-lifetime", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    let huge = cli(&["mock", "--token-lifetime", "99999999999"]);
    assert_eq!(huge.status.code(), Some(2));
    assert!(
        text(&huge.stderr).contains("at most a day"),
        "{}",
        text(&huge.stderr)
    );
    // No file is read whole: an oversized one, or one that never ends, is refused.
    let dir = TempDir::new();
    let big = dir.path("big.json");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    let mut endless = vec![format!("app={}", big.display())];
    if cfg!(unix) {
        endless.push("app=/dev/zero".to_owned());
    }
    for client in &endless {
        let refused = cli(&["mock", "--client", client]);
        assert_eq!(refused.status.code(), Some(2), "{client}");
        assert!(
            text(&refused.stderr).contains("larger than 64 KiB"),
            "{client}: {}",
            text(&refused.stderr)
        );
    }
}
