//! A shared store that hands back what no instance of this crate would have saved: a lifetime
//! of `Duration::MAX`, a token text that is not a header value. The cell must neither panic nor
//! keep failing on it: it fetches its own token (and publishes it over the bad entry).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use koppeltaal_auth::store::{StorePolicy, StoredToken, TokenStore};
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::token::BoxFuture;
use koppeltaal_auth::{Error, RefreshPolicy, TokenCell};

/// A store whose entry is whatever the test put there (and then what the cell saved), each load
/// taking the given time.
#[derive(Clone)]
struct Planted(Arc<Mutex<Option<StoredToken>>>, Duration);

impl TokenStore for Planted {
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredToken>, Error>> {
        Box::pin(async move {
            tokio::time::sleep(self.1).await;
            Ok(self.0.lock().unwrap().clone())
        })
    }
    fn save<'a>(&'a self, token: &'a StoredToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            *self.0.lock().unwrap() = Some(token.clone());
            Ok(())
        })
    }
    fn try_lease(&self, _ttl: Duration) -> BoxFuture<'_, Result<Option<String>, Error>> {
        Box::pin(async { Ok(Some("owner".to_owned())) })
    }
    fn release_lease<'a>(&'a self, _owner: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

fn cell_over(entry: StoredToken, policy: RefreshPolicy) -> (FakeTokenSource, TokenCell, Planted) {
    cell_over_slow(entry, policy, Duration::ZERO)
}

fn cell_over_slow(
    entry: StoredToken,
    policy: RefreshPolicy,
    load_time: Duration,
) -> (FakeTokenSource, TokenCell, Planted) {
    let store = Planted(Arc::new(Mutex::new(Some(entry))), load_time);
    let source = FakeTokenSource::new();
    let cell = TokenCell::with_store(
        source.clone(),
        policy.background_refresh(false),
        store.clone(),
        StorePolicy::default(),
    );
    (source, cell, store)
}

#[tokio::test(start_paused = true)]
async fn a_stored_lifetime_of_duration_max_is_a_year_not_a_panic() {
    // The whole lifetime refresh-ahead: `lifetime * 1.0` of an unbounded lifetime overflowed.
    let policy = RefreshPolicy::default().refresh_ahead(Duration::from_secs(30), 1.0, 1.0);
    let entry = StoredToken::new("stored-token", Duration::MAX, Duration::MAX, None);
    let (source, cell, _store) = cell_over(entry.clone(), policy);
    // Before its refresh point (a tenth of a lifetime is always used first): adopted.
    let token = cell.token().await.unwrap();
    assert_eq!(source.fetches_completed(), 0);
    assert_eq!(token.value(), "Bearer stored-token");
    assert_eq!(entry.lifetime(), koppeltaal_auth::token::MAX_TOKEN_LIFETIME);
    assert_eq!(
        entry.expires_in(),
        koppeltaal_auth::token::MAX_TOKEN_LIFETIME
    );
}

#[tokio::test(start_paused = true)]
async fn an_unusable_stored_token_is_replaced_not_failed_on() {
    let entry = StoredToken::new(
        "not\na header value",
        Duration::from_secs(250),
        Duration::from_secs(300),
        None,
    );
    let (source, cell, store) = cell_over(entry, RefreshPolicy::default());
    let token = cell.token().await.unwrap();
    assert_eq!(token.generation(), 1);
    assert_eq!(source.fetches_completed(), 1, "fetched its own");
    assert_eq!(cell.stats().adopted_from_store, 0);
    assert_eq!(
        cell.stats().fetches_failed,
        0,
        "no attempt failed on the bad entry"
    );
    let saved = store.0.lock().unwrap().clone().unwrap();
    assert_eq!(
        format!("Bearer {}", saved.token()),
        token.value().to_str().unwrap()
    );
}

/// A stored token inside the cell's expiry margin, though before a short custom refresh-ahead
/// window: not adopted (the cell could not install it: a failed attempt and the longest backoff),
/// the cell fetches its own.
#[tokio::test(start_paused = true)]
async fn a_stored_token_inside_the_expiry_margin_is_not_adopted() {
    // Refresh 6 s ahead of a 300 s token; the expiry margin stays the default 10 s.
    let policy = RefreshPolicy::default()
        .refresh_ahead(Duration::ZERO, 0.02, 0.02)
        .refresh_jitter(0.0);
    let entry = StoredToken::new(
        "stored-token",
        Duration::from_secs(8),
        Duration::from_secs(300),
        None,
    );
    let (source, cell, _store) = cell_over(entry, policy);
    let token = cell.token().await.unwrap();
    assert_eq!(token.value(), "Bearer fake-token-1");
    assert_eq!(source.fetches_completed(), 1, "fetched its own");
    assert_eq!(cell.stats().adopted_from_store, 0);
    assert_eq!(cell.stats().fetches_failed, 0);
}

/// The same when the look at the store takes time (250 ms, inside its 300 ms bound): the time left
/// counts from before the look, so a token just outside the margin when asked for is inside it
/// when installed. Not adopted either.
#[tokio::test(start_paused = true)]
async fn a_stored_token_the_store_round_trip_takes_inside_the_margin_is_not_adopted() {
    let policy = RefreshPolicy::default()
        .refresh_ahead(Duration::ZERO, 0.02, 0.02)
        .refresh_jitter(0.0);
    let entry = StoredToken::new(
        "stored-token",
        Duration::from_millis(10_200),
        Duration::from_secs(300),
        None,
    );
    let (source, cell, _store) = cell_over_slow(entry, policy, Duration::from_millis(250));
    let token = cell.token().await.unwrap();
    assert_eq!(token.value(), "Bearer fake-token-1");
    assert_eq!(source.fetches_completed(), 1, "fetched its own");
    assert_eq!(cell.stats().fetches_failed, 0);
}

/// A store that says a token has longer left than its whole lifetime (Redis's clock stepped
/// back, say) is not believed past the lifetime: the token is never handed out later than a
/// lifetime after the look.
#[tokio::test(start_paused = true)]
async fn a_stored_time_left_beyond_the_lifetime_is_cut_to_the_lifetime() {
    let entry = StoredToken::new(
        "stored-token",
        Duration::from_secs(3_600),
        Duration::from_secs(300),
        None,
    );
    let (_source, cell, _store) = cell_over(entry, RefreshPolicy::default());
    assert_eq!(cell.token().await.unwrap().value(), "Bearer stored-token");
    tokio::time::advance(Duration::from_secs(291)).await;
    assert!(
        cell.current().is_none(),
        "usable until the lifetime less its margin (290 s), not for an hour"
    );
}
