//! Trace header values that are not FHIR ids: a caller's own goes out as set (one warning per
//! layer), an incoming one is dropped with a warning; neither is ever logged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::{HeaderMap, HeaderValue};
use koppeltaal_auth::trace::{
    ResponseTrace, TraceContext, X_CORRELATION_ID, X_REQUEST_ID, X_TRACE_ID,
};
use support::capture_logs;
use support::trace::{BASE, Recorder, get, traced};
use tower::ServiceExt;

#[tokio::test]
async fn a_caller_value_that_is_not_a_fhir_id_goes_out_as_set_with_one_warning_per_layer() {
    let recorder = Recorder::default();
    // A value of the caller's that is not a FHIR id goes out as set, with a warning that does
    // not repeat it, and is not reported as sent.
    let (logs, _guard) = capture_logs();
    let own = HeaderValue::from_static("not an id");
    let with_own = |name| {
        let mut request = get(&format!("{BASE}/Patient/1"));
        request.headers_mut().insert(name, own.clone());
        request
    };
    let client = traced(&recorder);
    let response = client
        .clone()
        .oneshot(with_own(X_REQUEST_ID))
        .await
        .unwrap();
    assert_eq!(recorder.seen()[0].get(X_REQUEST_ID), Some(&own));
    let sent = response.extensions().get::<ResponseTrace>().unwrap().sent();
    assert_eq!(sent.request_id(), None);
    // One warning per layer, not per request: a caller that always sends such a value (any of
    // the three headers) gets debug lines after the first.
    for name in [X_REQUEST_ID, X_TRACE_ID, X_CORRELATION_ID] {
        client.clone().oneshot(with_own(name)).await.unwrap();
    }
    assert_eq!(recorder.seen()[3].get(X_CORRELATION_ID), Some(&own));
    let text = logs.text();
    assert_eq!(
        (lines_in(&text, "WARN"), lines_in(&text, "DEBUG")),
        (1, 3),
        "{text}"
    );
    assert!(!text.contains("not an id"), "{text}");
    // Another layer warns again.
    traced(&recorder)
        .oneshot(with_own(X_TRACE_ID))
        .await
        .unwrap();
    assert_eq!(lines_in(&logs.text(), "WARN"), 2);
}

/// Lines at `level` of the warning about a caller's trace header that is not a FHIR id.
fn lines_in(text: &str, level: &str) -> usize {
    text.lines()
        .filter(|line| {
            line.contains(level)
                && line.contains("sent as the caller set it, but it is not a FHIR id")
        })
        .count()
}

#[tokio::test(flavor = "current_thread")]
async fn incoming_values_that_are_not_fhir_ids_are_dropped_with_a_warning() {
    let (logs, _guard) = capture_logs();
    let too_long = "a".repeat(65);
    let bad = [
        too_long.as_str(),
        "has space",
        "under_score",
        "slash/es",
        "comma,separated",
        "ü",
    ];
    for value in bad {
        let mut notification = HeaderMap::new();
        notification.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(value)
                .unwrap_or_else(|_| HeaderValue::from_bytes(value.as_bytes()).unwrap()),
        );
        notification.insert(
            X_TRACE_ID,
            HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
        let context = TraceContext::from_notification(&notification);
        assert_eq!(context, TraceContext::new(), "{value:?}");
        // And nothing of it is forwarded.
        let recorder = Recorder::default();
        context
            .scope(traced(&recorder).oneshot(get(&format!("{BASE}/Task"))))
            .await
            .unwrap();
        let seen = &recorder.seen()[0];
        assert_eq!(seen.get(X_TRACE_ID), None);
        assert_eq!(seen.get(X_CORRELATION_ID), None);
    }
    let text = logs.text();
    assert_eq!(
        text.matches("trace header dropped: not a FHIR id").count(),
        bad.len() * 2,
        "{text}"
    );
    assert!(text.contains("WARN"), "{text}");
    assert!(
        !text.contains("has space") && !text.contains("under_score"),
        "{text}"
    );
    // The longest valid id passes.
    let mut notification = HeaderMap::new();
    notification.insert(
        X_REQUEST_ID,
        HeaderValue::from_str(&"a".repeat(64)).unwrap(),
    );
    assert!(
        TraceContext::from_notification(&notification)
            .correlation_id()
            .is_some()
    );
}
