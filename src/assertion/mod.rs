//! JWT client assertions ([RFC 7523]) as SMART Backend Services and Koppeltaal want them.
//!
//! [RFC 7523]: https://www.rfc-editor.org/rfc/rfc7523

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Header;
use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::key::SigningKey;

/// Default assertion lifetime: a short-lived proof, as Spring Security uses.
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// Longest assertion lifetime: SMART says `exp` "SHALL be no more than five minutes in the future".
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// Default back-dating of `iat`: the reference auth server (PyJWT, zero leeway) refuses an `iat`
/// in the future, so a client clock a few seconds ahead would otherwise break authentication.
pub const DEFAULT_IAT_BACKDATE: Duration = Duration::from_secs(5);

/// Longest client id accepted, in bytes. Koppeltaal's are UUIDs (36 characters); OAuth sets no
/// limit, so this one only keeps an assertion (and every token request) to a sane size.
pub const MAX_CLIENT_ID_LEN: usize = 1024;

/// Builds client assertions: the signed JWT that authenticates a token request.
///
/// Every assertion has the header `{"alg", "kid", "typ": "JWT"}` (no `jku`) and exactly the claims
/// `iss` and `sub` (the client id), `aud` (the audience as one string, byte for byte), `iat` (now,
/// back-dated by 5 s), `exp` (now plus the lifetime, 60 s) and `jti` (a fresh UUIDv4), in integer
/// epoch seconds (requirements C1-C11).
///
/// Public because token introspection (TOP-KT-021) authenticates with the same assertion; the
/// Koppeltaal reference server wants the token endpoint as its `aud` there too.
///
/// # Example
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use koppeltaal_auth::{ClientAssertion, SigningKey};
///
/// # fn main() -> Result<(), koppeltaal_auth::Error> {
/// # let key = SigningKey::from_pem(include_str!("../../tests/data/test-only-p256-pkcs8.pem"), "k1")?;
/// let assertion = ClientAssertion::new("my-client-id", "https://auth.example.org/oauth2/token")?;
///
/// // What a token request sends: a fresh jti, the current time.
/// let jwt = assertion.sign(&key)?;
/// assert_eq!(jwt.as_str().split('.').count(), 3);
///
/// // The pure form, for tests and other clocks.
/// let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// let jwt = assertion.sign_at(&key, now, "5f0c6a2e-0000-4000-8000-000000000000")?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAssertion {
    client_id: String,
    audience: String,
    lifetime: Duration,
    backdate: Duration,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
}

impl ClientAssertion {
    /// An assertion for `client_id` addressed to `audience` (the token endpoint URL, exactly as
    /// discovered or configured), with the default lifetime and back-dating.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] if either is empty, or the client id holds a control character or
    /// starts or ends with whitespace (a trailing newline from a file or a secret: the server
    /// would answer a bare `401`), or is longer than [`MAX_CLIENT_ID_LEN`].
    pub fn new(client_id: impl Into<String>, audience: impl Into<String>) -> Result<Self, Error> {
        let client_id = client_id.into();
        let audience = audience.into();
        if client_id.is_empty() {
            return Err(Error::config("client id must not be empty"));
        }
        // RFC 6749 allows spaces inside a client id (VSCHAR), not around it.
        if client_id.chars().any(char::is_control) || client_id.trim() != client_id {
            return Err(Error::config(
                "client id holds a control character or starts or ends with whitespace (a \
                 trailing newline from a file or a secret?)",
            ));
        }
        if client_id.len() > MAX_CLIENT_ID_LEN {
            return Err(Error::config(format!(
                "client id is longer than {MAX_CLIENT_ID_LEN} bytes"
            )));
        }
        if audience.is_empty() {
            return Err(Error::config("assertion audience must not be empty"));
        }
        Ok(Self {
            client_id,
            audience,
            lifetime: DEFAULT_ASSERTION_LIFETIME,
            backdate: DEFAULT_IAT_BACKDATE,
        })
    }

