//! Koppeltaal's trace headers (TOP-KT-011): `X-Request-Id`, `X-Trace-Id` and `X-Correlation-Id`.
//!
//! Koppeltaal's FHIR server records the three ids of every request in its `AuditEvent`s and puts
//! them on subscription notifications. Every request needs a new `X-Request-Id`; `X-Trace-Id` is
//! the same along one chain of requests; `X-Correlation-Id` is the `X-Request-Id` of the request
//! that directly triggered this one (a notification, or an earlier response), absent when
//! nothing did.
//!
//! - [`KoppeltaalTraceLayer`] (tower) and `KoppeltaalTraceMiddleware` (reqwest) put them on
//!   every FHIR request and a [`ResponseTrace`] on every response;
//! - [`TraceContext`] carries the trace and correlation ids to the requests of some piece of
//!   work, per request (an extension) or for a scope of async work (a task-local);
//! - [`TraceIds`] holds the three ids of one request and turns them into `AuditEvent`
//!   extension entries (TOP-KT-012b);
//! - [`FhirId`] is one id, checked against FHIR's `id` type: values from outside that are not
//!   valid ids are dropped with a warning, never forwarded.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use koppeltaal_auth::trace::{ResponseTrace, TraceContext};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run(auth: koppeltaal_auth::Authenticator, notification: http::HeaderMap)
//! # -> Result<(), koppeltaal_auth::BoxError> {
//! let client = ServiceBuilder::new()
//!     .layer(auth.layer())
//!     .layer(auth.trace_layer())
//!     .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
//! // A subscription notification came in: fetch what changed in its context.
//! let task = TraceContext::from_notification(&notification)
//!     .scope(client.clone().oneshot(
//!         http::Request::get(format!("{}/Task?status=requested", auth.fhir_base_url()))
//!             .body(Full::default())?,
//!     ))
//!     .await?;
//! let trace = task.extensions().get::<ResponseTrace>().expect("a FHIR response");
//! println!("the server recorded {:?}", trace.ids());
//! # Ok(()) }
//! ```

mod context;
mod id;
mod ids;
mod layer;
#[cfg(feature = "reqwest-middleware")]
mod middleware;

pub use context::TraceContext;
pub use id::{FhirId, InvalidFhirId, MAX_FHIR_ID_LEN};
pub use ids::{ResponseTrace, TraceIds, X_CORRELATION_ID, X_REQUEST_ID, X_TRACE_ID};
pub use layer::{KoppeltaalTrace, KoppeltaalTraceLayer, TraceFuture};
#[cfg(feature = "reqwest-middleware")]
pub use middleware::KoppeltaalTraceMiddleware;
