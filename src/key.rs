//! Private signing keys: PEM loading, algorithm checks, `kid`, RFC 7638 thumbprints.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::crypto::CryptoProvider;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::jwks::Jwk;
use crate::key_pem::{self, parse_private_pem};

/// A JWS signing algorithm for the client assertion.
///
/// Koppeltaal's reference auth server accepts RS512, RS384 and ES384 (SMART requires clients to
/// support RS384 and ES384; every Koppeltaal client signs RS512, the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(clippy::upper_case_acronyms)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (SMART's required RSA algorithm).
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512: the Koppeltaal default.
    #[default]
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384 (SMART's required EC algorithm).
    ES384,
}

/// The kind of key an [`Algorithm`] signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyType {
    Rsa,
    Ec(Curve),
}

/// The elliptic curves this crate signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
}

impl Curve {
    /// The JWK `crv` name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    pub(crate) fn signing(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            Self::P256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
            Self::P384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
        }
    }

    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

impl KeyType {
    fn describe(self) -> &'static str {
        match self {
            Self::Rsa => "an RSA key",
            Self::Ec(Curve::P256) => "an EC P-256 key",
            Self::Ec(Curve::P384) => "an EC P-384 key",
        }
    }
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Self; 8] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
    ];

    /// The JWA name, as in the JWT header `alg` (`"RS512"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
        }
    }

    pub(crate) fn key_type(self) -> KeyType {
        match self {
            Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256 | Self::PS384 | Self::PS512 => {
                KeyType::Rsa
            }
            Self::ES256 => KeyType::Ec(Curve::P256),
            Self::ES384 => KeyType::Ec(Curve::P384),
        }
    }

    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::RS256 => jsonwebtoken::Algorithm::RS256,
            Self::RS384 => jsonwebtoken::Algorithm::RS384,
            Self::RS512 => jsonwebtoken::Algorithm::RS512,
            Self::PS256 => jsonwebtoken::Algorithm::PS256,
            Self::PS384 => jsonwebtoken::Algorithm::PS384,
            Self::PS512 => jsonwebtoken::Algorithm::PS512,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
            Self::ES384 => jsonwebtoken::Algorithm::ES384,
        }
    }

    /// The algorithm used for a key of this type when none is given: RS512 for RSA (the
    /// Koppeltaal default), ES256 for P-256, ES384 for P-384.
    fn default_for(key_type: KeyType) -> Self {
        match key_type {
            KeyType::Rsa => Self::RS512,
            KeyType::Ec(Curve::P256) => Self::ES256,
            KeyType::Ec(Curve::P384) => Self::ES384,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    /// Parses a JWA name, ignoring ASCII case (`"RS512"`, `"es384"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::config(format!(
                    "unsupported algorithm {:?} (supported: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384)",
                    crate::error::sanitize_snippet(s.as_bytes())
                ))
            })
    }
}

/// How a [`SigningKey`] gets its `kid` (key id).
///
/// The `kid` goes into the header of every client assertion; the Koppeltaal auth server uses it to
/// find the key in the JWK Set registered for the application, so it must be unique there.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyId {
    /// Use this `kid`.
    Named(String),
    /// Derive the `kid` as the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key.
    Thumbprint,
}

impl From<&str> for KeyId {
    fn from(kid: &str) -> Self {
        Self::Named(kid.to_owned())
    }
}

impl From<String> for KeyId {
    fn from(kid: String) -> Self {
        Self::Named(kid)
    }
}

