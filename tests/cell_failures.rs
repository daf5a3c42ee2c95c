//! `TokenCell` when things go wrong, under tokio's paused clock with a gated `FakeTokenSource`:
//! failing and hanging sources, backoff and `Retry-After`, rejected tokens, waiters that give up,
//! panics, and runtimes shut down mid-refresh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{Error, ErrorKind, TokenCell};
use support::cell::{exact, paused_runtime, transport_error};
use support::run_until;
use support::{ms, secs};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn failing_refresh_keeps_serving_and_backs_off_until_healed() {
    let source = FakeTokenSource::new().with_lifetime(secs(300));
    let cell = TokenCell::new(source.clone(), exact());
    cell.ready().await.unwrap();
    source.fail_with(transport_error());
    // From the refresh point (240 s) until the margin (290 s) the old token is served.
    tokio::time::sleep(secs(260)).await;
    assert_eq!(cell.token().await.unwrap().generation(), 1);
    let instants = source.fetch_instants();
    let attempts = &instants[1..];
    assert_eq!(attempts[0] - instants[0], secs(240));
    // Retries: each wait at least 200 ms and at most min(30 s, 200 ms * 2^(n-1)).
    for (n, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let ceiling = ms(200).saturating_mul(1 << n.min(20)).min(secs(30));
        assert!(
            gap >= ms(200) && gap <= ceiling,
            "retry {}: {gap:?} > {ceiling:?}",
            n + 1
        );
    }
    assert!(attempts.len() >= 5, "kept retrying: {}", attempts.len());
    assert_eq!(cell.stats().consecutive_failures as usize, attempts.len());
    source.heal();
    tokio::time::sleep(secs(30)).await;
    let token = cell.token().await.unwrap();
    assert_eq!(token.generation(), 2);
    assert_eq!(cell.stats().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn expiry_with_a_dead_source_gives_every_waiter_the_error() {
    let source = FakeTokenSource::new().with_lifetime(secs(300));
    let cell = TokenCell::new(source.clone(), exact().background_refresh(false));
    cell.ready().await.unwrap();
    source.fail_with(transport_error());
    // Past the safety margin: the old token is never handed out again.
    tokio::time::advance(secs(291)).await;
    assert!(cell.current().is_none());
    source.close_gate();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cell = cell.clone();
            tokio::spawn(async move { cell.token().await })
        })
        .collect();
    run_until(|| source.fetches_started() == 2).await;
    source.open_gate();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transport);
        assert!(err.is_transient());
    }
    assert_eq!(
        source.fetches_started(),
        2,
        "one attempt for all 100 waiters"
    );
    // During the backoff callers get the last error at once, without a new attempt.
    let err = cell.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert_eq!(source.fetches_started(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_is_bounded_by_the_wait_timeout() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact().wait_timeout(secs(5)));
    source.close_gate();
    let started = Instant::now();
    let err = cell.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WaitTimeout);
    assert_eq!(Instant::now() - started, secs(5));
    // The refresh itself goes on and serves the next caller.
    source.open_gate();
    assert_eq!(cell.token().await.unwrap().generation(), 1);
    assert_eq!(source.fetches_started(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_waiter_still_completes_the_refresh() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    source.close_gate();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cell = cell.clone();
            tokio::spawn(async move { cell.token().await })
        })
        .collect();
    run_until(|| source.fetches_started() == 1).await;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    source.open_gate();
    run_until(|| source.fetches_completed() == 1).await;
    run_until(|| cell.current().is_some()).await;
    assert_eq!(cell.current().unwrap().generation(), 1);
    assert_eq!(source.fetches_started(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_source_that_never_answers_is_cut_off_at_the_attempt_timeout() {
    let source = FakeTokenSource::new();
    source.close_gate();
    let policy = exact().attempt_timeout(secs(10)).wait_timeout(secs(60));
    let cell = TokenCell::new(source.clone(), policy);
    let started = Instant::now();
    let err = cell.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(Instant::now() - started, secs(10));
    assert!(err.is_transient());
    // The next attempt, after the backoff, works.
    source.open_gate();
    tokio::time::sleep(ms(200)).await;
    assert_eq!(cell.token().await.unwrap().generation(), 1);
    assert_eq!(source.fetches_started(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_does_not_wedge_the_cell() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    source.push_panic();
    let err = cell.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RefreshAborted);
    // The next attempt waits out the first backoff (200 ms), then works.
    tokio::time::sleep(ms(200)).await;
    assert_eq!(cell.token().await.unwrap().generation(), 1);
    assert_eq!(source.fetches_started(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_background_task_ends_with_the_last_handle() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let source = FakeTokenSource::new().with_lifetime(secs(60));
    let cell = TokenCell::new(source.clone(), exact());
    cell.ready().await.unwrap();
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "the background refresher runs"
    );
    let clone = cell.clone();
    drop(cell);
    tokio::time::sleep(secs(31)).await;
    assert_eq!(source.fetches_started(), 2, "a clone keeps it alive");
    drop(clone);
    run_until(|| metrics.num_alive_tasks() == before).await;
    assert_eq!(source.handles(), 1, "the cell and its source are gone");
    tokio::time::sleep(secs(3_600)).await;
    assert_eq!(source.fetches_started(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_invalidations_of_one_generation_cause_one_fetch() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    cell.ready().await.unwrap();
    tokio::time::advance(secs(10)).await;
    source.close_gate();
    let joined = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let cell = cell.clone();
            let joined = Arc::clone(&joined);
            tokio::spawn(async move {
                joined.fetch_add(1, Ordering::SeqCst);
                cell.renewed(1).await
            })
        })
        .collect();
    run_until(|| joined.load(Ordering::SeqCst) == 500).await;
    assert_eq!(source.fetches_started(), 2);
    assert!(
        cell.current().is_none(),
        "the rejected token is not handed out"
    );
    source.open_gate();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().generation(), 2);
    }
    assert_eq!(source.fetches_started(), 2);
    assert_eq!(cell.stats().invalidations, 1);
    // A late 401 for generation 1 changes nothing.
    assert!(!cell.invalidate(1));
    assert_eq!(cell.current().unwrap().generation(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_young_token_rejected_again_is_renewed_after_a_backoff() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    cell.ready().await.unwrap();
    // First rejection: renewed at once.
    let started = Instant::now();
    assert_eq!(cell.renewed(1).await.unwrap().generation(), 2);
    assert_eq!(Instant::now(), started);
    // The brand-new token is rejected too, without a confirmed success in between: backoff.
    assert_eq!(cell.renewed(2).await.unwrap().generation(), 3);
    assert!(
        Instant::now() - started >= ms(200),
        "{:?}",
        Instant::now() - started
    );
    let instants = source.fetch_instants();
    assert!(instants[2] - instants[1] >= ms(200));
    // After a success is confirmed, the next rejection is renewed at once again.
    cell.confirm(3);
    let before = Instant::now();
    assert_eq!(cell.renewed(3).await.unwrap().generation(), 4);
    assert_eq!(Instant::now(), before);
}

#[tokio::test(start_paused = true)]
async fn an_old_token_rejected_is_renewed_at_once() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    cell.ready().await.unwrap();
    for generation in 1..=5 {
        tokio::time::advance(secs(6)).await;
        let before = Instant::now();
        assert_eq!(
            cell.renewed(generation).await.unwrap().generation(),
            generation + 1
        );
        assert_eq!(Instant::now(), before);
    }
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_retried_only_at_the_cap() {
    let source = FakeTokenSource::new().with_lifetime(secs(300));
    let cell = TokenCell::new(source.clone(), exact());
    cell.ready().await.unwrap();
    source.fail_with(
        Error::new(ErrorKind::TokenRejected, "").with_status(http::StatusCode::UNAUTHORIZED),
    );
    tokio::time::sleep(secs(240 + 95)).await;
    let instants = source.fetch_instants();
    let gaps: Vec<Duration> = instants[1..].windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [secs(30), secs(30), secs(30)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    source.push_error(
        Error::new(ErrorKind::TokenRejected, "")
            .with_status(http::StatusCode::TOO_MANY_REQUESTS)
            .with_retry_after(Some(secs(2))),
    );
    assert!(cell.token().await.unwrap_err().retry_after().is_some());
    // The background refresher retries after exactly the 2 s asked for.
    tokio::time::sleep(secs(3)).await;
    let instants = source.fetch_instants();
    assert_eq!(instants[1] - instants[0], secs(2));
    assert_eq!(cell.current().unwrap().generation(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_expiring_on_arrival_is_refused() {
    let source = FakeTokenSource::new();
    // A 2 s token that arrives 1.9 s old is inside its safety margin (200 ms): never used.
    source.push_stale_token(secs(2), ms(1_900));
    let cell = TokenCell::new(source.clone(), exact().background_refresh(false));
    let err = cell.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTokenResponse);
    assert!(
        err.to_string().contains("expired before it could be used"),
        "{err}"
    );
    // Treated as a permanent failure (the server's lifetimes are shorter than the round trip):
    // retried at the backoff cap, then the next (good) token is used.
    assert_eq!(
        cell.token().await.unwrap_err().kind(),
        ErrorKind::InvalidTokenResponse
    );
    tokio::time::sleep(secs(30)).await;
    assert_eq!(cell.token().await.unwrap().generation(), 1);
    assert_eq!(source.fetches_started(), 2);
}

#[test]
fn a_refresh_cancelled_by_runtime_shutdown_does_not_wedge_the_cell() {
    let source = FakeTokenSource::new();
    source.close_gate();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cell = first.block_on(async {
        let cell = TokenCell::new(source.clone(), exact());
        let waiter = tokio::spawn({
            let cell = cell.clone();
            async move { cell.token().await }
        });
        run_until(|| source.fetches_started() == 1).await;
        drop(waiter);
        cell
    });
    // Shutting the runtime down drops the refresh task mid-fetch.
    drop(first);
    source.open_gate();
    let second = paused_runtime();
    second.block_on(async {
        // The cut-off attempt counts as failed: the next one comes after its backoff (200 ms),
        // and this caller waits for it rather than getting an error.
        let started = Instant::now();
        assert_eq!(cell.token().await.unwrap().generation(), 1);
        assert!(Instant::now() - started <= ms(200));
        assert_eq!(source.fetches_started(), 2);
        assert_eq!(cell.stats().fetches_failed, 1);
        // The background refresher was lost with the first runtime and restarts here.
        tokio::time::sleep(secs(241)).await;
        assert_eq!(
            source.fetches_started(),
            3,
            "proactive refresh on the new runtime"
        );
    });
}

/// The background refresher runs a proactive refresh on its own task: a runtime that shuts down
/// mid-fetch must leave the cell able to refresh on the next runtime.
#[test]
fn a_proactive_refresh_cut_off_by_runtime_shutdown_does_not_wedge_the_cell() {
    let source = FakeTokenSource::new().with_lifetime(secs(300));
    let first = paused_runtime();
    let cell = first.block_on(async {
        let cell = TokenCell::new(source.clone(), exact());
        assert_eq!(cell.token().await.unwrap().generation(), 1);
        source.close_gate();
        // Past the refresh point (60 s before expiry): the refresher starts the fetch, which
        // waits at the gate.
        tokio::time::sleep(secs(241)).await;
        run_until(|| source.fetches_started() == 2).await;
        cell
    });
    // Shutting the runtime down drops the refresher, and its fetch, mid-flight.
    drop(first);
    source.open_gate();
    let second = paused_runtime();
    second.block_on(async {
        // Each paused runtime starts its clock at the real time: catch up with the first one,
        // whose clock had moved 241 s ahead.
        tokio::time::sleep(secs(242)).await;
        // Not wedged "refreshing": after a rejection a renewal runs and completes.
        cell.invalidate(1);
        assert_eq!(cell.token().await.unwrap().generation(), 2);
        assert_eq!(source.fetches_started(), 3);
        assert_eq!(cell.stats().fetches_failed, 1, "the cut-off attempt");
        // And a refresher runs again on this runtime.
        tokio::time::sleep(secs(241)).await;
        run_until(|| source.fetches_started() == 4).await;
        assert_eq!(cell.token().await.unwrap().generation(), 3);
    });
}

#[test]
fn without_its_background_refresher_the_cell_checks_the_clock_again() {
    let source = FakeTokenSource::new().with_lifetime(secs(2));
    let first = paused_runtime();
    let cell = first.block_on(async {
        let cell = TokenCell::new(source.clone(), exact());
        cell.ready().await.unwrap();
        cell
    });
    // The runtime, and with it the background refresher, goes away.
    drop(first);
    let second = paused_runtime();
    second.block_on(async {
        tokio::time::advance(secs(3)).await;
        assert!(
            cell.current().is_none(),
            "an expired token is never handed out, refresher or not"
        );
        assert_eq!(cell.token().await.unwrap().generation(), 2);
    });
}
