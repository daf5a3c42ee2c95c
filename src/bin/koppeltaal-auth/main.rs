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

use std::future::{Future, poll_fn};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use keyfile::{load_key, write_private_key};
use koppeltaal_auth::jwks::JwkSet;
use koppeltaal_auth::{
    Algorithm, ClientCredentials, Error, ErrorKind, KoppeltaalAuth, SigningKey, TokenSource,
};
use tower_service::Service;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the server answered, but not with success (an invalid token response, a non-2xx FHIR status)
  2  configuration: bad arguments, unreadable or unsuitable key, plain http to a non-loopback
     host, a token endpoint answering 404 or a redirect
  3  network: the server could not be reached, timed out, or answered 5xx/408/429
  4  rejected credentials: the token endpoint refused the client assertion (400/401/403)";

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
    Token(TokenArgs),
    /// GET a URL through KoppeltaalAuthLayer and print the status and body.
    Get(GetArgs),
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

#[derive(Args, Debug)]
struct Credentials {
    /// Client id from Koppeltaal domain management.
    #[arg(long, env = "KOPPELTAAL_CLIENT_ID")]
    client_id: String,
    /// The private key (PEM) whose public half is in the registered JWK Set.
    #[arg(long, env = "KOPPELTAAL_KEY")]
    key: PathBuf,
    /// Key id in the registered JWK Set; defaults to the RFC 7638 thumbprint.
    #[arg(long, env = "KOPPELTAAL_KID")]
    kid: Option<String>,
    /// Signing algorithm; defaults to RS512 for RSA, ES256/ES384 for EC keys.
    #[arg(long, env = "KOPPELTAAL_ALG", value_parser = parse_alg)]
    alg: Option<Algorithm>,
    /// FHIR base URL; its SMART configuration gives the token endpoint.
    #[arg(long, env = "KOPPELTAAL_FHIR_BASE")]
    fhir_base: Option<String>,
    /// Token endpoint, instead of discovery.
    #[arg(long, env = "KOPPELTAAL_TOKEN_ENDPOINT")]
    token_endpoint: Option<String>,
    /// Scope to request (Koppeltaal sets the scope from the application's role).
    #[arg(long, env = "KOPPELTAAL_SCOPE")]
    scope: Option<String>,
    /// Proxy for every request (`http://`, `https://` or `socks5://` URL). None by default: the
    /// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` variables are ignored, so that no proxy you did not
    /// name sees a client assertion.
    #[arg(long, env = "KOPPELTAAL_PROXY")]
    proxy: Option<String>,
}

impl Credentials {
    /// The proxy named with `--proxy`, if any.
    fn proxy(&self) -> Result<Option<reqwest::Proxy>, Failure> {
        self.proxy
            .as_deref()
            .map(|url| {
                reqwest::Proxy::all(url)
                    .map_err(|err| failure(2, format!("invalid --proxy {url}: {err}")))
            })
            .transpose()
    }

    /// A client for discovery and `get`: no redirects, the named proxy or none at all, a
    /// 10 s timeout.
    fn http_client(&self) -> Result<reqwest::Client, Failure> {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT);
        let builder = match self.proxy()? {
            Some(proxy) => builder.proxy(proxy),
            None => builder,
        };
        builder
            .build()
            .map_err(|err| failure(2, format!("cannot build the HTTP client: {err}")))
    }
}

/// Timeout of each request the tool makes.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Args, Debug)]
struct TokenArgs {
    #[command(flatten)]
    credentials: Credentials,
    /// Print only the `Authorization: Bearer ...` header line.
    #[arg(long)]
    header: bool,
}

