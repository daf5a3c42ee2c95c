//! The entry point: [`KoppeltaalAuthBuilder`], configure once, get an [`Authenticator`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::authenticator::Authenticator;
use crate::error::Error;
use crate::key::SigningKey;
use crate::keyset::KeySet;
use crate::layer::AuthShared;
use crate::scope::FhirScope;
use crate::service::KoppeltaalAuth;
use crate::smart;
use crate::store::{SharedStore, StoreKey, StorePolicy};
use crate::token::{ClientCredentialsBuilder, RefreshPolicy, TokenCell, TokenSource};

impl KoppeltaalAuth<()> {
    /// Starts configuring Koppeltaal authentication; the same as [`Authenticator::builder`].
    pub fn builder() -> KoppeltaalAuthBuilder {
        KoppeltaalAuthBuilder::default()
    }
}

/// Builder for an [`Authenticator`]; get one from [`KoppeltaalAuth::builder`].
///
/// Required: [`fhir_base_url`](Self::fhir_base_url), and either [`client_id`](Self::client_id)
/// with [`signing_key`](Self::signing_key) (the SMART Backend Services flow) or a
/// [`token_source`](Self::token_source). The token endpoint comes from
/// [`token_endpoint`](Self::token_endpoint), or from SMART discovery with
/// [`discover`](Self::discover).
///
/// Defaults (DESIGN.md section 3): algorithm from the key (RS512 for RSA), assertion lifetime
/// 60 s, `iat` back-dated 5 s, no `scope` sent, 300 s assumed when `expires_in` is missing, token
/// requests time out after 10 s, and the [`RefreshPolicy`] defaults (refresh 20% ahead with
/// jitter, 10 s safety margin, backoff 200 ms to 30 s, 30 s wait timeout, background refresh on).
/// Replay on `401` is on.
#[derive(Default)]
#[must_use]
pub struct KoppeltaalAuthBuilder {
    fhir_base: Option<String>,
    /// Everything about the token request itself.
    credentials: ClientCredentialsBuilder,
    policy: RefreshPolicy,
    no_replay: bool,
    source: Option<Box<dyn TokenSource>>,
    shared_store: Option<Box<dyn SharedStore>>,
    store_policy: StorePolicy,
    #[cfg(feature = "opentelemetry")]
    meter: Option<opentelemetry::metrics::Meter>,
    #[cfg(feature = "opentelemetry")]
    meter_attributes: Vec<opentelemetry::KeyValue>,
}

impl fmt::Debug for KoppeltaalAuthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KoppeltaalAuthBuilder")
            .field("fhir_base", &self.fhir_base)
            .field("credentials", &self.credentials)
            .field("policy", &self.policy)
            .field("replay_on_401", &!self.no_replay)
            .field("custom_source", &self.source.is_some())
            .field("shared_store", &self.shared_store.is_some())
            .finish_non_exhaustive()
    }
}

impl KoppeltaalAuthBuilder {
    /// Sets the FHIR base URL of the Koppeltaal domain. Required. Tokens go to requests under
    /// it (same scheme, host and port, path under its path) and nowhere else. Must be `https`
    /// (plain `http` only for loopback hosts), and written as a URL parser writes it (no dot
    /// segments, nothing it would percent-encode, no `:0443`; case, a default port and a
    /// trailing slash do not matter): requests are built from this text, and must match the
    /// scope of the parsed URL. [`build`](Self::build) names the form to write otherwise.
    pub fn fhir_base_url(mut self, url: impl Into<String>) -> Self {
        self.fhir_base = Some(url.into());
        self
    }

