//! The signing algorithms, and the key types and curves they need.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaSigningAlgorithm,
};

use crate::error::Error;

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

    pub(super) fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

impl KeyType {
    pub(super) fn describe(self) -> &'static str {
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
    pub(super) fn default_for(key_type: KeyType) -> Self {
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
