//! PEM in and out for private keys, with every copy of key material this crate makes wiped when
//! it is dropped: the base64 text and the DER are decoded into buffers allocated once at their
//! final size (a growing buffer would leave its old copies behind) and zeroed on drop.
//!
//! Copies made by dependencies: jsonwebtoken's `EncodingKey` keeps the DER (wiped on drop), and
//! AWS-LC parses it into its own heap on every signature (`OPENSSL_free` wipes what it frees).
//! What the caller passes in (the PEM text, a file's bytes) is the caller's to wipe.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::EcdsaKeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::{Curve, KeyType};

/// One PEM block.
struct Block {
    tag: String,
    /// Has RFC 1421 headers saying it is encrypted (`Proc-Type: 4,ENCRYPTED`).
    encrypted: bool,
    der: Zeroizing<Vec<u8>>,
}

/// The PEM blocks in `input`, their contents decoded. Text outside blocks is ignored.
fn parse_blocks(input: &[u8]) -> Result<Vec<Block>, Error> {
    let invalid = || Error::key("the input is not valid PEM");
    let text = std::str::from_utf8(input).map_err(|_| invalid())?;
    let mut blocks = Vec::new();
    // One buffer for every block's base64 text, wiped (all of its capacity) when dropped: it is
    // at most as long as the input, so it never grows and leaves no copy behind. One per block
    // would cost the input's length in writes per block: quadratic in the number of blocks.
    let mut base64 = Zeroizing::new(String::with_capacity(input.len()));
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(tag) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {tag}-----");
        base64.clear();
        let mut encrypted = false;
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                // An RFC 1421 header (`Proc-Type`, `DEK-Info`): before the base64 text.
                if !base64.is_empty() {
                    return Err(invalid());
                }
                encrypted |= name.trim().eq_ignore_ascii_case("Proc-Type")
                    && value.to_ascii_uppercase().contains("ENCRYPTED");
                continue;
            }
            base64.push_str(line);
        }
        if !closed {
            return Err(invalid());
        }
        let mut der = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(base64.len())]);
        let len = STANDARD
            .decode_slice(base64.as_bytes(), &mut der[..])
            .map_err(|_| invalid())?;
        der.truncate(len);
        blocks.push(Block {
            tag: tag.to_owned(),
            encrypted,
            der,
        });
    }
    Ok(blocks)
}

