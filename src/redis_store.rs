//! `RedisTokenStore` (feature `redis`): one token per lifetime for a whole deployment.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind};
use crate::store::{SharedStore, StoreKey, StoredToken, TokenStore};
use crate::token::BoxFuture;

/// Shares tokens between the instances of a deployment through Redis (feature `redis`).
///
/// Each (token endpoint, client id, scope) has one key holding the current token, with the key's
/// TTL set to the time the token has left, and one lease key (`SET NX PX` with a
/// random owner, deleted only by its owner) that lets exactly one instance fetch at a refresh
/// point. Hand it to [`KoppeltaalAuthBuilder::shared_store`](crate::KoppeltaalAuthBuilder::shared_store).
///
/// Redis being down or slow never fails a request: every operation is bounded (300 ms by
/// default, see [`StorePolicy`](crate::store::StorePolicy)) and the instance then fetches on its
/// own, with a `tracing` warning.
///
/// # Security
///
/// The stored tokens are the same bearer credentials the cell keeps in memory. Use a Redis ACL
/// user limited to the key prefix (`~koppeltaal-auth:*`), TLS (`rediss://`), and a Redis that
/// only your instances reach. The URL (which may hold a password) and the tokens are never
/// logged or shown in `Debug`.
///
/// # Example
///
/// ```no_run
/// use koppeltaal_auth::{KoppeltaalAuth, RedisTokenStore, SigningKey};
///
/// # async fn run(key: SigningKey) -> Result<(), koppeltaal_auth::BoxError> {
/// let store = RedisTokenStore::new("rediss://koppeltaal-app:secret@redis.internal:6380/0")?;
/// let auth = KoppeltaalAuth::builder()
///     .fhir_base_url("https://fhir.example.org/fhir/DEFAULT")
///     .client_id("my-client-id")
///     .signing_key(key)
///     .shared_store(store)
///     .discover()
///     .await?;
/// # let _ = auth;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisTokenStore {
    manager: ConnectionManager,
    prefix: Arc<str>,
}

impl fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_error(what: &'static str, err: redis::RedisError) -> Error {
    Error::new(ErrorKind::Transport, what).with_source(err)
}

impl RedisTokenStore {
    /// A store at `url` (`redis://` or `rediss://`), connected lazily: nothing is sent until
    /// the first refresh, so an application starts even while Redis is down. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] when the URL is not a Redis URL, or when called outside a tokio
    /// runtime.
    pub fn new(url: &str) -> Result<Self, Error> {
        // The connection manager spawns its reconnection work on the current runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "RedisTokenStore::new must be called inside a tokio runtime",
            ));
        }
        let client = redis::Client::open(url)
            .map_err(|err| Error::config("invalid Redis URL").with_source(err))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(Duration::from_millis(250)))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| Error::config("cannot set up the Redis connection").with_source(err))?;
        Ok(Self {
            manager,
            prefix: Arc::from("koppeltaal-auth"),
        })
    }

    /// Sets the key prefix. Defaults to `koppeltaal-auth`.
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }
}

impl SharedStore for RedisTokenStore {
    fn for_key(&self, key: &StoreKey) -> Box<dyn TokenStore> {
        // One hashed key per (endpoint, client, scope): fixed length, nothing to escape.
        let material = format!(
            "{}\n{}\n{}",
            key.token_endpoint(),
            key.client_id(),
            key.scope().unwrap_or("")
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, material.as_bytes());
        let id: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Box::new(RedisKeyStore {
            manager: self.manager.clone(),
            token_key: format!("{}:token:{id}", self.prefix),
            lease_key: format!("{}:lease:{id}", self.prefix),
        })
    }
}

/// The store of one key.
struct RedisKeyStore {
    manager: ConnectionManager,
    token_key: String,
    lease_key: String,
}

/// The stored value. No absolute time: how long the token has left is the key's TTL, measured by
/// Redis's clock, so that instances whose clocks disagree still agree on it.
/// The token is borrowed from the JSON text where it can be (wiped with it), and from the
/// [`StoredToken`] it came from when saving.
#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    access_token: Cow<'a, str>,
    lifetime_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// The token's start by its issuer's clock, epoch seconds (absent in entries written before
    /// it was kept, and for tokens that do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<u64>,
}

/// The stored JSON of `token`, in one buffer sized for the worst case (every character escaped
/// as `\uXXXX`) so that writing never grows it and leaves a copy behind, wiped when dropped.
fn encode(token: &StoredToken) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let entry = Entry {
        access_token: Cow::Borrowed(token.token()),
        lifetime_ms: millis(token.lifetime()),
        scope: token.scope().map(str::to_owned),
        not_before: token
            .not_before()
            .and_then(crate::token::issued::epoch_seconds),
    };
    // The keys, two 20-digit numbers and the punctuation fit in 128 bytes.
    let longest = 6 * (token.token().len() + token.scope().map_or(0, str::len)) + 128;
    let mut json = Zeroizing::new(Vec::with_capacity(longest));
    serde_json::to_writer(&mut *json, &entry)?;
    Ok(json)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `EVAL` of `script` on `key`. Plain `EVAL`, not redis-rs's `Script` (`EVALSHA`, then
