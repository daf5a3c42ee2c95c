//! `JwksService`: serves the application's JWK Set.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use crate::keyset::KeySet;

/// A tower [`Service`] serving the public JWK Set of a [`KeySet`], for the JWKS URL registered in
/// Koppeltaal domain management.
///
/// `GET` answers `200` with the set as `application/json` and
/// `Cache-Control: public, max-age=<max_age>`; `HEAD` the same without a body; any other method
/// `405` with `Allow: GET, HEAD`. Every answer reflects the key set at that moment, so a
/// [`KeySet::publish`] shows at once. Only public members are ever served: the set is built from
/// the public half of each key.
///
/// It ignores the path: mount it at your JWKS path (TOP-KT-020 advises against a predictable
/// `/.well-known/jwks.json`).
///
/// # Example
///
/// ```
/// use koppeltaal_auth::jwks::JwksService;
/// use koppeltaal_auth::{Algorithm, KeySet, SigningKey};
///
/// # fn main() -> Result<(), koppeltaal_auth::Error> {
/// let keys = KeySet::new(SigningKey::generate(Algorithm::ES384)?);
/// let app: axum::Router = axum::Router::new()
///     .route_service("/keys/3f9c2d/jwks.json", JwksService::new(keys.clone()));
/// # let _ = app;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct JwksService {
    keys: KeySet,
    max_age: Option<Duration>,
}

impl JwksService {
    /// Serves `keys` with a `max-age` of the key set's propagation delay (60 s by default,
    /// `DEFAULT_PROPAGATION_DELAY`), read at every response, so that no cached copy of the set
    /// outlives the delay after which a newly published key signs.
    #[must_use]
    pub fn new(keys: KeySet) -> Self {
        Self {
            keys,
            max_age: None,
        }
    }

    /// Sets a shorter `max-age` for the `Cache-Control` header. A longer one than the key set's
    /// propagation delay is cut to it: the auth server could otherwise not know a new key when
    /// it starts signing.
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// The `max-age` served now.
    fn served_max_age(&self) -> Duration {
        let delay = self.keys.propagation_delay();
        self.max_age.map_or(delay, |max_age| max_age.min(delay))
    }

    fn respond(&self, method: &Method) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::default());
        if method != Method::GET && method != Method::HEAD {
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        // Serialising a JwkSet cannot fail: strings only.
        let body = serde_json::to_vec(&self.keys.jwks()).unwrap_or_default();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, cache_control(self.served_max_age()));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if method == Method::GET {
            *response.body_mut() = Full::new(Bytes::from(body));
        }
        response
    }
}

fn cache_control(max_age: Duration) -> HeaderValue {
    HeaderValue::try_from(format!("public, max-age={}", max_age.as_secs()))
        .unwrap_or_else(|_| HeaderValue::from_static("public, max-age=60"))
}

impl<B> Service<Request<B>> for JwksService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.respond(request.method())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ec_key, rsa_key};
    use http_body_util::BodyExt;
    use serde_json::Value;

    async fn call(service: &mut JwksService, method: Method) -> (Response<()>, Bytes) {
        let response = service
            .call(Request::builder().method(method).body(()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        (
            Response::from_parts(parts, ()),
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn serves_the_public_set_and_reflects_rotation() {
        let keys = KeySet::new(rsa_key()).with_propagation_delay(Duration::from_secs(180));
        let mut service = JwksService::new(keys.clone()).max_age(Duration::from_secs(120));
        let (response, body) = call(&mut service, Method::GET).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[CACHE_CONTROL], "public, max-age=120");
        let set: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(set["keys"].as_array().unwrap().len(), 1);
        keys.publish(ec_key()).unwrap();
        let (_, body) = call(&mut service, Method::GET).await;
        let set: Value = serde_json::from_slice(&body).unwrap();
        let kids: Vec<&str> = set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["test-rsa", "test-ec"]);
        // Never a private member.
        for key in set["keys"].as_array().unwrap() {
            for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
                assert!(key.get(private).is_none(), "{private} served");
            }
        }
    }

    #[tokio::test]
    async fn no_copy_of_the_set_is_cached_longer_than_the_propagation_delay() {
        // The default: the key set's delay, read at every response.
        let keys = KeySet::new(rsa_key()).with_propagation_delay(Duration::from_secs(10));
        let mut service = JwksService::new(keys.clone());
        let (response, _) = call(&mut service, Method::GET).await;
        assert_eq!(response.headers()[CACHE_CONTROL], "public, max-age=10");
        let _ = keys.clone().with_propagation_delay(Duration::from_secs(30));
        let (response, _) = call(&mut service, Method::GET).await;
        assert_eq!(response.headers()[CACHE_CONTROL], "public, max-age=30");
        // A longer max-age than the delay is cut to it, also Duration::MAX.
        for max_age in [Duration::from_secs(60), Duration::MAX] {
            let mut service = JwksService::new(keys.clone()).max_age(max_age);
            let (response, _) = call(&mut service, Method::GET).await;
            assert_eq!(response.headers()[CACHE_CONTROL], "public, max-age=30");
        }
    }

    #[tokio::test]
    async fn head_has_no_body_and_other_methods_are_refused() {
        let mut service = JwksService::new(KeySet::new(ec_key()));
        let (head, body) = call(&mut service, Method::HEAD).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert!(body.is_empty());
        assert_ne!(head.headers()[CONTENT_LENGTH], "0");
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let (response, _) = call(&mut service, method).await;
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(response.headers()[ALLOW], "GET, HEAD");
        }
    }
}
