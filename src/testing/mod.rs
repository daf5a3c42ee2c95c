//! An in-process Koppeltaal for tests: auth server, SMART discovery and FHIR endpoint on
//! `127.0.0.1:0` (feature `test-util`).
//!
//! [`MockKoppeltaal`] validates client assertions as the Koppeltaal reference auth server does
//! (client by `iss`, key by `kid` from the registered JWK Set, allowed algorithms, `aud` compared
//! as a string with its own token URL, `exp` at most 300 s ahead, zero leeway on
//! `iat`/`exp`/`nbf`, every `jti` remembered) and answers failures in plain text:
//! `401 Access Denied` or `400 Bad Request`. Its FHIR endpoint checks bearer tokens and answers
//! `401` without `WWW-Authenticate` for a missing, unknown, expired or revoked token, and `403`
//! for a client marked forbidden. Knobs inject faults; counters and request logs tell what the
//! servers saw.
//!
//! As the reference server, it reads parameters from the query string and from a body only when
//! it is a form (`application/x-www-form-urlencoded`: a `text/plain` or JSON body carries none),
//! reads time claims as Python's `int()` does (floats truncated, decimal strings taken, anything
//! else refused), checks `grant_type` only after the assertion (so a wrong grant type still
//! spends the `jti`). `tests/reference_mock_parity.rs` checks this against the reference server itself, with
//! a table of crafted requests. Deliberate differences: it requires `exp`, at most 300 s ahead
//! (SMART's rule; the reference server checks `exp` only when present and sets no upper bound);
//! `grant_type=authorization_code` without a code is `400 Bad Request` (the reference server runs
//! its authorization-code flow and fails with `500`); and its FHIR endpoint can run its own clock
//! (`fhir_clock_offset_secs`) and take another issuer's tokens (`trust_issuer`).
//!
//! Like Koppeltaal's HAPI server, the FHIR endpoint answers every request with its
//! `X-Request-Id` and `X-Trace-Id` (a new UUID for each that was missing) and records the three
//! trace ids ([`ReceivedRequest::trace`]); [`MockKoppeltaal::notify`] sends a subscription-style
//! notification carrying them on, to test a notification handler end to end.
//!
//! # Example
//!
//! ```
//! use koppeltaal_auth::testing::MockKoppeltaal;
//! use koppeltaal_auth::{ClientCredentials, SigningKey, TokenSource};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mock = MockKoppeltaal::start().await?;
//! let key = SigningKey::generate(koppeltaal_auth::Algorithm::ES384)?;
//! mock.register_key("my-client", &key);
//!
//! let source = ClientCredentials::builder()
//!     .client_id("my-client")
//!     .token_endpoint(mock.token_endpoint())
//!     .signing_key(key)
//!     .build()?;
//! let token = source.fetch().await?;
//! assert_eq!(mock.stats().tokens_issued, 1);
//! # let _ = token;
//! # Ok(()) }
//! ```

mod auth;
mod body;
mod builder;
mod external;
mod fake;
mod fhir;
mod jti;
mod knobs;
mod memory_store;
mod notify;
mod records;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::time::Instant;

use crate::jwks::JwkSet;
use crate::key::{Algorithm, SigningKey};

pub use body::{MAX_OVERSIZED, MockResponse};
pub use builder::MockKoppeltaalBuilder;
pub use fake::FakeTokenSource;
pub use knobs::MAX_QUEUED_FAULTS;
pub use memory_store::MemoryTokenStore;
pub use notify::SentNotification;
pub use records::{IssuedToken, MAX_LOGGED, MockStats, ReceivedRequest, TokenRequest};

