//! Koppeltaal's trace headers (TOP-KT-011): `KoppeltaalTraceLayer`, `KoppeltaalTraceMiddleware`,
//! `TraceContext`, and the mock's trace headers and notifications.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::trace::{
    FhirId, KoppeltaalTraceLayer, ResponseTrace, TraceContext, TraceIds, X_CORRELATION_ID,
    X_REQUEST_ID, X_TRACE_ID,
};
use koppeltaal_auth::{Authenticator, KoppeltaalAuth};
use support::{CLIENT_ID, capture_logs, mock, rsa_key};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

const BASE: &str = "https://fhir.example.org/fhir/DEFAULT";

fn id(value: &str) -> FhirId {
    FhirId::new(value).unwrap()
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

fn header(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn is_uuid_v4(value: &str) -> bool {
    uuid::Uuid::parse_str(value)
        .is_ok_and(|uuid| uuid.get_version_num() == 4 && uuid.hyphenated().to_string() == value)
}

/// A FHIR server stand-in that records each request's headers and answers `200` with `answer`'s
/// headers.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    answer: HeaderMap,
}

impl Recorder {
    fn service(&self) -> TestService {
        let this = self.clone();
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let this = this.clone();
            async move {
                this.seen.lock().unwrap().push(request.headers().clone());
                let mut response = Response::new(Full::default());
                *response.headers_mut() = this.answer.clone();
                Ok::<_, Infallible>(response)
            }
        })
        .boxed_clone()
    }

    fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

type TestService = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn traced(
    recorder: &Recorder,
) -> BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible> {
    ServiceBuilder::new()
        .layer(KoppeltaalTraceLayer::new(BASE).unwrap())
        .service(recorder.service())
        .boxed_clone()
}

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
    let responses = futures_join_all(fetches).await;
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

/// `join_all` without the `futures` crate: spawn and collect.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
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

// ---- Against the mock, with the auth layer ----

async fn authenticator(mock: &MockKoppeltaal) -> Authenticator {
    KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .discover()
        .await
        .unwrap()
}

/// The documented order: auth outside, trace inside.
fn stack(
    auth: &Authenticator,
) -> BoxCloneService<Request<Full<Bytes>>, Response<hyper::body::Incoming>, koppeltaal_auth::BoxError>
{
    ServiceBuilder::new()
        .layer(auth.layer())
        .layer(auth.trace_layer())
        .service(Client::builder(TokioExecutor::new()).build_http())
        .boxed_clone()
}

#[tokio::test]
async fn the_mock_answers_and_records_like_koppeltaals_server() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = stack(&auth);
    let base = mock.fhir_base_url();
    // No trace: the server starts one and says so.
    let response = client
        .clone()
        .oneshot(get(&format!("{base}/Task/1")))
        .await
        .unwrap();
    let trace = response
        .extensions()
        .get::<ResponseTrace>()
        .unwrap()
        .clone();
    let recorded = mock.fhir_requests().pop().unwrap();
    assert_eq!(recorded.trace, trace.ids());
    assert_eq!(trace.answered().request_id(), trace.sent().request_id());
    assert!(trace.sent().trace_id().is_none());
    assert!(is_uuid_v4(trace.answered().trace_id().unwrap().as_str()));
    // A trace: echoed.
    let context = TraceContext::caused_by(&trace.ids());
    let response = context
        .clone()
        .scope(client.clone().oneshot(get(&format!("{base}/Patient/2"))))
        .await
        .unwrap();
    let second = response
        .extensions()
        .get::<ResponseTrace>()
        .unwrap()
        .clone();
    assert_eq!(second.answered().trace_id(), trace.answered().trace_id());
    let recorded = mock.fhir_requests().pop().unwrap();
    assert_eq!(recorded.trace.correlation_id(), trace.sent().request_id());
    assert_eq!(recorded.trace.trace_id(), trace.answered().trace_id());
}

