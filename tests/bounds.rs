//! Every `Duration` a user or a server can set is bounded where it is set: `Duration::MAX` (or
//! zero) for each setter is refused or clamped, and nothing panics later. A panic inside a token
//! source, or a token whose lifetime would overflow the clock, is one failed attempt with backoff,
//! never a fetch storm (asserted by counting token requests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::secs;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use koppeltaal_auth::store::{MAX_LEASE, MIN_STORE_INTERVAL, StorePolicy};
use koppeltaal_auth::testing::{FakeTokenSource, MemoryTokenStore, MockKoppeltaal};
use koppeltaal_auth::token::{
    BoxFuture, MAX_BACKOFF, MAX_TOKEN_LIFETIME, MAX_WAIT_TIMEOUT, MIN_BACKOFF,
};
use koppeltaal_auth::{
    AccessToken, ClientCredentials, Error, ErrorKind, KeySet, KoppeltaalAuth, RefreshPolicy,
    TokenCell, TokenSource,
};
use tokio::time::Instant;

/// A source whose every token claims to live `Duration::MAX`.
#[derive(Clone, Default)]
struct Forever(Arc<AtomicU64>);

impl TokenSource for Forever {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { AccessToken::new("forever", Duration::MAX, Instant::now()) })
    }
}

/// A source that panics on every fetch.
#[derive(Clone, Default)]
struct Panicking(Arc<AtomicU64>);

impl TokenSource for Panicking {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { panic!("a token source with a bug") })
    }
}

#[test]
fn a_token_lifetime_of_duration_max_is_clamped() {
    let now = Instant::now();
    let token = AccessToken::new("t", Duration::MAX, now).unwrap();
    assert_eq!(token.lifetime(), MAX_TOKEN_LIFETIME);
    assert_eq!(token.expires_at(), now + MAX_TOKEN_LIFETIME);
}

