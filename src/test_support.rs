//! Test fixtures shared by the unit tests: the test-only keys under `tests/data/`.

use std::sync::LazyLock;

use crate::{Algorithm, SigningKey};

/// A test-only PEM file from `tests/data/`.
pub(crate) fn pem(name: &str) -> &'static str {
    match name {
        "test-only-rsa2048-pkcs8.pem" => include_str!("../tests/data/test-only-rsa2048-pkcs8.pem"),
        "test-only-rsa2048-pkcs1.pem" => include_str!("../tests/data/test-only-rsa2048-pkcs1.pem"),
        "test-only-rsa2048-public.pem" => {
            include_str!("../tests/data/test-only-rsa2048-public.pem")
        }
        "test-only-rsa2048-encrypted.pem" => {
            include_str!("../tests/data/test-only-rsa2048-encrypted.pem")
        }
        "test-only-rsa2048-legacy-encrypted.pem" => {
            include_str!("../tests/data/test-only-rsa2048-legacy-encrypted.pem")
        }
        "test-only-rsa9216-pkcs8.pem" => include_str!("../tests/data/test-only-rsa9216-pkcs8.pem"),
        "test-only-rsa3072-pkcs8.pem" => include_str!("../tests/data/test-only-rsa3072-pkcs8.pem"),
        "test-only-rsa1024-pkcs8.pem" => include_str!("../tests/data/test-only-rsa1024-pkcs8.pem"),
        "test-only-cert.pem" => include_str!("../tests/data/test-only-cert.pem"),
        "test-only-p256-pkcs8.pem" => include_str!("../tests/data/test-only-p256-pkcs8.pem"),
        "test-only-p256-sec1.pem" => include_str!("../tests/data/test-only-p256-sec1.pem"),
        "test-only-p384-pkcs8.pem" => include_str!("../tests/data/test-only-p384-pkcs8.pem"),
        "test-only-p384-sec1.pem" => include_str!("../tests/data/test-only-p384-sec1.pem"),
        "test-only-p521-pkcs8.pem" => include_str!("../tests/data/test-only-p521-pkcs8.pem"),
        "test-only-ed25519-pkcs8.pem" => include_str!("../tests/data/test-only-ed25519-pkcs8.pem"),
        other => panic!("no test key {other}"),
    }
}

static RSA: LazyLock<SigningKey> = LazyLock::new(|| {
    SigningKey::from_pem(pem("test-only-rsa2048-pkcs8.pem"), "test-rsa").expect("test RSA key")
});

static EC: LazyLock<SigningKey> = LazyLock::new(|| {
    SigningKey::from_pem_with_algorithm(
        pem("test-only-p384-pkcs8.pem"),
        Algorithm::ES384,
        "test-ec",
    )
    .expect("test EC key")
});

/// The RS512 test key, kid `test-rsa`.
pub(crate) fn rsa_key() -> SigningKey {
    RSA.clone()
}

/// The ES384 test key, kid `test-ec`.
pub(crate) fn ec_key() -> SigningKey {
    EC.clone()
}
