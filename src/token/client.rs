//! `ClientCredentials`: the SMART Backend Services token request.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::Instrument as _;

use super::issued::{from_epoch_seconds, jwt_valid_from};
use super::response::{parse_error_response, parse_token_response};
use super::{AccessToken, BoxFuture, TokenSource};
use crate::assertion::ClientAssertion;
use crate::clock::{ClockSkew, shifted};
use crate::endpoint::parse_secure_url;
use crate::error::{Error, ErrorKind};
use crate::fetch::{
    DEFAULT_REQUEST_TIMEOUT, MAX_BODY, default_client, finish_client, read_limited,
};
use crate::key::SigningKey;
use crate::keyset::KeySet;

/// `expires_in` assumed when a token response has none: Koppeltaal's default token lifetime.
/// Never "valid forever", the mistake every peer library makes.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Longest timeout of one token or discovery request: 5 minutes.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The SMART Backend Services client credentials flow: a [`TokenSource`] that signs a fresh
/// client assertion for every request and posts it to the token endpoint.
///
/// The request is `POST` form-encoded with `Accept: application/json`:
/// `grant_type=client_credentials`,
/// `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
/// `client_assertion=<jwt>`, and `scope` only when configured (Koppeltaal ignores it). No client
/// secret, no Basic auth, no redirects followed. Response bodies over 64 KiB are refused unread.
///
/// Cheap to clone.
///
/// # Example
///
/// ```no_run
/// use koppeltaal_auth::{ClientCredentials, SigningKey, TokenSource};
///
/// # async fn run() -> Result<(), koppeltaal_auth::Error> {
/// let key = SigningKey::from_pem(std::fs::read("client-key.pem").unwrap_or_default(), "kid-1")?;
/// let source = ClientCredentials::builder()
///     .client_id("7e9b2b4e-0000-4000-8000-000000000000")
///     .token_endpoint("https://auth-service.koppeltaal.headease.nl/oauth2/token")
///     .signing_key(key)
///     .build()?;
/// let token = source.fetch().await?;
/// println!("token valid for {:?}", token.lifetime());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    token_endpoint: url::Url,
    assertion: ClientAssertion,
    keys: KeySet,
    scope: Option<String>,
    default_lifetime: Duration,
    skew: Arc<ClockSkew>,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.inner.assertion.client_id())
            .field("token_endpoint", &self.inner.assertion.audience())
            .field("keys", &self.inner.keys)
            .field("scope", &self.inner.scope)
            .finish_non_exhaustive()
    }
}

/// Builder for [`ClientCredentials`].
#[derive(Debug, Default)]
#[must_use]
pub struct ClientCredentialsBuilder {
    client_id: Option<String>,
    token_endpoint: Option<String>,
    keys: Option<KeySet>,
    scope: Option<String>,
    assertion_lifetime: Option<Duration>,
    iat_backdate: Option<Duration>,
    default_lifetime: Option<Duration>,
    /// A client this crate built already (after discovery), reused for token requests.
    http: Option<reqwest::Client>,
    http_builder: Option<reqwest::ClientBuilder>,
    proxy: Option<reqwest::Proxy>,
    timeout: Option<Duration>,
}

impl ClientCredentials {
    /// Starts building a [`ClientCredentials`].
    pub fn builder() -> ClientCredentialsBuilder {
        ClientCredentialsBuilder::default()
    }

    /// The token endpoint, exactly as configured (it is also the assertion's `aud`).
    #[must_use]
    pub fn token_endpoint(&self) -> &str {
        self.inner.assertion.audience()
    }

    /// The client id.
    #[must_use]
    pub fn client_id(&self) -> &str {
        self.inner.assertion.client_id()
    }

    /// One token request, and at most one more when the server's clock turned out to be off:
    /// the reference server answers a plain `401` to an `iat` in its future, and its `Date`
    /// header tells by how much.
    async fn request(&self) -> Result<AccessToken, Error> {
        let backdate = self.inner.assertion.iat_backdate();
        let applied = self.inner.skew.correction(backdate);
        let result = self.attempt(applied).await;
        let Err(error) = &result else {
            return result;
        };
        let corrected = self.inner.skew.correction(backdate);
        let plain_401 =
            error.status() == Some(http::StatusCode::UNAUTHORIZED) && error.oauth_error().is_none();
        if plain_401 && corrected.abs_diff(applied) > backdate.as_secs() {
            tracing::info!(
                offset_s = corrected,
                "token request refused and the server's clock differs from ours: retrying once with corrected assertion times"
            );
            return self.attempt(corrected).await;
        }
        result
    }

