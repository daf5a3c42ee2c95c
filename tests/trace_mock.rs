//! Koppeltaal's trace headers against `MockKoppeltaal`, with the auth layer and the auth
//! middleware: what the server records and answers, replays after a `401`, a thousand concurrent
//! requests, and notifications.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::Authenticator;
use koppeltaal_auth::trace::{ResponseTrace, TraceContext, TraceIds, X_REQUEST_ID};
use support::trace::{get, id, is_uuid_v4, join_all};
use support::{authenticator, mock};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

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
    let statuses = join_all(requests).await;
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
