//! What the mock servers saw: counters and request logs.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

#[cfg(doc)]
use super::MockKoppeltaal;

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

/// A request the FHIR endpoint received; see [`MockKoppeltaal::fhir_requests`].
#[derive(Clone, Debug)]
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

/// A token request the token endpoint received; see [`MockKoppeltaal::token_requests`].
#[derive(Clone, Debug)]
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
