//! Helpers of the trace-header tests (`tests/trace.rs`, `tests/trace_mock.rs`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Full;
use koppeltaal_auth::trace::FhirId;

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
