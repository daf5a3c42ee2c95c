//! The crate's one error type.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

pub use self::oauth::{OAuthError, OAuthErrorCode};
use crate::redact::sanitize_hiding;
pub(crate) use crate::redact::sanitize_snippet;

mod oauth;

/// Alias for a type-erased error, as used by tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error from configuring, obtaining or using a Koppeltaal access token.
///
/// The error is opaque: ask it what happened with [`kind`](Self::kind), whether retrying later may
/// help with [`is_transient`](Self::is_transient), and for the details the token endpoint sent
/// with [`status`](Self::status), [`oauth_error`](Self::oauth_error),
/// [`body_snippet`](Self::body_snippet) and [`retry_after`](Self::retry_after).
///
/// Errors are cheap to clone (one reference count): every caller waiting on one token refresh gets
/// the same error.
///
/// # Security
///
/// Neither `Display` nor `Debug` ever contains an access token, a client assertion or key
/// material. Text taken from a server's error response is truncated to 200 characters, stripped of
/// control characters, and long token-like runs in it are replaced by `[redacted]`.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    status: Option<StatusCode>,
    oauth: Option<OAuthError>,
    body_snippet: Option<String>,
    retry_after: Option<Duration>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// What went wrong; see [`Error::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is incomplete or invalid (a missing client id, a non-HTTPS endpoint, an
    /// assertion lifetime over 300 seconds, ...). Detected when the configuration is built.
    Config,
    /// The private key could not be loaded, or does not fit the chosen [`Algorithm`].
    ///
    /// [`Algorithm`]: crate::Algorithm
    Key,
    /// The build has no usable `jsonwebtoken` crypto backend (none, or both of `aws_lc_rs` and
    /// `rust_crypto` enabled). `koppeltaal-auth` enables `aws_lc_rs`; another crate in the build
    /// enabling `rust_crypto` as well causes this.
    CryptoBackend,
    /// Signing the client assertion failed.
    Signing,
    /// The SMART configuration could not be used: not served, not JSON, no `token_endpoint`, or
    /// `private_key_jwt` not supported.
    Discovery,
    /// The server could not be reached, or the connection broke before a whole response arrived.
    Transport,
    /// The server did not answer within the HTTP timeout.
    Timeout,
    /// The token endpoint answered with an error status (see [`Error::status`],
    /// [`Error::oauth_error`], [`Error::body_snippet`]).
    TokenRejected,
    /// The token endpoint answered with a success status but the body is not a usable token
    /// response (not JSON, no `access_token`, a `token_type` other than `bearer`, a bad
    /// `expires_in`, ...).
    InvalidTokenResponse,
    /// A response body was larger than the limit (64 KiB) and was not read.
    ResponseTooLarge,
    /// No valid token became available within the wait timeout.
    WaitTimeout,
    /// The token refresh failed without a result: the token source panicked, or the attempt
    /// was cancelled (its runtime shut down) or not run.
    RefreshAborted,
    /// A token had to be fetched outside a tokio runtime. A [`TokenCell`](crate::TokenCell)
    /// hands out the token it holds anywhere, but fetches only inside a runtime.
    NoRuntime,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Config => "invalid configuration",
            Self::Key => "invalid signing key",
            Self::CryptoBackend => "no usable jsonwebtoken crypto backend",
            Self::Signing => "could not sign the client assertion",
            Self::Discovery => "SMART discovery failed",
            Self::Transport => "could not reach the server",
            Self::Timeout => "the server did not answer in time",
            Self::TokenRejected => "the token endpoint refused the request",
            Self::InvalidTokenResponse => "invalid token response",
            Self::ResponseTooLarge => "response body too large",
            Self::WaitTimeout => "timed out waiting for an access token",
            Self::RefreshAborted => "the token refresh was aborted",
            Self::NoRuntime => "no tokio runtime to fetch a token on",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// Creates an error of `kind` with a short human-readable message.
    ///
    /// Public so that custom [`TokenSource`](crate::TokenSource)s can return this crate's error.
    /// The message must not contain secrets.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                status: None,
                oauth: None,
                body_snippet: None,
                retry_after: None,
                source: None,
            }),
        }
    }

    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn key(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Key, message)
    }

    /// Runs `f` on the freshly built, not yet shared inner value.
    fn edit(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            f(inner);
        }
        self
    }

    /// Attaches the underlying cause, returned by [`source`](std::error::Error::source).
    #[must_use]
    pub fn with_source(self, source: impl Into<BoxError>) -> Self {
        let source: Arc<dyn std::error::Error + Send + Sync> = Arc::from(source.into());
        self.edit(|inner| inner.source = Some(source))
    }

    /// Attaches the HTTP status the server answered with.
    #[must_use]
    pub fn with_status(self, status: StatusCode) -> Self {
        self.edit(|inner| inner.status = Some(status))
    }

    /// Attaches the delay the server asked for in `Retry-After`, clamped to a day. (A
    /// [`TokenCell`](crate::TokenCell) honours at most
    /// [`MAX_RETRY_AFTER`](crate::token::MAX_RETRY_AFTER) of it.)
    #[must_use]
    pub fn with_retry_after(self, retry_after: Option<Duration>) -> Self {
        let retry_after = retry_after.map(|delay| delay.min(Duration::from_secs(86_400)));
        self.edit(|inner| inner.retry_after = retry_after)
    }

    pub(crate) fn with_oauth(self, oauth: OAuthError) -> Self {
        self.edit(|inner| inner.oauth = Some(oauth))
    }

    pub(crate) fn with_body_snippet(self, body: &[u8]) -> Self {
        self.with_body_snippet_hiding(body, &[])
    }

    /// Keeps a sanitised snippet of `body` with no piece of any of `secrets` (see
    /// [`crate::redact`]).
    pub(crate) fn with_body_snippet_hiding(self, body: &[u8], secrets: &[&str]) -> Self {
        let snippet = sanitize_hiding(body, secrets);
        self.edit(|inner| inner.body_snippet = (!snippet.is_empty()).then_some(snippet))
    }

    /// Maps a transport error from reqwest to [`ErrorKind::Timeout`] or [`ErrorKind::Transport`].
    pub(crate) fn from_reqwest(what: &'static str, err: reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            ErrorKind::Timeout
        } else {
            ErrorKind::Transport
        };
        Self::new(kind, what).with_source(err)
    }

    /// The category of this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The HTTP status of the server's answer, when the error comes from one.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// The parsed RFC 6749 error, when the token endpoint sent one.
    #[must_use]
    pub fn oauth_error(&self) -> Option<&OAuthError> {
        self.inner.oauth.as_ref()
    }

    /// The start of a non-JSON error body (the Koppeltaal reference server answers plain
    /// `Access Denied`), sanitised and truncated. Never taken from a success response, which could
    /// hold a token.
    #[must_use]
    pub fn body_snippet(&self) -> Option<&str> {
        self.inner.body_snippet.as_deref()
    }

    /// The delay the server asked for with `Retry-After`, if any.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether retrying later may succeed without a change of configuration.
    ///
    /// True for connection failures, timeouts, waiting too long for a token, and answers with
    /// status 5xx, 408 or 429. False for rejected credentials (400, 401, `invalid_client`),
    /// invalid responses and configuration errors. The token cell retries permanent errors too,
    /// but only at its longest backoff.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self.inner.kind {
            ErrorKind::Transport
            | ErrorKind::Timeout
            | ErrorKind::WaitTimeout
            | ErrorKind::RefreshAborted => true,
            ErrorKind::TokenRejected | ErrorKind::Discovery => {
                self.inner.status.is_some_and(is_transient_status)
            }
            _ => false,
        }
    }
}

