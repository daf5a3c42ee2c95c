//! Helpers of the trace-header tests (`tests/trace.rs`, `tests/trace_ids.rs`, `tests/trace_mock.rs`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use koppeltaal_auth::trace::{FhirId, KoppeltaalTraceLayer};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

pub fn id(value: &str) -> FhirId {
    FhirId::new(value).unwrap()
}

pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

pub fn header(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

pub fn is_uuid_v4(value: &str) -> bool {
    uuid::Uuid::parse_str(value)
        .is_ok_and(|uuid| uuid.get_version_num() == 4 && uuid.hyphenated().to_string() == value)
}

/// `join_all` without the `futures` crate: spawn and collect.
pub async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
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

/// The FHIR base of the in-test services.
pub const BASE: &str = "https://fhir.example.org/fhir/DEFAULT";

/// A FHIR server stand-in that records each request's headers and answers `200` with `answer`'s
/// headers.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    pub answer: HeaderMap,
}

impl Recorder {
    pub fn service(&self) -> TestService {
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

    pub fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

pub type TestService = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// `recorder`'s service behind a new trace layer for [`BASE`].
pub fn traced(recorder: &Recorder) -> TestService {
    ServiceBuilder::new()
        .layer(KoppeltaalTraceLayer::new(BASE).unwrap())
        .service(recorder.service())
        .boxed_clone()
}
