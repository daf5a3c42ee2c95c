//! The response future of [`KoppeltaalAuth`](crate::KoppeltaalAuth).

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::BoxError;
use crate::head::HeadSnapshot;
use crate::layer::AuthShared;
use crate::replay::ReplayBody;
use crate::token::{CellLink, Rejection, RetryPlan, TokenCell, TokenHeader};

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

impl<S: Clone, B: ReplayBody> Retry<S, B> {
    /// The service and the request to send again, or `None` (with the reason logged) when the
    /// URI, a header or the body cannot be copied again.
    fn request(&self) -> Option<(S, Request<B>)> {
        let (Some((uri, headers)), Some(body)) = (self.head.rebuild(), self.body.try_clone_body())
        else {
            tracing::warn!(
                "the request could not be copied for the replay (URI, a header or the body); \
                 returning the 401"
            );
            return None;
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = self.extensions.clone();
        Some((self.service.clone(), request))
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
            // The token's cell and generation, should it be rejected: a link that does not
            // keep the cell alive (a `401` after every handle is gone renews nothing), with a
            // count of the thread's slot's own.
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
        cell: CellLink,
        generation: u64,
        replay: bool,
    ) -> Self {
        Self {
            state: State::Called {
                future,
                retry,
                cell,
                generation,
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
    let put = crate::service::put_token(request.headers_mut(), token.value().clone());
    // `service` was driven to readiness by the caller before `call`.
    let response = service.call(request).await.map_err(Into::into)?;
    if !put {
        // Sent without the token (a full header map), as the fast path does: its `401` says
        // nothing about the token, which is kept.
        return Ok(response);
    }
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

/// After a `401`: when the FHIR server's clock had not reached the token's start, waits until it
/// has and replays with the same token; otherwise (or when that replay is refused too) renews the
/// token and replays (see [`RetryPlan`]). The last answer goes back to the caller, as does the
/// `401` when the request cannot be replayed.
async fn after_401<S, B, ResBody>(
    cell: TokenCell,
    replay: bool,
    retry: Option<Retry<S, B>>,
    generation: u64,
    first: Response<ResBody>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    let mut plan = RetryPlan::new(generation);
    let mut verdict = plan.judge(&cell, first.headers());
    let Some(retry) = retry else {
        if verdict == Rejection::Renew {
            cell.invalidate(generation);
        }
        let reason = if replay {
            "the request body cannot be replayed"
        } else {
            "replay on 401 is off"
        };
        tracing::info!(
            generation,
            reason,
            renewed = verdict == Rejection::Renew,
            "401 returned to the caller; the next request has a token the server takes"
        );
        return Ok(first);
    };
    let mut last = first;
    loop {
        let token = match plan.next(&cell, verdict).await {
            Ok(Some(token)) => token,
            Ok(None) => {
                tracing::warn!(
                    generation = plan.generation(),
                    "the replay was rejected too; returning its 401"
                );
                return Ok(last);
            }
            Err(error) => {
                tracing::warn!(generation, %error, "could not renew the token after a 401; returning the 401");
                return Ok(last);
            }
        };
        let Some((mut service, mut request)) = retry.request() else {
            return Ok(last);
        };
        poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        let token = match usable_now(&cell, token).await {
            Ok(token) => token,
            Err(error) => {
                tracing::warn!(generation, %error, "no usable token for the replay; returning the 401");
                return Ok(last);
            }
        };
        // The answer before is not read.
        drop(last);
        cell.count_replay();
        crate::service::put_token(request.headers_mut(), token.value().clone());
        let response = service.call(request).await.map_err(Into::into)?;
        plan.sent_with(token.generation());
        if response.status() != StatusCode::UNAUTHORIZED {
            tracing::debug!(generation = token.generation(), "replayed after a 401");
            cell.confirm(token.generation());
            return Ok(response);
        }
        verdict = plan.judge(&cell, response.headers());
        last = response;
    }
}

/// `token` if the cell still hands it out, the cell's token otherwise: called once the service is
/// ready for the replay, so that a readiness wait longer than the token's usable life, or a
/// rejection meanwhile, never sends an expired or dropped token.
async fn usable_now(cell: &TokenCell, token: TokenHeader) -> Result<TokenHeader, crate::Error> {
    match cell.header_of(token.generation()) {
        Some(token) => Ok(token),
        None => cell.token().await,
    }
}
