//! The OAuth 2.0 error response a token endpoint sends ([RFC 6749 section 5.2]).
//!
//! [RFC 6749 section 5.2]: https://www.rfc-editor.org/rfc/rfc6749#section-5.2

use std::fmt;

use crate::redact::sanitize_snippet;

/// An OAuth 2.0 error response from the token endpoint ([RFC 6749 section 5.2]).
///
/// [RFC 6749 section 5.2]: https://www.rfc-editor.org/rfc/rfc6749#section-5.2
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuthError {
    /// The `error` code.
    pub code: OAuthErrorCode,
    /// `error_description`, sanitised and truncated.
    pub description: Option<String>,
    /// `error_uri`, sanitised and truncated.
    pub uri: Option<String>,
}

/// The `error` code of an [`OAuthError`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OAuthErrorCode {
    /// "The request is missing a required parameter, includes an unsupported parameter value
    /// (other than grant type), repeats a parameter, ... or is otherwise malformed."
    InvalidRequest,
    /// "Client authentication failed (e.g., unknown client, no client authentication included, or
    /// unsupported authentication method)." For SMART Backend Services: the assertion was refused.
    InvalidClient,
    /// "The provided authorization grant ... is invalid, expired, revoked, ..."
    InvalidGrant,
    /// "The authenticated client is not authorized to use this authorization grant type."
    UnauthorizedClient,
    /// "The authorization grant type is not supported by the authorization server."
    UnsupportedGrantType,
    /// "The requested scope is invalid, unknown, malformed, or exceeds the scope granted by the
    /// resource owner."
    InvalidScope,
    /// Any other code, sanitised and truncated.
    Other(String),
}

impl OAuthErrorCode {
    pub(crate) fn parse(code: &str) -> Self {
        match code {
            "invalid_request" => Self::InvalidRequest,
            "invalid_client" => Self::InvalidClient,
            "invalid_grant" => Self::InvalidGrant,
            "unauthorized_client" => Self::UnauthorizedClient,
            "unsupported_grant_type" => Self::UnsupportedGrantType,
            "invalid_scope" => Self::InvalidScope,
            other => Self::Other(sanitize_snippet(other.as_bytes())),
        }
    }

    /// The code as it appears on the wire.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::Other(code) => code,
        }
    }
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(description) = &self.description {
            write!(f, " ({description})")?;
        }
        Ok(())
    }
}
