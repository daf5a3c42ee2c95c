//! `KoppeltaalAuth<S>`: the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tower_service::Service;

use crate::error::BoxError;
use crate::future::{ResponseFuture, Retry};
use crate::layer::AuthShared;
use crate::replay::ReplayBody;

/// Middleware that adds a Koppeltaal bearer token to requests for the FHIR base and replays a
/// request once after a `401`. Made by [`KoppeltaalAuthLayer`](crate::KoppeltaalAuthLayer).
///
/// # Errors
///
/// The service's error type is [`BoxError`]. Errors of the inner service pass through; when no
/// token can be had, the error is a [`koppeltaal_auth::Error`](crate::Error) (downcast it):
///
/// ```
/// # fn check(err: koppeltaal_auth::BoxError) {
/// if let Some(auth) = err.downcast_ref::<koppeltaal_auth::Error>() {
///     eprintln!("no Koppeltaal token: {auth} (transient: {})", auth.is_transient());
/// }
/// # }
/// ```
///
/// # Retries
///
/// A `401` (never a `403`) to a request that carried our token makes the token's generation
/// invalid: the first such `401` renews the token, later ones for the same generation wait for
/// that renewal. The request is then sent again with the new token, if its body can be replayed
/// (see [`ReplayBody`]); the first response's body is dropped unread. When the FHIR server's
/// clock is behind (its `Date` before the token's start), the same token is sent once more
/// after a wait instead, before any renewal: a request is sent at most four times (its token,
/// after the wait, the renewed token, after a wait for that one), with at most one renewal, and
/// the last `401` is returned as is. When the body cannot be replayed, or the renewal fails, the
/// original `401` is returned; an error from the inner service on a replay is returned as the
/// error.
///
/// Replaying needs a copy of the request taken before it is sent (its URI and headers copied
/// into one buffer, its extensions and body cloned) and a clone of the inner service: that copy,
/// one allocation per request plus whatever cloning the inner service costs (no allocation for
/// hyper-util's client or a `service_fn`, one for a `BoxCloneService`), is the price of
/// transparent renewal.
/// [`replay_on_401(false)`](crate::KoppeltaalAuthLayer::replay_on_401) turns it off.
///
/// # Layer order
///
/// Put this layer *inside* (after, in a `ServiceBuilder`) `FollowRedirectLayer`, so that every
/// redirect hop is checked against the FHIR base again and a redirect to another origin never
/// carries the token; *inside* generic retry layers, so that each attempt gets the current token;
/// and inside a `TimeoutLayer` that should bound the whole exchange, token wait and replay
/// included. Request URIs must be absolute where this layer sees them (as hyper-util's client
/// requires): a relative URI never gets a token.
#[derive(Clone)]
pub struct KoppeltaalAuth<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<AuthShared>,
}

impl<S> KoppeltaalAuth<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> fmt::Debug for KoppeltaalAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KoppeltaalAuth")
            .field("scope", &self.shared.scope)
            .field("replay_on_401", &self.shared.replay)
            .finish_non_exhaustive()
    }
}

/// Adds the token unless the request has its own `Authorization` (then: `false`, and the
/// request keeps every one of its values, in their order) or its header map is full (`false`,
/// nothing added). One header-map lookup on the common path: appending costs what inserting
/// does (a lookup through the entry API costs more), and a value appended to the caller's own is
/// taken out again (rare: a request with its own `Authorization` that finds a fresh token).
#[inline]
fn insert_token<B>(request: &mut Request<B>, value: HeaderValue) -> bool {
    match request.headers_mut().try_append(AUTHORIZATION, value) {
        Ok(false) => true,
        Ok(true) => {
            take_back_token(request.headers_mut());
            false
        }
        Err(_) => {
            tracing::warn!("the request's header map is full: sending it without the token");
            false
        }
    }
}

/// Sets the token on a request that has no `Authorization` of its own (the slow path, a
/// replay). `false` (with a warning) when the header map is full: the request then goes out
/// without a token, and its answer (a `401`, surely) is returned as it is: it says nothing
/// about the token.
pub(crate) fn put_token(headers: &mut http::HeaderMap, value: HeaderValue) -> bool {
    let put = headers.try_insert(AUTHORIZATION, value).is_ok();
    if !put {
        tracing::warn!("the request's header map is full: sending it without the token");
    }
    put
}