/// The public half of a key, as JWK members need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PublicParts {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// A private key that signs client assertions, with its [`Algorithm`] and `kid`.
///
/// Loaded from PEM: PKCS#8 (RSA or EC), PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1
/// (`BEGIN EC PRIVATE KEY`). Everything that can be wrong with a key is found when it is loaded,
/// never at its first use: a key that does not fit the algorithm (ES384 with an RSA key, ES256
/// with a P-384 key), an RSA key under 2048 bits, a public key or certificate where the private
/// key belongs, an encrypted key, or input that is not PEM at all. Loading signs a probe message
/// to prove it.
///
/// Cheap to clone: the key material is shared.
///
/// # Example
///
/// ```
/// use koppeltaal_auth::{Algorithm, KeyId, SigningKey};
///
/// # fn main() -> Result<(), koppeltaal_auth::Error> {
/// # let pem = include_str!("../tests/data/test-only-rsa2048-pkcs8.pem");
/// // RS512 (the Koppeltaal default for RSA keys) and a kid of your choosing:
/// let key = SigningKey::from_pem(pem, "my-app-2026-11")?;
/// assert_eq!(key.algorithm(), Algorithm::RS512);
///
/// // RS384, with the RFC 7638 thumbprint as kid:
/// let key = SigningKey::from_pem_with_algorithm(pem, Algorithm::RS384, KeyId::Thumbprint)?;
/// assert_eq!(key.kid(), key.thumbprint());
/// # Ok(()) }
/// ```
///
/// # Security
///
/// `Debug` shows the algorithm and `kid` only; there is no `Display`. The private key is zeroed
/// when the last clone is dropped, and so is every copy this crate makes while loading, signing
/// or exporting it (`tests/key_memory.rs` scans freed memory for it). Copies made by
/// dependencies: jsonwebtoken's `EncodingKey` keeps the DER and wipes it on drop; AWS-LC parses
/// it into its own heap for each signature and wipes what it frees. The PEM text or file bytes
/// you pass in are yours to wipe ([`from_pem_file`](Self::from_pem_file) wipes what it reads).
#[derive(Clone)]
pub struct SigningKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    public: PublicParts,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.inner.alg)
            .field("kid", &self.inner.kid)
            .finish_non_exhaustive()
    }
}

/// The longest `kid` accepted.
const MAX_KID_LEN: usize = 256;

impl SigningKey {
    /// Loads a private key from PEM and signs with the default algorithm for its type: RS512 for
    /// RSA, ES256 for P-256, ES384 for P-384.
    ///
    /// `kid` is a string (`"my-kid"`) or [`KeyId::Thumbprint`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Key`](crate::ErrorKind::Key) for anything that is not one unencrypted RSA
    /// (2048 bits or more), P-256 or P-384 private key, or for an empty or over-long `kid`;
    /// [`ErrorKind::CryptoBackend`](crate::ErrorKind::CryptoBackend) when the build has no usable
    /// `jsonwebtoken` backend.
    pub fn from_pem(pem: impl AsRef<[u8]>, kid: impl Into<KeyId>) -> Result<Self, Error> {
        let (pkcs8, key_type) = parse_private_pem(pem.as_ref())?;
        Self::from_pkcs8(pkcs8, Algorithm::default_for(key_type), kid.into())
    }

    /// Loads a private key from PEM to sign with `alg`.
    ///
    /// # Errors
    ///
    /// As [`from_pem`](Self::from_pem), and [`ErrorKind::Key`](crate::ErrorKind::Key) when the
    /// key does not fit `alg`.
    pub fn from_pem_with_algorithm(
        pem: impl AsRef<[u8]>,
        alg: Algorithm,
        kid: impl Into<KeyId>,
    ) -> Result<Self, Error> {
        let (pkcs8, _) = parse_private_pem(pem.as_ref())?;
        Self::from_pkcs8(pkcs8, alg, kid.into())
    }

    /// Reads a PEM file and loads it as [`from_pem_with_algorithm`](Self::from_pem_with_algorithm).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Key`](crate::ErrorKind::Key) when the file cannot be read, and as
    /// [`from_pem_with_algorithm`](Self::from_pem_with_algorithm).
    pub fn from_pem_file(
        path: impl AsRef<std::path::Path>,
        alg: Algorithm,
        kid: impl Into<KeyId>,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let pem = Zeroizing::new(std::fs::read(path).map_err(|err| {
            Error::key(format!("cannot read {}", path.display())).with_source(err)
        })?);
        Self::from_pem_with_algorithm(&*pem, alg, kid)
    }

