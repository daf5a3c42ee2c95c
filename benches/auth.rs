//! Criterion benches. Run with `cargo bench`; CI only compiles them (`cargo bench --no-run`).
//!
//! - `assertion/sign_*`: signing one client assertion per algorithm, the CPU cost of a token
//!   request.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use koppeltaal_auth::{Algorithm, ClientAssertion, SigningKey};

fn key(file: &str, alg: Algorithm) -> SigningKey {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    SigningKey::from_pem_with_algorithm(std::fs::read(path).unwrap(), alg, "bench").unwrap()
}

fn assertion_signing(c: &mut Criterion) {
    let mut group = c.benchmark_group("assertion");
    let assertion =
        ClientAssertion::new("bench-client", "https://auth.example.org/oauth2/token").unwrap();
    for (name, file, alg) in [
        (
            "sign_rs512",
            "test-only-rsa2048-pkcs8.pem",
            Algorithm::RS512,
        ),
        (
            "sign_rs384",
            "test-only-rsa2048-pkcs8.pem",
            Algorithm::RS384,
        ),
        ("sign_es384", "test-only-p384-pkcs8.pem", Algorithm::ES384),
        ("sign_es256", "test-only-p256-pkcs8.pem", Algorithm::ES256),
    ] {
        let key = key(file, alg);
        group.bench_function(name, |b| {
            b.iter(|| {
                assertion
                    .sign_at(black_box(&key), SystemTime::now(), "bench-jti")
                    .unwrap()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, assertion_signing);
criterion_main!(benches);
