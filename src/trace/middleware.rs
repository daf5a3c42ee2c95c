//! `KoppeltaalTraceMiddleware`: the trace layer's behaviour for reqwest-middleware clients.

use std::sync::Arc;

use http::Extensions;
use reqwest_middleware::{Middleware, Next};

use super::ids::stamp;
use super::layer::TraceShared;
use super::{KoppeltaalTraceLayer, ResponseTrace, TraceContext};

/// [`reqwest_middleware::Middleware`] that puts Koppeltaal's trace headers on requests to the
/// FHIR base (feature `reqwest-middleware`); the same rules as [`KoppeltaalTraceLayer`]. A
/// request's own [`TraceContext`] goes in with `RequestBuilder::with_extension`; the response
/// carries a [`ResponseTrace`] in [`reqwest::Response::extensions`].
///
/// reqwest follows redirects inside the client, below every middleware, re-sending the first
/// hop's headers: each hop of a followed redirect carries the same `X-Request-Id`. Where every
/// hop must have its own, build the client with `reqwest::redirect::Policy::none()`.
///
/// # Order
///
/// Add it *after* the auth middleware, so that a request sent again after a `401` passes through
/// it again and gets a new `X-Request-Id`:
///
/// ```no_run
/// # fn build(auth: koppeltaal_auth::Authenticator) {
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth.middleware())
///     .with(auth.trace_middleware())
///     .build();
/// # let _ = client;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct KoppeltaalTraceMiddleware {
    shared: Arc<TraceShared>,
}

impl From<&KoppeltaalTraceLayer> for KoppeltaalTraceMiddleware {
    fn from(layer: &KoppeltaalTraceLayer) -> Self {
        Self {
            shared: Arc::clone(&layer.shared),
        }
    }
}

impl crate::Authenticator {
    /// The trace middleware for this authenticator's FHIR base (feature `reqwest-middleware`;
    /// see [`KoppeltaalTraceMiddleware`] for where it goes).
    #[must_use]
    pub fn trace_middleware(&self) -> KoppeltaalTraceMiddleware {
        KoppeltaalTraceMiddleware::from(&self.trace_layer())
    }
}

#[async_trait::async_trait]
impl Middleware for KoppeltaalTraceMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if !self.shared.scope.matches_url(request.url()) {
            return next.run(request, extensions).await;
        }
        let context = TraceContext::effective(extensions.get());
        let sent = stamp(request.headers_mut(), context.as_ref(), &self.shared.warned);
        let mut response = next.run(request, extensions).await?;
        let trace = ResponseTrace::new(sent, response.headers());
        response.extensions_mut().insert(trace);
        Ok(response)
    }
}
