//! One table of URLs, tested against the four places that decide whether a request gets the
//! token: the tower layer, the reqwest middleware, `Authenticator::covers`, and the CLI's `get`.
//! The token goes only to paths under the FHIR base *as servers resolve them*: no backslash, no
//! encoded slash or backslash, no dot segment in any spelling after the base (`..\OTHER`,
//! `..;`, `..;x=1`, `%2e%2e`, `%u002e%u002e`, `..%00`, `%2f`, ... are what Tomcat, Jetty, IIS
//! or a WHATWG parser turn into another Koppeltaal domain on the same server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{Authenticator, KoppeltaalAuth};
use support::{CLIENT_ID, RecordingServer, rsa_key};
use tower::{Layer, ServiceExt};

/// A path after the origin, whether the layer, `covers` and the CLI give it the token (they see
/// the URL as written), and whether the reqwest middleware does (it sees the URL as reqwest
/// normalises it before sending: `./x` and `x/..` are resolved first, and the token then goes
/// to the resolved path, which is under the base).
const CASES: &[(&str, bool, bool)] = &[
    ("/fhir/DEFAULT/Patient/1", true, true),
    ("/fhir/DEFAULT", true, true),
    ("/fhir/DEFAULT/", true, true),
    ("/fhir/DEFAULT/Patient;x=1", true, true),
    ("/fhir/DEFAULT/v1.0/Patient", true, true),
    ("/fhir/DEFAULT/Patient?q=../OTHER", true, true),
    ("/fhir/DEFAULT/..\\OTHER/Patient", false, false),
    ("/fhir/DEFAULT/a\\b", false, true),
    ("/fhir/DEFAULT/..;/OTHER/Patient", false, false),
    ("/fhir/DEFAULT/..;x=1/OTHER/Patient", false, false),
    ("/fhir/DEFAULT/.;/Patient", false, false),
    ("/fhir/DEFAULT/%2e%2e/OTHER/Patient", false, false),
    ("/fhir/DEFAULT/.%2E/OTHER/Patient", false, false),
    ("/fhir/DEFAULT/%2e%2e;jsessionid=1/OTHER", false, false),
    ("/fhir/DEFAULT/..%00/OTHER/Patient", false, false),
    ("/fhir/DEFAULT/%u002e%u002e/OTHER/Patient", false, false),
    ("/fhir/DEFAULT/%U002E./OTHER/Patient", false, false),
    (
        "/fhir/DEFAULT/x%u002f..%u002f..%u002fOTHER/Patient",
        false,
        false,
    ),
    ("/fhir/DEFAULT/..%00x/OTHER/Patient", false, false),
    ("/fhir/DEFAULT/..%2fOTHER/Patient", false, false),
    ("/fhir/DEFAULT/..%2FOTHER/Patient", false, false),
    ("/fhir/DEFAULT/..%5cOTHER/Patient", false, false),
    ("/fhir/DEFAULT/a%2Fb", false, false),
    ("/fhir/DEFAULT/../OTHER/Patient", false, false),
    ("/fhir/DEFAULT/./Patient", false, true),
    ("/fhir/DEFAULT/x/../Patient", false, true),
    ("/fhir/OTHER/Patient", false, false),
    ("/fhir/DEFAULTX/Patient", false, false),
    ("/fhir", false, false),
];

fn auth_for(mock: &MockKoppeltaal, base: &str) -> Authenticator {
    KoppeltaalAuth::builder()
        .fhir_base_url(base)
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .token_endpoint(mock.token_endpoint())
        .build()
        .unwrap()
}

#[tokio::test]
async fn covers_and_the_tower_layer_follow_the_table() {
    let mock = support::mock().await;
    let origin = "http://127.0.0.1:9";
    let auth = auth_for(&mock, &format!("{origin}/fhir/DEFAULT"));
    let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            seen.lock()
                .unwrap()
                .push(request.headers().contains_key("authorization"));
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        })
    };
    let client = auth.layer().layer(inner);
    for &(path, written, _) in CASES {
        let url = format!("{origin}{path}");
        assert_eq!(auth.covers(&url), written, "covers {url}");
        let request = Request::get(&url).body(Full::default());
        let Ok(request) = request else {
            assert!(
                !written,
                "http refuses {url}, yet it is expected to get the token"
            );
            continue;
        };
        client.clone().oneshot(request).await.unwrap();
        let got = seen.lock().unwrap().pop().unwrap();
        assert_eq!(got, written, "layer {url}");
    }
}

#[tokio::test]
async fn the_reqwest_middleware_follows_the_table() {
    let mock = support::mock().await;
    let server = RecordingServer::start().await;
    let auth = auth_for(&mock, &server.url("/fhir/DEFAULT"));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build();
    for &(path, _, normalised) in CASES {
        let url = server.url(path);
        client.get(&url).send().await.unwrap();
        let got = server.seen().pop().unwrap();
        assert_eq!(got.authorization.is_some(), normalised, "middleware {url}");
        if got.authorization.is_some() {
            assert!(
                got.path == "/fhir/DEFAULT" || got.path.starts_with("/fhir/DEFAULT/"),
                "{url} went to {}",
                got.path
            );
        }
    }
}

#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_follows_the_table_and_says_so() {
    let mock = support::mock().await;
    let server = RecordingServer::start().await;
    let dir = std::env::temp_dir().join(format!("kt-scope-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, support::pem("test-only-rsa2048-pkcs8.pem")).unwrap();
    let base = server.url("/fhir/DEFAULT");
    let endpoint = mock.token_endpoint();
    for &(path, written, _) in CASES {
        let url = server.url(path);
        let args = [
            "get",
            "--fhir-base",
            &base,
            "--token-endpoint",
            &endpoint,
            "--client-id",
            CLIENT_ID,
            "--key",
            key.to_str().unwrap(),
            "--kid",
            "test-rsa",
            &url,
        ]
        .map(str::to_owned);
        let before = server.seen().len();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_koppeltaal-auth"))
                .args(&args)
                .env_clear()
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let seen = server.seen();
        if seen.len() == before {
            // Not sent at all (the URL does not parse for http): no token went anywhere.
            assert!(!written, "{url}: {stderr}");
            continue;
        }
        let got = seen.last().unwrap();
        assert_eq!(got.authorization.is_some(), written, "cli {url}: {stderr}");
        assert_eq!(
            stderr.contains("sent without a token"),
            !written,
            "what the CLI says for {url}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_authorization_value_of_the_caller_is_kept() {
    let mock = support::mock().await;
    let auth = auth_for(&mock, "http://127.0.0.1:9/fhir/DEFAULT");
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let values = request
                .headers()
                .get_all("authorization")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            seen.lock().unwrap().push(values);
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        })
    };
    let client = auth.layer().layer(inner);
    // With a token in the cell (the fast path) and without (the slow path).
    for _ in 0..2 {
        let request = Request::get("http://127.0.0.1:9/fhir/DEFAULT/Patient/1")
            .header("authorization", "Bearer mine")
            .header("authorization", "Basic second")
            .body(Full::default())
            .unwrap();
        client.clone().oneshot(request).await.unwrap();
        assert_eq!(
            seen.lock().unwrap().pop().unwrap(),
            ["Bearer mine", "Basic second"]
        );
        auth.ready().await.unwrap();
    }
}
