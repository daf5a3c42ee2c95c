//! Koppeltaal's own reference auth server (`../shared/vendor/koppeltaal-authentication-service`,
//! or `KOPPELTAAL_REFERENCE_SOURCE`), started for the tests of this process: in a Python virtual
//! environment with the versions pinned in its `poetry.lock` (created once under the target
//! directory and reused), on a loopback port it binds itself, with a fresh SQLite database and the clients
//! below registered through its own models. The clients' JWK Sets are served by this crate's
//! `JwksService`, which the server fetches on every token request. The server exits when this
//! process does (it watches its standard input).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use koppeltaal_auth::jwks::JwksService;
use koppeltaal_auth::{Algorithm, KeyId, KeySet, SigningKey};

// The test binaries that include this module also declare `mod support`.
use crate::support::pem;

/// A registered client.
pub struct Client {
    pub id: String,
    pub keys: KeySet,
    /// How often the server fetched this client's JWK Set: once per token request.
    pub jwks_fetches: Arc<AtomicU64>,
}

impl Client {
    /// The key that signs now.
    pub fn key(&self) -> SigningKey {
        self.keys.signing_key()
    }

    pub fn fetches(&self) -> u64 {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

pub struct Reference {
    /// `http://127.0.0.1:<port>`: its issuer, and where its SMART configuration is.
    pub base: String,
    pub token_endpoint: String,
    pub clients: HashMap<&'static str, Client>,
    _child: Mutex<(Child, ChildStdin)>,
}

impl Reference {
    pub fn client(&self, name: &str) -> &Client {
        &self.clients[name]
    }

    /// Its JWK Set, for resource servers that check its tokens.
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.base)
    }

    /// The issuer in its access tokens (its `AUTH_SERVER_ISS`).
    pub fn issuer(&self) -> String {
        self.base.clone()
    }
}

fn key(file: &str, alg: Algorithm, kid: &str) -> SigningKey {
    SigningKey::from_pem_with_algorithm(pem(file), alg, KeyId::from(kid)).unwrap()
}

/// The clients: one per algorithm it accepts and refuses, one registered by public key, one
/// not approved, one for a burst, one for rotation (1 s propagation delay).
fn client_keys() -> Vec<(&'static str, KeySet, &'static str)> {
    let rsa = "test-only-rsa2048-pkcs8.pem";
    vec![
        (
            "rs512",
            KeySet::new(key(rsa, Algorithm::RS512, "kt-rs512")),
            "APPROVED",
        ),
        (
            "rs384",
            KeySet::new(key(rsa, Algorithm::RS384, "kt-rs384")),
            "APPROVED",
        ),
        (
            "es384",
            KeySet::new(key(
                "test-only-p384-pkcs8.pem",
                Algorithm::ES384,
                "kt-es384",
            )),
            "APPROVED",
        ),
        (
            "rs256",
            KeySet::new(key(rsa, Algorithm::RS256, "kt-rs256")),
            "APPROVED",
        ),
        (
            "ps384",
            KeySet::new(key(rsa, Algorithm::PS384, "kt-ps384")),
            "APPROVED",
        ),
        (
            "es256",
            KeySet::new(key(
                "test-only-p256-pkcs8.pem",
                Algorithm::ES256,
                "kt-es256",
            )),
            "APPROVED",
        ),
        (
            "pending",
            KeySet::new(key(rsa, Algorithm::RS512, "kt-pending")),
            "PENDING",
        ),
        (
            "burst",
            KeySet::new(key(rsa, Algorithm::RS512, "kt-burst")),
            "APPROVED",
        ),
        (
            "rotating",
            KeySet::new(key(rsa, Algorithm::RS512, "kt-rotating-1"))
                .with_propagation_delay(Duration::from_secs(1)),
            "APPROVED",
        ),
    ]
}

static REFERENCE: OnceLock<Result<Reference, String>> = OnceLock::new();

/// The server for this process, or why it cannot run (printed as `SKIPPED: ...` once).
pub fn reference() -> Option<&'static Reference> {
    match REFERENCE.get_or_init(start) {
        Ok(reference) => Some(reference),
        Err(why) => {
            static SAID: OnceLock<()> = OnceLock::new();
            SAID.get_or_init(|| eprintln!("SKIPPED: {why}"));
            None
        }
    }
}

fn source() -> PathBuf {
    std::env::var_os("KOPPELTAAL_REFERENCE_SOURCE").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/vendor/koppeltaal-authentication-service")
        },
        PathBuf::from,
    )
}