    /// Sends one token request, with assertion times shifted by `offset` seconds.
    async fn attempt(&self, offset: i64) -> Result<AccessToken, Error> {
        let inner = &*self.inner;
        // A new assertion (new jti) for every attempt: the server refuses a jti it has seen.
        // Signed with the key active now, so that a key rotation needs no restart.
        let key = inner.keys.signing_key();
        tracing::debug!(kid = key.kid(), alg = %key.algorithm(), offset_s = offset, "signing the client assertion");
        let assertion = inner.assertion.sign_at(
            &key,
            shifted(SystemTime::now(), offset),
            &uuid::Uuid::new_v4().to_string(),
        )?;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
        ];
        if let Some(scope) = &inner.scope {
            form.push(("scope", scope));
        }
        let started = Instant::now();
        let response = inner
            .http
            .post(inner.token_endpoint.clone())
            .header(http::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|err| Error::from_reqwest("token request failed", err))?;
        let received_at = Instant::now();
        inner.skew.observe(response.headers(), SystemTime::now());
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_limited(response, MAX_BODY).await?;
        tracing::debug!(
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "token endpoint answered"
        );
        if status.is_redirection() {
            return Err(Error::new(
                ErrorKind::TokenRejected,
                "the token endpoint answered with a redirect; token requests never follow one \
                 (configure the final token endpoint URL)",
            )
            .with_status(status));
        }
        if status.is_success() {
            let token = parse_token_response(&body, received_at, inner.default_lifetime)?;
            // When a resource server starts taking it: the JWT's own claims, else the moment the
            // auth server answered (by its clock).
            let not_before = jwt_valid_from(token.as_str())
                .map(from_epoch_seconds)
                .or_else(|| {
                    let date = headers.get(http::header::DATE)?.to_str().ok()?;
                    httpdate::parse_http_date(date).ok()
                });
            Ok(token.with_not_before(not_before))
        } else {
            Err(parse_error_response(
                status,
                &headers,
                &body,
                SystemTime::now(),
                &[assertion.as_str()],
            ))
        }
    }
}

impl TokenSource for ClientCredentials {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        let span = tracing::debug_span!(
            "token_request",
            token_endpoint = %self.inner.token_endpoint,
            client_id = %self.inner.assertion.client_id(),
        );
        Box::pin(self.request().instrument(span))
    }
}

impl ClientCredentialsBuilder {
    /// Sets the client id from domain management: `iss` and `sub` of the assertion. Required.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Sets the token endpoint URL. Required. Used byte for byte as the assertion `aud`: the
    /// reference server compares strings, so a trailing slash matters.
    pub fn token_endpoint(mut self, url: impl Into<String>) -> Self {
        self.token_endpoint = Some(url.into());
        self
    }

    /// Sets the key that signs assertions. This or [`key_set`](Self::key_set) is required.
    pub fn signing_key(mut self, key: SigningKey) -> Self {
        self.keys = Some(KeySet::new(key));
        self
    }

    /// Signs with the active key of `keys` at each request, so that keys can be rotated while
    /// running (see [`KeySet`]).
    pub fn key_set(mut self, keys: KeySet) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Sends `scope` with every token request. By default no scope is sent: Koppeltaal sets
    /// the scope from the application's role.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Sets the assertion lifetime. Defaults to 60 seconds; with the `iat` back-dating at most
    /// 300 (295 with the default back-dating; see [`ClientAssertion::with_lifetime`]).
    pub fn assertion_lifetime(mut self, lifetime: Duration) -> Self {
        self.assertion_lifetime = Some(lifetime);
        self
    }

    /// Sets the `iat` back-dating. Defaults to 5 seconds.
    pub fn iat_backdate(mut self, backdate: Duration) -> Self {
        self.iat_backdate = Some(backdate);
        self
    }