    /// Sets how far in the future `exp` lies. Defaults to 60 seconds.
    ///
    /// `exp - iat`, the lifetime plus the `iat` back-dating, is at most 300 seconds
    /// ([`MAX_ASSERTION_LIFETIME`]): a server clock behind ours by up to the back-dating must
    /// still see `exp` at most five minutes ahead. With the default back-dating of 5 s the longest
    /// lifetime is 295 s; set the back-dating first to use another.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for less than a whole second, or for a lifetime that with the
    /// back-dating exceeds 300 seconds.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Result<Self, Error> {
        if lifetime.saturating_add(self.backdate) > MAX_ASSERTION_LIFETIME {
            return Err(Error::config(
                "assertion lifetime plus the iat back-dating must not exceed 300 seconds (SMART \
                 Backend Services: exp at most five minutes after the server's now)",
            ));
        }
        if lifetime < Duration::from_secs(1) {
            return Err(Error::config(
                "assertion lifetime must be at least 1 second",
            ));
        }
        self.lifetime = lifetime;
        Ok(self)
    }

    /// Sets how far `iat` is back-dated, to absorb a client clock running ahead of the server's.
    /// Defaults to 5 seconds.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for more than 60 seconds, or when with the lifetime it exceeds
    /// 300 seconds (see [`with_lifetime`](Self::with_lifetime)).
    pub fn with_iat_backdate(mut self, backdate: Duration) -> Result<Self, Error> {
        if backdate > Duration::from_secs(60) {
            return Err(Error::config("iat back-dating must not exceed 60 seconds"));
        }
        if self.lifetime.saturating_add(backdate) > MAX_ASSERTION_LIFETIME {
            return Err(Error::config(
                "assertion lifetime plus the iat back-dating must not exceed 300 seconds",
            ));
        }
        self.backdate = backdate;
        Ok(self)
    }

    /// The client id (`iss` and `sub`).
    #[must_use]
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The audience (`aud`).
    #[must_use]
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The lifetime (`exp - now`).
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// How far `iat` is back-dated.
    #[must_use]
    pub fn iat_backdate(&self) -> Duration {
        self.backdate
    }

    /// Signs an assertion for the instant `now` with the given `jti`. A pure function of its
    /// inputs and `self`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Signing`] if `now` is before 1970 or signing fails; [`ErrorKind::Config`] for
    /// an empty `jti`.
    pub fn sign_at(
        &self,
        key: &SigningKey,
        now: SystemTime,
        jti: &str,
    ) -> Result<SignedAssertion, Error> {
        if jti.is_empty() {
            return Err(Error::config("jti must not be empty"));
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::new(ErrorKind::Signing, "the clock is before 1970"))?
            .as_secs();
        let claims = Claims {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: &self.audience,
            iat: now.saturating_sub(self.backdate.as_secs()),
            exp: now + self.lifetime.as_secs(),
            jti,
        };
        let mut header = Header::new(key.algorithm().jwt());
        header.kid = Some(key.kid().to_owned());
        header.typ = Some("JWT".to_owned());
        let provider =
            crate::key::crypto_backend(jsonwebtoken::crypto::CryptoProvider::try_get_default())?;
        crate::jwt::compact_jwt(provider, &header, &claims, key).map(SignedAssertion)
    }

    /// Signs an assertion for the current time with a fresh UUIDv4 `jti`. Call it for every
    /// token request, retries included: the reference server refuses any `jti` it has seen.
    ///
    /// # Errors
    ///
    /// As [`sign_at`](Self::sign_at).
    pub fn sign(&self, key: &SigningKey) -> Result<SignedAssertion, Error> {
        self.sign_at(key, SystemTime::now(), &uuid::Uuid::new_v4().to_string())
    }
}

/// A signed client assertion (a compact JWT).
///
/// # Security
///
/// It authenticates as the client until it expires: `Debug` prints `SignedAssertion([redacted])`
/// and there is no `Display`, and it is wiped from memory when dropped. Use
/// [`as_str`](Self::as_str) to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedAssertion(String);

impl SignedAssertion {
    /// The compact JWT.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Wiped from memory when dropped.
impl Drop for SignedAssertion {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SignedAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignedAssertion([redacted])")
    }
}

#[cfg(test)]
mod tests;
