//! Scripted responses for the mock token endpoint.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};

/// A response the mock token endpoint sends instead of validating a request; see
/// [`MockKoppeltaal::push_token_response`](super::MockKoppeltaal::push_token_response).
#[derive(Clone, Debug)]
#[must_use]
pub struct MockResponse {
    pub(super) status: StatusCode,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Bytes,
    pub(super) chunked: bool,
}

/// The largest body [`MockResponse::oversized`] makes: 64 MiB, far past any limit of this crate.
pub const MAX_OVERSIZED: usize = 64 * 1024 * 1024;

impl MockResponse {
    /// A response with `status` and `body`.
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            chunked: false,
        }
    }

    /// A `200 OK` JSON response with `body`.
    pub fn json(body: &serde_json::Value) -> Self {
        Self::new(StatusCode::OK, body.to_string()).header("content-type", "application/json")
    }

    /// A `200 OK` with a body that is not JSON.
    pub fn garbage() -> Self {
        Self::new(StatusCode::OK, "\u{1}\u{2}garbage{{{").header("content-type", "application/json")
    }

    /// A `200 OK` JSON-looking body of `len` bytes (at most [`MAX_OVERSIZED`]: 64 MiB).
    pub fn oversized(len: usize) -> Self {
        let len = len.min(MAX_OVERSIZED);
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(br#"{"access_token":""#);
        body.resize(len.saturating_sub(2).max(body.len()), b'a');
        body.extend_from_slice(b"\"}");
        Self::new(StatusCode::OK, body).header("content-type", "application/json")
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends the body in 16 KiB chunks without `Content-Length`, so the client cannot tell its
    /// size up front.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    pub(super) fn into_response(self) -> axum::response::Response {
        let body = if self.chunked {
            axum::body::Body::new(Chunked { rest: self.body })
        } else {
            axum::body::Body::from(self.body)
        };
        let mut response = axum::response::Response::new(body);
        *response.status_mut() = self.status;
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name.as_str()),
                http::HeaderValue::try_from(value.as_str()),
            ) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// A body of known content but unknown size.
struct Chunked {
    rest: Bytes,
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(16 * 1024);
        let chunk = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