    /// Sets the lifetime assumed when a token response has no `expires_in`. Defaults to 300
    /// seconds; from 1 second to [`MAX_TOKEN_LIFETIME`](super::MAX_TOKEN_LIFETIME) (checked by
    /// [`build`](Self::build)).
    pub fn default_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = Some(lifetime);
        self
    }

    /// Builds the HTTP client for token requests from `builder`: your TLS roots, client
    /// identity, proxy, timeouts, ... Redirects are turned off whatever the builder says (a
    /// token request must never be sent anywhere else: the assertion in it could be redeemed
    /// there). Its proxy settings are its own: reqwest reads the proxy environment variables
    /// unless you call `no_proxy()` on it. By default a client with no redirects, no proxy (none
    /// from the environment either) and a 10 second timeout is built.
    pub fn http_client_builder(mut self, builder: reqwest::ClientBuilder) -> Self {
        self.http_builder = Some(builder);
        self.http = None;
        self
    }

    /// Sends token requests through `proxy` (the default client uses none, and ignores the
    /// proxy environment variables). Not used with
    /// [`http_client_builder`](Self::http_client_builder): configure the proxy on that.
    pub fn proxy(mut self, proxy: reqwest::Proxy) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// Sets the timeout of one token request when the default client is used. Defaults to 10
    /// seconds; more than zero and at most [`MAX_REQUEST_TIMEOUT`] (checked by
    /// [`build`](Self::build)).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub(crate) fn get_client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    pub(crate) fn get_token_endpoint(&self) -> Option<&str> {
        self.token_endpoint.as_deref()
    }

    pub(crate) fn get_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    pub(crate) fn get_keys(&self) -> Option<&KeySet> {
        self.keys.as_ref()
    }

    /// The HTTP client: the one built already, else one from the caller's builder, else the
    /// default one. Built once: the builder is used up, and the client kept for reuse.
    pub(crate) fn http_client(&mut self) -> Result<reqwest::Client, Error> {
        if let Some(http) = &self.http {
            return Ok(http.clone());
        }
        let timeout = self.request_timeout_checked()?;
        let http = match self.http_builder.take() {
            Some(builder) => {
                let builder = match self.timeout {
                    Some(timeout) => builder.timeout(timeout),
                    None => builder,
                };
                finish_client(builder)?
            }
            None => default_client(timeout, self.proxy.clone())?,
        };
        self.http = Some(http.clone());
        Ok(http)
    }

    /// Uses `client`, built by this crate (with redirects off), for token requests.
    pub(crate) fn built_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    fn request_timeout_checked(&self) -> Result<Duration, Error> {
        let timeout = self.timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_REQUEST_TIMEOUT {
            return Err(Error::config(
                "the request timeout must be more than zero and at most 300 seconds",
            ));
        }
        Ok(timeout)
    }

    /// Builds the [`ClientCredentials`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the client id, token endpoint or key
    /// is missing, the token endpoint is not an absolute `https` URL (plain `http` is allowed for
    /// loopback hosts only), the assertion lifetime is over 300 seconds, the default token
    /// lifetime is not between 1 second and a year, or the request timeout is zero or over 300
    /// seconds.
    pub fn build(mut self) -> Result<ClientCredentials, Error> {
        let http = self.http_client()?;
        let client_id = self
            .client_id
            .ok_or_else(|| Error::config("client_id is required"))?;
        let endpoint = self
            .token_endpoint
            .ok_or_else(|| Error::config("token_endpoint is required"))?;
        let keys = self
            .keys
            .ok_or_else(|| Error::config("signing_key or key_set is required"))?;
        let token_endpoint = parse_secure_url("token endpoint", &endpoint)?;
        let mut assertion = ClientAssertion::new(client_id, endpoint)?;
        // The back-dating first: the two together are at most 300 s.
        if let Some(backdate) = self.iat_backdate {
            assertion = assertion.with_iat_backdate(backdate)?;
        }
        if let Some(lifetime) = self.assertion_lifetime {
            assertion = assertion.with_lifetime(lifetime)?;
        }
        let default_lifetime = self.default_lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME);
        if default_lifetime < Duration::from_secs(1) || default_lifetime > super::MAX_TOKEN_LIFETIME
        {
            return Err(Error::config(
                "the default token lifetime must be between 1 second and a year",
            ));
        }
        Ok(ClientCredentials {
            inner: Arc::new(Inner {
                http,
                token_endpoint,
                assertion,
                keys,
                scope: self.scope,
                default_lifetime,
                skew: Arc::default(),
            }),
        })
    }
}
