//! Koppeltaal's trace headers (TOP-KT-011): `KoppeltaalTraceLayer` and `TraceContext`, the
//! header rules, against an in-test server (`tests/trace_mock.rs` has the
//! mock and the auth layer).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use http::{HeaderMap, HeaderValue};
use koppeltaal_auth::trace::{
    ResponseTrace, TraceContext, TraceIds, X_CORRELATION_ID, X_REQUEST_ID, X_TRACE_ID,
};
use support::trace::{BASE, Recorder, get, header, id, is_uuid_v4, join_all, traced};
use tower::ServiceExt;

#[tokio::test]
async fn every_fhir_request_gets_a_new_request_id_and_nothing_else_without_a_context() {
    let recorder = Recorder::default();
    let client = traced(&recorder);
    for path in ["/Patient/1", "/Task", "/Patient/1"] {
        let response = client
            .clone()
            .oneshot(get(&format!("{BASE}{path}")))
            .await
            .unwrap();
        let trace = response.extensions().get::<ResponseTrace>().unwrap();
        assert!(trace.sent().trace_id().is_none());
        assert!(trace.sent().correlation_id().is_none());
    }
    let seen = recorder.seen();
    let ids: HashSet<String> = seen
        .iter()
        .map(|headers| header(headers, &X_REQUEST_ID).unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "a new id per request: {ids:?}");
    assert!(ids.iter().all(|id| is_uuid_v4(id)), "{ids:?}");
    for headers in &seen {
        // Never filled with the request id, never invented.
        assert_eq!(headers.get(X_TRACE_ID), None);
        assert_eq!(headers.get(X_CORRELATION_ID), None);
    }
}

#[tokio::test]
async fn requests_outside_the_fhir_base_are_untouched() {
    let recorder = Recorder::default();
    let client = traced(&recorder);
    let context = TraceContext::start().with_correlation_id(id("cause"));
    for url in [
        "https://fhir.example.org/fhir/OTHER/Patient/1",
        "https://fhir.example.org/fhir/DEFAULT/../OTHER/Patient",
        "https://other.example.org/fhir/DEFAULT/Patient/1",
        "http://fhir.example.org/fhir/DEFAULT/Patient/1",
        "https://fhir.example.org:8443/fhir/DEFAULT/Patient/1",
        "/fhir/DEFAULT/Patient/1",
    ] {
        let response = context
            .clone()
            .scope(client.clone().oneshot(get(url)))
            .await
            .unwrap();
        assert!(
            response.extensions().get::<ResponseTrace>().is_none(),
            "{url}"
        );
    }
    for headers in recorder.seen() {
        assert!(headers.is_empty(), "{headers:?}");
    }
}

#[tokio::test]
async fn headers_the_caller_set_win() {
    let recorder = Recorder::default();
    let client = traced(&recorder);
    let context = TraceContext::new()
        .with_trace_id(id("context-trace"))
        .with_correlation_id(id("context-cause"));
    let mut request = get(&format!("{BASE}/Patient/1"));
    request
        .headers_mut()
        .insert(X_REQUEST_ID, HeaderValue::from_static("mine"));
    request
        .headers_mut()
        .insert(X_TRACE_ID, HeaderValue::from_static("my-trace"));
    let response = context.scope(client.oneshot(request)).await.unwrap();
    let seen = &recorder.seen()[0];
    assert_eq!(header(seen, &X_REQUEST_ID).as_deref(), Some("mine"));
    assert_eq!(header(seen, &X_TRACE_ID).as_deref(), Some("my-trace"));
    // The one the caller did not set comes from the context.
    assert_eq!(
        header(seen, &X_CORRELATION_ID).as_deref(),
        Some("context-cause")
    );
    assert_eq!(seen.get_all(X_REQUEST_ID).iter().count(), 1);
    let sent = response
        .extensions()
        .get::<ResponseTrace>()
        .unwrap()
        .sent()
        .clone();
    assert_eq!(
        sent,
        TraceIds::new(
            Some(id("mine")),
            Some(id("my-trace")),
            Some(id("context-cause"))
        )
    );
}

#[tokio::test]
async fn the_context_comes_from_the_request_then_the_scope() {
    let recorder = Recorder::default();
    let client = traced(&recorder);
    let scoped = TraceContext::new()
        .with_trace_id(id("scope-trace"))
        .with_correlation_id(id("scope-cause"));
    let own = TraceContext::new().with_trace_id(id("own-trace"));
    let url = format!("{BASE}/Patient/1");
    scoped
        .clone()
        .scope(async {
            client.clone().oneshot(get(&url)).await.unwrap();
            // A request's own context wins over the scope's, whole: no correlation id here.
            let mut request = get(&url);
            request.extensions_mut().insert(own.clone());
            client.clone().oneshot(request).await.unwrap();
            // An empty context in the extension hides the scope's.
            let mut request = get(&url);
            request.extensions_mut().insert(TraceContext::new());
            client.clone().oneshot(request).await.unwrap();
            // Scopes nest; the innermost wins.
            TraceContext::new()
                .with_trace_id(id("inner"))
                .scope(client.clone().oneshot(get(&url)))
                .await
                .unwrap();
            assert_eq!(TraceContext::current(), Some(scoped.clone()));
        })
        .await;
    // Outside any scope, the request's own context still applies.
    let mut request = get(&url);
    request.extensions_mut().insert(own.clone());
    client.clone().oneshot(request).await.unwrap();
    client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(TraceContext::current(), None);

    let seen: Vec<(Option<String>, Option<String>)> = recorder
        .seen()
        .iter()
        .map(|h| (header(h, &X_TRACE_ID), header(h, &X_CORRELATION_ID)))
        .collect();
    let pair = |t: Option<&str>, c: Option<&str>| (t.map(str::to_owned), c.map(str::to_owned));
    assert_eq!(
        seen,
        vec![
            pair(Some("scope-trace"), Some("scope-cause")),
            pair(Some("own-trace"), None),
            pair(None, None),
            pair(Some("inner"), None),
            pair(Some("own-trace"), None),
            pair(None, None),
        ]
    );
}

