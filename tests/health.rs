//! `TokenCell::health` (and `Authenticator::health`) through a cell's life, under tokio's paused
//! clock: absent, fresh, refreshing, failing with and without a usable token, recovered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::secs;

use std::time::Duration;

use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{Error, ErrorKind, Health, RefreshPolicy, TokenCell};
use support::run_until;

/// Exact refresh points: a 300 s token refreshes at 240 s and is handed out until 290 s.
fn exact() -> RefreshPolicy {
    RefreshPolicy::default()
        .refresh_jitter(0.0)
        .backoff(secs(1), secs(1))
}

#[tokio::test(start_paused = true)]
async fn absent_then_fresh_then_refreshing_then_fresh_again() {
    let source = FakeTokenSource::new();
    source.close_gate();
    let cell = TokenCell::new(source.clone(), exact());
    assert_eq!(cell.health(), Health::Absent { refreshing: false });
    // The first use fetches the first token.
    let first = tokio::spawn({
        let cell = cell.clone();
        async move { cell.ready().await }
    });
    run_until(|| source.fetches_started() == 1).await;
    assert_eq!(cell.health(), Health::Absent { refreshing: true });
    assert!(!cell.health().is_ready());
    source.open_gate();
    first.await.unwrap().unwrap();
    assert_eq!(
        cell.health(),
        Health::Fresh {
            usable_for: secs(290)
        }
    );
    assert!(cell.health().is_ready());

    source.close_gate();
    tokio::time::advance(secs(250)).await;
    run_until(|| source.fetches_started() == 2).await;
    let health = cell.health();
    assert_eq!(
        health,
        Health::Refreshing {
            usable_for: secs(40)
        }
    );
    assert_eq!(health.name(), "refreshing");
    assert!(health.is_ready());
    source.open_gate();
    run_until(|| source.fetches_completed() == 2).await;
    assert_eq!(
        cell.health(),
        Health::Fresh {
            usable_for: secs(290)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn health_never_starts_a_fetch() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact().background_refresh(false));
    for _ in 0..3 {
        assert_eq!(cell.health(), Health::Absent { refreshing: false });
        tokio::task::yield_now().await;
    }
    assert_eq!(source.fetches_started(), 0);
    cell.ready().await.unwrap();
    // Past the refresh point: due, but health does not kick the refresh.
    tokio::time::advance(secs(250)).await;
    assert_eq!(
        cell.health(),
        Health::Refreshing {
            usable_for: secs(40)
        }
    );
    tokio::task::yield_now().await;
    assert_eq!(source.fetches_started(), 1);
}

#[tokio::test(start_paused = true)]
async fn failing_says_since_when_why_and_how_long_the_token_still_serves() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    cell.ready().await.unwrap();
    source.fail_with(Error::new(ErrorKind::Transport, "connection refused"));
    tokio::time::advance(secs(240)).await;
    run_until(|| source.fetches_completed() == 2).await;
    assert_eq!(
        cell.health(),
        Health::Failing {
            failing_for: Duration::ZERO,
            failures: 1,
            last_error: Some(ErrorKind::Transport),
            usable_for: Some(secs(50)),
        }
    );
    assert!(cell.health().is_ready(), "the current token still serves");

    // Retries fail on; once the token is past its usable-until instant, the cell is not ready.
    tokio::time::advance(secs(60)).await;
    run_until(|| source.fetches_completed() >= 3).await;
    let Health::Failing {
        failing_for,
        failures,
        last_error,
        usable_for,
    } = cell.health()
    else {
        panic!("{:?}", cell.health());
    };
    assert_eq!(failing_for, secs(60));
    assert!(failures >= 2, "{failures}");
    assert_eq!(last_error, Some(ErrorKind::Transport));
    assert_eq!(usable_for, None);
    assert!(!cell.health().is_ready());

    // Recovered (after the backoff, during which callers get the last error): fresh again, and
    // the failure run is forgotten.
    source.heal();
    tokio::time::advance(secs(1)).await;
    cell.ready().await.unwrap();
    assert_eq!(
        cell.health(),
        Health::Fresh {
            usable_for: secs(290)
        }
    );
    source.fail_with(Error::new(ErrorKind::Timeout, "timed out"));
    tokio::time::advance(secs(240)).await;
    let before = source.fetches_completed();
    run_until(|| source.fetches_completed() > before).await;
    assert!(matches!(
        cell.health(),
        Health::Failing {
            failing_for: Duration::ZERO,
            failures: 1,
            last_error: Some(ErrorKind::Timeout),
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_absent_until_its_renewal_arrives() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    let token = cell.token().await.unwrap();
    source.close_gate();
    assert!(cell.invalidate(token.generation()));
    run_until(|| source.fetches_started() == 2).await;
    assert_eq!(cell.health(), Health::Absent { refreshing: true });
    source.open_gate();
    cell.ready().await.unwrap();
    assert_eq!(
        cell.health(),
        Health::Fresh {
            usable_for: secs(290)
        }
    );
}

#[test]
fn health_needs_no_runtime() {
    let cell = TokenCell::new(FakeTokenSource::new(), exact());
    assert_eq!(cell.health(), Health::Absent { refreshing: false });
}

#[tokio::test(start_paused = true)]
async fn a_token_rejected_while_nobody_asks_is_renewed_in_the_background() {
    let source = FakeTokenSource::new();
    let cell = TokenCell::new(source.clone(), exact());
    let token = cell.token().await.unwrap();
    // The server rejects it (the middleware's path for a request it cannot replay): nobody
    // asks for a token afterwards, and a readiness probe sees the cell absent.
    assert!(cell.invalidate(token.generation()));
    run_until(|| source.fetches_completed() == 2).await;
    assert_eq!(
        cell.health(),
        Health::Fresh {
            usable_for: secs(290)
        }
    );

    // The new token, rejected too while young: renewed only after a backoff (1 s here), and
    // then still without a caller. Meanwhile it is still handed out to requests (the server
    // may refuse a request, not the token): ready, its refresh due.
    let token = cell.current().unwrap();
    assert!(cell.invalidate(token.generation()));
    tokio::task::yield_now().await;
    assert!(
        matches!(cell.health(), Health::Refreshing { .. }),
        "{:?}",
        cell.health()
    );
    assert_eq!(source.fetches_started(), 2, "nothing during the backoff");
    tokio::time::sleep(secs(2)).await;
    run_until(|| source.fetches_completed() == 3).await;
    assert!(cell.health().is_ready());
}
