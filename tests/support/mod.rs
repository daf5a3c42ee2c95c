//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod cell;
pub mod fhir_servers;
pub mod layer;
#[cfg(feature = "reqwest-middleware")]
pub mod middleware;
pub mod runtimes;
pub mod trace;

use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};

use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{
    Algorithm, Authenticator, ClientCredentials, KeyId, KoppeltaalAuth, SigningKey,
};

/// A loopback port nothing listens on: the discard port, below the range the system hands
/// ports out from, so no server of a test binds it (a port picked free and let go could be taken
/// by a test running at once, and the "unreachable" endpoint would answer).
pub const DEAD_PORT: u16 = 9;

/// `s` seconds.
pub const fn secs(s: u64) -> std::time::Duration {
    std::time::Duration::from_secs(s)
}

/// `n` milliseconds.
pub const fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

/// A test-only PEM from `tests/data/`.
pub fn pem(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

static RSA: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::from_pem(pem("test-only-rsa2048-pkcs8.pem"), "test-rsa").unwrap());

/// The RS512 test key (kid `test-rsa`).
pub fn rsa_key() -> SigningKey {
    RSA.clone()
}

/// A test key for `alg`: the RSA 2048 fixture for RS*/PS*, the P-256 or P-384 fixture for ES*.
pub fn key_for(alg: Algorithm) -> SigningKey {
    let file = match alg {
        Algorithm::ES256 => "test-only-p256-pkcs8.pem",
        Algorithm::ES384 => "test-only-p384-sec1.pem",
        _ => "test-only-rsa2048-pkcs1.pem",
    };
    SigningKey::from_pem_with_algorithm(pem(file), alg, KeyId::Thumbprint).unwrap()
}

pub const CLIENT_ID: &str = "7e9b2b4e-1c1d-4b8e-9d0c-0123456789ab";

/// A mock with `CLIENT_ID` registered for the RS512 test key.
pub async fn mock() -> MockKoppeltaal {
    let mock = MockKoppeltaal::start().await.unwrap();
    mock.register_key(CLIENT_ID, &rsa_key());
    mock
}

/// An authenticator for `CLIENT_ID` with the RS512 test key, discovering `mock`'s token endpoint.
pub async fn authenticator(mock: &MockKoppeltaal) -> Authenticator {
    KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .discover()
        .await
        .unwrap()
}

/// Lets spawned tasks run until `done` holds, without letting a paused clock advance.
pub async fn run_until(mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("kt-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `ClientCredentials` for `CLIENT_ID` against `mock`.
pub fn source(mock: &MockKoppeltaal, key: SigningKey) -> ClientCredentials {
    ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(mock.token_endpoint())
        .signing_key(key)
        .build()
        .unwrap()
}

/// Everything `tracing` writes on this thread, at TRACE level, while the capture guard lives.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<CapturedLogs>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the capture of the current thread, if any.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|capture| {
            if let Some(logs) = &*capture.borrow() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops the capture of this thread when dropped.
pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|capture| capture.borrow_mut().take());
    }
}

/// Captures TRACE-level output of every crate on this thread until the guard is dropped. Use a
/// current-thread runtime, so that spawned tasks log on this thread too.
///
/// One global subscriber serves every test of the binary: a per-test (thread-local default)
/// subscriber can miss events when tests run in parallel, because tracing caches per call site
/// whether anyone is interested.
pub fn capture_logs() -> (CapturedLogs, CaptureGuard) {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| ThreadWriter)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    let logs = CapturedLogs::default();
    CAPTURE.with(|capture| *capture.borrow_mut() = Some(logs.clone()));
    (logs, CaptureGuard)
}

/// A loopback HTTP server that records every request and answers `200`, or `307` to the URL in
/// a `to` query parameter.
pub struct RecordingServer {
    pub addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingServer {
    pub async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let state = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let state = Arc::clone(&state);
            async move {
                let authorization = request
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                state.lock().unwrap().push(Recorded {
                    path: request.uri().path().to_owned(),
                    authorization,
                });
                let param = |name: &str| {
                    request.uri().query().and_then(|q| {
                        url::form_urlencoded::parse(q.as_bytes())
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.into_owned())
                    })
                };
                match (param("to"), param("status")) {
                    (Some(to), _) => axum::response::Response::builder()
                        .status(307)
                        .header("location", to)
                        .body(axum::body::Body::empty())
                        .unwrap(),
                    (None, Some(status)) => axum::response::Response::builder()
                        .status(status.parse::<u16>().unwrap())
                        .body(axum::body::Body::empty())
                        .unwrap(),
                    (None, None) => axum::response::Response::new(axum::body::Body::from("ok")),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, seen, task }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// An authenticator for the FHIR base `/fhir/DEFAULT` on this server, with fake tokens.
    pub fn authenticator(&self) -> Authenticator {
        KoppeltaalAuth::builder()
            .fhir_base_url(self.url("/fhir/DEFAULT"))
            .token_source(koppeltaal_auth::testing::FakeTokenSource::new())
            .build()
            .unwrap()
    }

    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}
