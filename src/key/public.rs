//! The public half of a private key: what JWK members and RFC 7638 thumbprints need.

use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, PublicKeyComponents};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Curve, KeyType};
use crate::error::Error;

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

/// Reads the type and public half of a PKCS#8 private key.
pub(super) fn inspect_pkcs8(pkcs8: &[u8]) -> Result<(KeyType, PublicParts), Error> {
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
pub(super) fn thumbprint(public: &PublicParts) -> String {
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
