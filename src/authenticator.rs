//! [`Authenticator`]: a configured client identity, and what it hands out.

use std::fmt;
use std::sync::Arc;

use crate::config::KoppeltaalAuthBuilder;
use crate::error::Error;
use crate::layer::{AuthShared, KoppeltaalAuthLayer};
use crate::token::{CellStats, TokenCell, TokenHeader};

/// A configured Koppeltaal client identity: one token cell for one client at one token endpoint,
/// scoped to one FHIR base. Hands out the [`layer`](Self::layer), the reqwest
/// [`middleware`](Self::middleware) (feature `reqwest-middleware`) and the
/// [`cell`](Self::cell), which all share the token.
///
/// Cheap to clone. Build one per Koppeltaal domain (each domain has its own endpoints).
///
/// # Example
///
/// ```no_run
/// use koppeltaal_auth::{KoppeltaalAuth, SigningKey};
///
/// # async fn run() -> Result<(), koppeltaal_auth::BoxError> {
/// let auth = KoppeltaalAuth::builder()
///     .fhir_base_url("https://fhir-server.koppeltaal.headease.nl/fhir/DEFAULT")
///     .client_id("7e9b2b4e-0000-4000-8000-000000000000")
///     .signing_key(SigningKey::from_pem(std::fs::read("client-key.pem")?, "my-kid")?)
///     .discover() // reads the token endpoint from the SMART configuration
///     .await?;
/// auth.ready().await?; // the first token, before taking traffic
/// let layer = auth.layer();
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Authenticator {
    pub(crate) shared: Arc<AuthShared>,
    pub(crate) fhir_base: Arc<str>,
    pub(crate) token_endpoint: Option<Arc<str>>,
}

impl Authenticator {
    /// Starts configuring Koppeltaal authentication.
    pub fn builder() -> KoppeltaalAuthBuilder {
        KoppeltaalAuthBuilder::default()
    }

    /// The tower layer. Every layer from one `Authenticator` shares its token.
    pub fn layer(&self) -> KoppeltaalAuthLayer {
        KoppeltaalAuthLayer {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The token cell, for [`TokenCell::token`], [`TokenCell::ready`] and
    /// [`TokenCell::stats`].
    #[must_use]
    pub fn cell(&self) -> &TokenCell {
        &self.shared.cell
    }

    /// A usable token; see [`TokenCell::token`].
    ///
    /// # Errors
    ///
    /// As [`TokenCell::token`].
    pub async fn token(&self) -> Result<TokenHeader, Error> {
        self.shared.cell.token().await
    }

    /// Resolves once a usable token is there; see [`TokenCell::ready`].
    ///
    /// # Errors
    ///
    /// As [`TokenCell::token`].
    pub async fn ready(&self) -> Result<(), Error> {
        self.shared.cell.ready().await
    }

    /// The token's [`Health`](crate::Health), for readiness probes; see
    /// [`TokenCell::health`].
    #[must_use]
    pub fn health(&self) -> crate::Health {
        self.shared.cell.health()
    }

    /// The cell's counters.
    #[must_use]
    pub fn stats(&self) -> CellStats {
        self.shared.cell.stats()
    }

    /// The FHIR base URL the token is scoped to, as configured but without a trailing slash, so
    /// that appending `/Patient/1` to it makes a request URL in scope.
    #[must_use]
    pub fn fhir_base_url(&self) -> &str {
        &self.fhir_base
    }

    /// The token endpoint (configured or discovered), unless a custom token source is used.
    #[must_use]
    pub fn token_endpoint(&self) -> Option<&str> {
        self.token_endpoint.as_deref()
    }

    /// Whether a request to `url` would carry the token: same scheme, host and port as the FHIR
    /// base, and a path under it as servers resolve it (no backslash, no encoded slash or
    /// backslash, no dot segment in any spelling after the base). The same decision as the
    /// layer's and the middleware's, whichever of them sends the request.
    #[must_use]
    pub fn covers(&self, url: &str) -> bool {
        self.shared.scope.matches_text(url)
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("fhir_base", &self.fhir_base)
            .field("token_endpoint", &self.token_endpoint)
            .field("cell", &self.shared.cell)
            .finish()
    }
}
