//! What the mock servers saw: counters and request logs.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

#[cfg(doc)]
use super::MockKoppeltaal;

/// How many requests of each kind the mock keeps (the most recent), so that a long-running
/// mock (`koppeltaal-auth mock` in a compose file) does not grow without bound.
pub const MAX_LOGGED: usize = 10_000;

/// A log of the most recent [`MAX_LOGGED`] records, oldest first.
#[derive(Debug)]
pub(super) struct Log<T>(VecDeque<T>);

impl<T: Clone> Log<T> {
    pub(super) fn new() -> Self {
        Self(VecDeque::new())
    }

    pub(super) fn push(&mut self, record: T) {
        if self.0.len() >= MAX_LOGGED {
            self.0.pop_front();
        }
        self.0.push_back(record);
    }

    pub(super) fn to_vec(&self) -> Vec<T> {
        self.0.iter().cloned().collect()
    }
}

/// Counters of what the mock servers saw; see [`MockKoppeltaal::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MockStats {
    /// Requests to the token endpoint, whatever their outcome.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Token requests answered with an error or an injected fault.
    pub token_requests_failed: u64,
    /// Requests to the FHIR endpoint (discovery excluded).
    pub fhir_requests: u64,
    /// FHIR requests answered `401`.
    pub fhir_unauthorized: u64,
    /// FHIR requests answered `403`.
    pub fhir_forbidden: u64,
    /// Requests for the SMART configuration.
    pub discovery_requests: u64,
    /// Times [`MockKoppeltaal::revoke_all_tokens`] was called.
    pub revocations: u64,
    /// Fetches of URL-registered JWK Sets.
    pub jwks_fetches: u64,
}

/// A request the FHIR endpoint received; see [`MockKoppeltaal::fhir_requests`]. `Debug` shows
/// no `Authorization` value (a bearer token).
#[derive(Clone)]
#[non_exhaustive]
pub struct ReceivedRequest {
    /// The method.
    pub method: Method,
    /// Path and query, as received.
    pub path_and_query: String,
    /// All headers, `Authorization` included.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The number of the token that authenticated it (1 for the first token issued), when the
    /// token was one the mock issued.
    pub token_number: Option<u64>,
    /// What the mock answered.
    pub status: StatusCode,
    /// The trace ids the FHIR server recorded for it, as Koppeltaal's does: the request's
    /// `X-Request-Id` and `X-Trace-Id` (each a new UUID when the request had none, or one that
    /// is not a FHIR id), and its `X-Correlation-Id`. The response carried the first two.
    pub trace: crate::trace::TraceIds,
}

/// A token request the token endpoint received; see [`MockKoppeltaal::token_requests`]. `Debug`
/// shows no assertion (a credential until it expires), only its decoded header and claims.
#[derive(Clone)]
#[non_exhaustive]
pub struct TokenRequest {
    /// The form parameter names, in order (`client_assertion` included, its value not).
    pub params: Vec<String>,
    /// The `scope` parameter, if sent.
    pub scope: Option<String>,
    /// The `client_assertion` as sent (for tests that look for it where it must not be).
    pub assertion: Option<String>,
    /// The decoded (unverified) assertion header, if there was a decodable assertion.
    pub assertion_header: Option<Value>,
    /// The decoded (unverified) assertion claims, if there was a decodable assertion.
    pub assertion_claims: Option<Value>,
    /// When it arrived (tokio clock).
    pub received_at: Instant,
    /// What the mock answered.
    pub status: StatusCode,
    /// Why the mock refused it, if it did (the reference server tells only "Access Denied").
    pub refusal: Option<String>,
}

/// Information about an issued token; see [`MockKoppeltaal::issued_tokens`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct IssuedToken {
    /// 1 for the first token issued, then 2, ...
    pub number: u64,
    /// The client it was issued to.
    pub client_id: String,
    /// FHIR requests it authenticated (answered other than `401`).
    pub fhir_requests: u64,
    /// Whether it was revoked.
    pub revoked: bool,
}

impl fmt::Debug for ReceivedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if name == http::header::AUTHORIZATION {
                    "[redacted]"
                } else {
                    value.to_str().unwrap_or("[not text]")
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("ReceivedRequest")
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .field("token_number", &self.token_number)
            .field("status", &self.status)
            .field("trace", &self.trace)
            .finish()
    }
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("params", &self.params)
            .field("scope", &self.scope)
            .field("assertion", &self.assertion.as_ref().map(|_| "[redacted]"))
            .field("assertion_header", &self.assertion_header)
            .field("assertion_claims", &self.assertion_claims)
            .field("received_at", &self.received_at)
            .field("status", &self.status)
            .field("refusal", &self.refusal)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_keeps_the_most_recent_records_only() {
        let mut log = Log::new();
        for n in 0..MAX_LOGGED + 5 {
            log.push(n);
        }
        let kept = log.to_vec();
        assert_eq!(kept.len(), MAX_LOGGED);
        assert_eq!((kept[0], kept[MAX_LOGGED - 1]), (5, MAX_LOGGED + 4));
    }

    #[test]
    fn debug_shows_no_token_and_no_assertion() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer secret-token".parse().unwrap(),
        );
        headers.insert(
            http::header::ACCEPT,
            "application/fhir+json".parse().unwrap(),
        );
        let request = ReceivedRequest {
            method: Method::GET,
            path_and_query: "/fhir/Patient".to_owned(),
            headers,
            body: Bytes::new(),
            token_number: Some(1),
            status: StatusCode::OK,
            trace: crate::trace::TraceIds::new(None, None, None),
        };
        let shown = format!("{request:?}");
        assert!(
            !shown.contains("secret-token") && shown.contains("application/fhir+json"),
            "{shown}"
        );
        let token = TokenRequest {
            params: vec!["client_assertion".to_owned()],
            scope: None,
            assertion: Some("eyJsecret.assertion.sig".to_owned()),
            assertion_header: None,
            assertion_claims: None,
            received_at: Instant::now(),
            status: StatusCode::OK,
            refusal: None,
        };
        let shown = format!("{token:?}");
        assert!(
            !shown.contains("eyJsecret") && shown.contains("[redacted]"),
            "{shown}"
        );
    }
}