pub(crate) fn is_transient_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.write_str(inner.kind.as_str())?;
        if !inner.message.is_empty() {
            write!(f, ": {}", inner.message)?;
        }
        if let Some(status) = inner.status {
            write!(f, " (HTTP {status})")?;
        }
        if let Some(oauth) = &inner.oauth {
            write!(f, ": {oauth}")?;
        } else if let Some(snippet) = &inner.body_snippet {
            write!(f, ": {snippet:?}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &inner.kind)
            .field("message", &inner.message);
        if let Some(status) = inner.status {
            d.field("status", &status);
        }
        if let Some(oauth) = &inner.oauth {
            d.field("oauth", oauth);
        }
        if let Some(snippet) = &inner.body_snippet {
            d.field("body_snippet", snippet);
        }
        if let Some(retry_after) = inner.retry_after {
            d.field("retry_after", &retry_after);
        }
        if let Some(source) = &inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|source| &**source as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification() {
        let rejected = |status: u16| {
            Error::new(ErrorKind::TokenRejected, "")
                .with_status(StatusCode::from_u16(status).unwrap())
                .is_transient()
        };
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(rejected(status), "{status} should be transient");
        }
        for status in [400, 401, 403, 404] {
            assert!(!rejected(status), "{status} should be permanent");
        }
        assert!(Error::new(ErrorKind::Transport, "").is_transient());
        assert!(Error::new(ErrorKind::Timeout, "").is_transient());
        assert!(!Error::new(ErrorKind::Config, "").is_transient());
        assert!(!Error::new(ErrorKind::InvalidTokenResponse, "").is_transient());
    }

    #[test]
    fn display_shows_status_and_oauth_error() {
        let err = Error::new(ErrorKind::TokenRejected, "")
            .with_status(StatusCode::BAD_REQUEST)
            .with_oauth(OAuthError {
                code: OAuthErrorCode::parse("invalid_client"),
                description: Some("unknown kid".into()),
                uri: None,
            });
        assert_eq!(
            err.to_string(),
            "the token endpoint refused the request (HTTP 400 Bad Request): invalid_client (unknown kid)"
        );
        let plain = Error::new(ErrorKind::TokenRejected, "")
            .with_status(StatusCode::UNAUTHORIZED)
            .with_body_snippet(b"Access Denied");
        assert_eq!(
            plain.to_string(),
            "the token endpoint refused the request (HTTP 401 Unauthorized): \"Access Denied\""
        );
        assert_eq!(plain.body_snippet(), Some("Access Denied"));
    }
}
