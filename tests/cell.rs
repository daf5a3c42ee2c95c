//! `TokenCell` under tokio's paused clock with a gated `FakeTokenSource`: single-flight,
//! refresh timing, stale-while-revalidate, stats. Failures, rejections, cancellation and panics:
//! `tests/cell_failures.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{RefreshPolicy, TokenCell};
use support::cell::exact;
use support::run_until;
use support::{ms, secs};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn concurrent_callers_on_an_empty_cell_share_one_fetch() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    source.close_gate();
    let joined = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let cell = cell.clone();
            let joined = Arc::clone(&joined);
            tokio::spawn(async move {
                joined.fetch_add(1, Ordering::SeqCst);
                cell.token().await
            })
        })
        .collect();
    run_until(|| joined.load(Ordering::SeqCst) == 1_000).await;
    assert_eq!(source.fetches_started(), 1);
    source.open_gate();
    for task in tasks {
        let token = task.await.unwrap().unwrap();
        assert_eq!(token.generation(), 1);
        assert_eq!(token.value(), "Bearer fake-token-1");
    }
    assert_eq!(source.fetches_started(), 1);
    let stats = cell.stats();
    assert_eq!((stats.fetches_ok, stats.waits), (1, 1_000));
}

#[tokio::test(start_paused = true)]
async fn refreshes_in_the_background_at_the_computed_point() {
    let source = FakeTokenSource::new().with_lifetime(secs(300));
    let cell = TokenCell::new(source.clone(), exact());
    cell.ready().await.unwrap();
    let first = source.fetch_instants()[0];
    // 300 s token: refreshed when min(max(30 s, 60 s), 150 s) = 60 s remain, at 240 s.
    tokio::time::sleep(secs(239)).await;
    assert_eq!(source.fetches_started(), 1);
    tokio::time::sleep(secs(2)).await;
    assert_eq!(source.fetch_instants(), [first, first + secs(240)]);
    assert_eq!(cell.current().unwrap().generation(), 2);
    // And again 240 s after the second token arrived.
    tokio::time::sleep(secs(240)).await;
    assert_eq!(source.fetch_instants()[2], first + secs(480));
    assert_eq!(
        cell.stats().waits,
        1,
        "no caller ever waited after the first token"
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_moves_the_refresh_point_within_ten_percent() {
    let source = FakeTokenSource::new().with_lifetime(secs(300));
    let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
    cell.ready().await.unwrap();
    tokio::time::sleep(secs(300)).await;
    let instants = source.fetch_instants();
    let delay = instants[1] - instants[0];
    assert!(delay >= secs(210) && delay <= secs(240), "{delay:?}");
}

#[tokio::test(start_paused = true)]
async fn short_lifetimes_are_used_not_refetched_per_request() {
    for (lifetime, expected_refresh) in
        [(secs(2), secs(1)), (secs(1), ms(500)), (secs(5), ms(2_500))]
    {
        let source = FakeTokenSource::new().with_lifetime(lifetime);
        let cell = TokenCell::new(source.clone(), exact().background_refresh(false));
        cell.ready().await.unwrap();
        let start = Instant::now();
        // Many requests before the refresh point: one token.
        while Instant::now() < start + expected_refresh - ms(10) {
            assert_eq!(cell.token().await.unwrap().generation(), 1);
            tokio::time::advance(ms(10)).await;
        }
        assert_eq!(source.fetches_started(), 1, "{lifetime:?}");
        tokio::time::advance(ms(20)).await;
        assert_eq!(
            cell.token().await.unwrap().generation(),
            1,
            "stale: served, refresh started"
        );
        run_until(|| cell.stats().generation == 2).await;
        assert_eq!(source.fetches_started(), 2, "{lifetime:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_day_long_token_refreshes_hours_ahead() {
    let source = FakeTokenSource::new().with_lifetime(secs(86_400));
    let cell = TokenCell::new(source.clone(), exact());
    cell.ready().await.unwrap();
    // min(max(30 s, 20%), 50%) = 20% of a day = 17,280 s ahead.
    tokio::time::sleep(secs(86_400 - 17_280 + 1)).await;
    let instants = source.fetch_instants();
    assert_eq!(instants[1] - instants[0], secs(86_400 - 17_280));
}

#[tokio::test(start_paused = true)]
async fn stale_token_is_served_without_waiting_for_the_refresh() {
    let source = FakeTokenSource::new().with_lifetime(secs(300));
    let cell = TokenCell::new(source.clone(), exact().background_refresh(false));
    cell.ready().await.unwrap();
    tokio::time::advance(secs(250)).await;
    source.close_gate();
    // Stale but valid: returned at once, one refresh started.
    for _ in 0..100 {
        assert_eq!(cell.token().await.unwrap().generation(), 1);
        assert_eq!(cell.current().unwrap().generation(), 1);
    }
    run_until(|| source.fetches_started() == 2).await;
    assert_eq!(cell.stats().waits, 1, "only the very first call waited");
    source.open_gate();
    run_until(|| cell.stats().generation == 2).await;
    assert_eq!(source.fetches_started(), 2);
}

#[tokio::test(start_paused = true)]
async fn stats_report_the_state() {
    let source = FakeTokenSource::new().with_lifetime(secs(300));
    let cell = TokenCell::new(source.clone(), exact());
    assert_eq!(cell.stats().generation, 0);
    assert_eq!(cell.stats().time_to_expiry, None);
    cell.ready().await.unwrap();
    tokio::time::advance(secs(100)).await;
    let stats = cell.stats();
    assert_eq!(stats.generation, 1);
    assert_eq!(stats.time_to_expiry, Some(secs(200)));
    assert_eq!(stats.fetches_ok, 1);
    let debug = format!("{cell:?}");
    assert!(!debug.contains("fake-token"), "{debug}");
    assert!(!format!("{:?}", cell.current().unwrap()).contains("fake-token"));
}