#[derive(Args, Debug)]
struct GetArgs {
    #[command(flatten)]
    credentials: Credentials,
    /// The URL to GET.
    url: String,
    /// Also print the token generation used and whether a renewal and replay happened (never
    /// the token).
    #[arg(long, short)]
    verbose: bool,
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
            ErrorKind::TokenRejected
                if err
                    .status()
                    .is_none_or(|status| matches!(status.as_u16(), 400 | 401 | 403)) =>
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
            Command::Token(args) => token(&args).await,
            Command::Get(args) => get(&args).await,
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

async fn token_endpoint(credentials: &Credentials) -> Result<String, Failure> {
    match (&credentials.token_endpoint, &credentials.fhir_base) {
        (Some(endpoint), _) => Ok(endpoint.clone()),
        (None, Some(base)) => Ok(koppeltaal_auth::smart::discover_with(
            &credentials.http_client()?,
            base,
        )
        .await?
        .token_endpoint),
        (None, None) => Err(failure(
            2,
            "give --fhir-base (discovery) or --token-endpoint (KOPPELTAAL_FHIR_BASE, KOPPELTAAL_TOKEN_ENDPOINT)",
        )),
    }
}

async fn token(args: &TokenArgs) -> Result<(), Failure> {
    let credentials = &args.credentials;
    let key = load_key(
        &credentials.key,
        credentials.alg,
        credentials.kid.as_deref(),
    )?;
    let mut builder = ClientCredentials::builder()
        .client_id(&credentials.client_id)
        .token_endpoint(token_endpoint(credentials).await?)
        .signing_key(key);
    if let Some(scope) = &credentials.scope {
        builder = builder.scope(scope);
    }
    if let Some(proxy) = credentials.proxy()? {
        builder = builder.proxy(proxy);
    }
    let token = builder.build()?.fetch().await?;
    if args.header {
        println!("Authorization: Bearer {}", token.as_str());
    } else {
        let response = serde_json::json!({
            "access_token": token.as_str(),
            "token_type": "Bearer",
            "expires_in": token.lifetime().as_secs(),
            "scope": token.scope(),
        });
        println!("{}", pretty(&response));
    }
    Ok(())
}

async fn get(args: &GetArgs) -> Result<(), Failure> {
    let credentials = &args.credentials;
    let Some(base) = &credentials.fhir_base else {
        return Err(failure(
            2,
            "get needs --fhir-base (KOPPELTAAL_FHIR_BASE): the token goes only to URLs under it",
        ));
    };
    let key = load_key(
        &credentials.key,
        credentials.alg,
        credentials.kid.as_deref(),
    )?;
    let mut builder = KoppeltaalAuth::builder()
        .fhir_base_url(base)
        .client_id(&credentials.client_id)
        .signing_key(key);
    if let Some(endpoint) = &credentials.token_endpoint {
        builder = builder.token_endpoint(endpoint);
    }
    if let Some(scope) = &credentials.scope {
        builder = builder.scope(scope);
    }
    if let Some(proxy) = credentials.proxy()? {
        builder = builder.proxy(proxy);
    }
    let auth = builder.discover().await?;
    if !auth.covers(&args.url) {
        eprintln!(
            "warning: {} is not under the FHIR base {base}: sent without a token",
            args.url
        );
    }
    let http = credentials.http_client()?;
    let mut service = tower_layer::Layer::layer(&auth.layer(), ReqwestService(http));
    let request = http::Request::get(&args.url)
        .header(http::header::ACCEPT, "application/fhir+json")
        .body(Bytes::new())
        .map_err(|err| failure(2, format!("invalid URL {}: {err}", args.url)))?;
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(|err| failure(3, err.to_string()))?;
    let response = service
        .call(request)
        .await
        .map_err(|err| match err.downcast::<Error>() {
            Ok(ours) => Failure::from(*ours),
            Err(other) => failure(3, format!("request failed: {other}")),
        })?;
    let stats = auth.stats();
    if args.verbose {
        eprintln!("token generation used: {}", stats.generation);
        if stats.invalidations > 0 {
            eprintln!(
                "the server rejected the first token (401): renewed it and replayed the request"
            );
        } else {
            eprintln!("no renewal or replay was needed");
        }
    }
    println!("{:?} {}", response.version(), response.status());
    println!("{}", String::from_utf8_lossy(response.body()));
    if response.status().is_success() {
        Ok(())
    } else {
        Err(failure(1, format!("HTTP {}", response.status())))
    }
}

/// reqwest as a tower service over `http` types, so that the layer can wrap it.
#[derive(Clone)]
struct ReqwestService(reqwest::Client);

/// Largest response body `get` reads.
const MAX_GET_BODY: usize = 16 * 1024 * 1024;

impl Service<http::Request<Bytes>> for ReqwestService {
    type Response = http::Response<Bytes>;
    type Error = koppeltaal_auth::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Bytes>) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let mut response = client.execute(request).await?;
            let mut builder = http::Response::builder()
                .status(response.status())
                .version(response.version());
            if let Some(headers) = builder.headers_mut() {
                *headers = response.headers().clone();
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_GET_BODY {
                    return Err(format!(
                        "the response body is over {} MiB: not read",
                        MAX_GET_BODY / (1024 * 1024)
                    )
                    .into());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(builder.body(Bytes::from(body)).unwrap_or_default())
        })
    }
}
