//! Private signing keys: PEM loading, algorithm checks, `kid`, RFC 7638 thumbprints.
//!
//! - this module: [`SigningKey`] and its [`KeyId`];
//! - [`algorithm`]: [`Algorithm`], and the key types and curves it needs;
//! - [`public`]: the public half of a key (JWK members, thumbprints).

mod algorithm;
mod public;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::EcdsaKeyPair;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::crypto::CryptoProvider;
use zeroize::Zeroizing;

pub use self::algorithm::Algorithm;
pub(crate) use self::algorithm::{Curve, KeyType};
pub(crate) use self::public::{PublicParts, b64};
use self::public::{inspect_pkcs8, thumbprint};
use crate::error::Error;
use crate::jwks::Jwk;
use crate::key_pem::{self, parse_private_pem};

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
/// # let pem = include_str!("../../tests/data/test-only-rsa2048-pkcs8.pem");
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

    /// Reads a PEM file and loads it as [`from_pem_with_algorithm`](Self::from_pem_with_algorithm)
    /// with `Some(alg)` (or an `alg`), or as [`from_pem`](Self::from_pem) (the default algorithm
    /// for the key's type) with `None`. What it reads is wiped from memory, also when the file is
    /// a pipe.
    ///
    /// ```
    /// use koppeltaal_auth::{Algorithm, KeyId, SigningKey};
    ///
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/test-only-rsa2048-pkcs8.pem");
    /// let key = SigningKey::from_pem_file(path, None, KeyId::Thumbprint)?;
    /// assert_eq!(key.algorithm(), Algorithm::RS512);
    /// let key = SigningKey::from_pem_file(path, Algorithm::RS384, "my-kid")?;
    /// assert_eq!(key.algorithm(), Algorithm::RS384);
    /// # Ok::<(), koppeltaal_auth::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Key`](crate::ErrorKind::Key) when the file cannot be read or is over 1 MiB
    /// (no key is), and as [`from_pem`](Self::from_pem) or
    /// [`from_pem_with_algorithm`](Self::from_pem_with_algorithm).
    pub fn from_pem_file(
        path: impl AsRef<std::path::Path>,
        alg: impl Into<Option<Algorithm>>,
        kid: impl Into<KeyId>,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let pem = key_pem::read_key_file(path)?;
        match alg.into() {
            Some(alg) => Self::from_pem_with_algorithm(&*pem, alg, kid),
            None => Self::from_pem(&*pem, kid),
        }
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
