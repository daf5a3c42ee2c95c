//! The mock token endpoint: validates client assertions like the reference auth server.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State as AxumState;
use axum::response::Response;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{MockResponse, Shared, State, Token, TokenRequest};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Longest assertion lifetime accepted (`exp - now`), as SMART demands.
const MAX_EXP_AHEAD: i64 = 300;

pub(super) async fn token(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    // Flask's `request.values`: the query string's parameters first, then the body's, which
    // count only when it is a form.
    let form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let mut values = uri.query().unwrap_or("").as_bytes().to_vec();
    if form && !body.is_empty() {
        if !values.is_empty() {
            values.push(b'&');
        }
        values.extend_from_slice(&body);
    }
    let body = Bytes::from(values);
    let received_at = Instant::now();
    let delay = {
        let mut state = shared.lock();
        state.stats.token_requests += 1;
        state.token_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    refresh_client_jwks(&shared, &body).await;
    let mut state = shared.lock();
    let audience = state
        .audience
        .clone()
        .unwrap_or_else(|| shared.token_endpoint.clone());
    let (response, mut record) = handle(&audience, &mut state, &method, &body);
    record.received_at = received_at;
    if response.status != StatusCode::OK || record.refusal.is_some() {
        state.stats.token_requests_failed += 1;
    }
    state.token_log.push(record);
    let date = httpdate::fmt_http_date(state.now());
    drop(state);
    response.header("date", &date).into_response()
}

/// For a client registered by JWKS URL, fetches its set when the cached copy is stale, as the
/// reference server's `requests_cache` does. A failed fetch leaves the client without keys.
async fn refresh_client_jwks(shared: &Shared, body: &[u8]) {
    let Some(iss) = url::form_urlencoded::parse(body)
        .find(|(key, _)| key == "client_assertion")
        .and_then(|(_, jwt)| decode_part(&jwt, 1))
        .and_then(|claims| claims.get("iss").and_then(Value::as_str).map(str::to_owned))
    else {
        return;
    };
    let url = {
        let state = shared.lock();
        match state.clients.get(&iss) {
            Some(client)
                if client
                    .jwks_fresh_until
                    .is_none_or(|until| Instant::now() >= until) =>
            {
                client.jwks_url.clone()
            }
            _ => None,
        }
    };
    let Some(url) = url else { return };
    let fetched = async {
        let (jwks, headers) = super::external::fetch_jwks(&url).await?;
        let max_age = headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .split(',')
                    .find_map(|part| part.trim().strip_prefix("max-age="))
                    .and_then(|secs| secs.parse::<u64>().ok())
            })
            .unwrap_or(0);
        Some((jwks, std::time::Duration::from_secs(max_age)))
    }
    .await;
    let mut state = shared.lock();
    state.stats.jwks_fetches += 1;
    if let Some(client) = state.clients.get_mut(&iss) {
        match fetched {
            Some((jwks, max_age)) => {
                client.jwks = jwks;
                client.jwks_fresh_until = Some(crate::token::later(Instant::now(), max_age));
            }
            None => {
                client.jwks = jsonwebtoken::jwk::JwkSet { keys: Vec::new() };
                client.jwks_fresh_until = None;
            }
        }
    }
}

fn plain(status: StatusCode, text: &str) -> MockResponse {
    MockResponse::new(status, text.to_owned()).header("content-type", "text/plain; charset=utf-8")
}

fn handle(
    token_endpoint: &str,
    state: &mut State,
    method: &Method,
    body: &[u8],
) -> (MockResponse, TokenRequest) {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let assertion = param("client_assertion").unwrap_or("");
    let mut record = TokenRequest {
        params: params.iter().map(|(key, _)| key.clone()).collect(),
        scope: param("scope").map(str::to_owned),
        assertion: (!assertion.is_empty()).then(|| assertion.to_owned()),
        assertion_header: decode_part(assertion, 0),
        assertion_claims: decode_part(assertion, 1),
        received_at: Instant::now(),
        status: StatusCode::OK,
        refusal: None,
    };
    if let Some(fault) = state.faults.pop_front() {
        record.status = fault.status;
        record.refusal = Some("injected response".to_owned());
        return (fault, record);
    }
    let mut refuse = |status: StatusCode, text: &str, reason: String| {
        record.status = status;
        record.refusal = Some(reason);
        (plain(status, text), record.clone())
    };
    if method != Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            "not POST".into(),
        );
    }
    if param("client_assertion_type") != Some(JWT_BEARER) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Access Denied",
            "client_assertion_type is not jwt-bearer".into(),
        );
    }
    let client_id = match verify_assertion(token_endpoint, state, assertion) {
        Ok(client_id) => client_id,
        Err(reason) => return refuse(StatusCode::UNAUTHORIZED, "Access Denied", reason),
    };
    if param("grant_type") != Some("client_credentials") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "grant_type is not client_credentials".into(),
        );
    }
    let number = state.stats.tokens_issued + 1;
    state.stats.tokens_issued = number;
    let token = format!("mock-{number}-{}", uuid::Uuid::new_v4().simple());
    let lifetime = state.token_lifetime;
    state.tokens.insert(
        token.clone(),
        Token {
            number,
            client_id,
            issued_at: crate::token::later(Instant::now(), state.token_clock_advance),
            iat: crate::token::issued::epoch_seconds(state.now()).unwrap_or(0),
            lifetime,
            revoked: false,
            fhir_requests: 0,
        },
    );
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "scope": "system/*.cruds",
    });
    let response = MockResponse::json(&body).header("cache-control", "no-store");
    (response, record)
}

