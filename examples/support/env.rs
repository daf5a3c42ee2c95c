//! Configuration from environment variables, shared by the `hyper_client` and `reqwest`
//! examples.

use koppeltaal_auth::{Algorithm, Authenticator, BoxError, KeyId, KoppeltaalAuth, SigningKey};

/// The variables the examples read.
pub(crate) const HELP: &str = "\
Configure the application as registered in Koppeltaal domain management:

  KOPPELTAAL_FHIR_BASE    the domain's FHIR base, e.g. https://fhir-server.koppeltaal.headease.nl/fhir/DEFAULT
  KOPPELTAAL_CLIENT_ID        the client id from domain management
  KOPPELTAAL_KEY      path to the PEM private key whose public half is in your registered JWK Set
  KOPPELTAAL_KID              the key's kid in that JWK Set (default: its RFC 7638 thumbprint)
  KOPPELTAAL_ALG              RS512 (default for RSA keys), RS384, ES384, ...
  KOPPELTAAL_TOKEN_ENDPOINT   optional: skip SMART discovery and use this token endpoint
  KOPPELTAAL_RESOURCE         optional: what to read, relative to the base (default: Patient?_count=1)

Without them this example only explains itself; `cargo run --example quickstart` runs the whole
flow against a local mock.";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// The authenticator from the environment, or `None` (after printing [`HELP`]) when the required
/// variables are missing.
pub(crate) async fn authenticator() -> Result<Option<Authenticator>, BoxError> {
    let (Some(base), Some(client_id), Some(key_path)) = (
        var("KOPPELTAAL_FHIR_BASE"),
        var("KOPPELTAAL_CLIENT_ID"),
        var("KOPPELTAAL_KEY"),
    ) else {
        println!("{HELP}");
        return Ok(None);
    };
    let kid = var("KOPPELTAAL_KID").map_or(KeyId::Thumbprint, KeyId::from);
    let alg = var("KOPPELTAAL_ALG")
        .map(|alg| alg.parse::<Algorithm>())
        .transpose()?;
    // At most 1 MiB read, wiped from memory when done; `None`: the key type's default.
    let key = SigningKey::from_pem_file(&key_path, alg, kid)?;
    let mut builder = KoppeltaalAuth::builder()
        .fhir_base_url(base)
        .client_id(client_id)
        .signing_key(key);
    if let Some(endpoint) = var("KOPPELTAAL_TOKEN_ENDPOINT") {
        builder = builder.token_endpoint(endpoint);
    }
    Ok(Some(builder.discover().await?))
}

/// The resource to read.
pub(crate) fn resource(auth: &Authenticator) -> String {
    let base = auth.fhir_base_url().trim_end_matches('/');
    let path = var("KOPPELTAAL_RESOURCE").unwrap_or_else(|| "Patient?_count=1".to_owned());
    format!("{base}/{}", path.trim_start_matches('/'))
}
