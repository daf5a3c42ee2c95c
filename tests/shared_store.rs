//! Fleet mode with an in-memory `TokenStore` shared by several cells (as instances sharing a
//! Redis would): one fetch per refresh period for all, a dead lease holder replaced, a store
//! outage costing nothing but sharing, and a rejected token never taken back from the store.
//! All on tokio's paused clock (the memory store, like Redis, measures a token's time left with
//! its own clock): the fleet's instances run as tasks of one thread, so that no load on the
//! machine moves a refresh point, and counters read together are read at one instant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use koppeltaal_auth::store::StorePolicy;
use koppeltaal_auth::testing::{FakeTokenSource, MemoryTokenStore};
use koppeltaal_auth::{RefreshPolicy, TokenCell};
use tokio::time::{Instant, sleep, timeout};

fn store_policy() -> StorePolicy {
    StorePolicy::default()
        .lease(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
}

fn cells(n: usize, source: &FakeTokenSource, store: &MemoryTokenStore) -> Vec<TokenCell> {
    (0..n)
        .map(|_| {
            TokenCell::with_store(
                source.clone(),
                RefreshPolicy::default(),
                store.clone(),
                store_policy(),
            )
        })
        .collect()
}

/// Callers on every cell for `run`; panics if any call fails.
async fn hammer(cells: &[TokenCell], run: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = cells
        .iter()
        .flat_map(|cell| (0..3).map(move |_| cell.clone()))
        .map(|cell| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    cell.token().await.expect("no request fails");
                    sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn eight_instances_fetch_one_token_per_refresh_period() {
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(1));
    let store = MemoryTokenStore::new();
    let fleet = cells(8, &source, &store);
    timeout(
        Duration::from_secs(30),
        hammer(&fleet, Duration::from_secs(8)),
    )
    .await
    .expect("bounded");
    let fetches = source.fetches_started();
    let instants = source.fetch_instants();
    // 1 s tokens are refreshed 0.5-0.6 s before expiry: one fetch every 0.4-0.5 s.
    for pair in instants.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(350),
            "two fetches {gap:?} apart: one per refresh point"
        );
    }
    assert!(
        (14..=22).contains(&fetches),
        "one fetch per refresh period over 8 s: {fetches}"
    );
    assert_eq!(store.saves(), fetches, "every fetched token was published");
    let adopted: u64 = fleet
        .iter()
        .map(|cell| cell.stats().adopted_from_store)
        .sum();
    let installed: u64 = fleet.iter().map(|cell| cell.stats().fetches_ok).sum();
    assert_eq!(
        installed,
        fetches + adopted,
        "each instance used each token once"
    );
    assert_eq!(
        adopted,
        7 * fetches,
        "the seven others took each token from the store"
    );
    assert!(fleet.iter().all(|cell| cell.stats().adopted_from_store > 0));
}

#[tokio::test(start_paused = true)]
async fn a_dead_lease_holder_is_replaced_within_the_lease_time() {
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(60));
    let store = MemoryTokenStore::new();
    store.take_lease_and_die(Duration::from_millis(500));
    let cell = TokenCell::with_store(
        source.clone(),
        RefreshPolicy::default(),
        store.clone(),
        store_policy(),
    );
    let started = Instant::now();
    cell.token().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited <= Duration::from_millis(520),
        "waited out the lease, then fetched: {waited:?}"
    );
    assert_eq!(source.fetches_started(), 1);
    assert_eq!(store.saves(), 1, "and published for the others");
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_costs_sharing_not_requests() {
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(1));
    let store = MemoryTokenStore::new();
    let fleet = cells(4, &source, &store);
    hammer(&fleet, Duration::from_millis(1_500)).await;
    let shared_phase = source.fetches_started();
    store.set_down(true);
    hammer(&fleet, Duration::from_secs(2)).await;
    let unavailable: u64 = fleet
        .iter()
        .map(|cell| cell.stats().store_unavailable)
        .sum();
    assert!(
        unavailable >= 4,
        "every instance fell back at least once: {unavailable}"
    );
    let outage = source.fetches_started() - shared_phase;
    // 1 s tokens refreshed every 0.4-0.5 s: about 4 fetches each in 2 s.
    assert!(
        outage >= 12,
        "during the outage each instance fetched for itself: {outage}"
    );
    store.set_down(false);
    let before = source.fetches_started();
    hammer(&fleet, Duration::from_secs(3)).await;
    let after = source.fetches_started() - before;
    // One fetch per refresh period for the fleet (about 7 in 3 s, one more as sharing resumes),
    // against about 28 without sharing.
    assert!(
        after <= 10,
        "sharing resumed: {after} fetches in 3 s for 4 instances"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_not_taken_back_from_the_store() {
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(60));
    let store = MemoryTokenStore::new();
    let fleet = cells(2, &source, &store);
    let first = fleet[0].token().await.unwrap();
    let adopted = fleet[1].token().await.unwrap();
    assert_eq!(
        source.fetches_started(),
        1,
        "the second instance took the first one's token"
    );
    assert_eq!(fleet[1].stats().adopted_from_store, 1);
    // The server rejects it at instance 1: instance 1 must fetch, not adopt it back.
    let renewed = fleet[1].renewed(adopted.generation()).await.unwrap();
    assert_eq!(source.fetches_started(), 2);
    assert_ne!(renewed.value(), first.value());
    // Instance 0, rejected too, takes the renewed token from the store.
    let zero = fleet[0].renewed(first.generation()).await.unwrap();
    assert_eq!(zero.value(), renewed.value());
    assert_eq!(source.fetches_started(), 2);
}