#[tokio::test]
async fn a_replay_after_a_401_is_a_new_request_with_the_same_trace() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = stack(&auth);
    let url = format!("{}/Patient/1", mock.fhir_base_url());
    client.clone().oneshot(get(&url)).await.unwrap();
    mock.revoke_all_tokens();
    let context = TraceContext::new()
        .with_trace_id(id("trace-r"))
        .with_correlation_id(id("cause-r"));
    // Once from a scope, once from the request's own extension.
    for own in [false, true] {
        let before = mock.fhir_requests().len();
        let mut request = get(&url);
        let response = if own {
            request.extensions_mut().insert(context.clone());
            client.clone().oneshot(request).await.unwrap()
        } else {
            context
                .clone()
                .scope(client.clone().oneshot(request))
                .await
                .unwrap()
        };
        assert_eq!(response.status(), StatusCode::OK);
        let log = mock.fhir_requests();
        let sends = &log[before..];
        assert_eq!(sends.len(), 2, "the first send and its replay");
        assert_eq!(sends[0].status, StatusCode::UNAUTHORIZED);
        assert_eq!(sends[1].status, StatusCode::OK);
        assert_ne!(sends[0].trace.request_id(), sends[1].trace.request_id());
        for send in sends {
            assert_eq!(send.trace.trace_id(), Some(&id("trace-r")));
            assert_eq!(send.trace.correlation_id(), Some(&id("cause-r")));
            assert_eq!(send.headers.get_all(X_REQUEST_ID).iter().count(), 1);
        }
        // The response tells the ids of the send that answered.
        let trace = response.extensions().get::<ResponseTrace>().unwrap();
        assert_eq!(trace.ids(), sends[1].trace);
        mock.revoke_all_tokens();
    }
}

#[tokio::test]
async fn a_thousand_concurrent_requests_have_a_thousand_request_ids() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = stack(&auth);
    let context = TraceContext::start();
    let url = format!("{}/Patient/1", mock.fhir_base_url());
    let requests = (0..1_000).map(|_| {
        let client = client.clone();
        let url = url.clone();
        context
            .clone()
            .scope(async move { client.oneshot(get(&url)).await.unwrap().status() })
    });
    let statuses = futures_join_all(requests).await;
    assert!(statuses.iter().all(|status| *status == StatusCode::OK));
    let log = mock.fhir_requests();
    assert_eq!(log.len(), 1_000);
    let ids: HashSet<&str> = log
        .iter()
        .map(|r| r.trace.request_id().unwrap().as_str())
        .collect();
    assert_eq!(ids.len(), 1_000);
    assert!(log.iter().all(|r| r.trace.trace_id() == context.trace_id()));
    assert_eq!(mock.stats().tokens_issued, 1);
}

#[tokio::test]
async fn the_mock_notifies_like_koppeltaals_server() {
    let mock = mock().await;
    let auth = authenticator(&mock).await;
    let client = stack(&auth);
    let base = mock.fhir_base_url();
    // Another application updates a Task, in a trace of its own.
    let update = Request::put(format!("{base}/Task/7"))
        .body(Full::new(Bytes::from_static(
            br#"{"resourceType":"Task","id":"7"}"#,
        )))
        .unwrap();
    TraceContext::start()
        .scope(client.clone().oneshot(update))
        .await
        .unwrap();
    let cause = mock.fhir_requests().pop().unwrap();

    // The receiving application: a rest-hook handler that records what it got.
    let received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let seen = Arc::clone(&received);
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push((headers, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });

    let sent = mock.notify(&hook_url, &cause).await.unwrap();
    assert_eq!(sent.status, StatusCode::NO_CONTENT);
    let (headers, body) = received.lock().unwrap().pop().unwrap();
    assert!(body.is_empty(), "no payload");
    assert_eq!(TraceIds::from_headers(&headers), sent.trace);
    assert!(is_uuid_v4(sent.trace.request_id().unwrap().as_str()));
    assert_ne!(sent.trace.request_id(), cause.trace.request_id());
    assert_eq!(sent.trace.trace_id(), cause.trace.trace_id());
    assert_eq!(sent.trace.correlation_id(), cause.trace.request_id());
    assert_eq!(mock.notifications().len(), 1);

    // The handler's follow-up request carries the chain on.
    TraceContext::from_notification(&headers)
        .scope(client.oneshot(get(&format!("{base}/Task?_id=7"))))
        .await
        .unwrap();
    let follow_up = mock.fhir_requests().pop().unwrap();
    assert_eq!(follow_up.trace.trace_id(), cause.trace.trace_id());
    assert_eq!(follow_up.trace.correlation_id(), sent.trace.request_id());
    server.abort();
}

