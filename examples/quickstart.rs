//! The whole job, end to end, against an embedded mock Koppeltaal on loopback: no accounts, no
//! network.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example quickstart
//! ```
//!
//! It starts `MockKoppeltaal` (tokens live 4 seconds so that you can watch a refresh), generates a
//! key and registers its public JWK Set, discovers the token endpoint, and sends FHIR requests
//! with hyper-util's client through `KoppeltaalAuthLayer`: a read, a create, a burst of reads on
//! one token, a proactive refresh in the background, and a server-side revocation answered by one
//! transparent renewal and replay. It exits with an error when any step does not do what it
//! says, so that CI can run it as the README's first command.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{Algorithm, BoxError, KoppeltaalAuth, SigningKey};
use tower::{ServiceBuilder, ServiceExt};

const CLIENT_ID: &str = "quickstart-app";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let started = Instant::now();
    let mock = MockKoppeltaal::builder()
        .token_lifetime(Duration::from_secs(4))
        .start()
        .await?;
    println!("koppeltaal-auth quickstart");
    println!(
        "  mock Koppeltaal at http://{} (tokens live 4 s)\n",
        mock.addr()
    );

    // 1. The application's key pair. The public half goes into the JWK Set registered for the
    //    application in Koppeltaal domain management; the mock takes it directly.
    let key = SigningKey::generate(Algorithm::RS512)?;
    mock.register_key(CLIENT_ID, &key);
    println!("1. generated an {} key, kid {}", key.algorithm(), key.kid());
    println!("   and registered its public JWK Set for client {CLIENT_ID:?}");

    // 2. Configure once: the FHIR base, the client id and the key. The token endpoint comes from
    //    the SMART configuration of the FHIR base.
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(key)
        .discover()
        .await?;
    println!(
        "2. discovered the token endpoint: {}",
        auth.token_endpoint().unwrap_or("?")
    );

    // 3. Any tower stack: here hyper-util's client. No auth code below this point.
    let client = ServiceBuilder::new()
        .layer(auth.layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let base = mock.fhir_base_url();
    let send = |request: Request<Full<Bytes>>| client.clone().oneshot(request);

    let patient =
        send(Request::get(format!("{base}/Patient/example")).body(Full::default())?).await?;
    let status = patient.status();
    let body = patient.into_body().collect().await?.to_bytes();
    println!(
        "3. GET  Patient/example -> {status}  {}",
        String::from_utf8_lossy(&body)
    );
    expect(status == StatusCode::OK, "the read answers 200")?;

    let task = Request::post(format!("{base}/Task"))
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from_static(
            br#"{"resourceType":"Task","status":"requested","intent":"order"}"#,
        )))?;
    let created = send(task).await?;
    println!(
        "4. POST Task            -> {}  at {}",
        created.status(),
        created
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("?")
    );
    expect(
        created.status() == StatusCode::CREATED,
        "the create answers 201",
    )?;

    let mut ok = 0;
    for i in 0..20 {
        let response =
            send(Request::get(format!("{base}/Patient/{i}")).body(Full::default())?).await?;
        ok += usize::from(response.status() == StatusCode::OK);
    }
    println!(
        "5. 20 more reads        -> {ok} OK, all on token generation {} ({} token request so far)",
        auth.stats().generation,
        mock.stats().token_requests
    );
    expect(ok == 20, "every read answers 200")?;
    expect(
        mock.stats().token_requests == 1,
        "22 requests are sent with one token",
    )?;

    // 4 s tokens are refreshed when half their life is left (plus jitter), by a background task:
    // no request waits for the token endpoint.
    println!("6. waiting for the proactive refresh...");
    let waiting = Instant::now();
    while auth.stats().generation < 2 && waiting.elapsed() < Duration::from_secs(10) {
        let response =
            send(Request::get(format!("{base}/Patient/example")).body(Full::default())?).await?;
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "   token generation {} arrived in the background after {:.1} s; requests that waited for a token: {}",
        auth.stats().generation,
        waiting.elapsed().as_secs_f64(),
        auth.stats().waits
    );
    expect(
        auth.stats().generation >= 2,
        "the token is refreshed in the background within 10 s",
    )?;

    // The server revokes every token: the next request gets a 401, the layer renews the token
    // once and replays the request with the new one. The caller sees only the 200.
    mock.revoke_all_tokens();
    let response =
        send(Request::get(format!("{base}/Patient/example")).body(Full::default())?).await?;
    println!(
        "7. server revoked all tokens; GET Patient/example -> {} (renewed once and replayed: generation {})",
        response.status(),
        auth.stats().generation
    );
    expect(
        response.status() == StatusCode::OK,
        "the request after the revocation answers 200",
    )?;
    expect(
        mock.stats().fhir_unauthorized == 1,
        "exactly one request was refused (and replayed)",
    )?;

    let server = mock.stats();
    let cell = auth.stats();
    println!("\ncounters");
    println!(
        "  auth server : {} token requests ({} issued, {} refused)",
        server.token_requests, server.tokens_issued, server.token_requests_failed
    );
    println!(
        "  FHIR server : {} requests, {} answered 401",
        server.fhir_requests, server.fhir_unauthorized
    );
    println!(
        "  client      : {} tokens fetched, {} failed, {} renewals after a 401, {} requests waited",
        cell.fetches_ok, cell.fetches_failed, cell.invalidations, cell.waits
    );
    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `Ok` when the step did `what`, an error saying which step failed otherwise.
fn expect(done: bool, what: &str) -> Result<(), BoxError> {
    if done {
        Ok(())
    } else {
        Err(format!("quickstart step failed: {what}").into())
    }
}
