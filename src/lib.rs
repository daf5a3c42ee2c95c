//! Koppeltaal 2.0 authentication for any FHIR client, as a [tower] layer.
//!
//! Koppeltaal (the Dutch e-health interoperability standard) requires `Authorization: Bearer
//! <access_token>` on every FHIR request. The token comes from the SMART Backend Services flow:
//! the application signs a short-lived JWT client assertion ([RFC 7523]) with its private key,
//! posts it to the domain's token endpoint with `grant_type=client_credentials`, and receives a
//! token that lives about five minutes. There is no refresh token: renewal is the whole flow
//! again.
//!
//! [`KoppeltaalAuthLayer`] does all of that for any tower HTTP service: it keeps the token in a
//! shared [`TokenCell`] (read without waiting on every request, and checked against the clock),
//! refreshes it ahead of expiry in the background, adds it only to requests for the configured
//! FHIR base, and on a `401` renews it once per token generation and sends the request again.
//! `KoppeltaalAuthMiddleware` (feature `reqwest-middleware`) does the same for reqwest.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use koppeltaal_auth::{KoppeltaalAuth, SigningKey};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), koppeltaal_auth::BoxError> {
//! let auth = KoppeltaalAuth::builder()
//!     .fhir_base_url("https://fhir-server.koppeltaal.headease.nl/fhir/DEFAULT")
//!     .client_id("7e9b2b4e-1c1d-4b8e-9d0c-0123456789ab")
//!     .signing_key(SigningKey::from_pem(std::fs::read("client-key.pem")?, "my-kid")?)
//!     .discover()
//!     .await?;
//! let client = ServiceBuilder::new()
//!     .layer(auth.layer())
//!     .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
//! let request = http::Request::get(format!("{}/Patient/123", auth.fhir_base_url()))
//!     .body(Full::default())?;
//! let patient = client.oneshot(request).await?;
//! # let _ = patient;
//! # Ok(()) }
//! ```
//!
//! # The pieces
//!
//! - [`SigningKey`] and [`Algorithm`]: the private key, loaded from PEM and checked at load time;
//! - [`jwks`]: the public JWK Set to register with the Koppeltaal domain, and
//!   [`jwks::JwksService`] to serve it; [`KeySet`] for key rotation;
//! - [`ClientAssertion`]: the signed JWT that authenticates a token request;
//! - [`smart`]: discovery of the token endpoint from the FHIR base;
//! - [`ClientCredentials`], a [`TokenSource`]: the token request itself;
//! - [`TokenCell`]: the shared, self-refreshing token;
//! - [`trace`]: Koppeltaal's trace headers (`X-Request-Id`, `X-Trace-Id`, `X-Correlation-Id`)
//!   with [`KoppeltaalTraceLayer`] and [`TraceContext`];
//! - [`Authenticator`] (from [`KoppeltaalAuth::builder`]): configuration, and the layer, the
//!   middleware and the cell built from it.
//!
//! # Feature flags
//!
//! - `reqwest-middleware`: `KoppeltaalAuthMiddleware` and `KoppeltaalTraceMiddleware`.
//! - `test-util`: `testing::MockKoppeltaal`, an in-process Koppeltaal auth and FHIR server on
//!   loopback, `testing::FakeTokenSource` and `testing::MemoryTokenStore`, for tests.
//! - `cli`: the `koppeltaal-auth` command-line tool: `keygen`, `jwks`, `token`, `get`, `mock`.
//! - `redis`: `RedisTokenStore`, one token per lifetime for a whole deployment (see [`store`]).
//! - `opentelemetry`: the cell's OpenTelemetry metrics (`KoppeltaalAuthBuilder::meter`).
//!
//! [RFC 7523]: https://www.rfc-editor.org/rfc/rfc7523
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]
// No `unsafe` in the library; the unit tests' scanning allocator (`freed_scan`) is the one
// exception, in test builds only.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]

mod assertion;
mod authenticator;
mod clock;
mod config;
mod endpoint;
mod error;
mod fetch;
mod head;
mod jwt;
mod key;
mod key_pem;
mod keyset;
mod layer;
#[cfg(feature = "opentelemetry")]
mod metrics;
mod redact;
mod replay;
mod scope;
mod service;
mod wipe;

pub mod future;
pub mod jwks;
pub mod smart;
pub mod store;
pub mod token;
pub mod trace;

#[cfg(feature = "test-util")]
pub mod testing;

#[cfg(feature = "reqwest-middleware")]
mod middleware;
#[cfg(feature = "redis")]
mod redis_store;

#[cfg(test)]
mod freed_scan;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_support;

pub use crate::assertion::{
    ClientAssertion, DEFAULT_ASSERTION_LIFETIME, DEFAULT_IAT_BACKDATE, MAX_ASSERTION_LIFETIME,
    MAX_CLIENT_ID_LEN, SignedAssertion,
};
pub use crate::authenticator::Authenticator;
pub use crate::config::KoppeltaalAuthBuilder;
pub use crate::error::{BoxError, Error, ErrorKind, OAuthError, OAuthErrorCode};
pub use crate::key::{Algorithm, KeyId, SigningKey};
pub use crate::keyset::{DEFAULT_PROPAGATION_DELAY, KeySet, MAX_PROPAGATION_DELAY};
pub use crate::layer::KoppeltaalAuthLayer;
pub use crate::replay::{NotReplayable, ReplayBody, Replayable};
pub use crate::service::KoppeltaalAuth;
pub use crate::token::{
    AccessToken, CellStats, ClientCredentials, Health, RefreshPolicy, TokenCell, TokenHeader,
    TokenSource,
};
pub use crate::trace::{KoppeltaalTraceLayer, TraceContext};

#[cfg(feature = "reqwest-middleware")]
pub use crate::middleware::KoppeltaalAuthMiddleware;
#[cfg(feature = "redis")]
pub use crate::redis_store::RedisTokenStore;
#[cfg(feature = "reqwest-middleware")]
pub use crate::trace::KoppeltaalTraceMiddleware;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
