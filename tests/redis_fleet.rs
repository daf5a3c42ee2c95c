//! Fleet mode against a real `redis-server`: instances on separate runtimes (as separate
//! processes would be) sharing tokens through `RedisTokenStore`.
//!
//! The tests start a `redis-server` on a free loopback port themselves (`support/servers.rs`),
//! or use `KOPPELTAAL_REDIS_URL`; the outage tests start private ones, so that they can stop
//! them. Skipped, with a message, when `redis-server` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "support/servers.rs"]
mod servers;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use koppeltaal_auth::store::{SharedStore, StoreKey, StorePolicy};
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{KoppeltaalAuth, RedisTokenStore, RefreshPolicy};
use support::{CLIENT_ID, rsa_key};

use servers::{PrivateRedis, redis_url};

/// A unique key prefix per test, so that tests sharing one Redis do not meet.
fn prefix() -> String {
    format!("kt-test-{}", uuid::Uuid::new_v4().simple())
}

/// One instance: its own thread and runtime, a cell sharing tokens through Redis, three
/// callers asking for the token until `stop`. Returns (calls, failed calls, adopted, fetched,
/// slowest call).
fn instance(
    redis: String,
    prefix: String,
    endpoint: String,
    fhir_base: String,
    store_policy: StorePolicy,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64, u64, u64, Duration)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let store = RedisTokenStore::new(&redis).unwrap().with_prefix(&prefix);
            let auth = KoppeltaalAuth::builder()
                .fhir_base_url(fhir_base)
                .client_id(CLIENT_ID)
                .signing_key(rsa_key())
                .token_endpoint(endpoint)
                .refresh_policy(RefreshPolicy::default())
                .shared_store(store)
                .store_policy(store_policy)
                .build()
                .unwrap();
            let callers: Vec<_> = (0..3)
                .map(|_| {
                    let auth = auth.clone();
                    let stop = Arc::clone(&stop);
                    tokio::spawn(async move {
                        let (mut calls, mut failed, mut slowest) = (0, 0, Duration::ZERO);
                        while !stop.load(Ordering::Relaxed) {
                            calls += 1;
                            let started = std::time::Instant::now();
                            if auth.token().await.is_err() {
                                failed += 1;
                            }
                            slowest = slowest.max(started.elapsed());
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        (calls, failed, slowest)
                    })
                })
                .collect();
            let (mut calls, mut failed, mut slowest) = (0, 0, Duration::ZERO);
            for caller in callers {
                let (c, f, s) = caller.await.unwrap();
                calls += c;
                failed += f;
                slowest = slowest.max(s);
            }
            // Stats at an instant when no refresh is in flight, read with no await before the
            // block_on returns: this current-thread runtime runs nothing after that, so every
            // token request the mock saw from this instance is counted in them (a refresh in
            // flight at the end would reach the mock and never be counted).
            let fresh = || matches!(auth.health(), koppeltaal_auth::token::Health::Fresh { .. });
            for _ in 0..1_000 {
                if fresh() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let stats = auth.stats();
            (
                calls,
                failed,
                stats.adopted_from_store,
                stats.fetches_ok - stats.adopted_from_store,
                slowest,
            )
        })
    })
}

