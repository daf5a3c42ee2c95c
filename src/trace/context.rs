//! [`TraceContext`]: the trace and correlation ids that requests carry, and how they travel.

use std::future::Future;

use http::HeaderMap;

use super::{FhirId, TraceIds};

tokio::task_local! {
    /// The context of the async work running in [`TraceContext::scope`].
    static CONTEXT: TraceContext;
}

/// The `X-Trace-Id` and `X-Correlation-Id` that requests made in some piece of work carry.
///
/// [`KoppeltaalTraceLayer`](super::KoppeltaalTraceLayer) (and `KoppeltaalTraceMiddleware`) give
/// every FHIR request a new `X-Request-Id` and take the other two from the request's context:
///
/// 1. a `TraceContext` in the request's extensions (per request; for reqwest-middleware,
///    `RequestBuilder::with_extension`), else
/// 2. the context of the surrounding [`scope`](Self::scope) (a task-local, for all requests made
///    while some async work runs, without threading it through every call), else
/// 3. none: both headers are left out, and Koppeltaal's FHIR server starts a trace itself.
///
/// The two Koppeltaal cases have constructors: [`from_notification`](Self::from_notification)
/// (work triggered by a subscription notification) and [`caused_by`](Self::caused_by) (requests
/// triggered by an earlier response; requests made in parallel because of one response share
/// its correlation id).
///
/// # Example
///
/// ```
/// use koppeltaal_auth::trace::TraceContext;
///
/// # async fn handle(headers: http::HeaderMap) {
/// // In a rest-hook handler: every FHIR request made while handling the notification carries
/// // its trace id, and the notification's request id as correlation id.
/// TraceContext::from_notification(&headers)
///     .scope(async {
///         // ... fetch what the notification points to ...
///     })
///     .await;
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: Option<FhirId>,
    correlation_id: Option<FhirId>,
}

impl TraceContext {
    /// An empty context: requests carry neither a trace nor a correlation id. (In a request's
    /// extensions, it also hides a surrounding scope's context.)
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A context that starts a new trace (a new UUID), caused by nothing.
    #[must_use]
    pub fn start() -> Self {
        Self::new().with_trace_id(FhirId::new_uuid())
    }

    /// The context of work triggered by an incoming request, a subscription notification in
    /// Koppeltaal: its `X-Trace-Id` is kept, its `X-Request-Id` becomes the correlation id.
    /// Values that are not a valid [`FhirId`] are dropped with a warning, never forwarded.
    #[must_use]
    pub fn from_notification(headers: &HeaderMap) -> Self {
        // The notification is the request that causes the work.
        Self::caused_by(&TraceIds::from_headers(headers))
    }

    /// The context of requests triggered by an earlier exchange: the same trace, and that
    /// request's id as correlation id. `ids` usually comes from the earlier response's
    /// [`ResponseTrace::ids`](super::ResponseTrace::ids).
    #[must_use]
    pub fn caused_by(ids: &TraceIds) -> Self {
        Self {
            trace_id: ids.trace_id().cloned(),
            correlation_id: ids.request_id().cloned(),
        }
    }

    /// The same context with `trace_id` as its trace id.
    #[must_use]
    pub fn with_trace_id(mut self, trace_id: FhirId) -> Self {
        self.trace_id = Some(trace_id);
        self
    }

    /// The same context with `correlation_id` as its correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: FhirId) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// The `X-Trace-Id` requests carry, if any.
    #[must_use]
    pub fn trace_id(&self) -> Option<&FhirId> {
        self.trace_id.as_ref()
    }

    /// The `X-Correlation-Id` requests carry, if any.
    #[must_use]
    pub fn correlation_id(&self) -> Option<&FhirId> {
        self.correlation_id.as_ref()
    }

    /// Runs `future` with this context for every FHIR request it makes (a task-local: requests
    /// made by tasks it spawns need a scope of their own). Scopes nest; the innermost wins.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CONTEXT.scope(self, future)
    }

    /// Runs `f` with this context, for synchronous code that builds or sends requests.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CONTEXT.sync_scope(self, f)
    }

    /// The context of the surrounding [`scope`](Self::scope), if any.
    #[must_use]
    pub fn current() -> Option<Self> {
        CONTEXT.try_with(Clone::clone).ok()
    }

    /// The context a request gets: `own` (its extension) if any, else the surrounding scope's,
    /// else none.
    pub(crate) fn effective(own: Option<&Self>) -> Option<Self> {
        own.cloned().or_else(Self::current)
    }
}
