//! A real deployment with reqwest: configuration from the environment, the token endpoint from
//! SMART discovery, `KoppeltaalAuthMiddleware` on a reqwest-middleware client.
//!
//! Run with
//!
//! ```not_rust
//! KOPPELTAAL_FHIR_BASE=https://fhir.example.org/fhir/DEFAULT \
//! KOPPELTAAL_CLIENT_ID=... KOPPELTAAL_KEY=client-key.pem KOPPELTAAL_KID=... \
//!   cargo run --example reqwest --features reqwest-middleware
//! ```
//!
//! Without the variables it explains what it needs and exits.
#![allow(clippy::print_stdout)]

#[path = "support/env.rs"]
mod env;

use koppeltaal_auth::BoxError;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let Some(auth) = env::authenticator().await? else {
        return Ok(());
    };
    // The redirect policy keeps the token inside the FHIR base (reqwest keeps it on any
    // redirect within one origin).
    let http = reqwest::Client::builder()
        .redirect(auth.redirect_policy())
        .build()?;
    let client = reqwest_middleware::ClientBuilder::new(http)
        .with(auth.middleware())
        .build();
    let url = env::resource(&auth);
    let response = client
        .get(&url)
        .header("accept", "application/fhir+json")
        .send()
        .await?;
    println!("GET {url} -> {}", response.status());
    println!("{}", response.text().await?);
    Ok(())
}
