//! `koppeltaal-auth mock`: `MockKoppeltaal` as a standalone server on loopback, for tests in
//! other languages and docker-compose set-ups.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use koppeltaal_auth::Algorithm;
use koppeltaal_auth::jwks::JwkSet;
use koppeltaal_auth::testing::MockKoppeltaal;

use crate::{Failure, failure, parse_alg};

#[derive(Args, Debug)]
pub(crate) struct MockArgs {
    /// Loopback port to listen on (127.0.0.1); 0 takes a free one, printed at start.
    #[arg(long, env = "KOPPELTAAL_MOCK_PORT", default_value_t = 0)]
    port: u16,
    /// A client: `<client-id>=<JWK Set file>` or `<client-id>=<JWKS URL>` (fetched and cached
    /// per its Cache-Control, as Koppeltaal does). Repeat for several.
    #[arg(long = "client", value_name = "ID=JWKS", value_parser = parse_client)]
    clients: Vec<(String, String)>,
    /// Lifetime of issued tokens, in seconds (`expires_in`).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    token_lifetime: u64,
    /// Algorithms accepted for client assertions.
    #[arg(
        long = "algorithms",
        value_delimiter = ',',
        default_value = "RS384,ES384,RS512",
        value_parser = parse_alg
    )]
    algorithms: Vec<Algorithm>,
    /// Run the auth server's clock this many seconds ahead (negative: behind).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    clock_offset: i64,
    /// Run the FHIR server's clock this many seconds ahead of the auth server's (negative:
    /// behind); it takes no token before its `iat`, as Koppeltaal's HAPI server.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    fhir_clock_offset: i64,
    /// Delay every token response by this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    token_delay_ms: u64,
    /// Answer the first N token requests `503 Service Unavailable`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    fail_token_requests: usize,
    /// A client whose tokens the FHIR endpoint answers `403` (repeat for several).
    #[arg(long = "forbidden", value_name = "CLIENT_ID")]
    forbidden: Vec<String>,
}

/// The longest delay or lifetime the knobs take: a day.
const MAX_KNOB: Duration = Duration::from_secs(86_400);

fn parse_client(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((id, jwks)) if !id.is_empty() && !jwks.is_empty() => {
            Ok((id.to_owned(), jwks.to_owned()))
        }
        _ => Err("expected <client-id>=<JWK Set file or JWKS URL>".to_owned()),
    }
}

fn is_url(value: &str) -> bool {
    value.starts_with("http://") || value.starts_with("https://")
}

/// Largest JWK Set file read, as for a JWK Set the mock fetches from a URL: a set of a hundred
/// RSA keys is well under it, and `/dev/zero` is an error, not an exhausted memory.
const MAX_JWKS_FILE: u64 = 64 * 1024;

fn read_jwks(path: &str) -> Result<JwkSet, Failure> {
    use std::io::Read as _;
    let cannot = |err| failure(2, format!("cannot read the JWK Set {path}: {err}"));
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_JWKS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_JWKS_FILE {
        return Err(failure(
            2,
            format!(
                "{path} is larger than {} KiB: not a JWK Set",
                MAX_JWKS_FILE / 1024
            ),
        ));
    }
    serde_json::from_str(&text).map_err(|err| {
        failure(
            2,
            format!("{path} is not a JWK Set ({{\"keys\": [...]}}): {err}"),
        )
    })
}

pub(crate) async fn mock(args: &MockArgs) -> Result<(), Failure> {
    let secs = |value: u64, what: &str| {
        let value = Duration::from_secs(value);
        if value > MAX_KNOB {
            return Err(failure(2, format!("{what} is at most a day")));
        }
        Ok(value)
    };
    let lifetime = secs(args.token_lifetime, "--token-lifetime")?;
    if lifetime.is_zero() {
        return Err(failure(2, "--token-lifetime must be at least 1 second"));
    }
    let delay = Duration::from_millis(args.token_delay_ms);
    if delay > MAX_KNOB {
        return Err(failure(2, "--token-delay-ms is at most a day"));
    }
    // Checked before binding, so that a typo does not leave a half-configured server.
    let mut clients = Vec::with_capacity(args.clients.len());
    for (id, jwks) in &args.clients {
        let source = if is_url(jwks) {
            Err(jwks.clone())
        } else {
            Ok(read_jwks(jwks)?)
        };
        clients.push((id, source));
    }
    let mock = MockKoppeltaal::builder()
        .port(args.port)
        .token_lifetime(lifetime)
        .allowed_algorithms(&args.algorithms)
        .clock_offset_secs(args.clock_offset)
        .fhir_clock_offset_secs(args.fhir_clock_offset)
        .start()
        .await
        .map_err(|err| {
            failure(
                2,
                format!("cannot listen on 127.0.0.1:{}: {err}", args.port),
            )
        })?;
    // No request is served before everything below is set: the tool runs on a current-thread
    // runtime, where the server's task runs only once this one awaits (at `stop.await`).
    for (id, source) in &clients {
        match source {
            Ok(jwks) => mock.register_client(id, jwks),
            Err(url) => mock.register_jwks_url(id, url),
        }
    }
    for id in &args.forbidden {
        mock.set_forbidden(id, true);
    }
    mock.set_token_delay(delay);
    if args.fail_token_requests > 0 {
        mock.fail_next_token_requests(
            args.fail_token_requests,
            http::StatusCode::SERVICE_UNAVAILABLE,
            None,
        );
    }
    // Listen for the signals before saying the server is up, so that a stop right after the
    // banner is a clean one.
    let stop = stop_signal()?;
    print_banner(&mock, args);
    stop.await?;
    eprintln!("mock Koppeltaal stopped");
    Ok(())
}

fn print_banner(mock: &MockKoppeltaal, args: &MockArgs) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "mock Koppeltaal listening on http://{}", mock.addr());
    let _ = writeln!(out, "FHIR base:       {}", mock.fhir_base_url());
    let _ = writeln!(out, "token endpoint:  {}", mock.token_endpoint());
    let _ = writeln!(
        out,
        "discovery:       {}/.well-known/smart-configuration",
        mock.fhir_base_url()
    );
    if args.clients.is_empty() {
        let _ = writeln!(out, "clients:         none registered");
    }
    for (id, jwks) in &args.clients {
        let _ = writeln!(out, "client:          {id} (JWK Set {jwks})");
    }
    let _ = writeln!(
        out,
        "register a client: restart with --client <client-id>=<jwks.json or JWKS URL>\n\
         (`koppeltaal-auth keygen --out key.pem > jwks.json` makes both halves)\n\
         stop with Ctrl-C"
    );
    let _ = out.flush();
}

/// A future that resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM (`docker stop`); on Unix the
/// handlers are installed when this returns.
fn stop_signal() -> Result<impl std::future::Future<Output = Result<(), Failure>>, Failure> {
    let signal_error =
        |err: std::io::Error| failure(1, format!("cannot listen for signals: {err}"));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => Ok(()),
                _ = terminate.recv() => Ok(()),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move { tokio::signal::ctrl_c().await.map_err(signal_error) })
    }
}