/// Base64url-decodes and parses part `index` of a compact JWT, for the request log.
fn decode_part(jwt: &str, index: usize) -> Option<Value> {
    use base64::Engine as _;
    let part = jwt.split('.').nth(index)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The reference server's checks, in its order: required claims, `jti` replay (the `jti` is
/// consumed even when a later check fails), client by `iss`, `aud` by string equality, key by
/// `kid`, signature with an allowed algorithm, then times with zero leeway.
fn verify_assertion(token_endpoint: &str, state: &mut State, jwt: &str) -> Result<String, String> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|err| format!("bad header: {err}"))?;
    let claims = decode_part(jwt, 1).ok_or("claims are not JSON")?;
    let string_claim = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let iss = string_claim("iss").ok_or("iss missing")?;
    let jti = string_claim("jti").ok_or("jti missing")?;
    let Some(aud) = claims.get("aud") else {
        return Err("aud missing".into());
    };
    let now = state
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let exp = claims.get("exp").and_then(python_int);
    if !state.seen_jti.consume(jti, exp, now, MAX_EXP_AHEAD) {
        return Err("jti replayed".into());
    }
    let client = state.clients.get(&iss).ok_or("unknown client")?;
    if aud.as_str() != Some(token_endpoint) {
        return Err(format!("aud {aud} is not {token_endpoint:?}"));
    }
    let kid = header.kid.as_deref().ok_or("kid missing")?;
    let jwk = client
        .jwks
        .find(kid)
        .ok_or("kid not in the client's JWK Set")?;
    let alg = state
        .allowed_algs
        .iter()
        .find(|alg| alg.jwt() == header.alg)
        .ok_or_else(|| format!("alg {:?} not allowed", header.alg))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|err| format!("bad JWK: {err}"))?;
    let mut validation = jsonwebtoken::Validation::new(alg.jwt());
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map_err(|err| format!("signature: {err}"))?;
    // PyJWT reads each time claim as Python's `int()` would, and refuses what that refuses.
    let number = |name: &str| -> Result<Option<i64>, String> {
        claims
            .get(name)
            .map(|value| python_int(value).ok_or_else(|| format!("{name} is not a number")))
            .transpose()
    };
    // PyJWT checks `exp` only when present; this mock requires it, as SMART does.
    let exp = number("exp")?.ok_or("exp missing")?;
    if exp <= now {
        return Err("expired".into());
    }
    if exp > now.saturating_add(MAX_EXP_AHEAD) {
        return Err("exp more than 300 s ahead".into());
    }
    if number("iat")?.is_some_and(|iat| iat > now) {
        return Err("iat in the future".into());
    }
    if number("nbf")?.is_some_and(|nbf| nbf > now) {
        return Err("nbf in the future".into());
    }
    Ok(iss)
}

/// A JSON value as Python's `int()` reads it: whole numbers, floats truncated, `true`/`false`
/// as 1/0, decimal strings (surrounding whitespace, a sign and `_` between digits allowed).
/// `None` where `int()` raises (null, arrays, objects, other strings, infinite floats).
fn python_int(value: &Value) -> Option<i64> {
    match value {
        Value::Bool(flag) => Some(i64::from(*flag)),
        Value::Number(number) => number.as_i64().or_else(|| {
            let float = number.as_f64()?;
            (float.is_finite() && float.abs() < 9.2e18).then(|| float.trunc() as i64)
        }),
        Value::String(text) => {
            let text = text.trim();
            let (negative, digits) = match text.as_bytes().first() {
                Some(b'-') => (true, &text[1..]),
                Some(b'+') => (false, &text[1..]),
                _ => (false, text),
            };
            let valid = !digits.is_empty()
                && !digits.starts_with('_')
                && !digits.ends_with('_')
                && !digits.contains("__")
                && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_');
            if !valid {
                return None;
            }
            let value: i64 = digits.replace('_', "").parse().ok()?;
            Some(if negative { -value } else { value })
        }
        _ => None,
    }
}
