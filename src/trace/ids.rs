//! [`TraceIds`], the three ids of one request, and [`ResponseTrace`], what a response was sent
//! with and answered with.

use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName};
use serde_json::{Value, json};

use super::{FhirId, TraceContext};

/// `X-Request-Id`: unique per HTTP request.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Trace-Id`: the same on every request of one chain.
pub const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");
/// `X-Correlation-Id`: the `X-Request-Id` of the request that triggered this one.
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// The `AuditEvent` extension URLs of the three ids (Koppeltaal's profile).
const REQUEST_ID_URL: &str = "http://koppeltaal.nl/fhir/StructureDefinition/request-id";
const TRACE_ID_URL: &str = "http://koppeltaal.nl/fhir/StructureDefinition/trace-id";
const CORRELATION_ID_URL: &str = "http://koppeltaal.nl/fhir/StructureDefinition/correlation-id";

/// The three trace ids of one request: what an `AuditEvent` about it records (TOP-KT-012b).
///
/// # Example
///
/// ```
/// use koppeltaal_auth::trace::{FhirId, TraceIds};
///
/// let ids = TraceIds::new(Some(FhirId::new("req-1")?), Some(FhirId::new("trace-1")?), None);
/// let audit_event = serde_json::json!({
///     "resourceType": "AuditEvent",
///     "extension": ids.audit_event_extensions(),
///     // ... type, recorded, agent, source, entity ...
/// });
/// assert_eq!(
///     audit_event["extension"][0],
///     serde_json::json!({
///         "url": "http://koppeltaal.nl/fhir/StructureDefinition/request-id",
///         "valueId": "req-1",
///     })
/// );
/// # Ok::<(), koppeltaal_auth::trace::InvalidFhirId>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceIds {
    request_id: Option<FhirId>,
    trace_id: Option<FhirId>,
    correlation_id: Option<FhirId>,
}

impl TraceIds {
    /// The three ids.
    #[must_use]
    pub fn new(
        request_id: Option<FhirId>,
        trace_id: Option<FhirId>,
        correlation_id: Option<FhirId>,
    ) -> Self {
        Self {
            request_id,
            trace_id,
            correlation_id,
        }
    }

    /// The ids in `headers` (a request's, a notification's or a response's). A value that is
    /// not a valid [`FhirId`] is dropped with a warning (it is never forwarded); a header sent
    /// more than once counts by its first value.
    #[must_use]
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::parse(headers, true)
    }

    /// The ids in `headers`; invalid values are dropped, with a warning if `warn` (else at
    /// debug level: a response from a gateway with its own id format would warn on every one).
    fn parse(headers: &HeaderMap, warn: bool) -> Self {
        Self {
            request_id: id_in(headers, &X_REQUEST_ID, warn),
            trace_id: id_in(headers, &X_TRACE_ID, warn),
            correlation_id: id_in(headers, &X_CORRELATION_ID, warn),
        }
    }

    /// `X-Request-Id`.
    #[must_use]
    pub fn request_id(&self) -> Option<&FhirId> {
        self.request_id.as_ref()
    }

    /// `X-Trace-Id`.
    #[must_use]
    pub fn trace_id(&self) -> Option<&FhirId> {
        self.trace_id.as_ref()
    }

    /// `X-Correlation-Id`.
    #[must_use]
    pub fn correlation_id(&self) -> Option<&FhirId> {
        self.correlation_id.as_ref()
    }

    /// The ids as `AuditEvent.extension` entries (`request-id`, `trace-id`, `correlation-id`,
    /// each a `valueId`), in that order; an absent id has no entry.
    #[must_use]
    pub fn audit_event_extensions(&self) -> Vec<Value> {
        [
            (REQUEST_ID_URL, &self.request_id),
            (TRACE_ID_URL, &self.trace_id),
            (CORRELATION_ID_URL, &self.correlation_id),
        ]
        .into_iter()
        .filter_map(|(url, id)| {
            id.as_ref()
                .map(|id| json!({"url": url, "valueId": id.as_str()}))
        })
        .collect()
    }
}

/// The first value of `name` as an id; an invalid one is dropped (see [`TraceIds::parse`]).
fn id_in(headers: &HeaderMap, name: &HeaderName, warn: bool) -> Option<FhirId> {
    let value = headers.get(name)?;
    match FhirId::from_header(value) {
        Ok(id) => Some(id),
        Err(error) if warn => {
            tracing::warn!(header = %name, %error, "trace header dropped: not a FHIR id");
            None
        }
        Err(error) => {
            tracing::debug!(header = %name, %error, "response trace header ignored: not a FHIR id");
            None
        }
    }
}

