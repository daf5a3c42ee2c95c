//! The response future of [`KoppeltaalAuth`](crate::KoppeltaalAuth).

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::BoxError;
use crate::layer::AuthShared;
use crate::replay::ReplayBody;
use crate::token::{CellLink, LocalToken, TokenCell};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a replay needs: a copy of the request and a clone of the inner service.
pub(crate) struct Retry<S, B> {
    service: S,
    method: http::Method,
    version: http::Version,
    /// The URI and the headers.
    head: HeadSnapshot,
    extensions: http::Extensions,
    body: B,
}

impl<S: Clone, B: ReplayBody> Retry<S, B> {
    /// Copies what a replay needs, or `None` when the body cannot be replayed (then nothing is
    /// copied at all).
    pub(crate) fn prepare(request: &Request<B>, service: &S) -> Option<Self> {
        let body = request.body().try_clone_body()?;
        Some(Self {
            service: service.clone(),
            method: request.method().clone(),
            version: request.version(),
            head: HeadSnapshot::of(request.uri(), request.headers()),
            extensions: request.extensions().clone(),
            body,
        })
    }
}

impl<S, B> Retry<S, B> {
    /// The service and the request to send again, or `None` (with the reason logged) when the
    /// URI or a header cannot be rebuilt.
    fn into_request(self) -> Option<(S, Request<B>)> {
        let Some((uri, headers)) = self.head.rebuild() else {
            tracing::warn!(
                "the request could not be copied for the replay (URI or a header); returning the 401"
            );
            return None;
        };
        let mut request = Request::new(self.body);
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = self.extensions;
        Some((self.service, request))
    }
}

/// A request's URI and headers in one buffer: one allocation and a copy of their bytes. Cloning
/// the `HeaderMap` and the `Uri` instead allocates the map's table and shares every header value,
/// custom header name and URI part by reference count (an allocation each the first time, and
/// atomic counts that the thread sending the request, and every other request with the same
/// URI, also write). Replays are rare; the URI and the map are rebuilt only for one.
struct HeadSnapshot {
    /// Fields, each a length (`u32`, little endian; `u32::MAX` when absent) and its bytes: the
    /// scheme, authority and path-and-query; then per header a sensitive flag byte, its name and
    /// its value.
    bytes: Vec<u8>,
    headers: usize,
}

/// The length of an absent field.
const ABSENT: u32 = u32::MAX;

impl HeadSnapshot {
    fn of(uri: &http::Uri, headers: &http::HeaderMap) -> Self {
        let parts = [
            uri.scheme_str(),
            uri.authority().map(http::uri::Authority::as_str),
            uri.path_and_query().map(http::uri::PathAndQuery::as_str),
        ];
        let size = parts
            .iter()
            .map(|part| 4 + part.map_or(0, str::len))
            .sum::<usize>()
            + headers
                .iter()
                .map(|(name, value)| 1 + 4 + name.as_str().len() + 4 + value.len())
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(size);
        for part in parts {
            put(&mut bytes, part.map(str::as_bytes));
        }
        for (name, value) in headers {
            bytes.push(u8::from(value.is_sensitive()));
            put(&mut bytes, Some(name.as_str().as_bytes()));
            put(&mut bytes, Some(value.as_bytes()));
        }
        Self {
            bytes,
            headers: headers.len(),
        }
    }

    fn rebuild(&self) -> Option<(http::Uri, http::HeaderMap)> {
        let mut rest = self.bytes.as_slice();
        let mut uri = http::Uri::builder();
        if let Some(scheme) = take(&mut rest)? {
            uri = uri.scheme(scheme);
        }
        if let Some(authority) = take(&mut rest)? {
            uri = uri.authority(authority);
        }
        if let Some(path_and_query) = take(&mut rest)? {
            uri = uri.path_and_query(path_and_query);
        }
        let uri = uri.build().ok()?;
        let mut headers = http::HeaderMap::with_capacity(self.headers);
        while let Some((&flag, tail)) = rest.split_first() {
            rest = tail;
            let name = http::HeaderName::from_bytes(take(&mut rest)??).ok()?;
            let mut value = http::HeaderValue::from_bytes(take(&mut rest)??).ok()?;
            value.set_sensitive(flag != 0);
            headers.append(name, value);
        }
        // A buffer cut at a header boundary would parse: the count catches it.
        (headers.len() == self.headers).then_some((uri, headers))
    }
}

