//! A real deployment with hyper-util's client: configuration from the environment, the token
//! endpoint from SMART discovery, `KoppeltaalAuthLayer` in a tower stack with a timeout.
//!
//! Run with
//!
//! ```not_rust
//! KOPPELTAAL_FHIR_BASE=https://fhir.example.org/fhir/DEFAULT \
//! KOPPELTAAL_CLIENT_ID=... KOPPELTAAL_KEY=client-key.pem KOPPELTAAL_KID=... \
//!   cargo run --example hyper_client
//! ```
//!
//! Without the variables it explains what it needs and exits.
#![allow(clippy::print_stdout)]

#[path = "support/env.rs"]
mod env;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::BoxError;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let Some(auth) = env::authenticator().await? else {
        return Ok(());
    };
    // Fail fast (a readiness check would) when the credentials do not work.
    auth.ready().await?;
    println!(
        "token endpoint: {}",
        auth.token_endpoint().unwrap_or("(custom)")
    );

    // HTTPS with rustls on AWS-LC and the platform's root certificates (plain HTTP is accepted
    // too, for loopback test servers; the layer never sends a token over it elsewhere).
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .try_with_platform_verifier()?
        .https_or_http()
        .enable_http1()
        .build();
    let client = ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)))
        .layer(auth.layer())
        .service(Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https));

    let url = env::resource(&auth);
    let request = Request::get(&url)
        .header("accept", "application/fhir+json")
        .body(Full::default())?;
    let response = client.oneshot(request).await?;
    println!("GET {url} -> {}", response.status());
    let body = response.into_body().collect().await?.to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
