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
use crate::error::{Error, ErrorKind};
use crate::fetch::{MAX_BODY, read_error_body, read_limited};
use crate::keyset::KeySet;

/// `expires_in` assumed when a token response has none: Koppeltaal's default token lifetime.
/// Never "valid forever", the mistake every peer library makes.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Longest timeout of one token or discovery request: 5 minutes.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

mod builder;
mod form;

pub use self::builder::ClientCredentialsBuilder;

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The SMART Backend Services client credentials flow: a [`TokenSource`] that signs a fresh
/// client assertion for every request and posts it to the token endpoint.
///
/// The request is `POST` form-encoded with `Accept: application/json`:
/// `grant_type=client_credentials`,
/// `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
/// `client_assertion=<jwt>`, and `scope` only when configured (Koppeltaal ignores it). No client
/// secret, no Basic auth, no redirects followed. A token response over 64 KiB is refused unread;
/// an error response is read up to 64 KiB for its message, and keeps its status.
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
    /// The longest one token request may take, whatever the HTTP client's own timeouts.
    bound: Option<Duration>,
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
        let body = form::token_request_body(assertion.as_str(), inner.scope.as_deref());
        let started = Instant::now();
        let exchange = async {
            let response = inner
                .http
                .post(inner.token_endpoint.clone())
                .header(http::header::ACCEPT, "application/json")
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body)
                .send()
                .await
                .map_err(|err| Error::from_reqwest("token request failed", err))?;
            inner.skew.observe(response.headers(), SystemTime::now());
            let status = response.status();
            let headers = response.headers().clone();
            let body = if status.is_success() {
                read_limited(response, MAX_BODY).await?
            } else {
                read_error_body(response, MAX_BODY).await
            };
            Ok::<_, Error>((status, headers, body))
        };
        // Bounded whatever the HTTP client's own timeouts (a caller's builder may have none).
        let (status, headers, body) =
            crate::fetch::bounded(inner.bound, "the token endpoint did not answer", exchange)
                .await?;
        // The token's life is counted from when the request went out, not from the answer:
        // the server counts from some moment in between, so a slow answer only makes the token
        // expire early here, never late.
        let received_at = started;
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
            let token = parse_token_response(
                &body,
                received_at,
                inner.default_lifetime,
                &[assertion.as_str()],
            )
            .map_err(|error| match error.kind() {
                ErrorKind::TokenRejected => error.with_status(status),
                _ => error,
            })?;
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
