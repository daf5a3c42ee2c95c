//! The commands that talk to servers: `token` and `get`, and the credentials both take.

use std::future::{Future, poll_fn};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use clap::Args;
use koppeltaal_auth::{Algorithm, ClientCredentials, Error, KoppeltaalAuth, TokenSource};
use tower_service::Service;

use crate::keyfile::load_key;
use crate::{Failure, failure, parse_alg, pretty};

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
                // Not shown: it may hold a password.
                reqwest::Proxy::all(url)
                    .map_err(|err| failure(2, format!("invalid --proxy: {err}")))
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
pub(crate) struct TokenArgs {
    #[command(flatten)]
    credentials: Credentials,
    /// Print only the `Authorization: Bearer ...` header line.
    #[arg(long)]
    header: bool,
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    credentials: Credentials,
    /// The URL to GET.
    url: String,
    /// Also print the token generation used and whether a renewal and replay happened (never
    /// the token).
    #[arg(long, short)]
    verbose: bool,
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

pub(crate) async fn token(args: &TokenArgs) -> Result<(), Failure> {
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

pub(crate) async fn get(args: &GetArgs) -> Result<(), Failure> {
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