/// Removes the last `Authorization` value (the token just appended after the caller's own),
/// keeping the caller's values in their order and the header in its place.
#[cold]
fn take_back_token(headers: &mut http::HeaderMap) {
    let Ok(http::header::Entry::Occupied(mut entry)) = headers.try_entry(AUTHORIZATION) else {
        return;
    };
    let mut own: Vec<HeaderValue> = entry.iter().cloned().collect();
    own.pop();
    let mut own = own.into_iter();
    if let Some(first) = own.next() {
        entry.insert(first);
        for value in own {
            entry.append(value);
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for KoppeltaalAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: ReplayBody + Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let scope = &self.shared.scope;
        if !scope.matches_uri(request.uri()) || !scope.takes_host(request.headers()) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        match self.shared.cell.current_linked() {
            // Fast path: a fresh token from this thread's slot in the cell, no wait, no
            // allocation (the replay copy and a thread's first copy of a new token aside), no
            // reference count in common with other threads (the slot's value and link are its
            // own; see `TokenCell::current`).
            Some((token, link)) => {
                let generation = token.generation();
                let value = token.into_value();
                // Two arms so that the no-replay future is built with a literal `None` (a tag
                // write) rather than a moved, full-size `Option<Retry>`.
                if self.shared.replay {
                    // The copy is taken before the token goes in: it never holds one.
                    let retry = Retry::prepare(&request, &self.inner);
                    if !insert_token(&mut request, value) {
                        return ResponseFuture::passthrough(self.inner.call(request));
                    }
                    ResponseFuture::called(self.inner.call(request), retry, link, generation, true)
                } else {
                    if !insert_token(&mut request, value) {
                        return ResponseFuture::passthrough(self.inner.call(request));
                    }
                    ResponseFuture::called(self.inner.call(request), None, link, generation, false)
                }
            }
            None if request.headers().contains_key(AUTHORIZATION) => {
                ResponseFuture::passthrough(self.inner.call(request))
            }
            // Slow path: wait for a token first. Take the service that was driven to readiness
            // and leave a clone in its place:
            // https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services
            None => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(ready, request, Arc::clone(&self.shared))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(own: &[&'static str]) -> Request<()> {
        let mut request = Request::new(());
        for value in own {
            request
                .headers_mut()
                .append(AUTHORIZATION, HeaderValue::from_static(value));
        }
        request
    }

    fn authorization(request: &Request<()>) -> Vec<&str> {
        request
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect()
    }

    const TOKEN: HeaderValue = HeaderValue::from_static("Bearer ours");

    #[test]
    fn the_token_goes_into_a_request_without_authorization() {
        let mut request = request(&[]);
        assert!(insert_token(&mut request, TOKEN));
        assert_eq!(authorization(&request), ["Bearer ours"]);
    }

    #[test]
    fn a_callers_own_values_are_kept_in_their_order_and_place() {
        for own in [&["Bearer theirs"][..], &["Basic a", "Bearer b", "Bearer c"]] {
            let mut request = request(&[]);
            let headers = request.headers_mut();
            headers.insert("x-before", HeaderValue::from_static("1"));
            for value in own {
                headers.append(AUTHORIZATION, HeaderValue::from_static(value));
            }
            headers.insert("x-after", HeaderValue::from_static("2"));
            let names = |request: &Request<()>| {
                request
                    .headers()
                    .keys()
                    .map(|name| name.as_str().to_owned())
                    .collect::<Vec<_>>()
            };
            let before = names(&request);
            assert!(!insert_token(&mut request, TOKEN));
            assert_eq!(authorization(&request), own);
            assert_eq!(names(&request), before, "the headers in their order");
        }
    }

    #[test]
    fn a_full_header_map_gets_no_token_and_no_panic() {
        let mut request = request(&[]);
        let mut n = 0u32;
        while request
            .headers_mut()
            .try_append(
                http::HeaderName::try_from(format!("x-{n}")).unwrap(),
                HeaderValue::from_static("v"),
            )
            .is_ok()
        {
            n += 1;
            assert!(n < 100_000, "the map never filled");
        }
        assert!(!insert_token(&mut request, TOKEN));
        assert!(request.headers().get(AUTHORIZATION).is_none());
    }
}
