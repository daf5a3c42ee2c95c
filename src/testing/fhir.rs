//! The mock FHIR endpoint and SMART configuration.

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{FHIR_PATH, MockResponse, ReceivedRequest, Shared};

pub(super) async fn smart_configuration(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let mut state = shared.lock();
    state.stats.discovery_requests += 1;
    let origin = shared.token_endpoint.trim_end_matches(super::TOKEN_PATH);
    let document = state.smart_configuration.clone().unwrap_or_else(|| {
        json!({
            "issuer": origin,
            "jwks_uri": format!("{origin}/.well-known/jwks.json"),
            "authorization_endpoint": format!("{origin}/oauth2/authorize"),
            "token_endpoint": shared.token_endpoint,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "scopes_supported": ["openid", "launch", "fhirUser", "system/*.cruds"],
            "response_types_supported": ["code"],
            "introspection_endpoint": format!("{origin}/oauth2/introspect"),
            "capabilities": ["client-confidential-asymmetric", "permission-v2"],
            "code_challenge_methods_supported": ["S256"],
        })
    });
    let date = httpdate::fmt_http_date(state.now());
    drop(state);
    MockResponse::json(&document)
        .header("date", &date)
        .into_response()
}

fn outcome(status: StatusCode, text: &str) -> MockResponse {
    // HAPI answers auth failures with an OperationOutcome and no WWW-Authenticate.
    MockResponse::new(
        status,
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "security", "diagnostics": text}],
        })
        .to_string(),
    )
    .header("content-type", "application/fhir+json")
}

pub(super) async fn resource(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path()
        .strip_prefix(FHIR_PATH)
        .unwrap_or("")
        .trim_start_matches('/');
    super::external::ensure_jwks(&shared).await;
    let mut state = shared.lock();
    state.stats.fhir_requests += 1;
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .get(..7)
                .filter(|prefix| prefix.eq_ignore_ascii_case("bearer "))
                .map(|_| &value[7..])
        });
    let now = crate::token::later(Instant::now(), state.token_clock_advance);
    // HAPI checks `iat` with no leeway against its own clock.
    let fhir_now = state.fhir_now();
    let mut token_number = None;
    let response = if method == Method::GET && path == "metadata" {
        MockResponse::json(&json!({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}))
    } else {
        let token = bearer.and_then(|bearer| state.tokens.get(bearer));
        match token {
            None if bearer.is_some_and(|bearer| {
                state
                    .external
                    .as_ref()
                    .is_some_and(|external| super::external::accepts(external, bearer, fhir_now))
            }) =>
            {
                answer(&method, path, &body, 0)
            }
            None => outcome(StatusCode::UNAUTHORIZED, "Unauthorized"),
            Some(token)
                if token.revoked
                    || now >= crate::token::later(token.issued_at, token.lifetime)
                    || fhir_now < crate::token::issued::from_epoch_seconds(token.iat) =>
            {
                token_number = Some(token.number);
                outcome(StatusCode::UNAUTHORIZED, "Unauthorized")
            }
            Some(token) => {
                let number = token.number;
                token_number = Some(number);
                let forbidden = state
                    .clients
                    .get(&token.client_id)
                    .is_none_or(|client| client.forbidden);
                if let Some(token) = bearer.and_then(|bearer| state.tokens.get_mut(bearer)) {
                    token.fhir_requests += 1;
                }
                if forbidden {
                    outcome(StatusCode::FORBIDDEN, "Forbidden")
                } else {
                    answer(&method, path, &body, number)
                }
            }
        }
    };
    match response.status {
        StatusCode::UNAUTHORIZED => state.stats.fhir_unauthorized += 1,
        StatusCode::FORBIDDEN => state.stats.fhir_forbidden += 1,
        _ => {}
    }
    let trace = super::notify::recorded_ids(&headers);
    let answered = response
        .header(
            "x-request-id",
            trace.request_id().map_or("", |id| id.as_str()),
        )
        .header("x-trace-id", trace.trace_id().map_or("", |id| id.as_str()));
    let status = answered.status;
    state.fhir_log.push(ReceivedRequest {
        method,
        path_and_query: uri
            .path_and_query()
            .map_or_else(String::new, ToString::to_string),
        headers,
        body,
        token_number,
        status,
        trace,
    });
    drop(state);
    answered
        .header("date", &httpdate::fmt_http_date(fhir_now))
        .into_response()
}

/// A plausible FHIR answer: the resource read, or the resource created with a new id.
fn answer(method: &Method, path: &str, body: &[u8], token_number: u64) -> MockResponse {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let resource_type = segments.next().unwrap_or("Bundle").to_owned();
    let id = segments.next().map(str::to_owned);
    if method == Method::POST {
        let mut created: Value =
            serde_json::from_slice(body).unwrap_or_else(|_| json!({"resourceType": resource_type}));
        let id = uuid::Uuid::new_v4().to_string();
        if let Value::Object(object) = &mut created {
            object.insert("id".into(), Value::String(id.clone()));
        }
        let mut response = MockResponse::json(&created).header(
            "location",
            &format!("{FHIR_PATH}/{resource_type}/{id}/_history/1"),
        );
        response.status = StatusCode::CREATED;
        return response;
    }
    let mut resource =
        json!({"resourceType": resource_type, "meta": {"source": format!("token-{token_number}")}});
    if let Some(id) = id {
        resource["id"] = Value::String(id);
    }
    MockResponse::json(&resource)
}