/// A lease holder whose fetch fails releases the lease without publishing: a waiting instance
/// takes the lease within one poll interval and fetches itself.
#[tokio::test(start_paused = true)]
async fn a_lease_holder_that_fails_is_replaced_within_one_poll_interval() {
    let poll = Duration::from_millis(50);
    let policy = StorePolicy::default().poll_interval(poll);
    let store = MemoryTokenStore::new();
    let failing = FakeTokenSource::new();
    failing.push_error(koppeltaal_auth::Error::new(
        koppeltaal_auth::ErrorKind::Transport,
        "connection refused",
    ));
    failing.set_delay(Duration::from_millis(700));
    let working = FakeTokenSource::new().with_lifetime(Duration::from_secs(300));
    let holder = TokenCell::with_store(
        failing.clone(),
        RefreshPolicy::default(),
        store.clone(),
        policy,
    );
    let waiter = TokenCell::with_store(
        working.clone(),
        RefreshPolicy::default(),
        store.clone(),
        policy,
    );
    let started = Instant::now();
    let holding = tokio::spawn(async move { holder.token().await });
    // The holder has the lease and is fetching (for 700 ms) when the waiter asks.
    sleep(Duration::from_millis(1)).await;
    assert_eq!(store.leases_taken(), 1);
    let token = waiter.token().await.unwrap();
    let waited = Instant::now() - started;
    assert!(holding.await.unwrap().is_err(), "the holder's fetch failed");
    assert_eq!(token.generation(), 1);
    assert_eq!(working.fetches_started(), 1, "the waiter fetched itself");
    assert_eq!(store.leases_taken(), 2, "after taking the released lease");
    assert!(
        waited >= Duration::from_millis(700) && waited <= Duration::from_millis(700) + poll,
        "within one poll interval of the holder's failure: {waited:?}"
    );
}

/// A lease holder that dies while a whole fleet waits on it (a cold start, or a fleet-wide `401`):
/// when its lease lapses one instance takes it, and the others wait for that one's token instead
/// of all fetching at once (each had waited one lease period, and then fetched alone: 7 token
/// requests at the same instant).
#[tokio::test(start_paused = true)]
async fn a_dead_lease_holder_is_replaced_by_one_instance_not_the_whole_fleet() {
    let lease = Duration::from_millis(500);
    let policy = StorePolicy::default()
        .lease(lease)
        .poll_interval(Duration::from_millis(20));
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(300));
    source.set_delay(Duration::from_millis(100));
    let store = MemoryTokenStore::new();
    store.take_lease_and_die(lease);
    let started = Instant::now();
    let fleet: Vec<_> = (0..8)
        .map(|_| {
            let cell = TokenCell::with_store(
                source.clone(),
                RefreshPolicy::default(),
                store.clone(),
                policy,
            );
            tokio::spawn(async move { cell.token().await.map(|token| token.value().clone()) })
        })
        .collect();
    let mut tokens = Vec::new();
    for instance in fleet {
        tokens.push(instance.await.unwrap().unwrap());
    }
    assert_eq!(
        source.fetches_started(),
        1,
        "one token request for the fleet"
    );
    assert!(
        tokens.iter().all(|token| *token == tokens[0]),
        "all on one token"
    );
    assert_eq!(
        store.leases_taken(),
        1,
        "taken once, after the dead holder's lapsed"
    );
    let waited = Instant::now() - started;
    assert!(
        waited <= lease + Duration::from_millis(100 + 20 + 20),
        "the lease, the fetch and a poll or so: {waited:?}"
    );
}

/// The wait stays bounded: a lease that never comes free (its holders keep dying, or a store
/// that never expires it) is waited on for two lease periods at most, then the instance fetches
/// alone.
#[tokio::test(start_paused = true)]
async fn a_lease_that_never_comes_free_is_waited_on_for_two_lease_periods_at_most() {
    let lease = Duration::from_millis(500);
    let policy = StorePolicy::default()
        .lease(lease)
        .poll_interval(Duration::from_millis(20));
    let source = FakeTokenSource::new();
    let store = MemoryTokenStore::new();
    store.take_lease_and_die(lease);
    let cell = TokenCell::with_store(
        source.clone(),
        RefreshPolicy::default(),
        store.clone(),
        policy,
    );
    let started = Instant::now();
    let waiting = tokio::spawn(async move { cell.token().await });
    sleep(Duration::from_millis(250)).await;
    store.take_lease_and_die(Duration::from_secs(3_600));
    waiting.await.unwrap().unwrap();
    let waited = Instant::now() - started;
    assert!(
        waited >= 2 * lease && waited <= 2 * lease + Duration::from_millis(40),
        "two lease periods: {waited:?}"
    );
    assert_eq!(source.fetches_started(), 1);
}

