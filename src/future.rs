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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a replay needs: a copy of the request and a clone of the inner service.
pub(crate) struct Retry<S, B> {
    service: S,
    parts: http::request::Parts,
    body: B,
}

impl<S: Clone, B: ReplayBody> Retry<S, B> {
    /// Copies what a replay needs, or `None` when the body cannot be replayed (then nothing is
    /// copied at all).
    pub(crate) fn prepare(request: &Request<B>, service: &S) -> Option<Self> {
        let body = request.body().try_clone_body()?;
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = request.method().clone();
        parts.uri = request.uri().clone();
        parts.version = request.version();
        parts.headers = request.headers().clone();
        parts.extensions = request.extensions().clone();
        Some(Self {
            service: service.clone(),
            parts,
            body,
        })
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
            generation: u64,
            shared: Arc<AuthShared>,
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
        generation: u64,
        shared: Arc<AuthShared>,
    ) -> Self {
        Self {
            state: State::Called {
                future,
                retry,
                generation,
                shared,
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
                    generation,
                    shared,
                } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(response));
                    }
                    let future = after_401(Arc::clone(shared), retry.take(), *generation, response);
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
    after_401(shared, retry, token.generation(), response).await
}

/// Renews the rejected token and replays the request once, or hands the `401` back.
async fn after_401<S, B, ResBody>(
    shared: Arc<AuthShared>,
    retry: Option<Retry<S, B>>,
    generation: u64,
    first: Response<ResBody>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    let Some(Retry {
        mut service,
        parts,
        body,
    }) = retry
    else {
        shared.cell.invalidate(generation);
        let reason = if shared.replay {
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
    let token = match shared.cell.renewed(generation).await {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(generation, %error, "could not renew the token after a 401; returning the 401");
            return Ok(first);
        }
    };
    // The first answer's body is not read.
    drop(first);
    let mut request = Request::from_parts(parts, body);
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
        shared.cell.confirm(token.generation());
    }
    Ok(response)
}
