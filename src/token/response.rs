//! Parsing token-endpoint answers: pure functions of status, headers and body.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::AccessToken;
use crate::error::{Error, ErrorKind, OAuthError, OAuthErrorCode, sanitize_snippet};
use crate::redact::sanitize_hiding;
use crate::wipe::JsonObject;

/// Longest `expires_in` accepted: a year. Anything longer is not a sensible access token.
const MAX_EXPIRES_IN: u64 = super::MAX_TOKEN_LIFETIME.as_secs();

/// Longest `Retry-After` kept: a day (guards the arithmetic; the cell caps its own waits).
const MAX_RETRY_AFTER: u64 = 24 * 60 * 60;

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidTokenResponse, message)
}

/// Parses a successful (2xx) token response (RFC 6749 section 5.1, SMART Backend Services).
///
/// `token_type` must be `bearer` in any case; `expires_in` may be a number or a numeric string,
/// and `default_lifetime` stands in when it is missing; `refresh_token` is ignored. A body with a
/// token is never copied into an error (from one without, only the OAuth error's fields, as
/// below). The parsed copy is wiped before it is freed,
/// on every path (see `crate::wipe`).
///
/// A body without `access_token` that is an RFC 6749 error (some servers answer errors with
/// `200`) is the [`ErrorKind::TokenRejected`] it says, with its error, `secrets` hidden as in
/// [`parse_error_response`].
pub(crate) fn parse_token_response(
    body: &[u8],
    received_at: Instant,
    default_lifetime: Duration,
    secrets: &[&str],
) -> Result<AccessToken, Error> {
    let parsed: JsonObject = serde_json::from_slice(body).map_err(|err| {
        invalid(if err.classify() == serde_json::error::Category::Data {
            "the body is not a JSON object"
        } else if body.trim_ascii_start().starts_with(b"<") {
            "the body is HTML, not JSON"
        } else {
            "the body is not JSON"
        })
    })?;
    let object = &parsed.0;
    let token = match object.get("access_token") {
        Some(Value::String(token)) => token,
        Some(_) => return Err(invalid("`access_token` is not a string")),
        // No token in this body: whatever error it states can be kept.
        None => {
            return Err(match oauth_error_in(object, secrets) {
                Some(oauth) => Error::new(
                    ErrorKind::TokenRejected,
                    "the token endpoint answered 2xx with an error and no token",
                )
                .with_oauth(oauth),
                None => invalid("`access_token` is missing"),
            });
        }
    };
    match object.get("token_type") {
        Some(Value::String(kind)) if kind.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(kind)) => {
            return Err(invalid(format!(
                "`token_type` is {:?}, expected \"bearer\"",
                sanitize_snippet(kind.as_bytes())
            )));
        }
        Some(_) => return Err(invalid("`token_type` is not a string")),
        None => return Err(invalid("`token_type` is missing")),
    }
    let lifetime = match object.get("expires_in") {
        None | Some(Value::Null) => default_lifetime,
        Some(value) => Duration::from_secs(parse_expires_in(value)?),
    };
    let scope = match object.get("scope") {
        Some(Value::String(scope)) => Some(scope.as_str()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(invalid("`scope` is not a string")),
    };
    Ok(AccessToken::new(token, lifetime, received_at)?.with_scope(scope))
}