    /// Sets the client id the application got from Koppeltaal domain management.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.credentials = self.credentials.client_id(client_id);
        self
    }

    /// Sets the key that signs client assertions; its public half must be in the JWK Set
    /// registered for the application.
    pub fn signing_key(mut self, key: SigningKey) -> Self {
        self.credentials = self.credentials.signing_key(key);
        self
    }

    /// Signs with the active key of a [`KeySet`], for key rotation without a restart. Serve the
    /// same set with [`JwksService`](crate::jwks::JwksService).
    pub fn key_set(mut self, keys: KeySet) -> Self {
        self.credentials = self.credentials.key_set(keys);
        self
    }

    /// Sets the token endpoint, overriding discovery. Used byte for byte as the assertion `aud`.
    pub fn token_endpoint(mut self, url: impl Into<String>) -> Self {
        self.credentials = self.credentials.token_endpoint(url);
        self
    }

    /// Publishes the cell's OpenTelemetry metrics through `meter` (feature `opentelemetry`;
    /// the table of instruments is in the README). Attributes name the token endpoint's host
    /// (`server.address`) and the client id (`koppeltaal.client_id`), never a secret.
    ///
    /// The gauges are observable instruments whose callbacks the OpenTelemetry SDK keeps until
    /// the meter provider is dropped (it has no way to unregister one): each `Authenticator`
    /// built with a meter leaves a few small callbacks behind it, which report nothing once it
    /// is dropped. Build authenticators once per process and share them (they are cheap to
    /// clone), not per request or per configuration reload on a long-lived provider.
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Adds `attributes` to every series of this cell's metrics (see [`meter`](Self::meter)):
    /// to tell apart cells that share a token endpoint host and a client id, which would
    /// otherwise report the same series (for example a domain or tenant name). Keys the crate
    /// sets itself (`server.address`, `koppeltaal.client_id`, `outcome`,
    /// `http.response.status_class`) are dropped. Never put a secret in an attribute.
    ///
    /// ```
    /// # fn build(meter: opentelemetry::metrics::Meter) -> koppeltaal_auth::KoppeltaalAuthBuilder {
    /// koppeltaal_auth::KoppeltaalAuth::builder()
    ///     .meter(meter)
    ///     .meter_attributes([opentelemetry::KeyValue::new("koppeltaal.domain", "acceptance")])
    /// # }
    /// ```
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter_attributes(
        mut self,
        attributes: impl IntoIterator<Item = opentelemetry::KeyValue>,
    ) -> Self {
        self.meter_attributes.extend(attributes);
        self
    }

    /// Sends `scope` with token requests. Not sent by default (Koppeltaal ignores it).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.credentials = self.credentials.scope(scope);
        self
    }

    /// Sets the client assertion lifetime. Defaults to 60 s; with the `iat` back-dating at most
    /// 300 s (295 s with the default 5 s back-dating).
    pub fn assertion_lifetime(mut self, lifetime: Duration) -> Self {
        self.credentials = self.credentials.assertion_lifetime(lifetime);
        self
    }

    /// Sets how far `iat` is back-dated. Defaults to 5 s.
    pub fn iat_backdate(mut self, backdate: Duration) -> Self {
        self.credentials = self.credentials.iat_backdate(backdate);
        self
    }

    /// Sets the lifetime assumed when a token response has no `expires_in`. Defaults to 300 s.
    pub fn default_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.credentials = self.credentials.default_token_lifetime(lifetime);
        self
    }

    /// Sets the timeout of one token or discovery request. Defaults to 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.credentials = self.credentials.request_timeout(timeout);
        self
    }

    /// Builds the HTTP client for token and discovery requests from `builder` (your TLS roots,
    /// client identity, proxy, ...), with redirects turned off whatever it says; see
    /// [`ClientCredentialsBuilder::http_client_builder`](crate::token::ClientCredentialsBuilder::http_client_builder).
    /// By default one without redirects, proxy (none from the environment either) or cookies
    /// is built.
    pub fn http_client_builder(mut self, builder: reqwest::ClientBuilder) -> Self {
        self.credentials = self.credentials.http_client_builder(builder);
        self
    }

    /// Sends token and discovery requests through `proxy`. By default no proxy is used, and
    /// the proxy environment variables (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) are ignored.
    pub fn proxy(mut self, proxy: reqwest::Proxy) -> Self {
        self.credentials = self.credentials.proxy(proxy);
        self
    }

    /// Sets the refresh, backoff and wait policy. Defaults to [`RefreshPolicy::default`].
    pub fn refresh_policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Turns replaying requests after a `401` on or off. On by default; see
    /// [`KoppeltaalAuthLayer::replay_on_401`](crate::KoppeltaalAuthLayer::replay_on_401).
    pub fn replay_on_401(mut self, enabled: bool) -> Self {
        self.no_replay = !enabled;
        self
    }

    /// Shares the token with the other instances of a deployment through `store` (for example
    /// a `RedisTokenStore`, feature `redis`), so that the whole deployment fetches one token per
    /// lifetime instead of one per instance. See [`crate::store`]. The token is stored under the
    /// token endpoint, client id and scope: with a custom [`token_source`](Self::token_source)
    /// set a [`client_id`](Self::client_id) naming its identity (required then), so that two
    /// sources never share one token.
    pub fn shared_store(mut self, store: impl SharedStore) -> Self {
        self.shared_store = Some(Box::new(store));
        self
    }

    /// Sets the lease length and timeouts for the shared store. Defaults to
    /// [`StorePolicy::default`].
    pub fn store_policy(mut self, policy: StorePolicy) -> Self {
        self.store_policy = policy;
        self
    }

    /// Uses a custom [`TokenSource`] instead of the client credentials flow (for other grant
    /// types, or fakes in tests). The key and endpoint settings are then ignored, and the client
    /// id too, except with a [`shared_store`](Self::shared_store), where it names the token.
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Builds the [`Authenticator`] with the configured token endpoint, without network access.
    /// The first token is fetched on first use (or by [`Authenticator::ready`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the FHIR base, client id, key or
    /// token endpoint is missing, a URL is not `https` (loopback hosts excepted), or a setting is
    /// out of range (an assertion lifetime over 300 s, ...).
    pub fn build(self) -> Result<Authenticator, Error> {
        let base = self.base()?;
        let endpoint = match (&self.source, self.credentials.get_token_endpoint()) {
            (Some(_), _) => None,
            (None, Some(endpoint)) => Some(endpoint.to_owned()),
            (None, None) => {
                return Err(Error::config(
                    "token_endpoint is required for build(); use discover() to read it from the \
                     SMART configuration",
                ));
            }
        };
        self.finish(&base, endpoint)
    }

    /// Builds the [`Authenticator`], reading the token endpoint from
    /// `<fhir_base>/.well-known/smart-configuration` unless one was configured.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build) and [`smart::discover_with`]; also
    /// [`ErrorKind::Discovery`](crate::ErrorKind::Discovery) when the server advertises signing
    /// algorithms and the key's is not among them (with a [`key_set`](Self::key_set): any key of
    /// the set's). The set then refuses to [`publish`](KeySet::publish) a key of another
    /// algorithm (Koppeltaal's servers advertise none: nothing is limited there).
    pub async fn discover(self) -> Result<Authenticator, Error> {
        let base = self.base()?;
        if self.source.is_some() || self.credentials.get_token_endpoint().is_some() {
            return self.build();
        }
        let mut builder = self;
        let http = builder.credentials.http_client()?;
        // The auth server's clock is learned from the auth server only (its token responses),
        // never from the FHIR server's discovery answer.
        // Bounded whatever the HTTP client's own timeouts (a caller's builder may have none).
        let bound = builder.credentials.request_bound();
        let config = crate::fetch::bounded(
            bound,
            "the SMART configuration did not come",
            smart::discover_with(&http, base.as_str()),
        )
        .await?;
        // Every key of the set (one published to sign later too), and every key published from
        // now on, must sign with an algorithm the server lists, when it lists them.
        if let (Some(keys), Some(accepted)) = (
            builder.credentials.get_keys(),
            config
                .token_endpoint_auth_signing_alg_values_supported
                .as_deref(),
        ) && let Err(key) = keys.accept_only(accepted)
        {
            return Err(Error::new(
                crate::ErrorKind::Discovery,
                format!(
                    "the server does not accept {} assertions (it lists {})",
                    key.algorithm(),
                    // The server's text: truncated as any.
                    crate::redact::sanitize_snippet(accepted.join(", ").as_bytes())
                ),
            ));
        }
        builder.credentials = builder.credentials.built_client(http);
        builder.finish(&base, Some(config.token_endpoint))
    }

    fn base(&self) -> Result<Url, Error> {
        let base = self
            .fhir_base
            .as_deref()
            .ok_or_else(|| Error::config("fhir_base_url is required"))?;
        FhirScope::parse(base).map(|(url, _)| url)
    }

    fn finish(self, base: &Url, endpoint: Option<String>) -> Result<Authenticator, Error> {
        let scope = FhirScope::new(base)?;
        // Without a trailing slash: `format!("{}/Patient/1", auth.fhir_base_url())` is in scope.
        let fhir_base: Arc<str> = self
            .fhir_base
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/')
            .into();
        let store = match self.shared_store {
            Some(shared) => {
                // Without a client id, two custom sources (two identities) would share a token.
                let client_id = self.credentials.get_client_id().ok_or_else(|| {
                    Error::config(if self.source.is_some() {
                        "a shared store with a custom token source needs client_id: it names \
                         the source's token in the store"
                    } else {
                        "client_id is required"
                    })
                })?;
                let key = StoreKey::new(
                    endpoint.clone().unwrap_or_else(|| fhir_base.to_string()),
                    client_id,
                    self.credentials.get_scope().map(str::to_owned),
                );
                Some((shared.for_key(&key), self.store_policy))
            }
            None => None,
        };
        #[cfg(feature = "opentelemetry")]
        let attributes = crate::metrics::cell_attributes(
            endpoint.as_deref(),
            self.credentials.get_client_id(),
            self.meter_attributes,
        );
        let source: Box<dyn TokenSource> = match (self.source, &endpoint) {
            (Some(source), _) => source,
            (None, Some(endpoint)) => {
                Box::new(self.credentials.token_endpoint(endpoint.clone()).build()?)
            }
            (None, None) => return Err(Error::config("token_endpoint is required")),
        };
        #[cfg(feature = "opentelemetry")]
        let source: Box<dyn TokenSource> = match &self.meter {
            Some(meter) => Box::new(crate::metrics::MeteredSource::new(
                source,
                meter,
                &attributes,
            )),
            None => source,
        };
        let cell = TokenCell::build(source, self.policy, store);
        #[cfg(feature = "opentelemetry")]
        if let Some(meter) = &self.meter {
            crate::metrics::observe(&cell, meter, &attributes);
        }
        Ok(Authenticator {
            shared: Arc::new(AuthShared {
                cell,
                scope,
                replay: !self.no_replay,
            }),
            fhir_base,
            token_endpoint: endpoint.map(Arc::from),
        })
    }
}