/// `SCRIPT LOAD` when Redis's script cache is empty, as after every restart): an ACL user
/// allowed `+eval` but not `+script|load` would otherwise fail every call. The scripts are a
/// line each, sent only at refresh points.
fn eval(script: &str, key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(1).arg(key);
    cmd
}

/// The value and its TTL in one atomic step.
const LOAD: &str = "return {redis.call('get', KEYS[1]), redis.call('pttl', KEYS[1])}";

const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

impl TokenStore for RedisKeyStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredToken>, Error>> {
        Box::pin(async move {
            let mut connection = self.manager.clone();
            let (value, ttl_ms): (Option<String>, i64) = eval(LOAD, &self.token_key)
                .query_async(&mut connection)
                .await
                .map_err(|err| redis_error("Redis GET failed", err))?;
            // The JSON holds the token: wiped when dropped.
            let value = value.map(Zeroizing::new);
            // A key without a TTL (-1) was not written by this store: ignored, as is an entry
            // that does not parse (replaced at the next refresh).
            let Ok(ttl_ms) = u64::try_from(ttl_ms) else {
                return Ok(None);
            };
            Ok(value
                .filter(|_| ttl_ms > 0)
                .as_ref()
                .and_then(|json| serde_json::from_str::<Entry<'_>>(json).ok())
                .map(|entry| {
                    StoredToken::new(
                        entry.access_token.into_owned(),
                        Duration::from_millis(ttl_ms),
                        Duration::from_millis(entry.lifetime_ms),
                        entry.scope,
                    )
                    .with_not_before(
                        entry
                            .not_before
                            .map(crate::token::issued::from_epoch_seconds),
                    )
                }))
        })
    }

    fn save<'a>(&'a self, token: &'a StoredToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let ttl = millis(token.expires_in());
            if ttl == 0 {
                return Ok(());
            }
            let json = encode(token).map_err(|err| {
                Error::new(ErrorKind::Transport, "cannot encode the token").with_source(err)
            })?;
            let mut connection = self.manager.clone();
            redis::cmd("SET")
                .arg(&self.token_key)
                .arg(&json[..])
                .arg("PX")
                .arg(ttl)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| redis_error("Redis SET failed", err))
        })
    }

    fn try_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<Option<String>, Error>> {
        Box::pin(async move {
            let owner = uuid::Uuid::new_v4().to_string();
            let mut connection = self.manager.clone();
            let taken: Option<String> = redis::cmd("SET")
                .arg(&self.lease_key)
                .arg(&owner)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl).max(1))
                .query_async(&mut connection)
                .await
                .map_err(|err| redis_error("Redis SET NX failed", err))?;
            Ok(taken.map(|_| owner))
        })
    }

    fn release_lease<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut connection = self.manager.clone();
            eval(RELEASE, &self.lease_key)
                .arg(owner)
                .query_async::<i64>(&mut connection)
                .await
                .map(drop)
                .map_err(|err| redis_error("Redis lease release failed", err))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_json_round_trips_and_leaves_no_token_in_freed_memory() {
        // Long enough (a JWT's length) that a growing buffer would be copied after the token.
        const TOKEN: &str = "eyJhbGciOiJSUzUxMiJ9.eyJzdWIiOiJrdC1yZWRpcy1zdG9yZSIsImV4cCI6MTgwMDAwMDMwMH0.c2lnbmF0dXJl";
        let token = StoredToken::new(
            TOKEN,
            Duration::from_secs(200),
            Duration::from_secs(300),
            Some("system/*.cruds \"quoted\"".to_owned()),
        )
        .with_not_before(Some(
            std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let found = crate::freed_scan::freed_blocks_holding(&[TOKEN.as_bytes()], || {
            let json = encode(&token).unwrap();
            let entry: Entry<'_> = serde_json::from_slice(&json).unwrap();
            assert_eq!(entry.access_token, TOKEN);
            assert_eq!(entry.lifetime_ms, 300_000);
            assert_eq!(entry.scope.as_deref(), Some("system/*.cruds \"quoted\""));
            assert_eq!(entry.not_before, Some(1_800_000_000));
        });
        assert_eq!(found, 0, "freed blocks held the token");
    }

    #[test]
    fn an_entry_written_before_not_before_was_kept_still_parses() {
        let entry: Entry<'_> =
            serde_json::from_str(r#"{"access_token":"t","lifetime_ms":300000}"#).unwrap();
        assert_eq!((entry.lifetime_ms, entry.not_before), (300_000, None));
    }

    #[test]
    fn needs_a_runtime_and_a_redis_url() {
        let err = RedisTokenStore::new("redis://127.0.0.1:6379").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(RedisTokenStore::new("redis://127.0.0.1:6379").is_ok());
            let err = RedisTokenStore::new("http://not-redis").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            let store = RedisTokenStore::new("redis://:hunter2@127.0.0.1:6379").unwrap();
            assert!(
                !format!("{store:?}").contains("hunter2"),
                "the URL is never shown"
            );
        });
    }
}
