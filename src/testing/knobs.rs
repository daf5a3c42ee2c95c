//! [`MockKoppeltaal`]'s knobs: what a test changes while the mock runs (forbidden clients,
//! lifetimes, algorithms, clocks, revocations, faults, delays, discovery).

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

#[cfg(doc)]
use super::MockKoppeltaalBuilder;
use super::{MAX_CLOCK_ADVANCE, MockKoppeltaal, MockResponse, clamp_lifetime};
use crate::key::Algorithm;

/// The most token-request faults [`MockKoppeltaal::fail_next_token_requests`] queues at once.
pub const MAX_QUEUED_FAULTS: usize = 100_000;

impl MockKoppeltaal {
    /// Marks a client forbidden: its tokens are issued, but FHIR requests get `403`.
    pub fn set_forbidden(&self, client_id: &str, forbidden: bool) {
        if let Some(client) = self.shared.lock().clients.get_mut(client_id) {
            client.forbidden = forbidden;
        }
    }

    /// Sets the lifetime of tokens issued from now on (clamped as
    /// [`MockKoppeltaalBuilder::token_lifetime`]).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = clamp_lifetime(lifetime);
    }

    /// Sets the algorithms accepted for assertions from now on.
    pub fn set_allowed_algorithms(&self, algs: &[Algorithm]) {
        self.shared.lock().allowed_algs = algs.to_vec();
    }

    /// Runs the server clock `seconds` ahead (negative: behind) of the local clock.
    pub fn set_clock_offset_secs(&self, seconds: i64) {
        self.shared.lock().clock_offset_secs = seconds;
    }

    /// Runs the FHIR server's clock `seconds` ahead (negative: behind) of the auth server's
    /// from now on (see [`MockKoppeltaalBuilder::fhir_clock_offset_secs`]).
    pub fn set_fhir_clock_offset_secs(&self, seconds: i64) {
        self.shared.lock().fhir_clock_offset_secs = seconds;
    }

    /// Revokes every token issued so far: the FHIR endpoint answers `401` for them.
    pub fn revoke_all_tokens(&self) {
        let mut state = self.shared.lock();
        for token in state.tokens.values_mut() {
            token.revoked = true;
        }
        state.stats.revocations += 1;
    }

    /// Accepts assertions whose `aud` is `audience` instead of the mock's own token URL: for a
    /// mock reached through a proxy, whose URL the client knows as the token endpoint.
    pub fn set_audience(&self, audience: &str) {
        self.shared.lock().audience = Some(audience.to_owned());
    }

    /// Moves the FHIR endpoint's clock for token expiry `by` ahead, so tokens expire without
    /// waiting for them (cumulative).
    pub fn advance_token_clock(&self, by: Duration) {
        let mut state = self.shared.lock();
        state.token_clock_advance = state
            .token_clock_advance
            .saturating_add(by)
            .min(MAX_CLOCK_ADVANCE);
    }

    /// Answers the next `n` token requests (at most [`MAX_QUEUED_FAULTS`]) with `status` and a
    /// plain-text body, with `Retry-After: <seconds>` when given.
    pub fn fail_next_token_requests(
        &self,
        n: usize,
        status: StatusCode,
        retry_after: Option<Duration>,
    ) {
        let mut response = MockResponse::new(
            status,
            status.canonical_reason().unwrap_or("error").to_owned(),
        )
        .header("content-type", "text/plain");
        if let Some(delay) = retry_after {
            response = response.header("retry-after", &delay.as_secs().to_string());
        }
        let mut state = self.shared.lock();
        // Queued one by one: bounded, so that a huge `n` cannot exhaust memory.
        for _ in 0..n.min(MAX_QUEUED_FAULTS) {
            state.faults.push_back(response.clone());
        }
    }

    /// Answers the next token request with `response` instead of validating it (queued after
    /// earlier injected responses).
    pub fn push_token_response(&self, response: MockResponse) {
        self.shared.lock().faults.push_back(response);
    }

    /// Delays every token response by `delay` from now on (zero: no delay).
    pub fn set_token_delay(&self, delay: Duration) {
        self.shared.lock().token_delay = delay;
    }

    /// Serves `document` as the SMART configuration instead of the default one (`None`: back to
    /// the default).
    pub fn set_smart_configuration(&self, document: Option<Value>) {
        self.shared.lock().smart_configuration = document;
    }
}
