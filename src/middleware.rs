//! `KoppeltaalAuthMiddleware`: the same token, scope and replay for reqwest-middleware clients.

use std::sync::Arc;

use http::{Extensions, StatusCode, header::AUTHORIZATION};
use reqwest_middleware::{Middleware, Next};

use crate::authenticator::Authenticator;
use crate::layer::{AuthShared, KoppeltaalAuthLayer};
use crate::token::{Rejection, RetryPlan};

/// [`reqwest_middleware::Middleware`] that adds a Koppeltaal bearer token to requests for the
/// FHIR base (feature `reqwest-middleware`).
///
/// Behaves as the tower layer: the same cell and token, the same scope check, the caller's own
/// `Authorization` left alone, and on a `401` the same renewal and replays (at most one renewal
/// per request, and a request is sent at most four times: see the README's "What the layer
/// does").
/// Requests whose body cannot be cloned (streaming bodies, see [`reqwest::Request::try_clone`])
/// are sent once; a `401` to them is returned as is.
///
/// reqwest follows redirects below the middleware, keeping the token on a redirect within one
/// origin: build the client with [`Authenticator::redirect_policy`] (or no redirects), as below.
/// A `401` from a URL outside the FHIR base that a redirect led to is returned as is: it says
/// nothing about the token, which is kept.
///
/// # Example
///
/// ```no_run
/// # async fn run(auth: koppeltaal_auth::Authenticator) -> Result<(), koppeltaal_auth::BoxError> {
/// let http = reqwest::Client::builder()
///     .redirect(auth.redirect_policy())
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(http)
///     .with(auth.middleware())
///     .build();
/// let patient = client
///     .get(format!("{}/Patient/123", auth.fhir_base_url()))
///     .send()
///     .await?;
/// # let _ = patient;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// When no token can be had, the request fails with
/// [`reqwest_middleware::Error::Middleware`] wrapping a [`koppeltaal_auth::Error`](crate::Error).
#[derive(Clone, Debug)]
pub struct KoppeltaalAuthMiddleware {
    shared: Arc<AuthShared>,
}