/// Appends a field. One of 4 GiB or more (no server takes such a header; the http crate caps a
/// URI at 64 KiB) is stored as absent, which a header position refuses at rebuild: the replay is
/// then given up, never sent with a different header.
fn put(buffer: &mut Vec<u8>, field: Option<&[u8]>) {
    match field.and_then(|field| Some((u32::try_from(field.len()).ok()?, field))) {
        Some((len, field)) if len != ABSENT => {
            buffer.extend_from_slice(&len.to_le_bytes());
            buffer.extend_from_slice(field);
        }
        _ => buffer.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

/// Takes a field off the front of `rest`: `Some(None)` when absent, `None` when the buffer is
/// damaged.
fn take<'a>(rest: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len);
    if len == ABSENT {
        *rest = tail;
        return Some(None);
    }
    let (field, tail) = tail.split_at_checked(usize::try_from(len).ok()?)?;
    *rest = tail;
    Some(Some(field))
}

pin_project! {
    /// Response future for [`KoppeltaalAuth`](crate::KoppeltaalAuth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        /// Not for the FHIR base, or carrying its own `Authorization`: untouched.
        Passthrough { #[pin] future: S::Future },
        /// A fresh token was attached in `call`; waiting for the inner service.
        Called {
            #[pin]
            future: S::Future,
            retry: Option<Retry<S, B>>,
            // The token's cell (a link of this service's own: see `CellLink`) and generation,
            // should it be rejected.
            cell: CellLink,
            generation: u64,
            replay: bool,
        },
        /// Slow path: waiting for a token, or renewing and replaying after a `401`.
        Slow { future: BoxFuture<Result<S::Response, BoxError>> },
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<S, B, ResBody> ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: ReplayBody + Send + 'static,
    ResBody: Send + 'static,
{
    #[inline]
    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self {
            state: State::Passthrough { future },
        }
    }

    #[inline]
    pub(crate) fn called(
        future: S::Future,
        retry: Option<Retry<S, B>>,
        token: &LocalToken,
        replay: bool,
    ) -> Self {
        Self {
            state: State::Called {
                future,
                retry,
                cell: token.link(),
                generation: token.generation(),
                replay,
            },
        }
    }

    pub(crate) fn waiting(service: S, request: Request<B>, shared: Arc<AuthShared>) -> Self {
        Self {
            state: State::Slow {
                future: Box::pin(with_token(service, request, shared)),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: ReplayBody + Send + 'static,
    ResBody: Send + 'static,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Passthrough { future } => return future.poll(cx).map_err(Into::into),
                StateProj::Called {
                    future,
                    retry,
                    cell,
                    generation,
                    replay,
                } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(response));
                    }
                    let Some(cell) = cell.cell() else {
                        // Every handle on the token cell is gone: nothing to renew.
                        return Poll::Ready(Ok(response));
                    };
                    let future = after_401(cell, *replay, retry.take(), *generation, response);
                    this.state.set(State::Slow {
                        future: Box::pin(future),
                    });
                }
                StateProj::Slow { future } => return future.as_mut().poll(cx),
            }
        }
    }
}

/// The slow path of `call`: waits for a token, then sends as the fast path would.
async fn with_token<S, B, ResBody>(
    mut service: S,
    mut request: Request<B>,
    shared: Arc<AuthShared>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    let token = shared.cell.token().await?;
    let retry = if shared.replay {
        Retry::prepare(&request, &service)
    } else {
        None
    };
    request
        .headers_mut()
        .insert(AUTHORIZATION, token.value().clone());
    // `service` was driven to readiness by the caller before `call`.
    let response = service.call(request).await.map_err(Into::into)?;
    if response.status() != StatusCode::UNAUTHORIZED {
        return Ok(response);
    }
    after_401(
        shared.cell.clone(),
        shared.replay,
        retry,
        token.generation(),
        response,
    )
    .await
}

