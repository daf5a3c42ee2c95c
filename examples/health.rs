//! Readiness and liveness endpoints (axum) from `Authenticator::health`, against the embedded
//! mock Koppeltaal on loopback.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example health
//! ```
//!
//! `/readyz` answers `503` while the instance has no usable token, so that the load balancer
//! stops sending it traffic; `/livez` answers `200` whatever the token does: a token endpoint
//! outage is not fixed by restarting the instance, and a fleet restarting at once would turn it
//! into a storm of token requests. The example walks through: no token yet, fresh, a token
//! endpoint that fails (the token still serves), and the token expired while it fails.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{Algorithm, Authenticator, BoxError, Health, KoppeltaalAuth, SigningKey};
use serde_json::{Value, json};

/// The probe's body: the state, and what an operator wants to see on a dashboard.
fn describe(health: &Health) -> Value {
    let mut body = json!({
        "token": health.name(),
        "usable_for_ms": health.usable_for().map(|d| d.as_millis() as u64),
    });
    if let Health::Failing {
        failing_for,
        failures,
        last_error,
        ..
    } = health
    {
        body["failing_for_ms"] = json!(failing_for.as_millis() as u64);
        body["failures"] = json!(failures);
        body["last_error"] = json!(last_error.map(|kind| format!("{kind:?}")));
    }
    body
}

/// Readiness: route traffic here only while requests get a token without waiting.
async fn readyz(State(auth): State<Authenticator>) -> (StatusCode, Json<Value>) {
    let health = auth.health();
    // Nothing has asked for a token (yet), or the last attempt failed and left none: start a
    // fetch (single-flight, after any backoff), so that the instance becomes ready without
    // waiting for traffic it does not get while it is not ready. (The background refresher
    // retries a failing cell by itself; with `background_refresh(false)` only callers do.)
    let idle = matches!(
        health,
        Health::Absent { refreshing: false }
            | Health::Failing {
                usable_for: None,
                ..
            }
    );
    if idle {
        tokio::spawn(async move { auth.ready().await });
    }
    let status = if health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(describe(&health)))
}

/// Liveness: the token is not part of it (see the module docs).
async fn livez() -> StatusCode {
    StatusCode::OK
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockKoppeltaal::builder()
        .token_lifetime(Duration::from_secs(4))
        .start()
        .await?;
    let key = SigningKey::generate(Algorithm::ES384)?;
    mock.register_key("health-example", &key);
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id("health-example")
        .signing_key(key)
        .discover()
        .await?;

    let app = axum::Router::new()
        .route("/readyz", axum::routing::get(readyz))
        .route("/livez", axum::routing::get(livez))
        .with_state(auth.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let probes = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder().no_proxy().build()?;
    let probe = |step: &'static str| {
        let client = client.clone();
        let probes = probes.clone();
        async move {
            let ready = client.get(format!("{probes}/readyz")).send().await?;
            let live = client.get(format!("{probes}/livez")).send().await?;
            println!(
                "{step:<44} readyz {} {}  livez {}",
                ready.status().as_u16(),
                ready.text().await?,
                live.status().as_u16()
            );
            Ok::<_, BoxError>(())
        }
    };

    // The first probe finds no token and starts the first fetch.
    probe("before the first token").await?;
    auth.ready().await?;
    probe("with a fresh token").await?;
    // The token endpoint goes down: the next refreshes fail.
    mock.fail_next_token_requests(1_000, StatusCode::SERVICE_UNAVAILABLE, None);
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    probe("token endpoint down, token still usable").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    probe("token endpoint down, token expired").await?;
    server.abort();
    Ok(())
}
