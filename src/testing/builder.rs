//! [`MockKoppeltaalBuilder`]: the settings that matter from the first request, and starting the
//! servers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    FHIR_PATH, MockKoppeltaal, MockStats, Shared, State, TOKEN_PATH, auth, clamp_lifetime, fhir,
};
use crate::key::Algorithm;

/// Builder for [`MockKoppeltaal`], for settings that matter from the first request.
#[derive(Debug)]
#[must_use]
pub struct MockKoppeltaalBuilder {
    token_lifetime: Duration,
    allowed_algs: Vec<Algorithm>,
    clock_offset_secs: i64,
    fhir_clock_offset_secs: i64,
    port: u16,
}

impl Default for MockKoppeltaalBuilder {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(300),
            allowed_algs: vec![Algorithm::RS384, Algorithm::ES384, Algorithm::RS512],
            clock_offset_secs: 0,
            fhir_clock_offset_secs: 0,
            port: 0,
        }
    }
}

impl MockKoppeltaalBuilder {
    /// Lifetime of issued tokens (`expires_in`). Defaults to 300 seconds, as Koppeltaal's;
    /// clamped to 1 s to [`MAX_TOKEN_LIFETIME`](crate::token::MAX_TOKEN_LIFETIME).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = clamp_lifetime(lifetime);
        self
    }

    /// Algorithms accepted for assertions. Defaults to RS384, ES384 and RS512, as the reference
    /// auth server's configuration.
    pub fn allowed_algorithms(mut self, algs: &[Algorithm]) -> Self {
        self.allowed_algs = algs.to_vec();
        self
    }

    /// Runs the server's clock `seconds` ahead (negative: behind) of the local clock, for
    /// clock-skew tests. The offset applies to assertion checks and the `Date` header.
    pub fn clock_offset_secs(mut self, seconds: i64) -> Self {
        self.clock_offset_secs = seconds;
        self
    }

    /// Runs the FHIR server's clock `seconds` ahead (negative: behind) of the auth server's.
    /// As Koppeltaal's HAPI server, the FHIR endpoint allows no leeway on a token's `iat`: while
    /// its clock has not reached it, it answers `401`. Its responses carry a `Date` from its
    /// own clock.
    pub fn fhir_clock_offset_secs(mut self, seconds: i64) -> Self {
        self.fhir_clock_offset_secs = seconds;
        self
    }

    /// The loopback port to listen on; 0 (the default) takes a free one (see
    /// [`MockKoppeltaal::addr`]). The mock never listens beyond loopback.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Binds `127.0.0.1` on the port (a free one by default) and starts serving.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub async fn start(self) -> std::io::Result<MockKoppeltaal> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            token_endpoint: format!("http://{addr}{TOKEN_PATH}"),
            state: Mutex::new(State {
                clients: HashMap::new(),
                allowed_algs: self.allowed_algs,
                token_lifetime: self.token_lifetime,
                clock_offset_secs: self.clock_offset_secs,
                fhir_clock_offset_secs: self.fhir_clock_offset_secs,
                external: None,
                seen_jti: super::jti::SeenJti::new(),
                tokens: HashMap::new(),
                faults: VecDeque::new(),
                token_delay: Duration::ZERO,
                token_clock_advance: Duration::ZERO,
                audience: None,
                smart_configuration: None,
                stats: MockStats::default(),
                fhir_log: super::records::Log::new(),
                token_log: super::records::Log::new(),
                notification_log: super::records::Log::new(),
            }),
        });
        let router = axum::Router::new()
            .route(TOKEN_PATH, axum::routing::any(auth::token))
            .route(
                &format!("{FHIR_PATH}/.well-known/smart-configuration"),
                axum::routing::get(fhir::smart_configuration),
            )
            .route(
                &format!("{FHIR_PATH}/{{*rest}}"),
                axum::routing::any(fhir::resource),
            )
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::warn!(error = %err, "MockKoppeltaal stopped");
            }
        });
        Ok(MockKoppeltaal { shared, addr, task })
    }
}