/// `at` moved by `seconds` (a century either way at most, and never before 1970: HTTP dates
/// cannot say earlier, so that nothing overflows or panics).
fn shift(at: SystemTime, seconds: i64) -> SystemTime {
    let offset = Duration::from_secs(seconds.unsigned_abs()).min(MAX_CLOCK_ADVANCE);
    if seconds >= 0 {
        at.checked_add(offset).unwrap_or(at)
    } else {
        at.checked_sub(offset)
            .filter(|shifted| *shifted >= SystemTime::UNIX_EPOCH)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// `expires_in` is whole seconds, from 1 to the longest a client accepts.
fn clamp_lifetime(lifetime: Duration) -> Duration {
    lifetime.clamp(Duration::from_secs(1), crate::token::MAX_TOKEN_LIFETIME)
}

/// How far [`MockKoppeltaal::advance_token_clock`] can move the FHIR endpoint's clock: a century.
const MAX_CLOCK_ADVANCE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Path of the token endpoint on the mock.
const TOKEN_PATH: &str = "/oauth2/token";
/// Path of the FHIR base on the mock (the reference server's default domain).
const FHIR_PATH: &str = "/fhir/DEFAULT";

/// A Koppeltaal auth server and FHIR server on loopback, for tests. See the
/// [module docs](self).
///
/// The server stops when the `MockKoppeltaal` is dropped.
pub struct MockKoppeltaal {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for MockKoppeltaal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockKoppeltaal")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MockKoppeltaal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    token_endpoint: String,
    state: Mutex<State>,
}

struct Client {
    jwks: jsonwebtoken::jwk::JwkSet,
    forbidden: bool,
    /// Registered JWKS URL, fetched and cached per its `Cache-Control: max-age`.
    jwks_url: Option<String>,
    /// When the cached copy of a URL-registered set goes stale.
    jwks_fresh_until: Option<Instant>,
}

struct Token {
    number: u64,
    client_id: String,
    issued_at: Instant,
    /// `iat` by the auth server's clock, in epoch seconds.
    iat: u64,
    lifetime: Duration,
    revoked: bool,
    fhir_requests: u64,
}

struct State {
    clients: HashMap<String, Client>,
    allowed_algs: Vec<Algorithm>,
    token_lifetime: Duration,
    clock_offset_secs: i64,
    fhir_clock_offset_secs: i64,
    /// An issuer whose tokens the FHIR endpoint takes too.
    external: Option<external::ExternalIssuer>,
    seen_jti: jti::SeenJti,
    tokens: HashMap<String, Token>,
    faults: VecDeque<MockResponse>,
    token_delay: Duration,
    token_clock_advance: Duration,
    audience: Option<String>,
    smart_configuration: Option<Value>,
    stats: MockStats,
    fhir_log: records::Log<ReceivedRequest>,
    token_log: records::Log<TokenRequest>,
    notification_log: records::Log<SentNotification>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// The mock auth server's wall clock: the local clock shifted by the configured offset.
    fn now(&self) -> SystemTime {
        shift(SystemTime::now(), self.clock_offset_secs)
    }

    /// The mock FHIR server's wall clock: the auth server's shifted by the FHIR offset.
    fn fhir_now(&self) -> SystemTime {
        shift(self.now(), self.fhir_clock_offset_secs)
    }
}

impl MockKoppeltaal {
    /// Starts a mock with the default settings.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::builder().start().await
    }

    /// Starts building a mock with non-default settings.
    pub fn builder() -> MockKoppeltaalBuilder {
        MockKoppeltaalBuilder::default()
    }

    /// The address the mock listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The FHIR base URL, `http://127.0.0.1:<port>/fhir/DEFAULT`.
    #[must_use]
    pub fn fhir_base_url(&self) -> String {
        format!("http://{}{FHIR_PATH}", self.addr)
    }

    /// The token endpoint URL, `http://127.0.0.1:<port>/oauth2/token`: the only accepted `aud`.
    #[must_use]
    pub fn token_endpoint(&self) -> String {
        self.shared.token_endpoint.clone()
    }

    /// Registers (or replaces) a client with the JWK Set the auth server verifies its
    /// assertions with, as domain management does.
    pub fn register_client(&self, client_id: &str, jwks: &JwkSet) {
        // Through JSON, exactly as the reference server reads a published JWK Set.
        let parsed = serde_json::to_vec(jwks)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or(jsonwebtoken::jwk::JwkSet { keys: Vec::new() });
        let mut state = self.shared.lock();
        let forbidden = state.clients.get(client_id).is_some_and(|c| c.forbidden);
        state.clients.insert(
            client_id.to_owned(),
            Client {
                jwks: parsed,
                forbidden,
                jwks_url: None,
                jwks_fresh_until: None,
            },
        );
    }

    /// Registers (or replaces) a client by the URL of its JWK Set, as Koppeltaal domain
    /// management does. Like the reference auth server, the mock fetches the set when a token
    /// request needs it and caches it for the `max-age` of its `Cache-Control` header (not at
    /// all without one); an unreachable or invalid set refuses the request (`401`).
    pub fn register_jwks_url(&self, client_id: &str, url: &str) {
        let mut state = self.shared.lock();
        let forbidden = state.clients.get(client_id).is_some_and(|c| c.forbidden);
        state.clients.insert(
            client_id.to_owned(),
            Client {
                jwks: jsonwebtoken::jwk::JwkSet { keys: Vec::new() },
                forbidden,
                jwks_url: Some(url.to_owned()),
                jwks_fresh_until: None,
            },
        );
    }

    /// Registers (or replaces) a client whose JWK Set holds the public half of `key`.
    pub fn register_key(&self, client_id: &str, key: &SigningKey) {
        let jwks = JwkSet::from_keys([key]).unwrap_or_default();
        self.register_client(client_id, &jwks);
    }

    /// Makes the FHIR endpoint also take tokens from another auth server, checked as
    /// Koppeltaal's HAPI server checks them: an RS512 JWT signed with a key from the JWK Set at
    /// `jwks_url` (fetched on first use), `iss` equal to `issuer`, `aud` `fhir-server`, 60 s of
    /// leeway on `exp`, none on `iat`/`nbf`; a plain `401` otherwise. For tests against a real
    /// auth server, such as Koppeltaal's reference server.
    pub fn trust_issuer(&self, issuer: &str, jwks_url: &str) {
        self.shared.lock().external = Some(external::ExternalIssuer {
            issuer: issuer.to_owned(),
            jwks_url: jwks_url.to_owned(),
            jwks: None,
        });
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> MockStats {
        self.shared.lock().stats
    }

    /// The FHIR requests received so far, oldest first (the last [`MAX_LOGGED`]).
    #[must_use]
    pub fn fhir_requests(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().fhir_log.to_vec()
    }

    /// The token requests received so far, oldest first (the last [`MAX_LOGGED`]).
    #[must_use]
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared.lock().token_log.to_vec()
    }

    /// Every token issued so far, in issue order.
    #[must_use]
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        let state = self.shared.lock();
        let mut tokens: Vec<IssuedToken> = state
            .tokens
            .values()
            .map(|token| IssuedToken {
                number: token.number,
                client_id: token.client_id.clone(),
                fhir_requests: token.fhir_requests,
                revoked: token.revoked,
            })
            .collect();
        tokens.sort_by_key(|token| token.number);
        tokens
    }
}
