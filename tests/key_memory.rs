//! No private key bytes are left in freed memory by this crate: a global allocator scans every
//! block as it is freed (or moved by `realloc`) for pieces of the test key (its DER, and its
//! base64 text) while a key is loaded from PEM and from a file, signs, is exported, and dropped;
//! and for the signed assertion and its encoded signature, wiped when dropped (aws-lc-rs frees
//! its raw copy of the signature unwiped: outside this crate).
//! Copies inside AWS-LC live on its own heap (`OPENSSL_free` wipes what it frees) and are not
//! seen here; jsonwebtoken's copy is wiped on drop, which this test covers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/freed_memory.rs"]
mod freed_memory;

use std::time::SystemTime;

use base64::Engine as _;
use koppeltaal_auth::jwks::JwkSet;
use koppeltaal_auth::{Algorithm, ClientAssertion, SigningKey};

fn fixture(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_key_bytes_are_left_in_freed_memory_after_load_sign_export_and_drop() {
    let pem = std::fs::read_to_string(fixture("test-only-rsa2048-pkcs8.pem")).unwrap();
    let base64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&base64)
        .unwrap();
    // Pieces of the private exponent and the primes (DER bytes 400.. and 700..), and of the
    // base64 text of the file (a line in the middle).
    let line = pem.lines().nth(10).unwrap();
    let now = SystemTime::now();
    let assertion =
        ClientAssertion::new("client", "https://auth.example.org/oauth2/token").unwrap();
    // The assertion the first key signs below (RS512 signatures are deterministic): a secret
    // too, wiped when dropped.
    let signed = assertion
        .sign_at(
            &SigningKey::from_pem(&pem, "test-rsa").unwrap(),
            now,
            "jti-1",
        )
        .unwrap()
        .as_str()
        .to_owned();
    // Its signature alone: with the signed part (which is no secret) it is the assertion
    // again. (Only as text: aws-lc-rs frees its own raw copy of the signature unwiped, which
    // this crate cannot reach.)
    let signature = signed.rsplit('.').next().unwrap();
    freed_memory::look_for(vec![
        der[400..416].to_vec(),
        der[700..716].to_vec(),
        line.as_bytes()[8..32].to_vec(),
        signed.as_bytes().to_vec(),
        signature.as_bytes()[..32].to_vec(),
    ]);

    let ((), found) = freed_memory::scanning(|| {
        let key = SigningKey::from_pem(&pem, "test-rsa").unwrap();
        let from_file = SigningKey::from_pem_file(
            fixture("test-only-rsa2048-pkcs8.pem"),
            Algorithm::RS384,
            "test-rsa-384",
        )
        .unwrap();
        let pkcs1 = SigningKey::from_pem(
            std::fs::read_to_string(fixture("test-only-rsa2048-pkcs1.pem")).unwrap(),
            "pkcs1",
        )
        .unwrap();
        assert_eq!(
            assertion.sign_at(&key, now, "jti-1").unwrap().as_str(),
            signed
        );
        for key in [&key, &from_file, &pkcs1] {
            drop(assertion.sign_at(key, now, "jti-1").unwrap());
            drop(key.to_pkcs8_pem());
        }
        drop(JwkSet::from_keys([&key, &from_file]).unwrap());
        drop((key, from_file, pkcs1));
    });
    assert_eq!(
        found, 0,
        "freed blocks held pieces of the private key or of an assertion"
    );
    // The scanner does see a copy that is freed without being wiped.
    let ((), found) = freed_memory::scanning(|| drop(der));
    assert!(found > 0, "the scanner works");
}