fn parse_expires_in(value: &Value) -> Result<u64, Error> {
    let bad = || {
        invalid(format!(
            "`expires_in` must be a whole number of seconds from 1 to {MAX_EXPIRES_IN}"
        ))
    };
    let seconds = match value {
        Value::Number(number) => match number.as_u64() {
            Some(seconds) => seconds,
            // 300.0 is fine; 299.5, negatives and NaN-likes are not.
            None => match number.as_f64() {
                Some(f) if f.fract() == 0.0 && f >= 1.0 && f <= MAX_EXPIRES_IN as f64 => f as u64,
                _ => return Err(bad()),
            },
        },
        Value::String(text) => text.parse::<u64>().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    if seconds == 0 || seconds > MAX_EXPIRES_IN {
        return Err(bad());
    }
    Ok(seconds)
}

/// Turns an error answer (any non-2xx status) into an [`ErrorKind::TokenRejected`] error with the
/// status, the RFC 6749 error when the body is one, else a sanitised snippet of the body, and the
/// `Retry-After` delay.
///
/// `secrets` (the assertion that was sent) leave no piece in what is kept, whatever form the
/// server echoes them in.
pub(crate) fn parse_error_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    secrets: &[&str],
) -> Error {
    let error = Error::new(ErrorKind::TokenRejected, "")
        .with_status(status)
        .with_retry_after(parse_retry_after(headers, now));
    match parse_oauth_error_hiding(body, secrets) {
        Some(oauth) => error.with_oauth(oauth),
        None => error.with_body_snippet_hiding(body, secrets),
    }
}

/// An RFC 6749 section 5.2 error body: a JSON object with a string `error`.
#[cfg(test)]
pub(crate) fn parse_oauth_error(body: &[u8]) -> Option<OAuthError> {
    parse_oauth_error_hiding(body, &[])
}

fn parse_oauth_error_hiding(body: &[u8], secrets: &[&str]) -> Option<OAuthError> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    oauth_error_in(&object, secrets)
}

