//! A FHIR server whose clock is behind (or ahead of) the auth server's. Koppeltaal's HAPI server
//! allows no leeway on a token's `iat`, so while its clock is behind it refuses every brand-new
//! token with a plain `401`. The layer must turn that into short waits, never failed requests or
//! a renewal storm.
//!
//! The matrix runs on tokio's paused clock, against a FHIR service in the test that validates
//! like HAPI (a `Date` from its own clock, `iat` with no leeway, `exp` with 60 s): offsets 0, 1,
//! 2 and 5 s behind and 2 s ahead, 300 s and 10 s tokens, 16 workers for three lifetimes with
//! revocations in between. The same against `MockKoppeltaal` in real time is
//! `fhir_clock_skew_mock.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::fhir_servers::{BASE, Issuing, Servers, client, fhir_request, fhir_service, layered};
use support::{ms, secs};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use koppeltaal_auth::store::StorePolicy;
use koppeltaal_auth::testing::MemoryTokenStore;
use koppeltaal_auth::{KoppeltaalAuthLayer, RefreshPolicy, TokenCell};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

/// What a run saw.
#[derive(Debug)]
struct Run {
    requests: u64,
    failed: u64,
    longest: Duration,
    fetches: u64,
}

/// 16 workers, one request every 500 ms each, for `lifetimes` token lifetimes; all tokens
/// revoked at each instant of `revocations` (offsets from the start).
async fn run(
    (offset_ms, phase_ms): (i64, u64),
    lifetime: Duration,
    lifetimes: u32,
    revocations: &[Duration],
) -> Run {
    let servers = Servers::new(offset_ms, lifetime, phase_ms);
    run_against(servers, policy(), lifetimes, revocations).await
}

fn policy() -> RefreshPolicy {
    RefreshPolicy::default().refresh_jitter(0.0)
}

