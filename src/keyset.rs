//! `KeySet`: the published keys and the one that signs, with rotation.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::jwks::JwkSet;
use crate::key::SigningKey;

/// Default time between publishing a key and signing with it: the JWKS `max-age` the Koppeltaal
/// auth server caches the published set for (TOP-KT-020's example, 60 s).
pub const DEFAULT_PROPAGATION_DELAY: Duration = Duration::from_secs(60);

/// Longest propagation delay: [`KeySet::with_propagation_delay`] clamps longer ones to this (a
/// day; no JWK Set is cached that long).
pub const MAX_PROPAGATION_DELAY: Duration = Duration::from_secs(86_400);

/// The keys an application publishes in its JWK Set, and the one it signs with.
///
/// Rotation (TOP-KT-020): [`publish`](Self::publish) a new key, which goes into the JWK Set at
/// once but signs only after the propagation delay, when every cached copy of the set at the auth
/// server holds it; then [`retire`](Self::retire) the old key, which leaves the set. A
/// [`ClientCredentials`](crate::ClientCredentials) built with a key set signs every token request
/// with the key active at that moment, so rotation needs no restart.
///
/// Cheap to clone: clones share the keys.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use koppeltaal_auth::{Algorithm, KeySet, SigningKey};
///
/// # fn main() -> Result<(), koppeltaal_auth::Error> {
/// let old = SigningKey::generate(Algorithm::ES384)?;
/// let keys = KeySet::new(old.clone());
/// let new = SigningKey::generate(Algorithm::ES384)?;
/// keys.publish(new.clone())?;
/// assert_eq!(keys.jwks().keys.len(), 2); // both published...
/// assert_eq!(keys.signing_key().kid(), old.kid()); // ...the old one signs for 60 s more
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KeySet {
    inner: Arc<RwLock<State>>,
}

struct State {
    entries: Vec<Entry>,
    delay: Duration,
    /// The algorithms the auth server accepts, when its SMART configuration lists them (set
    /// by discovery): a key signing with another is refused by [`KeySet::publish`].
    accepted: Option<Vec<String>>,
}

struct Entry {
    key: SigningKey,
    active_from: Instant,
}

impl State {
    /// The key that signs at `now`: the most recently activated one.
    fn active(&self, now: Instant) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|entry| entry.active_from <= now)
            .max_by_key(|entry| entry.active_from)
    }
}

impl KeySet {
    /// A key set whose one key signs from now on (it is assumed to be registered already).
    #[must_use]
    pub fn new(key: SigningKey) -> Self {
        Self {
            inner: Arc::new(RwLock::new(State {
                entries: vec![Entry {
                    key,
                    active_from: Instant::now(),
                }],
                delay: DEFAULT_PROPAGATION_DELAY,
                accepted: None,
            })),
        }
    }

    /// Sets the delay between publishing a key and signing with it. Defaults to 60 s; set it to
    /// the `max-age` your JWK Set is served with. Clamped to [`MAX_PROPAGATION_DELAY`] (a day).
    #[must_use]
    pub fn with_propagation_delay(self, delay: Duration) -> Self {
        self.write().delay = delay.min(MAX_PROPAGATION_DELAY);
        self
    }

    /// The propagation delay (see [`with_propagation_delay`](Self::with_propagation_delay)).
    #[must_use]
    pub fn propagation_delay(&self) -> Duration {
        self.read().delay
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `key`: it is in the JWK Set from now on and signs after the propagation delay.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Key`](crate::ErrorKind::Key) if a key with the same `kid` is in the set, or
    /// if the set was used with [discovery](crate::KoppeltaalAuthBuilder::discover) of an auth
    /// server that lists the algorithms it accepts and `key` signs with another (it would sign
    /// every token request once its delay is over, and every one would be refused).
    pub fn publish(&self, key: SigningKey) -> Result<(), Error> {
        let mut state = self.write();
        if let Some(accepted) = &state.accepted
            && !accepted.iter().any(|alg| alg == key.algorithm().as_str())
        {
            return Err(Error::key(format!(
                "the auth server does not accept {} assertions (it lists {})",
                key.algorithm(),
                crate::redact::sanitize_snippet(accepted.join(", ").as_bytes())
            )));
        }
        if state
            .entries
            .iter()
            .any(|entry| entry.key.kid() == key.kid())
        {
            return Err(Error::key(format!(
                "a key with kid {:?} is already in the set",
                key.kid()
            )));
        }
        let active_from = crate::token::later(Instant::now(), state.delay);
        tracing::info!(
            kid = key.kid(),
            delay_s = state.delay.as_secs_f64(),
            "key published"
        );
        state.entries.push(Entry { key, active_from });
        Ok(())
    }

    /// Removes the key with `kid` from the JWK Set (and from signing).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Key`](crate::ErrorKind::Key) if there is no such key, if it is the key that
    /// signs now (publish its successor and wait for it to take over first), or if it is the
    /// only key in the set.
    pub fn retire(&self, kid: &str) -> Result<(), Error> {
        let mut state = self.write();
        let now = Instant::now();
        if state
            .active(now)
            .is_some_and(|entry| entry.key.kid() == kid)
        {
            return Err(Error::key(format!(
                "the key {kid:?} signs now and cannot be retired"
            )));
        }
        // Never the last key (whatever the clock says of which one signs): a set always holds
        // its signing key.
        if state.entries.iter().all(|entry| entry.key.kid() == kid) && !state.entries.is_empty() {
            return Err(Error::key(format!(
                "the key {kid:?} is the only one in the set and cannot be retired"
            )));
        }
        let before = state.entries.len();
        state.entries.retain(|entry| entry.key.kid() != kid);
        if state.entries.len() == before {
            return Err(Error::key(format!("no key with kid {kid:?} in the set")));
        }
        tracing::info!(kid, "key retired");
        Ok(())
    }