/// The RFC 6749 error `object` states, if it is one (a string `error`).
fn oauth_error_in(object: &serde_json::Map<String, Value>, secrets: &[&str]) -> Option<OAuthError> {
    let Some(Value::String(code)) = object.get("error") else {
        return None;
    };
    let text = |name: &str| match object.get(name) {
        Some(Value::String(text)) => Some(sanitize_hiding(text.as_bytes(), secrets)),
        _ => None,
    };
    Some(OAuthError {
        code: OAuthErrorCode::parse(code),
        description: text("error_description"),
        uri: text("error_uri"),
    })
}

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 section 10.2.3).
pub(crate) fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(MAX_RETRY_AFTER)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(wait.min(Duration::from_secs(MAX_RETRY_AFTER)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_secs(300);

    fn parse(body: &str) -> Result<AccessToken, Error> {
        parse_token_response(body.as_bytes(), Instant::now(), DEFAULT, &[])
    }

    #[test]
    fn an_oauth_error_answered_with_200_is_kept() {
        let secret = "eyJhbGciOiJSUzUxMiJ9.eyJpc3MiOiJhcHAifQ.c2lnbmF0dXJlLW9mLXRoZS1hc3NlcnRpb24";
        let body =
            format!(r#"{{"error":"invalid_client","error_description":"bad assertion {secret}"}}"#);
        let error =
            parse_token_response(body.as_bytes(), Instant::now(), DEFAULT, &[secret]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TokenRejected);
        let oauth = error.oauth_error().unwrap();
        assert_eq!(oauth.code, OAuthErrorCode::InvalidClient);
        assert!(!error.to_string().contains(secret), "{error}");
        assert!(error.to_string().contains("invalid_client"), "{error}");
        // Without an `error`, or with a token, it stays an invalid response.
        for body in [r#"{"token_type":"Bearer"}"#, r#"{"error":7}"#] {
            assert_eq!(
                parse(body).unwrap_err().kind(),
                ErrorKind::InvalidTokenResponse
            );
        }
    }

    #[test]
    fn accepts_koppeltaal_and_smart_shapes() {
        let kt = parse(r#"{"access_token":"abc","token_type":"Bearer","expires_in":300,"scope":"system/*.cruds"}"#)
            .unwrap();
        assert_eq!(kt.as_str(), "abc");
        assert_eq!(kt.lifetime(), Duration::from_secs(300));
        assert_eq!(kt.scope(), Some("system/*.cruds"));
        let smart =
            parse(r#"{"access_token":"x","token_type":"bearer","expires_in":"3600"}"#).unwrap();
        assert_eq!(smart.lifetime(), Duration::from_secs(3600));
        let float =
            parse(r#"{"access_token":"x","token_type":"BEARER","expires_in":60.0}"#).unwrap();
        assert_eq!(float.lifetime(), Duration::from_secs(60));
    }

    #[test]
    fn missing_expires_in_uses_the_default_and_refresh_token_is_ignored() {
        let token =
            parse(r#"{"access_token":"x","token_type":"Bearer","refresh_token":"ignored"}"#)
                .unwrap();
        assert_eq!(token.lifetime(), DEFAULT);
        let null =
            parse(r#"{"access_token":"x","token_type":"Bearer","expires_in":null}"#).unwrap();
        assert_eq!(null.lifetime(), DEFAULT);
    }

    #[test]
    fn refuses_malformed_responses_without_echoing_them() {
        let cases = [
            ("not json", "not JSON"),
            ("<html><body>502 Bad Gateway</body></html>", "HTML"),
            ("[1,2]", "not a JSON object"),
            (r#"{"token_type":"Bearer"}"#, "`access_token` is missing"),
            (
                r#"{"access_token":42,"token_type":"Bearer"}"#,
                "`access_token` is not a string",
            ),
            (r#"{"access_token":"","token_type":"Bearer"}"#, "empty"),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"DPoP"}"#,
                "\"DPoP\"",
            ),
            (
                r#"{"access_token":"SECRETTOKEN"}"#,
                "`token_type` is missing",
            ),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"Bearer","expires_in":-5}"#,
                "expires_in",
            ),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"Bearer","expires_in":0}"#,
                "expires_in",
            ),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"Bearer","expires_in":1e30}"#,
                "expires_in",
            ),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"Bearer","expires_in":18446744073709551615}"#,
                "expires_in",
            ),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"Bearer","expires_in":"soon"}"#,
                "expires_in",
            ),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"Bearer","expires_in":299.5}"#,
                "expires_in",
            ),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"Bearer","expires_in":true}"#,
                "expires_in",
            ),
            (
                r#"{"access_token":"SECRET TOKEN","token_type":"Bearer"}"#,
                "HTTP header",
            ),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"Bearer","scope":7}"#,
                "`scope`",
            ),
            (
                r#"{"access_token":"SECRETTOKEN","token_type":"Bearer""#,
                "not JSON",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidTokenResponse, "{body}");
            let shown = format!("{err} {err:?}");
            assert!(shown.contains(expected), "{body}: {shown}");
            assert!(!shown.contains("SECRET"), "{body}: {shown}");
        }
    }

    #[test]
    fn oauth_errors_are_parsed() {
        let err = parse_error_response(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":"invalid_client","error_description":"kid not found","error_uri":"https://x/e"}"#,
            SystemTime::now(),
            &[],
        );
        assert_eq!(err.kind(), ErrorKind::TokenRejected);
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        let oauth = err.oauth_error().unwrap();
        assert_eq!(oauth.code, OAuthErrorCode::InvalidClient);
        assert_eq!(oauth.description.as_deref(), Some("kid not found"));
        assert_eq!(oauth.uri.as_deref(), Some("https://x/e"));
        assert!(!err.is_transient());
    }

    #[test]
    fn plain_text_errors_keep_a_snippet() {
        let err = parse_error_response(
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            b"Access Denied",
            SystemTime::now(),
            &[],
        );
        assert!(err.oauth_error().is_none());
        assert_eq!(err.body_snippet(), Some("Access Denied"));
        // JSON without a string `error` is not an OAuth error.
        let err = parse_error_response(
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            br#"{"error":{"nested":true}}"#,
            SystemTime::now(),
            &[],
        );
        assert!(err.oauth_error().is_none());
        assert!(err.is_transient());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(2))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        headers.insert(http::header::RETRY_AFTER, date.parse().unwrap());
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        headers.insert(http::header::RETRY_AFTER, past.parse().unwrap());
        assert_eq!(parse_retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&headers, now), None);
        headers.insert(http::header::RETRY_AFTER, "99999999999".parse().unwrap());
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(MAX_RETRY_AFTER))
        );
    }
}