    /// Generates a new key pair for `alg` (RSA 2048 bits, or the algorithm's curve), with the RFC
    /// 7638 thumbprint as `kid`. Save it with [`to_pkcs8_pem`](Self::to_pkcs8_pem).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Key`](crate::ErrorKind::Key) if key generation fails;
    /// [`ErrorKind::CryptoBackend`](crate::ErrorKind::CryptoBackend) as for loading.
    pub fn generate(alg: Algorithm) -> Result<Self, Error> {
        let failed = || Error::key("key generation failed");
        let pkcs8 = match alg.key_type() {
            KeyType::Rsa => RsaKeyPair::generate(KeySize::Rsa2048)
                .and_then(|pair| pair.as_der())
                .map_err(|_| failed())?
                .as_ref()
                .to_vec(),
            KeyType::Ec(curve) => EcdsaKeyPair::generate(curve.signing())
                .and_then(|pair| pair.to_pkcs8v1())
                .map_err(|_| failed())?
                .as_ref()
                .to_vec(),
        };
        Self::from_pkcs8(Zeroizing::new(pkcs8), alg, KeyId::Thumbprint)
    }

    fn from_pkcs8(pkcs8: Zeroizing<Vec<u8>>, alg: Algorithm, kid: KeyId) -> Result<Self, Error> {
        crypto_backend(CryptoProvider::try_get_default())?;
        let (key_type, public) = inspect_pkcs8(&pkcs8)?;
        if key_type != alg.key_type() {
            return Err(Error::key(format!(
                "{alg} needs {}, but the key is {}",
                alg.key_type().describe(),
                key_type.describe()
            )));
        }
        let encoding = match key_type {
            // jsonwebtoken's RSA signer wants PKCS#1: the key inside the PKCS#8 wrapper, no copy
            // (EncodingKey keeps a copy of its own, and wipes it on drop).
            KeyType::Rsa => EncodingKey::from_rsa_der(
                key_pem::pkcs1_in_pkcs8(&pkcs8).ok_or_else(|| Error::key("RSA key rejected"))?,
            ),
            KeyType::Ec(_) => EncodingKey::from_ec_der(&pkcs8),
        };
        // Sign once now, so that a key that cannot sign fails here and not at the first refresh.
        jsonwebtoken::crypto::sign(b"koppeltaal-auth key check", &encoding, alg.jwt())
            .map_err(|err| Error::key(format!("the key cannot sign {alg}")).with_source(err))?;
        let thumbprint = thumbprint(&public);
        let kid = match kid {
            KeyId::Thumbprint => thumbprint,
            KeyId::Named(kid) => validate_kid(kid)?,
        };
        Ok(Self {
            inner: Arc::new(KeyInner {
                alg,
                kid,
                encoding,
                public,
                pkcs8,
            }),
        })
    }

    /// The algorithm this key signs with.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.inner.alg
    }

    /// The key id, sent as `kid` in every assertion header.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.inner.kid
    }

    /// The RFC 7638 JWK thumbprint of the public key: SHA-256, base64url without padding.
    #[must_use]
    pub fn thumbprint(&self) -> String {
        thumbprint(&self.inner.public)
    }

    /// The public key as a JWK (`kty`, `kid`, `use: "sig"`, `alg` and the public members only),
    /// for the JWK Set you register with the Koppeltaal domain. See [`JwkSet`](crate::jwks::JwkSet).
    #[must_use]
    pub fn public_jwk(&self) -> Jwk {
        Jwk::from_public(&self.inner.public, &self.inner.kid, self.inner.alg)
    }

    /// The private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`), for saving a generated key.
    ///
    /// # Security
    ///
    /// This is the secret. The returned string is zeroed on drop; write it to a file only
    /// readable by the application (mode 0600).
    #[must_use]
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        key_pem::encode("PRIVATE KEY", &self.inner.pkcs8)
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.inner.encoding
    }
}

/// Checks that `jsonwebtoken` has exactly one crypto backend. With none or two enabled, its
/// `encode` panics; we turn that into a typed error at load time.
pub(crate) fn crypto_backend(
    provider: Option<&'static CryptoProvider>,
) -> Result<&'static CryptoProvider, Error> {
    provider.ok_or_else(|| {
        Error::new(
            crate::ErrorKind::CryptoBackend,
            "jsonwebtoken has no default CryptoProvider: exactly one of its `aws_lc_rs` and \
             `rust_crypto` features must be enabled (koppeltaal-auth enables `aws_lc_rs`), or \
             call jsonwebtoken::crypto::CryptoProvider::install_default at startup",
        )
    })
}

fn validate_kid(kid: String) -> Result<String, Error> {
    if kid.is_empty() {
        return Err(Error::key("kid must not be empty"));
    }
    if kid.len() > MAX_KID_LEN || kid.chars().any(char::is_control) {
        return Err(Error::key(
            "kid must be at most 256 bytes without control characters",
        ));
    }
    Ok(kid)
}

