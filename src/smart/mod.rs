//! SMART discovery: `GET <fhir-base>/.well-known/smart-configuration`.
//!
//! Koppeltaal publishes its auth endpoints in the SMART configuration of each domain's FHIR base
//! (TOP-KT-016), fetched without a token. [`discover`] reads it and checks what this crate needs:
//! a `token_endpoint` (a relative one is resolved against the FHIR base) and, when the list is
//! present, `private_key_jwt` among `token_endpoint_auth_methods_supported`. Koppeltaal does not
//! publish `token_endpoint_auth_signing_alg_values_supported`, so the algorithm is configured.
//!
//! Tolerant on input, exact on output: a member the crate does not read (`issuer`, `jwks_uri`,
//! `grant_types_supported`, ...) that has an unexpected type does not fail discovery; it is kept
//! as published in [`SmartConfiguration::other`], and serialises back unchanged.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), koppeltaal_auth::Error> {
//! let smart = koppeltaal_auth::smart::discover(
//!     "https://fhir-server.koppeltaal.headease.nl/fhir/DEFAULT",
//! )
//! .await?;
//! println!("token endpoint: {}", smart.token_endpoint);
//! # Ok(()) }
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use crate::endpoint::{check_secure, has_stray_bytes, parse_secure_url};
use crate::error::{Error, ErrorKind};
use crate::fetch::{
    DEFAULT_REQUEST_TIMEOUT, MAX_BODY, default_client, read_error_body, read_limited,
};
use crate::key::Algorithm;

const WELL_KNOWN: &str = ".well-known/smart-configuration";

/// The parts of a SMART configuration document this crate reads; the rest is kept in
/// [`other`](Self::other).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SmartConfiguration {
    /// The token endpoint, absolute: exactly as published when it was absolute, else resolved
    /// against the FHIR base. Also the `aud` of client assertions.
    pub token_endpoint: String,
    /// `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `jwks_uri`: the auth server's own keys. As published, not checked (the crate does not
    /// use it): check it is `https` before you fetch keys from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// `token_endpoint_auth_methods_supported`; `None` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// `token_endpoint_auth_signing_alg_values_supported`; Koppeltaal leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_signing_alg_values_supported: Option<Vec<String>>,
    /// `grant_types_supported`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_types_supported: Option<Vec<String>>,
    /// `scopes_supported`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_supported: Option<Vec<String>>,
    /// `capabilities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// `introspection_endpoint` (TOP-KT-021). As published, not checked (the crate does not use
    /// it): check it is `https` before you send an assertion or a token to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
    /// Every other member, untouched.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl SmartConfiguration {
    /// Parses and checks a SMART configuration document served under `fhir_base`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Discovery`] when the body is not a JSON object, `token_endpoint` is missing
    /// or not a string, a list the crate reads (`token_endpoint_auth_methods_supported`,
    /// `token_endpoint_auth_signing_alg_values_supported`) is not a list of strings, or
    /// `private_key_jwt` is missing from a present `token_endpoint_auth_methods_supported`;
    /// [`ErrorKind::Config`] when the token endpoint is not HTTPS (loopback hosts excepted). A
    /// member the crate does not read with an unexpected type is no error: its field is `None`
    /// and the member is in [`other`](Self::other) as published.
    ///
    /// ```
    /// # use koppeltaal_auth::smart::SmartConfiguration;
    /// let base = url::Url::parse("https://fhir.example.org/fhir/DEFAULT").unwrap();
    /// let body = br#"{"token_endpoint": "https://auth.example.org/oauth2/token",
    ///                 "grant_types_supported": "client_credentials"}"#;
    /// let config = SmartConfiguration::from_json(body, &base)?;
    /// assert_eq!(config.grant_types_supported, None);
    /// assert_eq!(config.other["grant_types_supported"], "client_credentials");
    /// # Ok::<(), koppeltaal_auth::Error>(())
    /// ```
    pub fn from_json(body: &[u8], fhir_base: &Url) -> Result<Self, Error> {
        let discovery = |message: &'static str| Error::new(ErrorKind::Discovery, message);
        let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(body) else {
            return Err(discovery("the SMART configuration is not a JSON object"));
        };
        let endpoint = match object.get("token_endpoint") {
            Some(Value::String(endpoint)) if !endpoint.is_empty() => endpoint.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(discovery("the SMART configuration has no token_endpoint"));
            }
            Some(_) => return Err(discovery("token_endpoint is not a string")),
        };
        let resolved = resolve(&endpoint, fhir_base)?;
        object.insert("token_endpoint".to_owned(), Value::String(resolved));
        let misfits = take_misfits(&mut object);
        // serde's message quotes the member's value, which may be the whole body: truncated as
        // any server text, and not kept as the error's source.
        let mut config: Self = serde_json::from_value(Value::Object(object)).map_err(|err| {
            let why = crate::redact::sanitize_snippet(err.to_string().as_bytes());
            Error::new(
                ErrorKind::Discovery,
                format!("the SMART configuration has a malformed member: {why}"),
            )
        })?;
        config.other.extend(misfits);
        if let Some(methods) = &config.token_endpoint_auth_methods_supported
            && !methods.iter().any(|method| method == "private_key_jwt")
        {
            return Err(discovery(
                "the server does not list private_key_jwt in \
                 token_endpoint_auth_methods_supported",
            ));
        }
        Ok(config)
    }

    /// Whether the server accepts assertions signed with `alg`: true when it advertises the
    /// algorithm, or advertises no list (Koppeltaal).
    #[must_use]
    pub fn supports_signing_alg(&self, alg: Algorithm) -> bool {
        self.token_endpoint_auth_signing_alg_values_supported
            .as_ref()
            .is_none_or(|algs| algs.iter().any(|a| a == alg.as_str()))
    }
}