impl Authenticator {
    /// The reqwest middleware (feature `reqwest-middleware`), sharing this authenticator's token.
    #[must_use]
    pub fn middleware(&self) -> KoppeltaalAuthMiddleware {
        KoppeltaalAuthMiddleware {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Authenticator {
    /// A redirect policy for the `reqwest::Client` under the middleware (feature
    /// `reqwest-middleware`): up to 10 redirects, except that a request to the FHIR base is not
    /// redirected out of it by a hop that keeps the origin of the URL before it (reqwest would
    /// send the token along on such a hop), nor back into it from another origin (reqwest took
    /// the token out on the way there: the FHIR server's `401` would say nothing about the
    /// token). The `3xx` response is returned then.
    ///
    /// reqwest follows redirects inside the client, below the middleware, and keeps the
    /// `Authorization` header when a redirect stays on the same origin (scheme, host and port):
    /// with its default policy a FHIR server answering `302 Location: /admin` (or another
    /// domain's base on a shared host) is sent the token there. Build the client with this
    /// policy, or with `reqwest::redirect::Policy::none()`.
    ///
    /// ```no_run
    /// # fn build(auth: koppeltaal_auth::Authenticator) -> Result<(), reqwest::Error> {
    /// let http = reqwest::Client::builder()
    ///     .redirect(auth.redirect_policy())
    ///     .build()?;
    /// let client = reqwest_middleware::ClientBuilder::new(http)
    ///     .with(auth.middleware())
    ///     .build();
    /// # let _ = client;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn redirect_policy(&self) -> reqwest::redirect::Policy {
        let shared = Arc::clone(&self.shared);
        reqwest::redirect::Policy::custom(move |attempt| {
            // reqwest sends every hop with the first request's headers, taking `Authorization`
            // out only when the hop changes origin from the URL before it: after a hop to another
            // origin, a second hop within that origin carries the token again. So a chain that
            // started under the base stops at any hop out of it that keeps the origin of the URL
            // before it (a hop to another origin goes without the token, and is followed).
            let previous = attempt.previous();
            let from_the_base = previous
                .first()
                .is_some_and(|first| shared.scope.matches_url(first));
            let same_origin = previous
                .last()
                .is_some_and(|from| from.origin() == attempt.url().origin());
            let into_the_base = shared.scope.matches_url(attempt.url());
            if from_the_base && !into_the_base && same_origin {
                tracing::warn!(
                    "a redirect of a FHIR request out of the FHIR base is not followed: the \
                     token could go along"
                );
                attempt.stop()
            } else if from_the_base && into_the_base && !same_origin {
                // Back into the base from another origin: reqwest took the token out on the way
                // there, so this hop would go without it, and its `401` would be taken for a
                // rejection of the token (a renewal for nothing).
                tracing::warn!(
                    "a redirect of a FHIR request back into the FHIR base from another origin is \
                     not followed: it would go without the token"
                );
                attempt.stop()
            } else if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        })
    }
}

/// reqwest's default limit.
const MAX_REDIRECTS: usize = 10;

impl From<&KoppeltaalAuthLayer> for KoppeltaalAuthMiddleware {
    fn from(layer: &KoppeltaalAuthLayer) -> Self {
        Self {
            shared: Arc::clone(&layer.shared),
        }
    }
}

#[async_trait::async_trait]
impl Middleware for KoppeltaalAuthMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let shared = &*self.shared;
        if request.headers().contains_key(AUTHORIZATION)
            || !shared.scope.matches_url(request.url())
            || !shared.scope.takes_host(request.headers())
        {
            return next.run(request, extensions).await;
        }
        let token = shared
            .cell
            .token()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let replay = if shared.replay {
            request.try_clone()
        } else {
            None
        };
        if !crate::service::put_token(request.headers_mut(), token.value().clone()) {
            // Sent without the token (a full header map): its `401` says nothing about the token.
            return next.run(request, extensions).await;
        }
        let response = next.clone().run(request, extensions).await?;
        if !rejects_the_token(shared, &response) {
            return Ok(response);
        }
        let generation = token.generation();
        let cell = &shared.cell;
        let mut plan = RetryPlan::new(generation);
        let mut verdict = plan.judge(cell, response.headers());
        let Some(replay) = replay else {
            if verdict == Rejection::Renew {
                cell.invalidate(generation);
            }
            tracing::info!(
                generation,
                renewed = verdict == Rejection::Renew,
                "401 returned to the caller: the request body cannot be replayed; the next \
                 request has a token the server takes"
            );
            return Ok(response);
        };
        let mut last = response;
        loop {
            let token = match plan.next(cell, verdict).await {
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
            // `try_clone` worked once, on the same request: it works again.
            let Some(mut again) = replay.try_clone() else {
                return Ok(last);
            };
            drop(last);
            crate::service::put_token(again.headers_mut(), token.value().clone());
            cell.count_replay();
            plan.sent_with(token.generation());
            let response = next.clone().run(again, extensions).await?;
            if response.status() != StatusCode::UNAUTHORIZED {
                cell.confirm(token.generation());
                return Ok(response);
            }
            if !rejects_the_token(shared, &response) {
                return Ok(response);
            }
            verdict = plan.judge(cell, response.headers());
            last = response;
        }
    }
}

/// Whether `response` is a `401` that refuses the token: one from the FHIR base. reqwest follows
/// redirects below the middleware, and a `401` from a hop out of the base (sent without the
/// token, or to a server that never saw it) says nothing about the token: it is returned as is,
/// the token kept, the request not replayed, and its `Date` not taken for the FHIR server's clock.
fn rejects_the_token(shared: &AuthShared, response: &reqwest::Response) -> bool {
    response.status() == StatusCode::UNAUTHORIZED && shared.scope.matches_url(response.url())
}
