//! The cell's OpenTelemetry metrics exported for Prometheus, against the embedded mock
//! Koppeltaal on loopback (feature `opentelemetry`).
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example metrics --features opentelemetry
//! ```
//!
//! It wires an OpenTelemetry SDK meter provider to a Prometheus registry (the
//! `opentelemetry-prometheus` exporter), serves it at `/metrics` with axum, sends FHIR requests
//! through the layer (one of them answered `401`, renewed and replayed), then scrapes `/metrics`
//! once and prints the `koppeltaal_auth_*` series. An OTLP exporter plugs in the same way: the
//! crate only needs a `Meter`.
#![allow(clippy::print_stdout)]

use axum::extract::State;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{Algorithm, BoxError, KoppeltaalAuth, SigningKey};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};
use tower::{ServiceBuilder, ServiceExt};

/// The Prometheus scrape endpoint.
async fn scrape(State(registry): State<Registry>) -> String {
    let mut text = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut text);
    String::from_utf8(text).unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // 1. The metrics pipeline: SDK meter provider -> Prometheus registry.
    let registry = Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()?;
    let provider = SdkMeterProvider::builder().with_reader(exporter).build();

    // 2. The authenticator, handed a meter.
    let mock = MockKoppeltaal::start().await?;
    let key = SigningKey::generate(Algorithm::RS512)?;
    mock.register_key("metrics-example", &key);
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id("metrics-example")
        .signing_key(key)
        .meter(provider.meter("koppeltaal-auth"))
        .discover()
        .await?;

    // 3. Some traffic: reads, and one 401 that is renewed and replayed.
    let client = ServiceBuilder::new()
        .layer(auth.layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let url = format!("{}/Patient/1", mock.fhir_base_url());
    for n in 0..5 {
        if n == 3 {
            mock.revoke_all_tokens();
        }
        client
            .clone()
            .oneshot(Request::get(&url).body(Full::default())?)
            .await?;
    }

    // 4. Serve /metrics and scrape it once, as Prometheus would.
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_url = format!("http://{}/metrics", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(&metrics_url)
        .send()
        .await?
        .text()
        .await?;
    println!("GET {metrics_url} (koppeltaal_auth series, histogram buckets left out):\n");
    for line in body.lines() {
        if line.starts_with("koppeltaal_auth") && !line.contains("_bucket") {
            println!("  {line}");
        }
    }
    server.abort();
    provider.shutdown()?;
    Ok(())
}
