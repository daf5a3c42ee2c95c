//! Fleet instances whose wall clocks differ: three processes sharing tokens through Redis, one
//! with its clock 60 s ahead and one 60 s behind (libfaketime), the third on time, sending FHIR
//! requests through the layer for several token lifetimes. No request may carry an expired
//! token: the store shares the time left as it measures it, never an instant of one instance's
//! wall clock, and each instance learns the auth server's clock for its assertions.
//!
//! The instances are this test binary run again (the ignored test `skewed_instance`) with
//! `LD_PRELOAD=libfaketime`. Skipped, with a message, when libfaketime (Debian's `faketime`) or
//! `redis-server` is not installed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

#[path = "support/servers.rs"]
mod servers;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::store::StorePolicy;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{KoppeltaalAuth, RedisTokenStore};
use support::{CLIENT_ID, rsa_key};
use tower::{ServiceBuilder, ServiceExt};

/// The child's configuration: `redis|prefix|token endpoint|FHIR base|run milliseconds`.
const CHILD: &str = "KT_WALL_CLOCK_CHILD";
const LIFETIME: Duration = Duration::from_secs(4);
const RUN: Duration = Duration::from_secs(10);

fn libfaketime() -> Option<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|path| std::path::Path::new(path).exists())
}

fn epoch_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One instance, in a child process: FHIR reads through the layer until the run is over, then
/// `RESULT <requests> <not 200> <wall clock epoch seconds>` on stdout.
#[test]
#[ignore = "an instance of fleet_wall_clocks' test, run in a child process"]
fn skewed_instance() {
    let Ok(config) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = config.split('|').collect();
    let [redis, prefix, endpoint, fhir_base, run_ms] = parts[..] else {
        panic!("bad {CHILD}: {config}");
    };
    let run = Duration::from_millis(run_ms.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let auth = KoppeltaalAuth::builder()
            .fhir_base_url(fhir_base)
            .client_id(CLIENT_ID)
            .signing_key(rsa_key())
            .token_endpoint(endpoint)
            .shared_store(RedisTokenStore::new(redis).unwrap().with_prefix(prefix))
            .store_policy(
                StorePolicy::default()
                    .lease(Duration::from_secs(2))
                    .poll_interval(Duration::from_millis(20)),
            )
            .build()
            .unwrap();
        let client = ServiceBuilder::new()
            .layer(auth.layer())
            .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
        let url = format!("{fhir_base}/Patient/1");
        let started = tokio::time::Instant::now();
        let (mut requests, mut failed) = (0u64, 0u64);
        while started.elapsed() < run {
            requests += 1;
            let request = Request::get(&url).body(Full::default()).unwrap();
            match client.clone().oneshot(request).await {
                Ok(response) if response.status() == StatusCode::OK => {}
                _ => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("RESULT {requests} {failed} {}", epoch_secs());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_whose_wall_clocks_differ_by_two_minutes_never_send_an_expired_token() {
    let Some(faketime) = libfaketime() else {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
        return;
    };
    let Some(redis) = servers::redis_url() else {
        return;
    };
    let mock = MockKoppeltaal::builder()
        .token_lifetime(LIFETIME)
        .start()
        .await
        .unwrap();
    mock.register_key(CLIENT_ID, &rsa_key());
    let config = format!(
        "{redis}|kt-skew-{}|{}|{}|{}",
        uuid::Uuid::new_v4().simple(),
        mock.token_endpoint(),
        mock.fhir_base_url(),
        RUN.as_millis()
    );
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = [("+60s", 60i64), ("-60s", -60), ("+0s", 0)]
        .into_iter()
        .map(|(offset, seconds)| {
            let child = Command::new(&exe)
                .args(["--ignored", "--exact", "skewed_instance", "--nocapture"])
                .env(CHILD, &config)
                .env("LD_PRELOAD", faketime)
                .env("FAKETIME", offset)
                // Each process's monotonic clock is its own anyway; shift only the wall clock.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (offset, seconds, child)
        })
        .collect();
    let results = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|(offset, seconds, child)| (offset, seconds, child.wait_with_output().unwrap()))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (offset, seconds, output) in &results {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "instance {offset}: {stdout}\n{stderr}"
        );
        let result = stdout
            .lines()
            .find_map(|line| line.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("instance {offset} said nothing: {stdout}\n{stderr}"));
        let numbers: Vec<i64> = result.split(' ').map(|n| n.parse().unwrap()).collect();
        let [requests, failed, wall_clock] = numbers[..] else {
            panic!("{result}");
        };
        // The instance's wall clock really was shifted.
        let skew = wall_clock - epoch_secs();
        assert!(
            (skew - seconds).abs() <= 5,
            "instance {offset}: skew {skew} s"
        );
        assert!(requests > 100, "instance {offset}: {requests} requests");
        assert_eq!(
            failed, 0,
            "instance {offset}: {failed} of {requests} requests failed"
        );
    }
    let stats = mock.stats();
    eprintln!("fleet with shifted wall clocks: {stats:?}");
    // The FHIR server never saw an expired token (a 401 would have been replayed unseen by the
    // instance: the server's count is the proof).
    assert_eq!(stats.fhir_unauthorized, 0, "{stats:?}");
    assert!(stats.fhir_requests > 300, "{stats:?}");
    // One token per refresh point for the whole fleet: 4 s tokens are refreshed 2-2.4 s
    // ahead, so about five in 10 s; three instances alone would need three times as many.
    assert!(stats.tokens_issued <= 9, "{stats:?}");
}
