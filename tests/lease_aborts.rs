//! Fleet mode: an instance whose refresh attempt ends while it holds the refresh lease without
//! finishing (its token source panicked, or the attempt was cut off at its timeout) releases the
//! lease, so that another instance takes it within one poll interval. It used to stay held until
//! it lapsed (15 s by default), and every instance waited that long with no usable token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use koppeltaal_auth::store::StorePolicy;
use koppeltaal_auth::testing::{FakeTokenSource, MemoryTokenStore};
use koppeltaal_auth::{ErrorKind, RefreshPolicy, TokenCell};
use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(50);

/// Two instances over one store, with the default lease (15 s).
fn instances(
    holder: &FakeTokenSource,
    holder_policy: RefreshPolicy,
    waiter: &FakeTokenSource,
) -> (TokenCell, TokenCell, MemoryTokenStore) {
    let store = MemoryTokenStore::new();
    let policy = StorePolicy::default().poll_interval(POLL);
    let first = TokenCell::with_store(holder.clone(), holder_policy, store.clone(), policy);
    let second = TokenCell::with_store(
        waiter.clone(),
        RefreshPolicy::default(),
        store.clone(),
        policy,
    );
    (first, second, store)
}

#[tokio::test(start_paused = true)]
async fn a_holder_whose_source_panics_releases_the_lease() {
    let (panicking, working) = (FakeTokenSource::new(), FakeTokenSource::new());
    panicking.push_panic();
    let (holder, waiter, store) = instances(&panicking, RefreshPolicy::default(), &working);
    let failed = holder.token().await.unwrap_err();
    assert_eq!(failed.kind(), ErrorKind::RefreshAborted, "{failed}");
    assert_eq!(store.leases_taken(), 1, "the holder took the lease");
    let started = Instant::now();
    let token = waiter.token().await.unwrap();
    let waited = started.elapsed();
    assert!(waited <= POLL, "within one poll interval: {waited:?}");
    assert_eq!(token.generation(), 1);
    assert_eq!(working.fetches_started(), 1, "the waiter fetched itself");
    assert_eq!(store.leases_taken(), 2, "after taking the released lease");
}

#[tokio::test(start_paused = true)]
async fn a_holder_cut_off_at_its_attempt_timeout_releases_the_lease() {
    let (hanging, working) = (FakeTokenSource::new(), FakeTokenSource::new());
    hanging.close_gate();
    let attempt = Duration::from_secs(1);
    let backoff = Duration::from_millis(500);
    let policy = RefreshPolicy::default()
        .attempt_timeout(attempt)
        .backoff(backoff, backoff);
    let (holder, waiter, store) = instances(&hanging, policy, &working);
    let started = Instant::now();
    let holding = tokio::spawn({
        let holder = holder.clone();
        async move { holder.token().await }
    });
    // The holder has the lease, and its fetch hangs, when the waiter asks.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(store.leases_taken(), 1);
    let token = waiter.token().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= attempt && waited <= attempt + POLL,
        "within one poll interval of the cut-off: {waited:?}"
    );
    assert_eq!(token.generation(), 1);
    assert_eq!(working.fetches_started(), 1, "the waiter fetched itself");
    assert_eq!(hanging.fetches_completed(), 0);
    let cut_off = holding.await.unwrap().unwrap_err();
    assert_eq!(cut_off.kind(), ErrorKind::Timeout, "{cut_off}");
    // The holder's next attempt, after its backoff, takes the waiter's token from the store.
    tokio::time::sleep_until(started + attempt + backoff).await;
    let adopted = holder.token().await.unwrap();
    assert_eq!(adopted.value(), token.value());
    assert_eq!(hanging.fetches_started(), 1, "no second fetch of its own");
}
