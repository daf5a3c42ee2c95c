//! Tests of loading, checking and exporting signing keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
    let a = SigningKey::from_pem(pem("test-only-rsa2048-pkcs8.pem"), KeyId::Thumbprint).unwrap();
    let b = SigningKey::from_pem(pem("test-only-rsa2048-pkcs1.pem"), KeyId::Thumbprint).unwrap();
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
        let key = SigningKey::from_pem_with_algorithm(pem("test-only-rsa2048-pkcs8.pem"), alg, "k")
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

#[test]
fn a_key_file_that_never_ends_is_an_error_not_an_exhausted_memory() {
    #[cfg(unix)]
    {
        let err = SigningKey::from_pem_file("/dev/zero", Algorithm::RS512, "k").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Key);
        assert!(err.to_string().contains("not a key file"), "{err}");
    }
    let err = SigningKey::from_pem_file("/no/such/key.pem", Algorithm::RS512, "k").unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Key);
    assert!(err.to_string().contains("cannot read"), "{err}");
}