// ---- reqwest-middleware ----

#[cfg(feature = "reqwest-middleware")]
mod reqwest_stack {
    use super::*;

    fn client(auth: &Authenticator) -> reqwest_middleware::ClientWithMiddleware {
        reqwest_middleware::ClientBuilder::new(
            reqwest::Client::builder().no_proxy().build().unwrap(),
        )
        .with(auth.middleware())
        .with(auth.trace_middleware())
        .build()
    }

    #[tokio::test]
    async fn the_middleware_follows_the_same_rules() {
        let mock = mock().await;
        let auth = authenticator(&mock).await;
        let client = client(&auth);
        let base = mock.fhir_base_url();
        let own = TraceContext::new()
            .with_trace_id(id("own-trace"))
            .with_correlation_id(id("own-cause"));
        let scoped = TraceContext::new().with_trace_id(id("scope-trace"));
        let (first, second) = scoped
            .scope(async {
                let first = client.get(format!("{base}/Task/1")).send().await.unwrap();
                let second = client
                    .get(format!("{base}/Task/2"))
                    .with_extension(own.clone())
                    .header(X_REQUEST_ID, "caller-id")
                    .send()
                    .await
                    .unwrap();
                (first, second)
            })
            .await;
        let log = mock.fhir_requests();
        assert_eq!(log[0].trace.trace_id(), Some(&id("scope-trace")));
        assert_eq!(log[0].trace.correlation_id(), None);
        assert!(is_uuid_v4(log[0].trace.request_id().unwrap().as_str()));
        assert_eq!(
            log[1].trace,
            TraceIds::new(
                Some(id("caller-id")),
                Some(id("own-trace")),
                Some(id("own-cause"))
            )
        );
        assert_eq!(
            first.extensions().get::<ResponseTrace>().unwrap().ids(),
            log[0].trace
        );
        assert_eq!(
            second.extensions().get::<ResponseTrace>().unwrap().ids(),
            log[1].trace
        );
        // Outside the base: untouched, no extension.
        let outside = client
            .get(format!("{}/not-fhir", mock.token_endpoint()))
            .send()
            .await
            .unwrap();
        assert!(outside.extensions().get::<ResponseTrace>().is_none());
    }

    #[tokio::test]
    async fn a_middleware_replay_is_a_new_request_with_the_same_trace() {
        let mock = mock().await;
        let auth = authenticator(&mock).await;
        let client = client(&auth);
        let url = format!("{}/Patient/1", mock.fhir_base_url());
        client.get(&url).send().await.unwrap();
        mock.revoke_all_tokens();
        let context = TraceContext::new()
            .with_trace_id(id("trace-m"))
            .with_correlation_id(id("cause-m"));
        let response = client
            .get(&url)
            .with_extension(context)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let log = mock.fhir_requests();
        let sends = &log[1..];
        assert_eq!(sends.len(), 2);
        assert_eq!(sends[0].status, StatusCode::UNAUTHORIZED);
        assert_ne!(sends[0].trace.request_id(), sends[1].trace.request_id());
        for send in sends {
            assert_eq!(send.trace.trace_id(), Some(&id("trace-m")));
            assert_eq!(send.trace.correlation_id(), Some(&id("cause-m")));
        }
        assert_eq!(
            response.extensions().get::<ResponseTrace>().unwrap().ids(),
            sends[1].trace
        );
    }
}
