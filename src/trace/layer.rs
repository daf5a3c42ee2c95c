//! `KoppeltaalTraceLayer` and its service: the trace headers on every FHIR request (tower).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::ids::stamp;
use super::{ResponseTrace, TraceContext, TraceIds};
use crate::error::Error;
use crate::scope::FhirScope;

/// Layer that puts Koppeltaal's trace headers (TOP-KT-011) on every request to the FHIR base:
/// a new `X-Request-Id` (a UUID v4) on each, and `X-Trace-Id` and `X-Correlation-Id` from the
/// request's [`TraceContext`] when it has one (left out otherwise, never filled with the request
/// id). A header the caller set itself is kept. Requests outside the FHIR base (the same scope
/// as [`KoppeltaalAuthLayer`](crate::KoppeltaalAuthLayer)'s) are untouched. Every response to a
/// FHIR request carries a [`ResponseTrace`] extension.
///
/// A header the caller set is sent as it is, even when it is not a valid FHIR `id` (then
/// [`ResponseTrace::sent`] leaves it out, and the layer logs a warning the first time, at debug
/// level after that: one warning per layer and its clones, not one per request); and a caller's own `X-Request-Id` is part of the
/// request the auth layer replays after a `401`, so the replay repeats it: leave `X-Request-Id`
/// to the layer. The scope's context is read when the request reaches this layer: a layer
/// between the scope and this one that moves calls to another task (tower's `Buffer`) loses it;
/// put the context in the request's extensions then.
///
/// # Layer order
///
/// Put the trace layer *inside* (after, in a `ServiceBuilder`) the auth layer, so that the
/// request the auth layer sends again after a `401` passes through it again: a replay is a new
/// HTTP request, and gets a new `X-Request-Id`, with the same trace and correlation ids (taken
/// from the request's extension, which the replay keeps, or from the scope the response future
/// is polled in).
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use tower::ServiceBuilder;
///
/// # fn build(auth: koppeltaal_auth::Authenticator) {
/// let client = ServiceBuilder::new()
///     .layer(auth.layer())
///     .layer(auth.trace_layer())
///     .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
/// # let _ = client;
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct KoppeltaalTraceLayer {
    pub(crate) shared: Arc<TraceShared>,
}

/// What a trace layer, its clones, its services and its middleware share.
#[derive(Debug)]
pub(crate) struct TraceShared {
    pub(crate) scope: FhirScope,
    /// Set once a caller's value that is not a FHIR id has been warned about.
    pub(crate) warned: AtomicBool,
}

impl KoppeltaalTraceLayer {
    /// A layer for requests under `fhir_base`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `fhir_base` is not an absolute
    /// `https` URL (plain `http` is allowed for loopback hosts only), or not in the form a URL
    /// parser gives it (see [`KoppeltaalAuthBuilder::fhir_base_url`](crate::KoppeltaalAuthBuilder::fhir_base_url)).
    pub fn new(fhir_base: &str) -> Result<Self, Error> {
        Ok(Self::from_scope(FhirScope::parse(fhir_base)?.1))
    }

    pub(crate) fn from_scope(scope: FhirScope) -> Self {
        Self {
            shared: Arc::new(TraceShared {
                scope,
                warned: AtomicBool::new(false),
            }),
        }
    }
}

impl crate::Authenticator {
    /// The trace layer for this authenticator's FHIR base (see [`KoppeltaalTraceLayer`] for
    /// where it goes in the stack).
    pub fn trace_layer(&self) -> KoppeltaalTraceLayer {
        KoppeltaalTraceLayer::from_scope(self.shared.scope.clone())
    }
}

impl<S> Layer<S> for KoppeltaalTraceLayer {
    type Service = KoppeltaalTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KoppeltaalTrace {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Middleware that puts Koppeltaal's trace headers on requests to the FHIR base. Made by
/// [`KoppeltaalTraceLayer`]. Errors of the inner service pass through unchanged.
#[derive(Clone)]
pub struct KoppeltaalTrace<S> {
    inner: S,
    shared: Arc<TraceShared>,
}

impl<S> KoppeltaalTrace<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> fmt::Debug for KoppeltaalTrace<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KoppeltaalTrace")
            .field("scope", &self.shared.scope)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for KoppeltaalTrace<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if !self.shared.scope.matches_uri(request.uri()) {
            return TraceFuture {
                inner: self.inner.call(request),
                sent: None,
            };
        }
        let context = TraceContext::effective(request.extensions().get());
        let sent = stamp(request.headers_mut(), context.as_ref(), &self.shared.warned);
        TraceFuture {
            inner: self.inner.call(request),
            sent: Some(sent),
        }
    }
}

pin_project! {
    /// The response future of [`KoppeltaalTrace`]: the inner service's, with a
    /// [`ResponseTrace`] put on a FHIR request's response.
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        sent: Option<TraceIds>,
    }
}

impl<F> fmt::Debug for TraceFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceFuture")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(sent) = this.sent.take() {
            let trace = ResponseTrace::new(sent, response.headers());
            response.extensions_mut().insert(trace);
        }
        Poll::Ready(Ok(response))
    }
}
