//! The mock FHIR server's trace headers, as Koppeltaal's HAPI server handles them, and its
//! subscription-style notifications.

use http::{HeaderMap, StatusCode};

use super::{MockKoppeltaal, ReceivedRequest};
use crate::trace::{FhirId, TraceIds, X_CORRELATION_ID, X_REQUEST_ID, X_TRACE_ID};

/// The ids the FHIR server records for a request with `headers`: its `X-Request-Id` and
/// `X-Trace-Id`, each replaced by a new UUID when missing (or not a FHIR id), and its
/// `X-Correlation-Id`.
pub(super) fn recorded_ids(headers: &HeaderMap) -> TraceIds {
    let sent = TraceIds::from_headers(headers);
    TraceIds::new(
        Some(sent.request_id().cloned().unwrap_or_else(FhirId::new_uuid)),
        Some(sent.trace_id().cloned().unwrap_or_else(FhirId::new_uuid)),
        sent.correlation_id().cloned(),
    )
}

/// A notification the mock sent; see [`MockKoppeltaal::notify`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SentNotification {
    /// Where it went.
    pub url: String,
    /// The ids it carried: a new request id, the triggering request's trace id, and its
    /// request id as correlation id.
    pub trace: TraceIds,
    /// What the receiver answered.
    pub status: StatusCode,
}

impl MockKoppeltaal {
    /// Sends a subscription notification as Koppeltaal's FHIR server does for a rest-hook
    /// channel: a `POST` to `url` without payload, with a new `X-Request-Id`, the `X-Trace-Id`
    /// of `cause` (the request that changed the resource) and its `X-Request-Id` as
    /// `X-Correlation-Id`. Lets a test drive a notification handler end to end.
    ///
    /// # Errors
    ///
    /// When the request cannot be sent, or no answer comes within 30 s (the status of an answer
    /// is in the result, whatever it is).
    pub async fn notify(
        &self,
        url: &str,
        cause: &ReceivedRequest,
    ) -> Result<SentNotification, crate::BoxError> {
        self.notify_with_headers(url, cause, HeaderMap::new()).await
    }

    /// As [`notify`](Self::notify), with the subscription channel's own headers
    /// (`Subscription.channel.header`) added.
    ///
    /// # Errors
    ///
    /// As [`notify`](Self::notify).
    pub async fn notify_with_headers(
        &self,
        url: &str,
        cause: &ReceivedRequest,
        mut headers: HeaderMap,
    ) -> Result<SentNotification, crate::BoxError> {
        let trace = TraceIds::new(
            Some(FhirId::new_uuid()),
            cause.trace.trace_id().cloned(),
            cause.trace.request_id().cloned(),
        );
        for (name, id) in [
            (X_REQUEST_ID, trace.request_id()),
            (X_TRACE_ID, trace.trace_id()),
            (X_CORRELATION_ID, trace.correlation_id()),
        ] {
            if let Some(id) = id {
                headers.try_insert(name, id.to_header_value())?;
            }
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let response = client.post(url).headers(headers).send().await?;
        let notification = SentNotification {
            url: url.to_owned(),
            trace,
            status: response.status(),
        };
        self.shared
            .lock()
            .notification_log
            .push(notification.clone());
        Ok(notification)
    }

    /// The notifications sent so far, oldest first (the last
    /// [`MAX_LOGGED`](super::MAX_LOGGED)).
    #[must_use]
    pub fn notifications(&self) -> Vec<SentNotification> {
        self.shared.lock().notification_log.to_vec()
    }
}