/// Reads the type and public half of a PKCS#8 private key.
fn inspect_pkcs8(pkcs8: &[u8]) -> Result<(KeyType, PublicParts), Error> {
    if let Ok(pair) = RsaKeyPair::from_pkcs8(pkcs8) {
        let components = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        return Ok((
            KeyType::Rsa,
            PublicParts::Rsa {
                n: components.n,
                e: components.e,
            },
        ));
    }
    for curve in [Curve::P256, Curve::P384] {
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(curve.signing(), pkcs8) {
            // Uncompressed SEC1 point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            let len = curve.coordinate_len();
            if point.len() != 1 + 2 * len || point[0] != 4 {
                break;
            }
            return Ok((
                KeyType::Ec(curve),
                PublicParts::Ec {
                    curve,
                    x: point[1..=len].to_vec(),
                    y: point[1 + len..].to_vec(),
                },
            ));
        }
    }
    Err(Error::key("unsupported or malformed private key"))
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 section 3: SHA-256 over the required members in lexicographic order, no whitespace.
fn thumbprint(public: &PublicParts) -> String {
    let canonical = match public {
        PublicParts::Rsa { n, e } => {
            format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n))
        }
        PublicParts::Ec { curve, x, y } => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            curve.name(),
            b64(x),
            b64(y)
        ),
    };
    b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::test_support::{pem, rsa_key};

    #[test]
    fn loads_every_supported_format() {
        let cases = [
            ("test-only-rsa2048-pkcs8.pem", Algorithm::RS512),
            ("test-only-rsa2048-pkcs1.pem", Algorithm::RS512),
            ("test-only-rsa3072-pkcs8.pem", Algorithm::RS512),
            ("test-only-p256-pkcs8.pem", Algorithm::ES256),
            ("test-only-p256-sec1.pem", Algorithm::ES256),
            ("test-only-p384-pkcs8.pem", Algorithm::ES384),
            ("test-only-p384-sec1.pem", Algorithm::ES384),
        ];
        for (file, default_alg) in cases {
            let key =
                SigningKey::from_pem(pem(file), "k1").unwrap_or_else(|err| panic!("{file}: {err}"));
            assert_eq!(key.algorithm(), default_alg, "{file}");
            assert_eq!(key.kid(), "k1");
        }
    }

    #[test]
    fn pkcs1_and_pkcs8_of_one_key_agree() {
        let a =
            SigningKey::from_pem(pem("test-only-rsa2048-pkcs8.pem"), KeyId::Thumbprint).unwrap();
        let b =
            SigningKey::from_pem(pem("test-only-rsa2048-pkcs1.pem"), KeyId::Thumbprint).unwrap();
        assert_eq!(a.kid(), b.kid());
        let c = SigningKey::from_pem(pem("test-only-p384-sec1.pem"), KeyId::Thumbprint).unwrap();
        let d = SigningKey::from_pem(pem("test-only-p384-pkcs8.pem"), KeyId::Thumbprint).unwrap();
        assert_eq!(c.kid(), d.kid());
    }

    #[test]
    fn every_rsa_algorithm_signs_with_an_rsa_key() {
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let key =
                SigningKey::from_pem_with_algorithm(pem("test-only-rsa2048-pkcs8.pem"), alg, "k")
                    .unwrap();
            assert_eq!(key.algorithm(), alg);
        }
    }

    #[test]
    fn refuses_mismatches_at_load_time() {
        let cases: &[(&str, Algorithm, &str)] = &[
            (
                "test-only-rsa2048-pkcs8.pem",
                Algorithm::ES384,
                "ES384 needs an EC P-384 key, but the key is an RSA key",
            ),
            (
                "test-only-p384-pkcs8.pem",
                Algorithm::ES256,
                "ES256 needs an EC P-256 key, but the key is an EC P-384 key",
            ),
            (
                "test-only-p256-sec1.pem",
                Algorithm::ES384,
                "ES384 needs an EC P-384 key",
            ),
            (
                "test-only-p256-pkcs8.pem",
                Algorithm::RS512,
                "RS512 needs an RSA key",
            ),
            (
                "test-only-rsa1024-pkcs8.pem",
                Algorithm::RS512,
                "at least 2048 bits",
            ),
            (
                "test-only-rsa2048-public.pem",
                Algorithm::RS512,
                "found a public key, not a private key",
            ),
            (
                "test-only-cert.pem",
                Algorithm::RS512,
                "found a certificate, not a private key",
            ),
            (
                "test-only-rsa2048-encrypted.pem",
                Algorithm::RS512,
                "encrypted private keys are not supported",
            ),
            (
                "test-only-rsa2048-legacy-encrypted.pem",
                Algorithm::RS512,
                "encrypted private keys are not supported",
            ),
            (
                "test-only-rsa9216-pkcs8.pem",
                Algorithm::RS512,
                "more than 8192 bits are not supported",
            ),
            (
                "test-only-p521-pkcs8.pem",
                Algorithm::ES384,
                "unsupported or malformed private key",
            ),
            (
                "test-only-ed25519-pkcs8.pem",
                Algorithm::ES256,
                "unsupported or malformed private key",
            ),
        ];
        for (file, alg, expected) in cases {
            let err = SigningKey::from_pem_with_algorithm(pem(file), *alg, "k").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Key, "{file}");
            assert!(err.to_string().contains(expected), "{file}: {err}");
        }
    }

    #[test]
    fn refuses_garbage() {
        for input in [
            &b""[..],
            b"not a key",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
            b"-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n",
            b"-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n",
            b"\xff\xfe\x00garbage",
        ] {
            let err = SigningKey::from_pem(input, "k").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Key);
        }
        let two = format!(
            "{}{}",
            pem("test-only-p256-pkcs8.pem"),
            pem("test-only-p384-pkcs8.pem")
        );
        let err = SigningKey::from_pem(two, "k").unwrap_err();
        assert!(err.to_string().contains("more than one private key"));
    }

    #[test]
    fn key_next_to_a_certificate_is_found() {
        let bundle = format!(
            "{}{}",
            pem("test-only-cert.pem"),
            pem("test-only-rsa2048-pkcs8.pem")
        );
        assert!(SigningKey::from_pem(bundle, "k").is_ok());
    }

    #[test]
    fn kid_is_validated() {
        let input = pem("test-only-p256-pkcs8.pem");
        assert!(SigningKey::from_pem(input, "").is_err());
        assert!(SigningKey::from_pem(input, "a\nb").is_err());
        assert!(SigningKey::from_pem(input, "x".repeat(257)).is_err());
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 section 3.1.
        let n = URL_SAFE_NO_PAD
            .decode(
                "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo\
                 c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG\
                 jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt\
                 -bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDK\
                 gw",
            )
            .unwrap();
        let e = URL_SAFE_NO_PAD.decode("AQAB").unwrap();
        assert_eq!(
            thumbprint(&PublicParts::Rsa { n, e }),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn generated_keys_round_trip_through_pem() {
        let key = SigningKey::generate(Algorithm::ES384).unwrap();
        assert_eq!(key.kid(), key.thumbprint());
        let again = SigningKey::from_pem(key.to_pkcs8_pem().as_bytes(), KeyId::Thumbprint).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(again.algorithm(), Algorithm::ES384);
    }

    #[test]
    fn debug_shows_alg_and_kid_only() {
        let key = rsa_key();
        let debug = format!("{key:?}");
        assert_eq!(debug, r#"SigningKey { alg: RS512, kid: "test-rsa", .. }"#);
        let pkcs8 = key.to_pkcs8_pem();
        let body: String = pkcs8.lines().nth(1).unwrap().chars().take(40).collect();
        assert!(!debug.contains(&body));
    }

    #[test]
    fn missing_crypto_backend_is_a_typed_error() {
        let err = crypto_backend(None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CryptoBackend);
        assert!(crypto_backend(CryptoProvider::try_get_default()).is_ok());
    }

    #[test]
    fn algorithm_names_parse() {
        assert_eq!("rs512".parse::<Algorithm>().unwrap(), Algorithm::RS512);
        assert_eq!("ES384".parse::<Algorithm>().unwrap(), Algorithm::ES384);
        assert_eq!(
            "HS256".parse::<Algorithm>().unwrap_err().kind(),
            ErrorKind::Config
        );
        assert_eq!(Algorithm::default(), Algorithm::RS512);
    }
}
