//! `koppeltaal-auth`: create keys, publish the JWK Set, and check that the credentials work.
//!
//! ```not_rust
//! koppeltaal-auth keygen --alg RS512 --out client-key.pem > jwks.json
//! koppeltaal-auth token --client-id ... --key client-key.pem --fhir-base https://...
//! koppeltaal-auth get --client-id ... --key client-key.pem --fhir-base https://... https://.../Patient?_count=1
//! koppeltaal-auth mock --port 8099 --client my-app=jwks.json
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod keyfile;
mod mock;
mod remote;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use keyfile::{load_key, write_private_key};
use koppeltaal_auth::jwks::JwkSet;
use koppeltaal_auth::{Algorithm, Error, ErrorKind, SigningKey};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the server answered, but not with success (an invalid token response, a non-2xx FHIR status)
  2  configuration: bad arguments, unreadable or unsuitable key, plain http to a non-loopback
     host, a token endpoint answering another 4xx (404, 405) or a redirect
  3  network: the server could not be reached, timed out, or answered 5xx/408/429
  4  rejected credentials: the token endpoint refused the client assertion (400/401/403, or
     an OAuth error in a 2xx)";

/// Koppeltaal 2.0 keys and tokens: SMART Backend Services from the command line.
#[derive(Parser, Debug)]
#[command(name = "koppeltaal-auth", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a private key (PKCS#8 PEM, mode 0600) and print its public JWK Set.
    Keygen(KeygenArgs),
    /// Print the public JWK Set of one or more private keys.
    Jwks(JwksArgs),
    /// Get an access token and print the token response (or the Authorization header).
    Token(remote::TokenArgs),
    /// GET a URL through KoppeltaalAuthLayer and print the status and body.
    Get(remote::GetArgs),
    /// Run a mock Koppeltaal (auth server, discovery, FHIR endpoint) on loopback until Ctrl-C.
    Mock(mock::MockArgs),
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(|err: Error| err.to_string())
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Signing algorithm: RS512, RS384, RS256, PS256, PS384, PS512, ES256 or ES384.
    #[arg(long, env = "KOPPELTAAL_ALG", default_value = "RS512", value_parser = parse_alg)]
    alg: Algorithm,
    /// Key id for the JWK Set; defaults to the RFC 7638 thumbprint.
    #[arg(long, env = "KOPPELTAAL_KID")]
    kid: Option<String>,
    /// Where to write the private key.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct JwksArgs {
    /// A private key (PEM); repeat for several.
    #[arg(
        long = "key",
        env = "KOPPELTAAL_KEY",
        required = true,
        value_delimiter = ','
    )]
    keys: Vec<PathBuf>,
    /// Signing algorithm for every key; defaults to RS512 for RSA, ES256/ES384 for EC keys.
    #[arg(long, env = "KOPPELTAAL_ALG", value_parser = parse_alg)]
    alg: Option<Algorithm>,
    /// Key id of the key in the same position; keys without one get their thumbprint.
    #[arg(long = "kid", env = "KOPPELTAAL_KID", value_delimiter = ',')]
    kids: Vec<String>,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match err.kind() {
            ErrorKind::Config | ErrorKind::Key | ErrorKind::CryptoBackend => 2,
            _ if err.is_transient() => 3,
            ErrorKind::Transport | ErrorKind::Timeout | ErrorKind::WaitTimeout => 3,
            // The assertion refused. Any other answer (404 for a mistyped endpoint, 405, a
            // redirect) means the endpoint is not one: a configuration error.
            // (A 2xx that states an OAuth error refuses the assertion as a 400 would.)
            ErrorKind::TokenRejected
                if err.status().is_none_or(|status| {
                    matches!(status.as_u16(), 400 | 401 | 403) || status.is_success()
                }) =>
            {
                4
            }
            ErrorKind::TokenRejected => 2,
            ErrorKind::Discovery if err.status().is_none() => 2,
            _ => 1,
        };
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str(&format!("\n  caused by: {cause}"));
            source = cause.source();
        }
        Self { code, message }
    }
}

fn failure(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Keygen(args) => keygen(&args),
            Command::Jwks(args) => jwks(&args),
            Command::Token(args) => remote::token(&args).await,
            Command::Get(args) => remote::get(&args).await,
            Command::Mock(args) => mock::mock(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// The algorithms Koppeltaal's reference auth server accepts for client assertions.
const KOPPELTAAL_ALGS: [Algorithm; 3] = [Algorithm::RS384, Algorithm::ES384, Algorithm::RS512];

fn keygen(args: &KeygenArgs) -> Result<(), Failure> {
    if !KOPPELTAAL_ALGS.contains(&args.alg) {
        eprintln!(
            "warning: Koppeltaal's auth server accepts RS384, ES384 and RS512 assertions; a {} \
             key works only with a server that accepts {0}",
            args.alg
        );
    }
    let mut key = SigningKey::generate(args.alg)?;
    if let Some(kid) = &args.kid {
        key = SigningKey::from_pem_with_algorithm(
            key.to_pkcs8_pem().as_bytes(),
            args.alg,
            kid.as_str(),
        )?;
    }
    write_private_key(&args.out, key.to_pkcs8_pem().as_bytes(), args.force)?;
    let jwks = JwkSet::from_keys([&key])?;
    println!("{}", pretty(&jwks));
    eprintln!(
        "wrote the {} private key to {} (mode 0600), kid {}\n\
         publish the JWK Set above at the JWKS URL registered in Koppeltaal domain management",
        key.algorithm(),
        args.out.display(),
        key.kid()
    );
    Ok(())
}

fn jwks(args: &JwksArgs) -> Result<(), Failure> {
    if args.kids.len() > args.keys.len() {
        return Err(failure(2, "more --kid than --key arguments"));
    }
    let keys = args
        .keys
        .iter()
        .enumerate()
        .map(|(i, path)| load_key(path, args.alg, args.kids.get(i).map(String::as_str)))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{}", pretty(&JwkSet::from_keys(&keys)?));
    Ok(())
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}