/// Renews the rejected token and replays the request once, or hands the `401` back.
async fn after_401<S, B, ResBody>(
    cell: TokenCell,
    replay: bool,
    retry: Option<Retry<S, B>>,
    generation: u64,
    first: Response<ResBody>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    let Some(retry) = retry else {
        cell.invalidate(generation);
        let reason = if replay {
            "the request body cannot be replayed"
        } else {
            "replay on 401 is off"
        };
        tracing::info!(
            generation,
            reason,
            "401 returned to the caller; the token is renewed for the next request"
        );
        return Ok(first);
    };
    let token = match cell.renewed(generation).await {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(generation, %error, "could not renew the token after a 401; returning the 401");
            return Ok(first);
        }
    };
    let Some((mut service, mut request)) = retry.into_request() else {
        return Ok(first);
    };
    // The first answer's body is not read.
    drop(first);
    request
        .headers_mut()
        .insert(AUTHORIZATION, token.value().clone());
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = service.call(request).await.map_err(Into::into)?;
    if response.status() == StatusCode::UNAUTHORIZED {
        tracing::warn!(
            generation = token.generation(),
            "the replay was rejected too; returning its 401"
        );
    } else {
        tracing::debug!(
            generation = token.generation(),
            "replayed with a renewed token"
        );
        cell.confirm(token.generation());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn a_head_snapshot_rebuilds_the_same_uri_and_headers_in_the_same_order() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("application/fhir+json"));
        headers.append("x-request-id", HeaderValue::from_static("req-42"));
        headers.append("cookie", HeaderValue::from_static("a=1"));
        headers.append("cookie", HeaderValue::from_static("b=2"));
        let mut secret = HeaderValue::from_static("Basic dXNlcjpwYXNz");
        secret.set_sensitive(true);
        headers.insert("proxy-authorization", secret);
        headers.insert(
            HeaderName::from_static("x-obs-text"),
            HeaderValue::from_bytes(b"caf\xe9 \t!").unwrap(),
        );
        headers.insert("x-empty", HeaderValue::from_static(""));
        let uri: http::Uri = "https://fhir.example.org:8443/fhir/DEFAULT/Task?_count=10&x=%2F"
            .parse()
            .unwrap();
        let (rebuilt_uri, rebuilt) = HeadSnapshot::of(&uri, &headers).rebuild().unwrap();
        assert_eq!(rebuilt_uri, uri);
        assert_eq!(rebuilt, headers);
        let order = |map: &HeaderMap| -> Vec<(String, Vec<u8>, bool)> {
            map.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
                .collect()
        };
        assert_eq!(order(&rebuilt), order(&headers));
        assert!(rebuilt["proxy-authorization"].is_sensitive());
        let relative: http::Uri = "/fhir/Patient/1".parse().unwrap();
        let (rebuilt_uri, none) = HeadSnapshot::of(&relative, &HeaderMap::new())
            .rebuild()
            .unwrap();
        assert_eq!(rebuilt_uri, relative);
        assert!(none.is_empty());
    }

    #[test]
    fn a_damaged_snapshot_is_refused_not_misread() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("application/fhir+json"));
        let uri: http::Uri = "https://fhir.example.org/fhir/Task".parse().unwrap();
        let snapshot = HeadSnapshot::of(&uri, &headers);
        for cut in 1..snapshot.bytes.len() {
            let damaged = HeadSnapshot {
                bytes: snapshot.bytes[..cut].to_vec(),
                headers: 1,
            };
            assert!(damaged.rebuild().is_none(), "{cut}");
        }
    }
}
