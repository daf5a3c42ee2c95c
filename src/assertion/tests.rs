//! Unit tests of client assertions: claims, lifetimes, signatures and redaction.

use super::*;
use crate::jwks::JwkSet;
use crate::test_support::{ec_key, rsa_key};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

const AUD: &str = "https://auth.example.org/oauth2/token";

fn decode_with_jwks(jwt: &str, key: &SigningKey) -> (Value, Value) {
    // Take the verification key back out of the exported, serialised JWK Set.
    let document = serde_json::to_string(&JwkSet::from_keys([key]).unwrap()).unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&document).unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = Validation::new(key.algorithm().jwt());
    validation.set_audience(&[AUD]);
    validation.leeway = 0;
    let data =
        jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap();
    let header_json: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            jwt.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    (header_json, data.claims)
}

#[test]
fn header_and_claims_are_exactly_as_specified() {
    for key in [rsa_key(), ec_key()] {
        let assertion = ClientAssertion::new("client-1", AUD).unwrap();
        let jwt = assertion.sign(&key).unwrap();
        let (header, claims) = decode_with_jwks(jwt.as_str(), &key);
        assert_eq!(
            header,
            json!({"alg": key.algorithm().as_str(), "kid": key.kid(), "typ": "JWT"})
        );
        let obj = claims.as_object().unwrap();
        let mut names: Vec<&str> = obj.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["aud", "exp", "iat", "iss", "jti", "sub"]);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], AUD, "aud is one string, not an array");
        let jti = claims["jti"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(jti).unwrap().get_version_num(), 4);
    }
}

#[test]
fn times_are_integer_seconds_backdated_and_bounded() {
    let key = ec_key();
    let now = UNIX_EPOCH + Duration::from_millis(1_800_000_000_750);
    let jwt = ClientAssertion::new("c", AUD)
        .unwrap()
        .sign_at(&key, now, "jti-1")
        .unwrap();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt.as_str())
        .unwrap()
        .claims;
    assert_eq!(claims["iat"], json!(1_800_000_000 - 5));
    assert_eq!(claims["exp"], json!(1_800_000_000 + 60));
    assert_eq!(claims["jti"], "jti-1");
}

#[test]
fn lifetime_and_backdate_are_configurable_within_limits() {
    let base = ClientAssertion::new("c", AUD).unwrap();
    let err = base
        .clone()
        .with_lifetime(Duration::from_secs(301))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(base.clone().with_lifetime(Duration::ZERO).is_err());
    assert!(
        base.clone()
            .with_iat_backdate(Duration::from_secs(61))
            .is_err()
    );
    // Lifetime and back-dating together at most 300 s, in either order.
    assert!(
        base.clone()
            .with_lifetime(Duration::from_secs(300))
            .is_err()
    );
    assert!(
        base.clone()
            .with_lifetime(Duration::from_secs(290))
            .unwrap()
            .with_iat_backdate(Duration::from_secs(11))
            .is_err()
    );
    assert!(base.clone().with_lifetime(Duration::from_secs(295)).is_ok());
    let custom = base
        .with_iat_backdate(Duration::ZERO)
        .unwrap()
        .with_lifetime(Duration::from_secs(300))
        .unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_000);
    let jwt = custom.sign_at(&ec_key(), now, "j").unwrap();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt.as_str())
        .unwrap()
        .claims;
    assert_eq!(
        (claims["iat"].as_u64(), claims["exp"].as_u64()),
        (Some(1_000), Some(1_300))
    );
}

#[test]
fn every_assertion_has_a_new_jti() {
    let assertion = ClientAssertion::new("c", AUD).unwrap();
    let key = ec_key();
    let jti = |jwt: SignedAssertion| {
        jsonwebtoken::dangerous::insecure_decode::<Value>(jwt.as_str())
            .unwrap()
            .claims["jti"]
            .clone()
    };
    assert_ne!(
        jti(assertion.sign(&key).unwrap()),
        jti(assertion.sign(&key).unwrap())
    );
}

#[test]
fn audience_is_kept_byte_for_byte() {
    let aud = "https://Auth.Example.org:443/oauth2/token/";
    let jwt = ClientAssertion::new("c", aud)
        .unwrap()
        .sign(&ec_key())
        .unwrap();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt.as_str())
        .unwrap()
        .claims;
    assert_eq!(claims["aud"], aud);
}

#[test]
fn debug_never_shows_the_jwt() {
    let jwt = ClientAssertion::new("c", AUD)
        .unwrap()
        .sign(&ec_key())
        .unwrap();
    let debug = format!("{jwt:?}");
    assert_eq!(debug, "SignedAssertion([redacted])");
    assert!(!debug.contains(jwt.as_str().split('.').next().unwrap()));
}

#[test]
fn empty_inputs_are_refused() {
    assert!(ClientAssertion::new("", AUD).is_err());
    assert!(ClientAssertion::new("c", "").is_err());
    let assertion = ClientAssertion::new("c", AUD).unwrap();
    assert!(assertion.sign_at(&ec_key(), SystemTime::now(), "").is_err());
}