/// `der` as a PEM block labelled `tag`, lines of 64 characters, in a string wiped on drop.
pub(crate) fn encode(tag: &str, der: &[u8]) -> Zeroizing<String> {
    let base64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(
        base64.len() + base64.len() / 64 + 2 * tag.len() + 40,
    ));
    out.push_str("-----BEGIN ");
    out.push_str(tag);
    out.push_str("-----\n");
    for line in base64.as_bytes().chunks(64) {
        // Base64 is ASCII: every chunk is a whole string.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(tag);
    out.push_str("-----\n");
    out
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (its `privateKey` octet
/// string), without copying it.
pub(crate) fn pkcs1_in_pkcs8(pkcs8: &[u8]) -> Option<&[u8]> {
    let (tag, info, _) = der_element(pkcs8)?;
    if tag != 0x30 {
        return None;
    }
    let (0x02, _version, rest) = der_element(info)? else {
        return None;
    };
    let (0x30, _algorithm, rest) = der_element(rest)? else {
        return None;
    };
    let (0x04, key, _) = der_element(rest)? else {
        return None;
    };
    Some(key)
}

/// One DER element: its tag, its contents and what follows it.
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(count)?;
        let len = len_bytes
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        (len, rest)
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}

/// Finds the one private key in `input` and returns it as PKCS#8 DER with its type.
pub(crate) fn parse_private_pem(input: &[u8]) -> Result<(Zeroizing<Vec<u8>>, KeyType), Error> {
    let blocks = parse_blocks(input)?;
    let mut private = None;
    let mut other = None;
    for block in blocks {
        match block.tag.as_str() {
            // Legacy (OpenSSL) encryption: a PKCS#1 or SEC1 block with encryption headers.
            "RSA PRIVATE KEY" | "EC PRIVATE KEY" if block.encrypted => {
                return Err(Error::key(
                    "encrypted private keys are not supported; decrypt it first \
                     (openssl pkey -in key.pem -out plain.pem)",
                ));
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                if private.is_some() {
                    return Err(Error::key("the PEM input holds more than one private key"));
                }
                private = Some(block);
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(Error::key(
                    "encrypted private keys are not supported; decrypt it first \
                     (openssl pkcs8 -in key.pem -out plain.pem)",
                ));
            }
            // openssl ecparam writes the curve parameters as a block of their own.
            "EC PARAMETERS" => {}
            tag => other = other.or_else(|| Some(tag.to_owned())),
        }
    }
    let Some(block) = private else {
        return Err(match other {
            Some(tag) if tag.contains("PUBLIC KEY") || tag == "CERTIFICATE" => Error::key(format!(
                "found a {}, not a private key: the private key belongs here",
                tag.to_lowercase()
            )),
            Some(_) => Error::key("the PEM input holds no private key"),
            None => Error::key("the input holds no PEM block"),
        });
    };
    let kind = match block.tag.as_str() {
        "RSA PRIVATE KEY" => PemKind::Pkcs1,
        "EC PRIVATE KEY" => PemKind::Sec1,
        _ => PemKind::Pkcs8,
    };
    let der = block.der;
    let unsupported = || {
        Error::key(
            "unsupported or malformed private key (supported: RSA of 2048 to 8192 bits, EC \
             P-256, EC P-384)",
        )
    };
    let too_small = || Error::key("RSA keys must have at least 2048 bits");
    let too_large = || Error::key("RSA keys of more than 8192 bits are not supported");
    let rsa_error = |err: aws_lc_rs::error::KeyRejected| match err.description_() {
        "TooSmall" => too_small(),
        "TooLarge" => too_large(),
        _ => unsupported(),
    };
    match kind {
        PemKind::Pkcs1 => {
            let pair = RsaKeyPair::from_der(&der).map_err(rsa_error)?;
            let pkcs8 = pair.as_der().map_err(|_| unsupported())?;
            Ok((Zeroizing::new(pkcs8.as_ref().to_vec()), KeyType::Rsa))
        }
        PemKind::Sec1 => {
            for curve in [Curve::P256, Curve::P384] {
                if let Ok(pair) = EcdsaKeyPair::from_private_key_der(curve.signing(), &der) {
                    let pkcs8 = pair.to_pkcs8v1().map_err(|_| unsupported())?;
                    return Ok((Zeroizing::new(pkcs8.as_ref().to_vec()), KeyType::Ec(curve)));
                }
            }
            Err(unsupported())
        }
        PemKind::Pkcs8 => match RsaKeyPair::from_pkcs8(&der) {
            Ok(_) => Ok((der, KeyType::Rsa)),
            Err(err) if matches!(err.description_(), "TooSmall" | "TooLarge") => {
                Err(rsa_error(err))
            }
            Err(_) => [Curve::P256, Curve::P384]
                .into_iter()
                .find(|curve| EcdsaKeyPair::from_pkcs8(curve.signing(), &der).is_ok())
                .map(|curve| (der, KeyType::Ec(curve)))
                .ok_or_else(unsupported),
        },
    }
}

enum PemKind {
    Pkcs1,
    Sec1,
    Pkcs8,
}

/// Largest key file read: PEM keys are a few kilobytes (an RSA 8192-bit key about 6.5 KiB).
const MAX_KEY_FILE: usize = 1 << 20;

/// Reads a key file, at most [`MAX_KEY_FILE`] bytes, into a buffer that is wiped when it grows
/// and when it is dropped: no freed block keeps a piece of the key, whatever the file is (a pipe
/// or `/dev/stdin` has no size to allocate for up front), and a device that never ends
/// (`/dev/zero`) is an error, not an exhausted memory.
pub(crate) fn read_key_file(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    use std::io::Read;
    let failed =
        |err| Error::key(format!("cannot read the key {}", path.display())).with_source(err);
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let size = file
        .metadata()
        .ok()
        .and_then(|meta| usize::try_from(meta.len()).ok())
        .unwrap_or(0);
    let mut pem = Zeroizing::new(Vec::with_capacity(size.min(MAX_KEY_FILE)));
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        let read = match file.read(&mut chunk[..]) {
            Ok(0) => return Ok(pem),
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(failed(err)),
        };
        if pem.len() + read > MAX_KEY_FILE {
            return Err(Error::key(format!(
                "{} is larger than {} KiB: not a key file",
                path.display(),
                MAX_KEY_FILE / 1024
            )));
        }
        crate::wipe::extend(&mut pem, &chunk[..read], MAX_KEY_FILE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pem;

    #[test]
    fn encoding_then_parsing_gives_the_der_back() {
        for der in [&b""[..], b"x", &[0u8, 1, 2, 3, 255], &[7u8; 200]] {
            let text = encode("PRIVATE KEY", der);
            let blocks = parse_blocks(text.as_bytes()).unwrap();
            assert_eq!(blocks.len(), 1);
            assert_eq!(blocks[0].tag, "PRIVATE KEY");
            assert_eq!(&blocks[0].der[..], der);
            assert!(
                text.lines()
                    .all(|line| line.len() <= 64 || line.starts_with("-----"))
            );
        }
    }

    #[test]
    fn a_generated_key_round_trips_through_its_pem() {
        let (der, kind) = parse_private_pem(pem("test-only-rsa2048-pkcs8.pem").as_bytes()).unwrap();
        assert!(matches!(kind, KeyType::Rsa));
        let again = encode("PRIVATE KEY", &der);
        let (back, _) = parse_private_pem(again.as_bytes()).unwrap();
        assert_eq!(&back[..], &der[..]);
        let pkcs1 = pkcs1_in_pkcs8(&der).unwrap();
        assert!(RsaKeyPair::from_der(pkcs1).is_ok(), "the PKCS#1 key inside");
    }

    #[test]
    fn broken_pem_is_refused() {
        for bad in [
            "-----BEGIN PRIVATE KEY-----\nAAAA\n",
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\nProc-Type: 4,ENCRYPTED\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(parse_blocks(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse_blocks(b"no pem at all").unwrap().is_empty());
        assert!(pkcs1_in_pkcs8(b"\x30\x05\x02\x01").is_none());
        assert!(pkcs1_in_pkcs8(&[]).is_none());
    }

    /// Many blocks cost the input's length once, not once per block: 120,000 empty blocks
    /// (4 MiB; `from_pem` takes any length) took ~5 s when each block had a buffer of the
    /// input's length, wiped when dropped, and take ~0.2 s now (debug build).
    #[test]
    fn many_blocks_are_parsed_in_time_linear_in_the_input() {
        let input = "-----BEGIN X-----\n-----END X-----\n".repeat(120_000);
        let started = std::time::Instant::now();
        let blocks = parse_blocks(input.as_bytes()).unwrap();
        let took = started.elapsed();
        assert_eq!(blocks.len(), 120_000);
        assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    }
}