fn fleet_policy() -> StorePolicy {
    StorePolicy::default()
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_instances_over_twenty_lifetimes_make_one_token_request_per_lifetime() {
    let Some(redis) = redis_url() else { return };
    let mock = MockKoppeltaal::builder()
        .token_lifetime(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    mock.register_key(CLIENT_ID, &rsa_key());
    let stop = Arc::new(AtomicBool::new(false));
    let prefix = prefix();
    let instances: Vec<_> = (0..8)
        .map(|_| {
            instance(
                redis.clone(),
                prefix.clone(),
                mock.token_endpoint(),
                mock.fhir_base_url(),
                fleet_policy(),
                Arc::clone(&stop),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = instances.into_iter().map(|i| i.join().unwrap()).collect();
    let failed: u64 = results.iter().map(|r| r.1).sum();
    let fetched: u64 = results.iter().map(|r| r.3).sum();
    assert_eq!(failed, 0, "no call failed");
    let stats = mock.stats();
    assert_eq!(stats.token_requests_failed, 0);
    assert_eq!(
        stats.token_requests, fetched,
        "every token request was one instance's fetch"
    );
    // 1 s tokens are refreshed 0.5-0.6 s ahead: a request every 0.4-0.5 s for the whole fleet,
    // never two for one refresh point.
    let requests = mock.token_requests();
    for pair in requests.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(
            gap >= Duration::from_millis(350),
            "two token requests {gap:?} apart"
        );
    }
    assert!(
        (35..=55).contains(&stats.token_requests),
        "over 20 lifetimes: {}",
        stats.token_requests
    );
    assert!(
        results.iter().all(|r| r.2 > 0),
        "every instance took tokens from Redis"
    );
    eprintln!(
        "fleet of 8, 20 s of 1 s tokens: {} token requests with the shared store (each instance alone would make about {})",
        stats.token_requests,
        8 * stats.token_requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_that_dies_is_replaced_within_the_lease_time() {
    let Some(redis) = redis_url() else { return };
    let mock = MockKoppeltaal::start().await.unwrap();
    mock.register_key(CLIENT_ID, &rsa_key());
    let prefix = prefix();
    // Another instance takes the lease and dies without publishing or releasing it.
    let store = RedisTokenStore::new(&redis).unwrap().with_prefix(&prefix);
    let key = StoreKey::new(mock.token_endpoint(), CLIENT_ID, None);
    let dying = store.for_key(&key);
    let lease = Duration::from_millis(800);
    // Measured from the moment the lease is taken: building the authenticator below takes time
    // of its own (70 ms seen on a loaded CI machine), which must not count against the bound.
    let started = std::time::Instant::now();
    assert!(dying.try_lease(lease).await.unwrap().is_some());
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .token_endpoint(mock.token_endpoint())
        .shared_store(store)
        .store_policy(
            StorePolicy::default()
                .lease(lease)
                .poll_interval(Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    auth.ready().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(750) && waited < lease + Duration::from_millis(700),
        "took over after the lease: {waited:?}"
    );
    assert_eq!(mock.stats().token_requests, 1);
    // It published the token for the others.
    assert!(dying.load().await.unwrap().is_some());
}

/// A mock with 1 s tokens and three instances sharing them through the Redis at `url`, running
/// until `stop` is set.
async fn three_instances_on(
    url: &str,
) -> (
    MockKoppeltaal,
    Arc<AtomicBool>,
    Vec<std::thread::JoinHandle<(u64, u64, u64, u64, Duration)>>,
) {
    let mock = MockKoppeltaal::builder()
        .token_lifetime(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    mock.register_key(CLIENT_ID, &rsa_key());
    let stop = Arc::new(AtomicBool::new(false));
    let prefix = prefix();
    let instances = (0..3)
        .map(|_| {
            instance(
                url.to_owned(),
                prefix.clone(),
                mock.token_endpoint(),
                mock.fhir_base_url(),
                fleet_policy(),
                Arc::clone(&stop),
            )
        })
        .collect();
    (mock, stop, instances)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_fails_no_request() {
    if redis_url().is_none() {
        return;
    }
    let Some(mut redis) = PrivateRedis::start() else {
        eprintln!("SKIPPED: no redis-server to start and stop, install redis-server");
        return;
    };
    let (mock, stop, instances) = three_instances_on(&redis.url).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_outage = mock.stats().token_requests;
    redis.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = instances.into_iter().map(|i| i.join().unwrap()).collect();
    assert_eq!(
        results.iter().map(|r| r.1).sum::<u64>(),
        0,
        "no call failed"
    );
    assert!(
        results.iter().map(|r| r.0).sum::<u64>() > 300,
        "calls were made throughout"
    );
    let during_outage = mock.stats().token_requests - before_outage;
    assert!(
        during_outage >= 3,
        "each instance fetched for itself without Redis: {during_outage}"
    );
}

/// A Redis that hangs (here: frozen for 2 s with `DEBUG SLEEP`) costs each store operation its
/// 300 ms bound, never a request: instances keep their tokens and fetch their own renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hangs_fails_no_request_and_delays_none_long() {
    if redis_url().is_none() {
        return;
    }
    let Some(redis) = PrivateRedis::start_with(&["--enable-debug-command", "yes"]) else {
        eprintln!("SKIPPED: no redis-server to start, install redis-server");
        return;
    };
    let (mock, stop, instances) = three_instances_on(&redis.url).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = mock.stats().token_requests;
    let frozen = redis.freeze(2);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let during = mock.stats().token_requests - before;
    assert_eq!(frozen.join().unwrap(), "+OK\r\n", "the server was frozen");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = instances.into_iter().map(|i| i.join().unwrap()).collect();
    assert_eq!(
        results.iter().map(|r| r.1).sum::<u64>(),
        0,
        "no call failed"
    );
    let slowest = results.iter().map(|r| r.4).max().unwrap();
    // The store is frozen for 2 s; a call that waits for a fetch after a store operation timed
    // out (300 ms each, a few in a row at worst) stays well below that, even on a loaded machine.
    assert!(
        slowest < Duration::from_millis(1_500),
        "no call waited for the frozen store: slowest {slowest:?}"
    );
    // Two lifetimes of 1 s tokens passed while the store was frozen: each instance renewed on
    // its own at least once.
    eprintln!("slowest call {slowest:?}, token requests while frozen: {during}");
    assert!(during >= 3, "token requests while frozen: {during}");
    assert_eq!(mock.stats().token_requests_failed, 0);
}
