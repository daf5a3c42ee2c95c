//! `RedisTokenStore` against a real `redis-server` under the ACL the README recommends: every
//! operation the store makes is allowed on a fresh Redis, and an ACL that refuses one costs
//! sharing, not requests, with Redis's own reason in the warning and no password anywhere.
//!
//! Private `redis-server`s on free loopback ports (`support/servers.rs`); skipped, with a
//! message, when `redis-server` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "support/servers.rs"]
mod servers;
mod support;

use std::time::Duration;

use koppeltaal_auth::store::{SharedStore, StoreKey, StoredToken};
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{KoppeltaalAuth, RedisTokenStore};
use support::{CLIENT_ID, rsa_key};

use servers::{PrivateRedis, redis_url};

/// The README's ACL (read from the README, so that the two cannot drift apart) is all the store
/// needs, also on a Redis whose script cache is empty, as after any restart. redis-rs's scripts
/// send `EVALSHA` and then `SCRIPT LOAD`, which that ACL refuses: every load failed with
/// `NOPERM`, and each instance fetched on its own for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_acl_is_all_the_store_needs_on_a_fresh_redis() {
    if redis_url().is_none() {
        return;
    }
    let Some(redis) = PrivateRedis::start() else {
        eprintln!("SKIPPED: no redis-server to start, install redis-server");
        return;
    };
    let readme = include_str!("../README.md");
    let rules = readme
        .split("ACL SETUSER koppeltaal-app ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("the README shows the ACL");
    let mut setuser = vec!["ACL", "SETUSER", "koppeltaal-app"];
    setuser.extend(rules.split_whitespace());
    assert_eq!(redis.command(&setuser), "+OK\r\n", "{rules}");
    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]), "+OK\r\n");
    let url = redis
        .url
        .replace("redis://", "redis://koppeltaal-app:secret@");
    let key = StoreKey::new("https://auth.example.org/oauth2/token", CLIENT_ID, None);
    let store = RedisTokenStore::new(&url).unwrap().for_key(&key);
    assert!(store.load().await.unwrap().is_none());
    let token = StoredToken::new(
        "stored-token",
        Duration::from_secs(200),
        Duration::from_secs(300),
        None,
    );
    store.save(&token).await.unwrap();
    let loaded = store.load().await.unwrap().expect("the saved token");
    assert_eq!(loaded.token(), "stored-token");
    let owner = store.try_lease(Duration::from_secs(5)).await.unwrap();
    // Released only by its owner.
    store.release_lease("another-instance").await.unwrap();
    assert!(
        store
            .try_lease(Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    store
        .release_lease(&owner.expect("the lease"))
        .await
        .unwrap();
    assert!(
        store
            .try_lease(Duration::from_secs(5))
            .await
            .unwrap()
            .is_some(),
        "released by its owner"
    );
}

/// An ACL that lacks what the store needs costs sharing, not requests, and the warning says why:
/// Redis's own `NOPERM` answer (it used to say only "Redis GET failed"), never the URL with its
/// password.
#[tokio::test(flavor = "current_thread")]
async fn a_store_the_acl_refuses_warns_with_redis_own_reason() {
    if redis_url().is_none() {
        return;
    }
    let Some(redis) = PrivateRedis::start() else {
        eprintln!("SKIPPED: no redis-server to start, install redis-server");
        return;
    };
    let setuser =
        "ACL SETUSER app on >redis-secret-pw-4711 ~koppeltaal-auth:* +get +set +pttl +del";
    let args: Vec<&str> = setuser.split(' ').collect();
    assert_eq!(redis.command(&args), "+OK\r\n");
    let (logs, _guard) = support::capture_logs();
    let mock = MockKoppeltaal::start().await.unwrap();
    mock.register_key(CLIENT_ID, &rsa_key());
    let url = redis
        .url
        .replace("redis://", "redis://app:redis-secret-pw-4711@");
    let store = RedisTokenStore::new(&url).unwrap();
    let mut shown = vec![format!("{store:?}")];
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .token_endpoint(mock.token_endpoint())
        .shared_store(store)
        .build()
        .unwrap();
    auth.ready().await.unwrap();
    let text = logs.text();
    assert!(text.contains("token store unavailable"), "{text}");
    assert!(
        text.contains("no permissions to run the 'eval' command"),
        "{text}"
    );
    shown.extend([text, format!("{auth:?}")]);
    for shown in shown {
        assert!(!shown.contains("redis-secret-pw-4711"), "{shown}");
    }
}
