//! Real servers the tests start themselves when their programs are installed: a shared
//! `redis-server`, and the interop servers (`oidc-provider` and its resource server, from
//! `tests/interop/servers.mjs`). Each is started once per test process, on a free loopback
//! port, and ends with that process: its standard input is a pipe only this process holds, and
//! the server (or the shell that runs it) exits when the pipe closes, also when a test fails. An
//! environment variable can point the tests at a server already running instead. When a program
//! is missing, the tests say `SKIPPED: <why>, install <what>` and pass.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A process that ends with this one.
pub struct Watched {
    _child: Mutex<(Child, ChildStdin)>,
}

impl Watched {
    fn spawn(command: &mut Command) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|err| err.to_string())?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        Ok(Self {
            _child: Mutex::new((child, stdin)),
        })
    }
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn skipped(why: &str) {
    eprintln!("SKIPPED: {why}");
}

/// The Redis URL for the fleet tests: `KOPPELTAAL_REDIS_URL`, or a `redis-server` this
/// process starts.
pub fn redis_url() -> Option<String> {
    if let Some(url) = std::env::var("KOPPELTAAL_REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        return Some(url);
    }
    static REDIS: OnceLock<Result<(String, Watched), String>> = OnceLock::new();
    match REDIS.get_or_init(start_redis) {
        Ok((url, _)) => Some(url.clone()),
        Err(why) => {
            skipped(why);
            None
        }
    }
}

fn start_redis() -> Result<(String, Watched), String> {
    if !installed("redis-server") {
        return Err(
            "redis-server is not installed, install redis-server (apt-get install redis-server), \
             or set KOPPELTAAL_REDIS_URL"
                .into(),
        );
    }
    (0..5)
        .find_map(|_| try_start_redis())
        .ok_or_else(|| "redis-server did not start".into())
}

/// One try on a port picked free and let go: another server started at the same moment may
/// take it too, so the server found there is used only when it is this child, by its process
/// id (which the shell writes down).
fn try_start_redis() -> Option<(String, Watched)> {
    let port = free_port();
    let pid_file = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("redis-{}.pid", uuid::Uuid::new_v4().simple()));
    // `redis-server` does not watch its input: a shell does, and stops it.
    let watched = Watched::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(
                "redis-server \"$@\" & pid=$!; echo $pid > \"$PID_FILE\"; cat >/dev/null; \
                 kill $pid 2>/dev/null",
            )
            .arg("sh")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .env("PID_FILE", &pid_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .ok()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let ours = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|pid| pid.trim().parse::<u32>().ok());
            let _ = std::fs::remove_file(&pid_file);
            // Dropped otherwise: its shell stops the server.
            return (ours.is_some() && server_pid(port) == ours)
                .then(|| (format!("redis://127.0.0.1:{port}"), watched));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

/// The interop servers' FHIR base and admin URL: `KOPPELTAAL_INTEROP_FHIR_BASE` and
/// `KOPPELTAAL_INTEROP_ADMIN`, or `tests/interop/servers.mjs` started by this process (after
/// `npm ci` there, the first time).
pub fn interop() -> Option<(String, String)> {
    if let (Ok(base), Ok(admin)) = (
        std::env::var("KOPPELTAAL_INTEROP_FHIR_BASE"),
        std::env::var("KOPPELTAAL_INTEROP_ADMIN"),
    ) {
        return Some((base, admin));
    }
    static INTEROP: OnceLock<Result<(String, String, Watched), String>> = OnceLock::new();
    match INTEROP.get_or_init(start_interop) {
        Ok((base, admin, _)) => Some((base.clone(), admin.clone())),
        Err(why) => {
            skipped(why);
            None
        }
    }
}

fn start_interop() -> Result<(String, String, Watched), String> {
    if !installed("node") || !installed("npm") {
        return Err("node and npm are not installed, install nodejs and npm".into());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    npm_ci(&dir)?;
    let ready = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("interop-{}.json", uuid::Uuid::new_v4().simple()));
    let watched = Watched::spawn(
        Command::new("node")
            .arg(dir.join("servers.mjs"))
            .arg(&ready)
            .env("KOPPELTAAL_EXIT_ON_STDIN_CLOSE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        {
            let _ = std::fs::remove_file(&ready);
            let field = |name: &str| json[name].as_str().unwrap_or_default().to_owned();
            return Ok((field("fhir_base"), field("admin"), watched));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("the interop servers did not start (node tests/interop/servers.mjs)".into())
}

/// `npm ci` in `dir` unless its packages are there; one process at a time (a lock file).
fn npm_ci(dir: &Path) -> Result<(), String> {
    let installed = || dir.join("node_modules/oidc-provider/package.json").exists();
    if installed() {
        return Ok(());
    }
    let lock = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-npm-ci.lock");
    let _ = std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR"));
    for _ in 0..1_200 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {
                let result = if installed() {
                    Ok(())
                } else {
                    Command::new("npm")
                        .args(["ci", "--no-audit", "--no-fund", "--silent"])
                        .current_dir(dir)
                        .status()
                        .map_err(|err| err.to_string())
                        .and_then(|status| {
                            if status.success() {
                                Ok(())
                            } else {
                                Err("npm ci failed in tests/interop (is the npm registry \
                                     reachable?)"
                                    .to_owned())
                            }
                        })
                };
                let _ = std::fs::remove_file(&lock);
                return result;
            }
            Err(_) if installed() => return Ok(()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Err("timed out waiting for another process's npm ci".into())
}

/// A private `redis-server` on a free loopback port, killed on drop.
pub struct PrivateRedis {
    child: Child,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

impl PrivateRedis {
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts one with `extra` arguments. The port is picked free and then let go, so another
    /// server started at the same moment may take it too (one of the two then fails to bind,
    /// and both tests would talk to the other): a server that is not this child, by its
    /// process id, is not used, and another port is tried.
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        (0..5).find_map(|_| Self::try_start(extra))
    }

    fn try_start(extra: &[&str]) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                if server_pid(port) == Some(child.id()) {
                    return Some(Self { child, url });
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Freezes the server for `seconds` (`DEBUG SLEEP`: it answers nobody meanwhile), from a
    /// thread of its own; the returned handle joins when the server answers again.
    pub fn freeze(&self, seconds: u32) -> std::thread::JoinHandle<String> {
        let url = self.url.clone();
        std::thread::spawn(move || command(&url, &["DEBUG", "SLEEP", &seconds.to_string()]))
    }

    /// Sends one command as the default user, on a connection of its own, and returns the
    /// first reply's bytes as text (enough for `+OK` or an error).
    pub fn command(&self, args: &[&str]) -> String {
        command(&self.url, args)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process id of the Redis server on `port` (from `INFO server`).
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut connection = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    connection
        .set_read_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    connection
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        let n = connection.read(&mut buffer).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.split("process_id:").nth(1)
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            return pid.trim().parse().ok();
        }
    }
    None
}

fn command(url: &str, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut connection = std::net::TcpStream::connect(url.trim_start_matches("redis://")).unwrap();
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    connection.write_all(request.as_bytes()).unwrap();
    let mut reply = [0u8; 256];
    let n = connection.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}
