//! Koppeltaal 2.0 authentication for any FHIR client, as a [tower] layer.
//!
//! Koppeltaal (the Dutch e-health interoperability standard) requires `Authorization: Bearer
//! <access_token>` on every FHIR request. The token comes from the SMART Backend Services flow:
//! the application signs a short-lived JWT client assertion ([RFC 7523]) with its private key,
//! posts it to the domain's token endpoint with `grant_type=client_credentials`, and receives a
//! token that lives about five minutes. There is no refresh token: renewal is the whole flow
//! again.
//!
//! This crate provides the pieces of that flow:
//!
//! - [`SigningKey`] and [`Algorithm`]: the private key, loaded from PEM and checked at load time;
//! - [`jwks`]: the public JWK Set to register with the Koppeltaal domain;
//! - [`ClientAssertion`]: the signed JWT that authenticates a token request;
//! - [`smart`]: discovery of the token endpoint from the FHIR base;
//! - [`ClientCredentials`], a [`TokenSource`]: the token request itself;
//! - `testing::MockKoppeltaal` (feature `test-util`): an in-process Koppeltaal auth and FHIR
//!   server on loopback for tests.
//!
//! # Example
//!
//! ```no_run
//! use koppeltaal_auth::{ClientCredentials, SigningKey, TokenSource};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let key = SigningKey::from_pem(std::fs::read("client-key.pem")?, "my-kid")?;
//! let smart = koppeltaal_auth::smart::discover("https://fhir.example.org/fhir/DEFAULT").await?;
//! let source = ClientCredentials::builder()
//!     .client_id("my-client-id")
//!     .token_endpoint(smart.token_endpoint)
//!     .signing_key(key)
//!     .build()?;
//! let token = source.fetch().await?;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! - `test-util`: `testing::MockKoppeltaal`.
//! - `reqwest-middleware`: the reqwest-middleware adapter.
//! - `cli`: the `koppeltaal-auth` command-line tool.
//!
//! [RFC 7523]: https://www.rfc-editor.org/rfc/rfc7523
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

mod assertion;
mod config;
mod endpoint;
mod error;
mod fetch;
mod key;
mod layer;
mod replay;
mod scope;
mod service;

pub mod future;
pub mod jwks;
pub mod smart;
pub mod token;

#[cfg(feature = "test-util")]
pub mod testing;

#[cfg(feature = "reqwest-middleware")]
mod middleware;

#[cfg(test)]
mod test_support;

pub use crate::assertion::{
    ClientAssertion, DEFAULT_ASSERTION_LIFETIME, DEFAULT_IAT_BACKDATE, MAX_ASSERTION_LIFETIME,
    SignedAssertion,
};
pub use crate::config::{Authenticator, KoppeltaalAuthBuilder};
pub use crate::error::{BoxError, Error, ErrorKind, OAuthError, OAuthErrorCode};
pub use crate::key::{Algorithm, KeyId, SigningKey};
pub use crate::layer::KoppeltaalAuthLayer;
pub use crate::replay::{NotReplayable, ReplayBody, Replayable};
pub use crate::service::KoppeltaalAuth;
pub use crate::token::{
    AccessToken, CellStats, ClientCredentials, RefreshPolicy, TokenCell, TokenHeader, TokenSource,
};

#[cfg(feature = "reqwest-middleware")]
pub use crate::middleware::KoppeltaalAuthMiddleware;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