async fn run_against(
    servers: Arc<Servers>,
    policy: RefreshPolicy,
    lifetimes: u32,
    revocations: &[Duration],
) -> Run {
    let lifetime = servers.lifetime;
    let client = client(&servers, policy);
    let start = Instant::now();
    let end = start + lifetime * lifetimes;
    let revoker = {
        let servers = Arc::clone(&servers);
        let revocations = revocations.to_vec();
        tokio::spawn(async move {
            for at in revocations {
                tokio::time::sleep_until(start + at).await;
                servers.revoke_all();
            }
        })
    };
    let workers: Vec<_> = (0..16)
        .map(|worker| {
            let client = client.clone();
            tokio::spawn(async move {
                // Spread the workers over the first half second.
                tokio::time::sleep(Duration::from_millis(31 * worker)).await;
                let (mut requests, mut failed, mut longest) = (0, 0, Duration::ZERO);
                while Instant::now() < end {
                    let sent = Instant::now();
                    let response = client.clone().oneshot(fhir_request()).await;
                    longest = longest.max(Instant::now() - sent);
                    requests += 1;
                    if response.map_or(true, |response| response.status() != StatusCode::OK) {
                        failed += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                (requests, failed, longest)
            })
        })
        .collect();
    let mut result = Run {
        requests: 0,
        failed: 0,
        longest: Duration::ZERO,
        fetches: 0,
    };
    for worker in workers {
        let (requests, failed, longest) = worker.await.unwrap();
        result.requests += requests;
        result.failed += failed;
        result.longest = result.longest.max(longest);
    }
    revoker.await.unwrap();
    result.fetches = servers.fetches.load(Ordering::SeqCst);
    result
}

async fn matrix(lifetime: Duration) {
    let revocations = [lifetime + lifetime / 3, lifetime * 2 + lifetime / 2];
    for phase_ms in [0, 300, 700, 999] {
        let baseline = run((0, phase_ms), lifetime, 3, &revocations).await;
        assert_eq!(baseline.failed, 0, "{baseline:?}");
        // Without skew: the first token, one per refresh point, one per revocation.
        assert!(
            baseline.fetches <= 3 * 2 + revocations.len() as u64,
            "{baseline:?}"
        );
        for offset_ms in [-1_000, -2_000, -5_000, 2_000] {
            let case = format!("{offset_ms} ms, phase {phase_ms} ms");
            let run = run((offset_ms, phase_ms), lifetime, 3, &revocations).await;
            let behind = Duration::from_millis(offset_ms.min(0).unsigned_abs());
            assert_eq!(run.failed, 0, "{case}: {run:?}");
            assert!(
                run.longest <= behind + secs(1),
                "{case}: a request waited {:?}",
                run.longest
            );
            assert!(
                run.fetches <= baseline.fetches + 1,
                "{case}: {} token requests, {} without skew",
                run.fetches,
                baseline.fetches
            );
            // Every worker kept going: many requests per lifetime each.
            assert!(run.requests >= 16 * 3 * 5, "{case}: {run:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_skewed_fhir_clock_fails_no_request_with_300_s_tokens() {
    matrix(secs(300)).await;
}

#[tokio::test(start_paused = true)]
async fn a_skewed_fhir_clock_fails_no_request_with_10_s_tokens() {
    matrix(secs(10)).await;
}

/// The reproduction: without the wait for the FHIR server's clock (turned off), a FHIR server
/// one second behind fails requests: every new token is refused, renewed into another refused
/// one, and the young-token backoff then holds callers up until they time out.
#[tokio::test(start_paused = true)]
async fn without_the_wait_a_fhir_clock_one_second_behind_fails_requests() {
    let servers = Servers::new(-1_000, secs(10), 500);
    let run = run_against(
        servers,
        policy().fhir_clock_wait(Duration::ZERO),
        3,
        &[secs(14)],
    )
    .await;
    assert!(run.failed > 0, "{run:?}");
}

/// 100 requests at once with a brand-new token that the FHIR server (2 s behind) refuses: one
/// shared wait, every request sent exactly twice, no renewal.
#[tokio::test(start_paused = true)]
async fn concurrent_refusals_of_a_young_token_share_one_wait_and_renew_nothing() {
    let servers = Servers::new(-2_000, secs(300), 250);
    let client = client(&servers, policy());
    let started = Instant::now();
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let response = client.oneshot(fhir_request()).await.unwrap();
                (response.status(), Instant::now())
            })
        })
        .collect();
    let mut done = Vec::new();
    for request in requests {
        let (status, at) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        done.push(at);
    }
    assert!(done.iter().all(|at| *at == done[0]), "one wait for all");
    assert!(done[0] - started <= secs(3), "{:?}", done[0] - started);
    assert_eq!(servers.fetches.load(Ordering::SeqCst), 1, "no renewal");
    assert_eq!(servers.requests.load(Ordering::SeqCst), 200);
    assert_eq!(servers.refused.load(Ordering::SeqCst), 100);
}

/// A token really revoked while it is young (before the FHIR server's clock, 2 s behind, has
/// reached it): the bounded wait, the replay refused, then one renewal.
#[tokio::test(start_paused = true)]
async fn a_young_token_really_revoked_is_renewed_after_the_wait() {
    let servers = Servers::new(-2_000, secs(300), 0);
    let cell = TokenCell::new(Issuing(Arc::clone(&servers)), policy());
    let client = layered(&servers, cell.clone());
    cell.ready().await.unwrap();
    servers.revoke_all();
    let started = Instant::now();
    let response = client.oneshot(fhir_request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(servers.fetches.load(Ordering::SeqCst), 2, "one renewal");
    assert!(
        Instant::now() - started <= secs(6),
        "{:?}",
        Instant::now() - started
    );
    let sent = servers.requests.load(Ordering::SeqCst);
    assert!((3..=4).contains(&sent), "sent {sent} times");
    assert_eq!(cell.stats().invalidations, 1);
}

/// A FHIR server that refuses every token as not valid yet, whatever the wait: each request is
/// sent at most four times (its token, after the wait, renewed, after a wait for that one).
#[tokio::test(start_paused = true)]
async fn a_fhir_server_always_refusing_sees_each_request_at_most_four_times() {
    let mut servers = Servers::new(-2_000, secs(300), 0);
    Arc::get_mut(&mut servers).unwrap().always_young = true;
    let client = client(&servers, policy());
    for round in 1..=5u64 {
        let before = servers.requests.load(Ordering::SeqCst);
        let response = client.clone().oneshot(fhir_request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let sent = servers.requests.load(Ordering::SeqCst) - before;
        assert!(sent <= 4, "round {round}: sent {sent} times");
    }
    assert!(servers.fetches.load(Ordering::SeqCst) <= 6);
}

/// Two instances sharing a store, the FHIR server 2 s behind: the one that adopts the other's
/// brand-new token knows its start too (shared through the store), so the FHIR server's refusal
/// is waited out and the same token replayed, not taken for a rejection (which used to make the
/// adopting instance drop the shared token and fetch one of its own).
#[tokio::test(start_paused = true)]
async fn an_instance_adopting_a_young_token_waits_for_the_fhir_clock_instead_of_renewing() {
    let servers = Servers::new(-2_000, secs(300), 0);
    let store = MemoryTokenStore::new();
    let instance = || {
        TokenCell::with_store(
            Issuing(Arc::clone(&servers)),
            policy(),
            store.clone(),
            StorePolicy::default(),
        )
    };
    let (fetching, adopting) = (instance(), instance());
    fetching.ready().await.unwrap();
    let response = layered(&servers, adopting.clone())
        .oneshot(fhir_request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(adopting.stats().adopted_from_store, 1);
    assert_eq!(servers.fetches.load(Ordering::SeqCst), 1, "no renewal");
    assert_eq!(adopting.stats().invalidations, 0);
    assert_eq!(
        *servers.sent.lock().unwrap(),
        ["token-1", "token-1"],
        "refused, waited for, replayed"
    );
}

/// The token serving while its successor waits for the FHIR server's clock (2 s behind) is
/// revoked: the rejection counts as one of an old token, not of the young successor dropped with
/// it (which used to count, so that the next young token rejected was renewed after a backoff
/// with a warning, as if fresh tokens kept being refused). Replay off, so that no successful
/// replay resets the count.
#[tokio::test(start_paused = true)]
async fn rejecting_the_serving_previous_token_counts_its_own_age_not_its_successors() {
    let (logs, _guard) = support::capture_logs();
    let servers = Servers::new(-2_000, secs(300), 0);
    let cell = TokenCell::new(Issuing(Arc::clone(&servers)), policy());
    let layer = KoppeltaalAuthLayer::new(cell.clone(), BASE)
        .unwrap()
        .replay_on_401(false);
    let client = layer.layer(fhir_service(&servers));
    let start = Instant::now();
    // A brand-new token-1 refused: the cell learns the FHIR server's clock.
    assert_eq!(status_of(&client).await, StatusCode::UNAUTHORIZED);
    // token-2 at the refresh point (240 s); token-1 serves until the FHIR server takes it.
    tokio::time::sleep_until(start + ms(240_500)).await;
    assert_eq!(servers.fetches.load(Ordering::SeqCst), 2);
    revoke(&servers, "token-1");
    assert_eq!(status_of(&client).await, StatusCode::UNAUTHORIZED);
    assert_eq!(cell.stats().invalidations, 1);
    // token-3, young, revoked once the FHIR server takes it: the first young rejection.
    tokio::time::sleep_until(start + ms(243_000)).await;
    assert_eq!(status_of(&client).await, StatusCode::OK);
    assert_eq!(servers.fetches.load(Ordering::SeqCst), 3);
    revoke(&servers, "token-3");
    assert_eq!(status_of(&client).await, StatusCode::UNAUTHORIZED);
    assert_eq!(cell.stats().invalidations, 2);
    let text = logs.text();
    assert!(!text.contains("a fresh token was rejected again"), "{text}");
}

/// The status of a FHIR request through `client`.
async fn status_of<S>(client: &S) -> StatusCode
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    client
        .clone()
        .oneshot(fhir_request())
        .await
        .unwrap()
        .status()
}

fn revoke(servers: &Servers, token: &str) {
    servers.revoked.lock().unwrap().insert(token.to_owned());
}

/// A late `401` for the token that served while its successor waited for the FHIR server's clock,
/// arriving after the successor took over: nothing happens (the successor used to be dropped and
/// renewed, as `previous` stays on it for its whole life).
#[tokio::test(start_paused = true)]
async fn a_late_401_for_a_previous_token_no_longer_serving_leaves_its_successor() {
    let servers = Servers::new(-2_000, secs(300), 0);
    let cell = TokenCell::new(Issuing(Arc::clone(&servers)), policy());
    let client = KoppeltaalAuthLayer::new(cell.clone(), BASE)
        .unwrap()
        .replay_on_401(false)
        .layer(fhir_service(&servers));
    let start = Instant::now();
    // A brand-new token-1 refused: the cell learns the FHIR server's clock.
    assert_eq!(status_of(&client).await, StatusCode::UNAUTHORIZED);
    // token-2 at the refresh point; once the FHIR server takes it (2 s later), it serves.
    tokio::time::sleep_until(start + ms(243_000)).await;
    assert_eq!(status_of(&client).await, StatusCode::OK);
    let serving = cell.current().unwrap().generation();
    assert_eq!(serving, 2);
    let invalidations = cell.stats().invalidations;
    // A slow request sent with token-1 comes back refused.
    cell.invalidate(1);
    assert_eq!(cell.stats().invalidations, invalidations, "nothing dropped");
    assert_eq!(
        cell.current().map(|token| token.generation()),
        Some(serving)
    );
    assert_eq!(servers.fetches.load(Ordering::SeqCst), 2, "nothing renewed");
}
