//! [`ClientCredentialsBuilder`]: the settings of the token request, checked when it is built.

use std::sync::Arc;
use std::time::Duration;

use super::{ClientCredentials, DEFAULT_TOKEN_LIFETIME, Inner, MAX_REQUEST_TIMEOUT};
use crate::assertion::ClientAssertion;
use crate::endpoint::parse_secure_url;
use crate::error::Error;
use crate::fetch::{DEFAULT_REQUEST_TIMEOUT, default_client, finish_client};
use crate::key::SigningKey;
use crate::keyset::KeySet;

/// Builder for [`ClientCredentials`].
#[derive(Default)]
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
    /// Whether the HTTP client comes from the caller's builder (its timeouts are its own).
    custom_http: bool,
    proxy: Option<reqwest::Proxy>,
    timeout: Option<Duration>,
}

/// Shows whether a proxy and a client of the caller's are set, not what they hold: reqwest's
/// `Debug` of a proxy prints its URL with the password and its basic-auth header, and of a
/// client builder its default headers (an API gateway's key, say).
impl std::fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentialsBuilder")
            .field("client_id", &self.client_id)
            .field("token_endpoint", &self.token_endpoint)
            .field("keys", &self.keys)
            .field("scope", &self.scope)
            .field("assertion_lifetime", &self.assertion_lifetime)
            .field("iat_backdate", &self.iat_backdate)
            .field("default_lifetime", &self.default_lifetime)
            .field(
                "http_client",
                &(self.http.is_some() || self.http_builder.is_some()),
            )
            .field("proxy", &self.proxy.is_some())
            .field("timeout", &self.timeout)
            .finish()
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
    /// seconds; from 1 second to [`MAX_TOKEN_LIFETIME`](crate::token::MAX_TOKEN_LIFETIME) (checked by
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
    /// from the environment either) and a 10 second timeout is built. A builder's own timeouts
    /// apply, unless [`request_timeout`](Self::request_timeout) is set; without either, each
    /// token or discovery request is still cut off at [`MAX_REQUEST_TIMEOUT`] (5 minutes), so
    /// that a server that never answers cannot hang it.
    pub fn http_client_builder(mut self, builder: reqwest::ClientBuilder) -> Self {
        self.http_builder = Some(builder);
        self.custom_http = true;
        self.http = None;
        self
    }

    /// Sends token requests through `proxy` (the default client uses none, and ignores the
    /// proxy environment variables). Not together with
    /// [`http_client_builder`](Self::http_client_builder) (a configuration error: configure the
    /// proxy on that builder).
    pub fn proxy(mut self, proxy: reqwest::Proxy) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// Sets the timeout of one token request: on the default client (10 seconds when not set),
    /// and on one built from [`http_client_builder`](Self::http_client_builder), where it
    /// replaces the builder's own timeout. Must be more than zero and at most
    /// [`MAX_REQUEST_TIMEOUT`] (checked by [`build`](Self::build)).
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
        if self.http_builder.is_some() && self.proxy.is_some() {
            // The proxy would be dropped: the requests would go direct, unknown to the caller.
            return Err(Error::config(
                "proxy(..) is not used with http_client_builder(..): set the proxy on that \
                 builder",
            ));
        }
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

    /// The bound a token or discovery request needs on top of the HTTP client's own timeouts:
    /// none when the client has one from this crate (the default client, or the request
    /// timeout set on the caller's builder), else [`MAX_REQUEST_TIMEOUT`] (the caller's builder
    /// may have shorter timeouts of its own, or none).
    pub(crate) fn request_bound(&self) -> Option<Duration> {
        (self.custom_http && self.timeout.is_none()).then_some(MAX_REQUEST_TIMEOUT)
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
        let bound = self.request_bound();
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
        if default_lifetime < Duration::from_secs(1)
            || default_lifetime > crate::token::MAX_TOKEN_LIFETIME
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
                bound,
            }),
        })
    }
}
