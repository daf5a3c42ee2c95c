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
use crate::token::{LocalToken, TokenCell};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a replay needs: a copy of the request and a clone of the inner service.
pub(crate) struct Retry<S, B> {
    service: S,
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: HeaderSnapshot,
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
            uri: request.uri().clone(),
            version: request.version(),
            headers: HeaderSnapshot::of(request.headers()),
            extensions: request.extensions().clone(),
            body,
        })
    }
}

impl<S, B> Retry<S, B> {
    /// The service and the request to send again, or `None` (with the reason logged) when the
    /// headers cannot be rebuilt.
    fn into_request(self) -> Option<(S, Request<B>)> {
        let Some(headers) = self.headers.rebuild() else {
            tracing::warn!(
                "a request header could not be copied for the replay; returning the 401"
            );
            return None;
        };
        let mut request = Request::new(self.body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = self.extensions;
        Some((self.service, request))
    }
}

/// A request's headers in one buffer: one allocation and a copy of their bytes, where cloning
/// the `HeaderMap` allocates its table and shares every value and custom name by reference
/// count (an allocation each the first time, and atomic counts the sending thread also touches).
/// Replays are rare; the map is rebuilt only for one.
struct HeaderSnapshot {
    /// Per header: a sensitive flag byte, name and value lengths (`u32`, little endian), the
    /// name, the value.
    bytes: Vec<u8>,
    count: usize,
}

impl HeaderSnapshot {
    const FIXED: usize = 1 + 4 + 4;

    fn of(headers: &http::HeaderMap) -> Self {
        let size = headers
            .iter()
            .map(|(name, value)| Self::FIXED + name.as_str().len() + value.len())
            .sum();
        let mut bytes = Vec::with_capacity(size);
        for (name, value) in headers {
            let (name, sensitive, value) = (name.as_str(), value.is_sensitive(), value.as_bytes());
            bytes.push(u8::from(sensitive));
            // Header names and values are far below 4 GiB: the http crate and every server
            // bound them.
            bytes.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
            bytes.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(value);
        }
        Self {
            bytes,
            count: headers.len(),
        }
    }

    fn rebuild(&self) -> Option<http::HeaderMap> {
        let mut headers = http::HeaderMap::with_capacity(self.count);
        let mut rest = self.bytes.as_slice();
        while let Some((&flag, tail)) = rest.split_first() {
            let (name_len, tail) = tail.split_first_chunk::<4>()?;
            let (value_len, tail) = tail.split_first_chunk::<4>()?;
            let name_len = usize::try_from(u32::from_le_bytes(*name_len)).ok()?;
            let value_len = usize::try_from(u32::from_le_bytes(*value_len)).ok()?;
            let (name, tail) = tail.split_at_checked(name_len)?;
            let (value, tail) = tail.split_at_checked(value_len)?;
            let mut value = http::HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(flag != 0);
            headers.append(http::HeaderName::from_bytes(name).ok()?, value);
            rest = tail;
        }
        Some(headers)
    }
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
            // The token sent, and the way to the cell should it be rejected.
            token: Arc<LocalToken>,
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
        token: Arc<LocalToken>,
        replay: bool,
    ) -> Self {
        Self {
            state: State::Called {
                future,
                retry,
                token,
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
                    token,
                    replay,
                } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(response));
                    }
                    let Some(cell) = token.cell() else {
                        // Every handle on the token cell is gone: nothing to renew.
                        return Poll::Ready(Ok(response));
                    };
                    let future =
                        after_401(cell, *replay, retry.take(), token.generation(), response);
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
    fn a_header_snapshot_rebuilds_the_same_headers_in_the_same_order() {
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
        let rebuilt = HeaderSnapshot::of(&headers).rebuild().unwrap();
        assert_eq!(rebuilt, headers);
        let order = |map: &HeaderMap| -> Vec<(String, Vec<u8>, bool)> {
            map.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
                .collect()
        };
        assert_eq!(order(&rebuilt), order(&headers));
        assert!(rebuilt["proxy-authorization"].is_sensitive());
        assert!(
            HeaderSnapshot::of(&HeaderMap::new())
                .rebuild()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_damaged_snapshot_is_refused_not_misread() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("application/fhir+json"));
        let snapshot = HeaderSnapshot::of(&headers);
        for cut in 1..snapshot.bytes.len() {
            let damaged = HeaderSnapshot {
                bytes: snapshot.bytes[..cut].to_vec(),
                count: 1,
            };
            assert!(damaged.rebuild().is_none(), "{cut}");
        }
    }
}
