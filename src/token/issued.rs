//! When a token starts being valid by its issuer's clock: the `iat` and `nbf` of an access token
//! that is a JWT (read, never verified, and used for nothing but timing its first use), else the
//! `Date` of the token response.
//!
//! Koppeltaal's FHIR server checks `iat`/`nbf` with no leeway, so a FHIR server whose clock is
//! behind the auth server's refuses a brand-new token until its own clock passes that instant
//! (see the cell's `fhir_clock` module).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// The latest epoch second taken from a token: the year 9999. Anything later is not a time.
const LATEST: u64 = 253_402_300_799;

#[derive(Deserialize)]
struct TimeClaims {
    iat: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
}

/// `max(iat, nbf)` of `token`, when it is a JWT with either claim, as epoch seconds (a
/// fractional claim rounded up). `None` for an opaque token or a claim that is not a time.
pub(crate) fn jwt_valid_from(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: TimeClaims = serde_json::from_slice(&bytes).ok()?;
    let seconds = |claim: Option<serde_json::Number>| -> Option<u64> {
        let number = claim?;
        let value = match number.as_u64() {
            Some(whole) => whole,
            None => {
                let float = number.as_f64()?;
                if !(0.0..=LATEST as f64).contains(&float) {
                    return None;
                }
                float.ceil() as u64
            }
        };
        (value <= LATEST).then_some(value)
    };
    match (seconds(claims.iat), seconds(claims.nbf)) {
        (None, None) => None,
        (iat, nbf) => iat.max(nbf),
    }
}

/// Epoch seconds of `at`, if it is after the epoch.
pub(crate) fn epoch_seconds(at: SystemTime) -> Option<u64> {
    at.duration_since(UNIX_EPOCH)
        .ok()
        .map(|since| since.as_secs())
        .filter(|seconds| *seconds <= LATEST)
}

/// `seconds` after the epoch as a `SystemTime`.
pub(crate) fn from_epoch_seconds(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds.min(LATEST))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJSUzUxMiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_iat_and_nbf_of_a_jwt_and_nothing_else() {
        assert_eq!(
            jwt_valid_from(&jwt(r#"{"iat":1800000000,"exp":1800000300}"#)),
            Some(1_800_000_000)
        );
        assert_eq!(
            jwt_valid_from(&jwt(r#"{"iat":1800000000,"nbf":1800000005}"#)),
            Some(1_800_000_005)
        );
        assert_eq!(
            jwt_valid_from(&jwt(r#"{"iat":1800000000.2}"#)),
            Some(1_800_000_001)
        );
        assert_eq!(jwt_valid_from(&jwt(r#"{"exp":1800000300}"#)), None);
        assert_eq!(jwt_valid_from(&jwt(r#"{"iat":-5}"#)), None);
        assert_eq!(jwt_valid_from(&jwt(r#"{"iat":1e300}"#)), None);
        assert_eq!(jwt_valid_from(&jwt(r#"{"iat":"1800000000"}"#)), None);
        assert_eq!(jwt_valid_from(&jwt("not json")), None);
        for opaque in [
            "",
            "opaque-token",
            "a.b",
            "a.b.c.d",
            "a.%%%.c",
            "mock-1-abc",
        ] {
            assert_eq!(jwt_valid_from(opaque), None, "{opaque}");
        }
    }

    #[test]
    fn epoch_seconds_round_trip() {
        let at = from_epoch_seconds(1_800_000_000);
        assert_eq!(epoch_seconds(at), Some(1_800_000_000));
        assert_eq!(epoch_seconds(UNIX_EPOCH - Duration::from_secs(1)), None);
        assert_eq!(epoch_seconds(from_epoch_seconds(u64::MAX)), Some(LATEST));
    }
}