/// What a FHIR request was sent with and what the server answered: a response extension that
/// [`KoppeltaalTraceLayer`](super::KoppeltaalTraceLayer) (and `KoppeltaalTraceMiddleware`) put on
/// every response to a FHIR request.
///
/// # Example
///
/// ```
/// use koppeltaal_auth::trace::{ResponseTrace, TraceContext};
///
/// # fn after<B>(response: &http::Response<B>) {
/// if let Some(trace) = response.extensions().get::<ResponseTrace>() {
///     // For an AuditEvent about this exchange:
///     let extensions = trace.ids().audit_event_extensions();
///     // For the requests this response causes (a Patient the Task refers to, say):
///     let context = TraceContext::caused_by(&trace.ids());
///     # let _ = (extensions, context);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseTrace {
    sent: TraceIds,
    answered: TraceIds,
}

impl ResponseTrace {
    /// From the ids a request was sent with and the response's headers (values that are not
    /// FHIR ids are left out, logged at debug level only).
    #[must_use]
    pub fn new(sent: TraceIds, response_headers: &HeaderMap) -> Self {
        Self {
            sent,
            answered: TraceIds::parse(response_headers, false),
        }
    }

    /// The ids the request carried (as the trace layer sent them; values the caller set that
    /// are not valid ids are absent here).
    #[must_use]
    pub fn sent(&self) -> &TraceIds {
        &self.sent
    }

    /// The ids the response carried: the server echoes or assigns `X-Request-Id`, and returns
    /// the `X-Trace-Id` it used (Koppeltaal's server starts one when none was sent).
    #[must_use]
    pub fn answered(&self) -> &TraceIds {
        &self.answered
    }

    /// The ids the server recorded for this request: its answered request and trace id, else
    /// the ones sent, and the correlation id sent. What an `AuditEvent` about this exchange
    /// carries, and what [`TraceContext::caused_by`] takes.
    #[must_use]
    pub fn ids(&self) -> TraceIds {
        TraceIds {
            request_id: self
                .answered
                .request_id
                .clone()
                .or_else(|| self.sent.request_id.clone()),
            trace_id: self
                .answered
                .trace_id
                .clone()
                .or_else(|| self.sent.trace_id.clone()),
            correlation_id: self.sent.correlation_id.clone(),
        }
    }

    /// The context of the requests this response causes: `TraceContext::caused_by(&self.ids())`.
    #[must_use]
    pub fn caused(&self) -> TraceContext {
        TraceContext::caused_by(&self.ids())
    }
}

/// Puts the trace headers on an outgoing FHIR request: a new `X-Request-Id`, and the context's
/// trace and correlation ids, each unless the caller set that header itself. Returns the ids
/// the request is sent with. `warned` is the layer's: set once the layer has warned about a
/// caller's value that is not a FHIR id (later ones are logged at debug level, so a caller that
/// always sends one does not log a warning per request).
pub(crate) fn stamp(
    headers: &mut HeaderMap,
    context: Option<&TraceContext>,
    warned: &AtomicBool,
) -> TraceIds {
    let request_id = own_or(headers, X_REQUEST_ID, warned, || Some(FhirId::new_uuid()));
    let trace_id = own_or(headers, X_TRACE_ID, warned, || context?.trace_id().cloned());
    let correlation_id = own_or(headers, X_CORRELATION_ID, warned, || {
        context?.correlation_id().cloned()
    });
    TraceIds {
        request_id,
        trace_id,
        correlation_id,
    }
}

/// The caller's own value of `name` (as an id, if it is one: else logged, see [`stamp`]), else
/// `ours`, inserted.
fn own_or(
    headers: &mut HeaderMap,
    name: HeaderName,
    warned: &AtomicBool,
    ours: impl FnOnce() -> Option<FhirId>,
) -> Option<FhirId> {
    // (A full header map gets no id: no panic.)
    match headers.try_entry(name).ok()? {
        // The caller's value goes out as set, but one that is not a FHIR id is worth a warning:
        // it cannot go into an AuditEvent, and is not reported as sent.
        http::header::Entry::Occupied(own) => FhirId::from_header(own.get())
            .inspect_err(|error| {
                // Read first: the flag's cache line is written once, not by every request.
                if !warned.load(Ordering::Relaxed) && !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        header = %own.key(),
                        %error,
                        "trace header sent as the caller set it, but it is not a FHIR id \
                         (this layer logs further ones at debug level)"
                    );
                } else {
                    tracing::debug!(
                        header = %own.key(),
                        %error,
                        "trace header sent as the caller set it, but it is not a FHIR id"
                    );
                }
            })
            .ok(),
        http::header::Entry::Vacant(entry) => {
            let id = ours()?;
            entry.try_insert(id.to_header_value()).ok()?;
            Some(id)
        }
    }
}