/// The members the crate does not read, each with the shape its field has: `true` for a list of
/// strings, `false` for a string.
const UNREAD: [(&str, bool); 6] = [
    ("issuer", false),
    ("jwks_uri", false),
    ("introspection_endpoint", false),
    ("grant_types_supported", true),
    ("scopes_supported", true),
    ("capabilities", true),
];

/// Takes out of `object` each member the crate does not read whose value does not have its
/// field's shape (`null` fits any: it reads as `None`), to be kept in `other` as published.
fn take_misfits(object: &mut Map<String, Value>) -> Vec<(String, Value)> {
    let fits = |value: &Value, list: bool| match value {
        Value::Null => true,
        Value::String(_) => !list,
        Value::Array(items) => list && items.iter().all(Value::is_string),
        _ => false,
    };
    let mut misfits = Vec::new();
    for (name, list) in UNREAD {
        if object.get(name).is_some_and(|value| !fits(value, list))
            && let Some(misfit) = object.remove_entry(name)
        {
            tracing::warn!(
                member = name,
                "a SMART configuration member has an unexpected type: not read, kept in `other`"
            );
            misfits.push(misfit);
        }
    }
    misfits
}

/// Resolves a published token endpoint: an absolute URL stays byte for byte as published (the
/// reference server compares `aud` as a string), a relative one is resolved against the base.
///
/// Plain `http` is allowed for a loopback token endpoint only when the FHIR base is on loopback
/// too (the mock): an `https` server may not send the assertion to a plain port on this machine.
fn resolve(endpoint: &str, fhir_base: &Url) -> Result<String, Error> {
    if has_stray_bytes(endpoint) {
        return Err(Error::new(
            ErrorKind::Discovery,
            "token_endpoint holds whitespace or a control character",
        ));
    }
    let (url, published) = match Url::parse(endpoint) {
        Ok(url) => (url, endpoint.to_owned()),
        Err(_) => {
            let url = directory(fhir_base).join(endpoint).map_err(|err| {
                Error::new(ErrorKind::Discovery, "token_endpoint is not a URL").with_source(err)
            })?;
            let resolved = url.to_string();
            (url, resolved)
        }
    };
    check_secure("token endpoint", &url)?;
    if url.scheme() == "http" && fhir_base.scheme() != "http" {
        return Err(Error::new(
            ErrorKind::Discovery,
            "an https FHIR server published a plain-http token endpoint",
        ));
    }
    Ok(published)
}

/// The base as a directory, so that joining appends instead of replacing the last segment.
fn directory(base: &Url) -> Url {
    let mut dir = base.clone();
    if !dir.path().ends_with('/') {
        let path = format!("{}/", dir.path());
        dir.set_path(&path);
    }
    dir.set_query(None);
    dir
}

/// The discovery URL for a FHIR base, with or without a trailing slash.
pub(crate) fn well_known_url(fhir_base: &Url) -> Result<Url, Error> {
    directory(fhir_base)
        .join(WELL_KNOWN)
        .map_err(|err| Error::config("cannot build the discovery URL").with_source(err))
}

/// Fetches and checks `<fhir_base>/.well-known/smart-configuration` with a default HTTP client
/// (no redirects, no proxy, 10 second timeout).
///
/// # Errors
///
/// As [`discover_with`].
pub async fn discover(fhir_base: &str) -> Result<SmartConfiguration, Error> {
    discover_with(&default_client(DEFAULT_REQUEST_TIMEOUT, None)?, fhir_base).await
}

/// Fetches and checks `<fhir_base>/.well-known/smart-configuration` with `http`, without a
/// token.
///
/// # Errors
///
/// - [`ErrorKind::Config`] when `fhir_base` is not an absolute `https` URL (plain `http` is
///   allowed for loopback hosts only);
/// - [`ErrorKind::Transport`] or [`ErrorKind::Timeout`] when the server cannot be reached;
/// - [`ErrorKind::Discovery`] for an error status (with [`Error::status`]) or a document
///   [`SmartConfiguration::from_json`] refuses;
/// - [`ErrorKind::ResponseTooLarge`] for a body over 64 KiB.
pub async fn discover_with(
    http: &reqwest::Client,
    fhir_base: &str,
) -> Result<SmartConfiguration, Error> {
    let base = parse_secure_url("FHIR base URL", fhir_base)?;
    let url = well_known_url(&base)?;
    let response = http
        .get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|err| Error::from_reqwest("SMART discovery request failed", err))?;
    let status = response.status();
    if !status.is_success() {
        let body = read_error_body(response, MAX_BODY).await;
        return Err(
            Error::new(ErrorKind::Discovery, format!("GET {url} failed"))
                .with_status(status)
                .with_body_snippet(&body),
        );
    }
    let body = read_limited(response, MAX_BODY).await?;
    let config = SmartConfiguration::from_json(&body, &base)?;
    tracing::debug!(fhir_base = %base, token_endpoint = %config.token_endpoint, "SMART configuration discovered");
    Ok(config)
}

#[cfg(test)]
mod tests;