#[tokio::test(start_paused = true)]
async fn a_token_living_forever_is_one_fetch_not_a_storm() {
    let source = Forever::default();
    let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let cell = cell.clone();
            tokio::spawn(async move { cell.token().await.map(|t| t.generation()) })
        })
        .collect();
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().unwrap(), 1);
    }
    tokio::time::sleep(secs(1)).await;
    assert_eq!(source.0.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_is_retried_at_the_backoff_pace() {
    let source = Panicking::default();
    let cell = TokenCell::new(source.clone(), RefreshPolicy::default());
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let cell = cell.clone();
            tokio::spawn(async move { cell.token().await.map(|t| t.generation()) })
        })
        .collect();
    for waiter in waiters {
        let err = waiter.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RefreshAborted);
        assert!(err.to_string().contains("panicked"), "{err}");
    }
    assert_eq!(
        source.0.load(Ordering::SeqCst),
        1,
        "one attempt for 100 waiters"
    );
    // Callers keep asking for a second; the background refresher keeps retrying. Backoff from
    // 200 ms doubling: 200 + 400 = 600 ms, then 800 ms would be past the second.
    let end = Instant::now() + secs(1);
    while Instant::now() < end {
        let _ = cell.token().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let fetches = source.0.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&fetches),
        "{fetches} attempts in one second"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_timeout_of_duration_max_waits_the_longest_allowed_wait() {
    let source = FakeTokenSource::new();
    source.close_gate();
    let policy = RefreshPolicy::default()
        .wait_timeout(Duration::MAX)
        .attempt_timeout(Duration::MAX);
    let cell = TokenCell::new(source.clone(), policy);
    let started = Instant::now();
    let err = cell.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WaitTimeout);
    assert_eq!(Instant::now() - started, MAX_WAIT_TIMEOUT);
    source.open_gate();
    assert_eq!(cell.token().await.unwrap().generation(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_backoff_of_duration_max_waits_the_longest_allowed_backoff() {
    let source = FakeTokenSource::new();
    source.push_error(Error::new(ErrorKind::Transport, "down"));
    let policy = RefreshPolicy::default()
        .backoff(Duration::MAX, Duration::MAX)
        .refresh_ahead(Duration::MAX, 0.2, 0.5)
        .expiry_margin(Duration::MAX, 0.1)
        .young_token_age(Duration::MAX);
    let cell = TokenCell::new(source.clone(), policy);
    assert_eq!(cell.token().await.unwrap_err().kind(), ErrorKind::Transport);
    tokio::time::sleep(MAX_BACKOFF - secs(1)).await;
    assert_eq!(
        source.fetches_started(),
        1,
        "no retry before the longest backoff"
    );
    tokio::time::sleep(secs(2)).await;
    assert_eq!(
        source.fetches_started(),
        2,
        "the background refresher retried"
    );
    assert_eq!(cell.token().await.unwrap().generation(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_zero_backoff_is_raised_to_the_minimum_not_a_retry_loop() {
    let failing = FakeTokenSource::new();
    failing.fail_with(Error::new(ErrorKind::Transport, "down"));
    let policy = RefreshPolicy::default().backoff(Duration::ZERO, Duration::ZERO);
    let cell = TokenCell::new(failing.clone(), policy);
    let _ = cell.token().await;
    tokio::time::sleep(secs(1)).await;
    let attempts = failing.fetches_started();
    let ceiling = 1 + (1_000 / MIN_BACKOFF.as_millis() as u64);
    assert!(attempts <= ceiling, "{attempts} attempts in one second");
    assert!(attempts >= 2, "retried: {attempts}");
}

#[tokio::test(start_paused = true)]
async fn store_policy_durations_are_clamped() {
    // A dead instance holds the lease for ever: the cell waits the (clamped) lease twice (the
    // second time for whoever took it when it lapsed), polling at the (raised) interval rather
    // than in a loop, then fetches itself.
    let store = MemoryTokenStore::new();
    store.take_lease_and_die(Duration::MAX);
    let policy = StorePolicy::default()
        .lease(Duration::MAX)
        .operation_timeout(Duration::MAX)
        .poll_interval(Duration::ZERO);
    let source = FakeTokenSource::new();
    let refresh = RefreshPolicy::default()
        .attempt_timeout(Duration::MAX)
        .wait_timeout(Duration::MAX);
    let cell = TokenCell::with_store(source.clone(), refresh, store.clone(), policy);
    let started = Instant::now();
    assert_eq!(cell.token().await.unwrap().generation(), 1);
    let waited = Instant::now() - started;
    assert!(
        waited >= 2 * MAX_LEASE && waited <= 2 * MAX_LEASE + MIN_STORE_INTERVAL,
        "{waited:?}"
    );
    assert_eq!(source.fetches_started(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_set_propagation_delay_of_duration_max_is_clamped() {
    let keys = KeySet::new(support::rsa_key()).with_propagation_delay(Duration::MAX);
    let next = support::key_for(koppeltaal_auth::Algorithm::RS384);
    keys.publish(next).unwrap();
    let max = koppeltaal_auth::MAX_PROPAGATION_DELAY;
    assert_eq!(keys.propagation_delay(), max);
    let kids = keys.kids();
    assert_eq!(kids.len(), 2);
    assert_eq!(
        (kids[0].1, kids[1].1),
        (Duration::ZERO, max),
        "signs after a day"
    );
}

#[tokio::test]
async fn credentials_durations_are_bounded_at_build() {
    let mock = MockKoppeltaal::start().await.unwrap();
    let build = |f: fn(
        koppeltaal_auth::token::ClientCredentialsBuilder,
    ) -> koppeltaal_auth::token::ClientCredentialsBuilder| {
        f(ClientCredentials::builder()
            .client_id(support::CLIENT_ID)
            .token_endpoint(mock.token_endpoint())
            .signing_key(support::rsa_key()))
        .build()
        .map(drop)
    };
    for (what, f) in [
        (
            "default_token_lifetime",
            (|b| b.default_token_lifetime(Duration::MAX))
                as fn(koppeltaal_auth::token::ClientCredentialsBuilder) -> _,
        ),
        ("request_timeout MAX", |b| b.request_timeout(Duration::MAX)),
        ("request_timeout 0", |b| b.request_timeout(Duration::ZERO)),
        ("assertion_lifetime", |b| {
            b.assertion_lifetime(Duration::MAX)
        }),
        ("iat_backdate", |b| b.iat_backdate(Duration::MAX)),
    ] {
        let err = build(f).expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Config, "{what}");
    }
    // The same through the authenticator builder.
    let err = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(support::CLIENT_ID)
        .signing_key(support::rsa_key())
        .token_endpoint(mock.token_endpoint())
        .default_token_lifetime(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[test]
fn a_retry_after_of_duration_max_waits_the_longest_honoured_delay() {
    let err = Error::new(ErrorKind::TokenRejected, "").with_retry_after(Some(Duration::MAX));
    assert_eq!(err.retry_after(), Some(secs(86_400)));
    assert!(koppeltaal_auth::token::MAX_RETRY_AFTER < secs(86_400));
}

#[tokio::test]
async fn mock_knobs_take_duration_max_without_panicking() {
    let mock = MockKoppeltaal::builder()
        .token_lifetime(Duration::MAX)
        .start()
        .await
        .unwrap();
    mock.register_key(support::CLIENT_ID, &support::rsa_key());
    mock.advance_token_clock(Duration::MAX);
    mock.advance_token_clock(Duration::MAX);
    let token = support::source(&mock, support::rsa_key())
        .fetch()
        .await
        .unwrap();
    assert!(token.lifetime() <= MAX_TOKEN_LIFETIME);
}

/// The mock's clocks a century back (or `i64::MIN` seconds) stop at 1970: its `Date` headers
/// cannot say earlier, and formatting one panicked in every handler.
#[tokio::test]
async fn mock_clock_offsets_far_in_the_past_answer_without_panicking() {
    let mock = MockKoppeltaal::builder()
        .clock_offset_secs(i64::MIN)
        .fhir_clock_offset_secs(-2_000_000_000)
        .start()
        .await
        .unwrap();
    mock.register_key(support::CLIENT_ID, &support::rsa_key());
    // Its clock says 1970: the assertion is refused (an answer, not a dropped connection).
    let err = support::source(&mock, support::rsa_key())
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenRejected, "{err}");
    let response = reqwest::Client::new()
        .get(format!("{}/Patient/1", mock.fhir_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("date"));
    assert_eq!(mock.stats().token_requests, 1);
}

/// A key set made where the clock ran ahead (a paused runtime advanced by an hour) and used
/// where it did not: no key is active by the clock, which once let the last key be retired and
/// the next signature panic.
#[test]
fn a_key_set_never_retires_its_last_key() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let key = support::rsa_key();
    let kid = key.kid().to_owned();
    let keys = runtime.block_on(async {
        tokio::time::advance(secs(3_600)).await;
        KeySet::new(key)
    });
    drop(runtime);
    // Outside the runtime the clock is an hour behind the key's start.
    let err = keys.retire(&kid).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Key);
    assert_eq!(keys.signing_key().kid(), kid);
}

/// A token that claims to arrive in the future is taken as arriving now: it never outlives its
/// lifetime (and no deadline lands past what tokio's timers take).
#[tokio::test(start_paused = true)]
async fn a_token_received_in_the_future_is_taken_as_received_now() {
    let now = Instant::now();
    let token = AccessToken::new("t", secs(60), now + secs(86_400)).unwrap();
    assert_eq!(token.received_at(), now);
    assert_eq!(token.expires_at(), now + secs(60));
}

/// The mock's test-only knobs that take a size are bounded too.
#[tokio::test]
async fn mock_size_knobs_are_bounded() {
    use koppeltaal_auth::testing::{MAX_OVERSIZED, MAX_QUEUED_FAULTS, MockResponse};
    let mock = MockKoppeltaal::start().await.unwrap();
    drop(MockResponse::oversized(usize::MAX));
    mock.fail_next_token_requests(usize::MAX, http::StatusCode::SERVICE_UNAVAILABLE, None);
    assert_eq!(MAX_OVERSIZED, 64 * 1024 * 1024);
    assert_eq!(MAX_QUEUED_FAULTS, 100_000);
}
