//! Public JSON Web Keys ([RFC 7517]) for registration with a Koppeltaal domain.
//!
//! The Koppeltaal auth server verifies client assertions with the public keys it fetches from the
//! JWK Set URL registered for the application in domain management (TOP-KT-020). This module
//! builds that document from your [`SigningKey`]s. A [`Jwk`] can only be made from the public half
//! of a key: the type has no field a private member could go into.
//!
//! # Example
//!
//! ```
//! use koppeltaal_auth::SigningKey;
//! use koppeltaal_auth::jwks::JwkSet;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let pem = include_str!("../../tests/data/test-only-p384-pkcs8.pem");
//! let key = SigningKey::from_pem(pem, "instance-1")?;
//! let jwks = JwkSet::from_keys([&key])?;
//! let json = serde_json::to_value(&jwks)?;
//! assert_eq!(json["keys"][0]["kid"], "instance-1");
//! assert_eq!(json["keys"][0]["alg"], "ES384");
//! assert_eq!(json["keys"][0]["use"], "sig");
//! # Ok(()) }
//! ```
//!
//! [RFC 7517]: https://www.rfc-editor.org/rfc/rfc7517

mod service;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::key::{Algorithm, PublicParts, SigningKey, b64};

pub use service::JwksService;

/// One public key: `kty`, `kid`, `use: "sig"`, `alg`, and `n`/`e` (RSA) or `crv`/`x`/`y` (EC),
/// base64url without padding. Get one from [`SigningKey::public_jwk`].
///
/// Deserialising keeps only these members: private members (`d`, `p`, `q`, ...) of a parsed
/// document are dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    kty: String,
    kid: String,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
}

impl Jwk {
    pub(crate) fn from_public(public: &PublicParts, kid: &str, alg: Algorithm) -> Self {
        let mut jwk = Self {
            kty: String::new(),
            kid: kid.to_owned(),
            use_: Some("sig".to_owned()),
            alg: Some(alg.as_str().to_owned()),
            n: None,
            e: None,
            crv: None,
            x: None,
            y: None,
        };
        match public {
            PublicParts::Rsa { n, e } => {
                jwk.kty = "RSA".to_owned();
                jwk.n = Some(b64(n));
                jwk.e = Some(b64(e));
            }
            PublicParts::Ec { curve, x, y } => {
                jwk.kty = "EC".to_owned();
                jwk.crv = Some(curve.name().to_owned());
                jwk.x = Some(b64(x));
                jwk.y = Some(b64(y));
            }
        }
        jwk
    }

    /// The key type: `"RSA"` or `"EC"`.
    #[must_use]
    pub fn kty(&self) -> &str {
        &self.kty
    }

    /// The key id.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm the key signs with, when stated.
    #[must_use]
    pub fn alg(&self) -> Option<&str> {
        self.alg.as_deref()
    }
}

/// A JWK Set: `{"keys": [...]}`, the document served at the application's registered JWKS URL.
///
/// Serve it as `application/json` with `Cache-Control: public, max-age=60` (TOP-KT-020); the
/// auth server caches it for that long, which is how long a new key takes to become usable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// The public JWK Set of `keys`, in order.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Key`](crate::ErrorKind::Key) if two keys share a `kid`: the auth server picks
    /// the verification key by `kid`, so it must be unique in the set.
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Result<Self, Error> {
        let mut set = Self::default();
        for key in keys {
            if set.find(key.kid()).is_some() {
                return Err(Error::key(format!(
                    "two keys share the kid {:?}; a kid must be unique in the JWK Set",
                    key.kid()
                )));
            }
            set.keys.push(key.public_jwk());
        }
        Ok(set)
    }

    /// The key with this `kid`.
    #[must_use]
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|jwk| jwk.kid == kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ec_key, pem, rsa_key};
    use base64::Engine as _;
    use serde_json::json;

    #[test]
    fn rsa_jwk_has_exactly_the_public_members() {
        let jwk = serde_json::to_value(rsa_key().public_jwk()).unwrap();
        let members: Vec<&str> = jwk
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(members, ["alg", "e", "kid", "kty", "n", "use"]);
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "RS512");
        let n = jwk["n"].as_str().unwrap();
        assert!(!n.contains(['=', '+', '/']), "base64url without padding");
        let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(n)
            .unwrap();
        assert_eq!(
            modulus.len(),
            256,
            "2048-bit modulus without a leading zero"
        );
    }

    #[test]
    fn ec_jwk_matches_literal_shape() {
        let key = ec_key();
        let jwk = serde_json::to_value(key.public_jwk()).unwrap();
        assert_eq!(
            jwk,
            json!({
                "kty": "EC",
                "kid": "test-ec",
                "use": "sig",
                "alg": "ES384",
                "crv": "P-384",
                "x": jwk["x"],
                "y": jwk["y"],
            })
        );
        assert_eq!(jwk["x"].as_str().unwrap().len(), 64, "48 bytes base64url");
        assert_eq!(jwk["y"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn duplicate_kids_are_refused() {
        let a = rsa_key();
        let b = SigningKey::from_pem(pem("test-only-p256-pkcs8.pem"), "test-rsa").unwrap();
        assert!(JwkSet::from_keys([&a, &b]).is_err());
        let set = JwkSet::from_keys([&a, &ec_key()]).unwrap();
        assert_eq!(set.keys.len(), 2);
        assert_eq!(set.find("test-ec").unwrap().kty(), "EC");
    }

    #[test]
    fn private_members_are_dropped_when_parsing() {
        let parsed: Jwk = serde_json::from_value(json!({
            "kty": "EC", "kid": "k", "crv": "P-256", "x": "AA", "y": "AA", "d": "SECRET"
        }))
        .unwrap();
        assert!(!serde_json::to_string(&parsed).unwrap().contains("SECRET"));
    }
}