#[test]
fn sync_scope_serves_synchronous_code() {
    let context = TraceContext::start();
    let seen = context.clone().sync_scope(TraceContext::current);
    assert_eq!(seen, Some(context));
    assert_eq!(TraceContext::current(), None);
}

#[test]
fn a_notification_gives_the_context_of_the_work_it_triggers() {
    let mut notification = HeaderMap::new();
    notification.insert(X_REQUEST_ID, HeaderValue::from_static("notification-1"));
    notification.insert(X_TRACE_ID, HeaderValue::from_static("trace-1"));
    notification.insert(X_CORRELATION_ID, HeaderValue::from_static("update-1"));
    let context = TraceContext::from_notification(&notification);
    assert_eq!(context.trace_id(), Some(&id("trace-1")));
    // Causal, not the root: the notification's own id, not the update's.
    assert_eq!(context.correlation_id(), Some(&id("notification-1")));

    // Without a trace id, none is invented: the FHIR server starts one.
    notification.remove(X_TRACE_ID);
    let context = TraceContext::from_notification(&notification);
    assert_eq!(context.trace_id(), None);
    assert_eq!(context.correlation_id(), Some(&id("notification-1")));
}

#[tokio::test]
async fn requests_caused_by_one_response_share_its_request_id_as_correlation_id() {
    let mut answer = HeaderMap::new();
    answer.insert(X_TRACE_ID, HeaderValue::from_static("server-trace"));
    let recorder = Recorder {
        answer,
        ..Recorder::default()
    };
    let client = traced(&recorder);
    let task = client
        .clone()
        .oneshot(get(&format!("{BASE}/Task/1")))
        .await
        .unwrap();
    let trace = task.extensions().get::<ResponseTrace>().unwrap().clone();
    let task_request_id = trace.sent().request_id().unwrap().clone();
    // The server started the trace; the requests the response causes carry it on.
    assert_eq!(trace.ids().trace_id(), Some(&id("server-trace")));
    let caused = TraceContext::caused_by(&trace.ids());
    assert_eq!(caused, trace.caused());
    let fetches = (0..8).map(|n| {
        let client = client.clone();
        caused
            .clone()
            .scope(async move { client.oneshot(get(&format!("{BASE}/Patient/{n}"))).await })
    });
    let responses = join_all(fetches).await;
    assert_eq!(responses.len(), 8);
    let seen = recorder.seen();
    let mut request_ids = HashSet::new();
    for headers in &seen[1..] {
        assert_eq!(
            header(headers, &X_TRACE_ID).as_deref(),
            Some("server-trace")
        );
        assert_eq!(
            header(headers, &X_CORRELATION_ID).as_deref(),
            Some(task_request_id.as_str())
        );
        request_ids.insert(header(headers, &X_REQUEST_ID).unwrap());
    }
    assert_eq!(request_ids.len(), 8);
    assert!(!request_ids.contains(task_request_id.as_str()));
}

#[tokio::test]
async fn the_response_says_what_the_server_answered() {
    let mut answer = HeaderMap::new();
    answer.insert(X_REQUEST_ID, HeaderValue::from_static("server-assigned"));
    answer.insert(X_TRACE_ID, HeaderValue::from_static("server-trace"));
    let recorder = Recorder {
        answer,
        ..Recorder::default()
    };
    let context = TraceContext::new().with_correlation_id(id("cause"));
    let response = context
        .scope(traced(&recorder).oneshot(get(&format!("{BASE}/Patient/1"))))
        .await
        .unwrap();
    let trace = response.extensions().get::<ResponseTrace>().unwrap();
    let sent_id = header(&recorder.seen()[0], &X_REQUEST_ID).unwrap();
    assert_eq!(trace.sent().request_id().unwrap().as_str(), sent_id);
    assert_eq!(trace.answered().request_id(), Some(&id("server-assigned")));
    assert_eq!(
        trace.ids(),
        TraceIds::new(
            Some(id("server-assigned")),
            Some(id("server-trace")),
            Some(id("cause"))
        )
    );
    assert_eq!(
        serde_json::Value::Array(trace.ids().audit_event_extensions()),
        serde_json::json!([
            {"url": "http://koppeltaal.nl/fhir/StructureDefinition/request-id", "valueId": "server-assigned"},
            {"url": "http://koppeltaal.nl/fhir/StructureDefinition/trace-id", "valueId": "server-trace"},
            {"url": "http://koppeltaal.nl/fhir/StructureDefinition/correlation-id", "valueId": "cause"},
        ])
    );
}