    /// The key that signs now: the most recently published key whose propagation delay is over.
    #[must_use]
    pub fn signing_key(&self) -> SigningKey {
        let state = self.read();
        let now = Instant::now();
        // There is always one: a set starts with one key and never retires its last.
        match state.active(now).or_else(|| state.entries.first()) {
            Some(entry) => entry.key.clone(),
            None => unreachable!("a KeySet always holds its signing key"),
        }
    }

    /// Limits the algorithms of keys published from now on to `accepted` (the auth server's
    /// list), after checking every key already in the set; `Err` names the first that signs with
    /// another.
    pub(crate) fn accept_only(&self, accepted: &[String]) -> Result<(), SigningKey> {
        let mut state = self.write();
        if let Some(entry) = state.entries.iter().find(|entry| {
            !accepted
                .iter()
                .any(|alg| alg == entry.key.algorithm().as_str())
        }) {
            return Err(entry.key.clone());
        }
        state.accepted = Some(accepted.to_vec());
        Ok(())
    }

    /// The public JWK Set of every published key, in publication order.
    #[must_use]
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self
                .read()
                .entries
                .iter()
                .map(|entry| entry.key.public_jwk())
                .collect(),
        }
    }

    /// The `kid`s in the set, in publication order, with the time until each signs (zero for
    /// keys that may sign now).
    #[must_use]
    pub fn kids(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        self.read()
            .entries
            .iter()
            .map(|entry| {
                (
                    entry.key.kid().to_owned(),
                    entry.active_from.saturating_duration_since(now),
                )
            })
            .collect()
    }
}

impl From<SigningKey> for KeySet {
    fn from(key: SigningKey) -> Self {
        Self::new(key)
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.kids())
            .field("propagation_delay", &self.read().delay)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ec_key, rsa_key};

    #[tokio::test(start_paused = true)]
    async fn a_published_key_signs_after_the_delay_and_the_old_one_stays_until_retired() {
        let (old, new) = (rsa_key(), ec_key());
        let keys = KeySet::new(old.clone());
        keys.publish(new.clone()).unwrap();
        let kids: Vec<String> = keys
            .jwks()
            .keys
            .iter()
            .map(|k| k.kid().to_owned())
            .collect();
        assert_eq!(kids, [old.kid(), new.kid()]);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(keys.signing_key().kid(), old.kid());
        assert!(
            keys.retire(old.kid()).is_err(),
            "the signing key cannot be retired"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(keys.signing_key().kid(), new.kid());
        keys.retire(old.kid()).unwrap();
        assert_eq!(keys.jwks().keys.len(), 1);
        assert!(keys.retire(old.kid()).is_err(), "already gone");
        assert!(
            keys.retire(new.kid()).is_err(),
            "the signing key cannot be retired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn propagation_delay_is_configurable_and_kids_are_unique() {
        let keys = KeySet::new(rsa_key()).with_propagation_delay(Duration::from_secs(5));
        keys.publish(ec_key()).unwrap();
        assert!(keys.publish(ec_key()).is_err());
        assert_eq!(
            keys.kids()[1],
            ("test-ec".to_owned(), Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(keys.signing_key().kid(), "test-ec");
        // A pending key can be withdrawn before it signs.
        let third = SigningKey::generate(crate::Algorithm::ES256).unwrap();
        keys.publish(third.clone()).unwrap();
        keys.retire(third.kid()).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(keys.signing_key().kid(), "test-ec");
    }

    #[test]
    fn debug_shows_kids_only() {
        let debug = format!("{:?}", KeySet::new(rsa_key()));
        assert!(debug.contains("test-rsa"));
        assert!(!debug.contains("PRIVATE"));
    }
}
