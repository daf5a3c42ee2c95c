//! The mock's FHIR endpoint taking tokens from another issuer (Koppeltaal's reference auth
//! server, say), checked the way Koppeltaal's HAPI server checks them (`JwtValidationService`):
//! an RS512 JWT signed by a key of the issuer's JWK Set, `iss` the issuer, `aud` `fhir-server`,
//! 60 s of leeway on `exp`, none on `iat`/`nbf` (by the FHIR endpoint's clock), a plain `401`
//! otherwise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::Shared;

/// An issuer whose tokens the FHIR endpoint takes.
pub(super) struct ExternalIssuer {
    pub(super) issuer: String,
    pub(super) jwks_url: String,
    /// Fetched on first use.
    pub(super) jwks: Option<jsonwebtoken::jwk::JwkSet>,
}

/// The audience Koppeltaal's auth server puts in its access tokens.
const AUDIENCE: &str = "fhir-server";

/// HAPI's leeway on `exp`.
const EXP_LEEWAY: u64 = 60;

/// Fetches the issuer's JWK Set if it has not been yet (outside the mock's lock).
pub(super) async fn ensure_jwks(shared: &Shared) {
    let url = {
        let state = shared.lock();
        match &state.external {
            Some(external) if external.jwks.is_none() => external.jwks_url.clone(),
            _ => return,
        }
    };
    let fetched = fetch_jwks(&url).await.map(|(jwks, _)| jwks);
    if let (Some(jwks), Some(external)) = (fetched, shared.lock().external.as_mut()) {
        external.jwks = Some(jwks);
    }
}

/// Fetches a JWK Set as an auth server would: no proxy (the mock is a loopback server), no
/// redirects, the token client's timeout and body limit, so that a JWKS URL that hangs or
/// streams for ever cannot hold up the requests waiting for it. Also the response's headers
/// (for its `Cache-Control`).
pub(super) async fn fetch_jwks(url: &str) -> Option<(jsonwebtoken::jwk::JwkSet, http::HeaderMap)> {
    let client = crate::fetch::default_client(crate::fetch::DEFAULT_REQUEST_TIMEOUT, None).ok()?;
    let response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .ok()?;
    let headers = response.headers().clone();
    let body = crate::fetch::read_limited(response, crate::fetch::MAX_BODY)
        .await
        .ok()?;
    Some((serde_json::from_slice(&body).ok()?, headers))
}

/// Whether `token` is a valid token of `external` at `now` (the FHIR endpoint's clock).
pub(super) fn accepts(external: &ExternalIssuer, token: &str, now: SystemTime) -> bool {
    check(external, token, now).is_ok()
}

fn check(external: &ExternalIssuer, token: &str, now: SystemTime) -> Result<(), String> {
    let jwks = external.jwks.as_ref().ok_or("no JWK Set")?;
    let header = jsonwebtoken::decode_header(token).map_err(|err| err.to_string())?;
    if header.alg != jsonwebtoken::Algorithm::RS512 {
        return Err("not RS512".into());
    }
    let jwk = match header.kid.as_deref() {
        Some(kid) => jwks.find(kid),
        None => jwks.keys.first(),
    }
    .ok_or("unknown key")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|err| err.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS512);
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[&external.issuer]);
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|err| err.to_string())?
        .claims;
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let claim = |name: &str| claims.get(name).and_then(Value::as_u64);
    if claim("exp").is_none_or(|exp| now > exp.saturating_add(EXP_LEEWAY)) {
        return Err("expired".into());
    }
    if claim("iat").is_some_and(|iat| now < iat) || claim("nbf").is_some_and(|nbf| now < nbf) {
        return Err("not valid yet".into());
    }
    Ok(())
}
