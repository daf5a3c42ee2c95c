//! Signing a compact JWT (the client assertion) with every secret copy wiped.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Header;
use jsonwebtoken::crypto::CryptoProvider;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind};
use crate::key::SigningKey;

/// `header.claims.signature`, as `jsonwebtoken::encode` makes it, but with this crate's copies
/// of the signature (raw and encoded) wiped when dropped (`encode` frees its two halves, which
/// together are the assertion, unwiped), and the result in one buffer sized once. The signed
/// part alone is no secret: it is what anyone holding the assertion could read. Not covered:
/// aws-lc-rs frees its own raw copy of the signature unwiped.
pub(crate) fn compact_jwt<C: Serialize>(
    provider: &CryptoProvider,
    header: &Header,
    claims: &C,
    key: &SigningKey,
) -> Result<String, Error> {
    let failed = |what: &'static str| Error::new(ErrorKind::Signing, what);
    let signer = (provider.signer_factory)(&header.alg, key.encoding_key())
        .map_err(|err| failed("").with_source(err))?;
    if signer.algorithm() != header.alg {
        return Err(failed("the signer does not use the key's algorithm"));
    }
    fn part<T: Serialize>(value: &T) -> Result<String, Error> {
        let json = serde_json::to_vec(value)
            .map_err(|err| Error::new(ErrorKind::Signing, "").with_source(err))?;
        Ok(URL_SAFE_NO_PAD.encode(json))
    }
    let signed = format!("{}.{}", part(header)?, part(claims)?);
    let signature = Zeroizing::new(
        signer
            .try_sign(signed.as_bytes())
            .map_err(|err| failed("").with_source(err))?,
    );
    let mut encoded = Zeroizing::new(vec![0u8; signature.len().div_ceil(3) * 4]);
    let written = URL_SAFE_NO_PAD
        .encode_slice(&*signature, &mut encoded[..])
        .map_err(|err| failed("").with_source(err))?;
    let encoded =
        std::str::from_utf8(&encoded[..written]).map_err(|err| failed("").with_source(err))?;
    let mut jwt = String::with_capacity(signed.len() + 1 + encoded.len());
    jwt.push_str(&signed);
    jwt.push('.');
    jwt.push_str(encoded);
    Ok(jwt)
}