/// A lease longer than the refresh attempt (300 s against the default 60 s): an instance waits
/// on a dead holder for three quarters of its attempt, then fetches alone, instead of having every
/// attempt cut off until the lease lapses (five minutes without a token).
#[tokio::test(start_paused = true)]
async fn a_long_lease_is_waited_on_for_three_quarters_of_the_attempt_timeout_at_most() {
    let lease = koppeltaal_auth::store::MAX_LEASE;
    let policy = StorePolicy::default().lease(lease);
    let source = FakeTokenSource::new();
    let store = MemoryTokenStore::new();
    store.take_lease_and_die(lease);
    let refresh = RefreshPolicy::default().wait_timeout(Duration::from_secs(120));
    let cell = TokenCell::with_store(source.clone(), refresh, store.clone(), policy);
    let started = Instant::now();
    cell.token().await.unwrap();
    let waited = Instant::now() - started;
    assert!(
        waited >= Duration::from_secs(45) && waited <= Duration::from_millis(45_050),
        "three quarters of the 60 s attempt: {waited:?}"
    );
    assert_eq!(source.fetches_started(), 1);
    assert_eq!(cell.stats().fetches_failed, 0, "no attempt was cut off");
}

/// How long a shared token has left is measured by the store, never from an instance's wall
/// clock: an instance that adopts it late expires it exactly when its publisher does, so
/// instances whose clocks disagree (by any amount) cannot send it after it expired.
#[tokio::test(start_paused = true)]
async fn an_adopted_token_expires_with_its_publishers_whatever_the_wall_clocks_say() {
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(300));
    let store = MemoryTokenStore::new();
    let policy = RefreshPolicy::default().background_refresh(false);
    let publisher = TokenCell::with_store(
        source.clone(),
        policy.clone(),
        store.clone(),
        store_policy(),
    );
    let first = publisher.token().await.unwrap();
    sleep(Duration::from_secs(200)).await;
    let late = TokenCell::with_store(source.clone(), policy, store.clone(), store_policy());
    let adopted = late.token().await.unwrap();
    assert_eq!(adopted.value(), first.value());
    assert_eq!(late.stats().adopted_from_store, 1);
    assert_eq!(store.expires_in(), Some(Duration::from_secs(100)));
    assert_eq!(
        late.stats().time_to_expiry,
        publisher.stats().time_to_expiry,
        "one expiry for both instances"
    );
    assert_eq!(late.stats().time_to_expiry, Some(Duration::from_secs(100)));
    // Neither hands it out in its last 10 s (the margin), each by its own clock.
    sleep(Duration::from_secs(90)).await;
    assert!(late.current().is_none());
    assert!(publisher.current().is_none());
}

/// One store per key, as Redis keeps one entry per key.
#[derive(Clone, Default)]
struct Keyed(Arc<std::sync::Mutex<std::collections::HashMap<String, MemoryTokenStore>>>);

impl koppeltaal_auth::store::SharedStore for Keyed {
    fn for_key(
        &self,
        key: &koppeltaal_auth::store::StoreKey,
    ) -> Box<dyn koppeltaal_auth::store::TokenStore> {
        let name = format!("{key:?}");
        Box::new(self.0.lock().unwrap().entry(name).or_default().clone())
    }
}

/// Two custom token sources (two identities) for one FHIR base and one store: without a client
/// id naming each, they would share one entry (one used the other's token), so the builder
/// refuses; with one each, each uses its own token.
#[tokio::test(start_paused = true)]
async fn two_custom_sources_never_share_a_token() {
    let store = Keyed::default();
    let build = |source: &FakeTokenSource, client_id: Option<&str>| {
        let builder = koppeltaal_auth::KoppeltaalAuth::builder()
            .fhir_base_url("https://fhir.example.org/fhir/DEFAULT")
            .token_source(source.clone())
            .shared_store(store.clone());
        match client_id {
            Some(id) => builder.client_id(id).build(),
            None => builder.build(),
        }
    };
    let (a, b) = (FakeTokenSource::new(), FakeTokenSource::new());
    let err = build(&a, None).unwrap_err();
    assert_eq!(err.kind(), koppeltaal_auth::ErrorKind::Config);
    assert!(err.to_string().contains("client_id"), "{err}");
    let role_a = build(&a, Some("role-a")).unwrap();
    let role_b = build(&b, Some("role-b")).unwrap();
    role_a.ready().await.unwrap();
    role_b.ready().await.unwrap();
    assert_eq!((a.fetches_completed(), b.fetches_completed()), (1, 1));
    assert_eq!(role_b.stats().adopted_from_store, 0);
    assert_eq!(store.0.lock().unwrap().len(), 2);
}
