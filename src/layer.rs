//! `KoppeltaalAuthLayer`.

use std::sync::Arc;

use tower_layer::Layer;

use crate::error::Error;
use crate::scope::FhirScope;
use crate::service::KoppeltaalAuth;
use crate::token::TokenCell;

/// What the layer's services share: the token cell, the FHIR scope and the replay switch.
#[derive(Debug)]
pub(crate) struct AuthShared {
    pub(crate) cell: TokenCell,
    pub(crate) scope: FhirScope,
    pub(crate) replay: bool,
}

/// Layer that applies [`KoppeltaalAuth`]: `Authorization: Bearer <token>` on every request to
/// the FHIR base, one renewal and replay on `401`.
///
/// Get one from [`Authenticator::layer`](crate::Authenticator::layer) (see the
/// [crate docs](crate) for an example), or build one around your own [`TokenCell`] with
/// [`new`](Self::new).
///
/// # Sharing
///
/// Cloning the layer, and every service it makes, shares one token cell: all of them use one
/// token and one refresh.
///
/// # Scope
///
/// Only requests whose scheme, host and port match the FHIR base and whose path is under the
/// base path get the token; everything else passes through untouched. A request that already has
/// an `Authorization` header is left alone and never replayed.
#[derive(Clone, Debug)]
#[must_use]
pub struct KoppeltaalAuthLayer {
    pub(crate) shared: Arc<AuthShared>,
}

impl KoppeltaalAuthLayer {
    /// A layer adding tokens from `cell` to requests under `fhir_base`, replaying on `401`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `fhir_base` is not an absolute
    /// `https` URL (plain `http` is allowed for loopback hosts only), or not in the form a URL
    /// parser gives it (see [`KoppeltaalAuthBuilder::fhir_base_url`](crate::KoppeltaalAuthBuilder::fhir_base_url)).
    pub fn new(cell: TokenCell, fhir_base: &str) -> Result<Self, Error> {
        let (_, scope) = FhirScope::parse(fhir_base)?;
        Ok(Self {
            shared: Arc::new(AuthShared {
                cell,
                scope,
                replay: true,
            }),
        })
    }

    /// Turns replaying a request after a `401` on or off (on by default).
    ///
    /// Off, nothing is copied before a request is sent; a `401` still renews the token for the
    /// next request, and is returned to the caller.
    pub fn replay_on_401(self, enabled: bool) -> Self {
        Self {
            shared: Arc::new(AuthShared {
                cell: self.shared.cell.clone(),
                scope: self.shared.scope.clone(),
                replay: enabled,
            }),
        }
    }

    /// The token cell.
    #[must_use]
    pub fn cell(&self) -> &TokenCell {
        &self.shared.cell
    }
}

impl<S> Layer<S> for KoppeltaalAuthLayer {
    type Service = KoppeltaalAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KoppeltaalAuth {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}