fn start() -> Result<Reference, String> {
    let source = source();
    if !source.join("application").is_dir() {
        return Err(format!(
            "Koppeltaal's reference auth server is not at {} (set KOPPELTAAL_REFERENCE_SOURCE)",
            source.display()
        ));
    }
    let python = venv(&source)?;
    // The JWK Set servers, on a runtime of their own that lives as long as the process.
    let clients = client_keys();
    let (jwks_base, fetches) = serve_jwks(&clients);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reference-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
    // Its one client registered by public key (RS512 only), the RSA test key's public half.
    let public_key = pem("test-only-rsa2048-public.pem");
    let mut registered: Vec<serde_json::Value> = clients
        .iter()
        .map(|(name, _, status)| {
            serde_json::json!({
                "client_id": format!("kt-{name}"),
                "status": status,
                "jwks_endpoint": format!("{jwks_base}/jwks/{name}"),
            })
        })
        .collect();
    registered.push(serde_json::json!({"client_id": "kt-public-key", "public_key": public_key}));
    let clients_file = dir.join("clients.json");
    std::fs::write(&clients_file, serde_json::to_vec(&registered).unwrap())
        .map_err(|err| err.to_string())?;
    // The server binds a free port itself and says which: a port picked here and let go could
    // be taken by another process (an outgoing connection, say) before the server binds it.
    let mut child = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/serve.py"))
        .arg(&source)
        .arg(dir.join("kt.db"))
        .arg(&clients_file)
        .arg("300")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", python.display()))?;
    let stdin = child.stdin.take().unwrap();
    let port = child.stdout.take().and_then(|stdout| {
        let (said, heard) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut stdout, mut line) = (BufReader::new(stdout), String::new());
            let _ = stdout.read_line(&mut line);
            let _ = said.send(line);
            // Whatever else it prints goes nowhere, and never into a full pipe.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        heard
            .recv_timeout(Duration::from_secs(30))
            .ok()?
            .strip_prefix("listening ")?
            .trim()
            .parse::<u16>()
            .ok()
    });
    let port = port.filter(|&port| {
        (0..300).any(|_| {
            let up = matches!(child.try_wait(), Ok(None))
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if !up {
                std::thread::sleep(Duration::from_millis(20));
            }
            up
        })
    });
    let Some(port) = port else {
        let _ = child.kill();
        let mut log = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut log);
        }
        return Err(format!("the reference server did not start:\n{log}"));
    };
    // From here on nothing reads what it logs: drain it, or a full pipe would block the server.
    if let Some(mut stderr) = child.stderr.take() {
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    }
    let clients = clients
        .into_iter()
        .map(|(name, keys, _)| {
            (
                name,
                Client {
                    id: format!("kt-{name}"),
                    keys,
                    jwks_fetches: Arc::clone(&fetches[name]),
                },
            )
        })
        .collect();
    let base = format!("http://127.0.0.1:{port}");
    Ok(Reference {
        token_endpoint: format!("{base}/oauth2/token"),
        base,
        clients,
        _child: Mutex::new((child, stdin)),
    })
}

/// Serves each client's key set at `/jwks/<name>` on a thread of its own; the base URL and
/// per-client fetch counters.
fn serve_jwks(
    clients: &[(&'static str, KeySet, &'static str)],
) -> (String, HashMap<&'static str, Arc<AtomicU64>>) {
    let mut router = axum::Router::new();
    let mut counters = HashMap::new();
    for (name, keys, _) in clients {
        let count = Arc::new(AtomicU64::new(0));
        counters.insert(*name, Arc::clone(&count));
        let service = JwksService::new(keys.clone());
        router = router.route(
            &format!("/jwks/{name}"),
            axum::routing::get(move |request: axum::extract::Request| {
                let mut service = service.clone();
                count.fetch_add(1, Ordering::SeqCst);
                async move { tower::Service::call(&mut service, request).await }
            }),
        );
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    (format!("http://{addr}"), counters)
}

/// The virtual environment's Python: created once under the target directory (in a temporary
/// directory then renamed, so that parallel test processes never share a half-made one), with
/// every package of the server's `poetry.lock` at its pinned version.
fn venv(source: &Path) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reference-venv");
    let python = root.join("bin/python");
    if python.exists() {
        return Ok(python);
    }
    let system = ["python3", "python"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .ok_or("no python3 (install python3 3.11 or later with venv and pip)")?;
    let building = root.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let run = |command: &mut Command, what: &str| -> Result<(), String> {
        let out = command.output().map_err(|err| format!("{what}: {err}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed (install python3-venv and reach PyPI): {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(
        Command::new(system).args(["-m", "venv"]).arg(&building),
        "python3 -m venv",
    )?;
    let requirements = building.join("requirements.txt");
    let script = format!(
        "import tomllib\n\
         lock = tomllib.load(open({:?}, 'rb'))\n\
         skip = {{'psycopg2', 'pymysql'}}\n\
         names = [f\"{{p['name']}}=={{p['version']}}\" for p in lock['package']\n\
                  if 'main' in p.get('groups', ['main']) and p['name'] not in skip]\n\
         open({:?}, 'w').write('\\n'.join(names) + '\\n')\n",
        source.join("poetry.lock"),
        requirements
    );
    run(
        Command::new(building.join("bin/python")).args(["-c", &script]),
        "reading poetry.lock",
    )?;
    run(
        Command::new(building.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "-r",
            ])
            .arg(&requirements),
        "pip install",
    )?;
    if std::fs::rename(&building, &root).is_err() {
        // Another process made one first: use that.
        let _ = std::fs::remove_dir_all(&building);
    }
    if python.exists() {
        Ok(python)
    } else {
        Err("the virtual environment could not be created".into())
    }
}
