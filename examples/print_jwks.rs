//! Prints the public JWK Set for a private key, for registration with the Koppeltaal domain.
//!
//! Run with
//!
//! ```not_rust
//! KOPPELTAAL_KEY=client-key.pem KOPPELTAAL_KID=my-kid cargo run --example print_jwks
//! ```
//!
//! `KOPPELTAAL_ALG` (default RS512 for RSA keys, ES256/ES384 for EC keys) picks the algorithm;
//! without `KOPPELTAAL_KID` the RFC 7638 thumbprint is the kid.
#![allow(clippy::print_stdout)]

use koppeltaal_auth::jwks::JwkSet;
use koppeltaal_auth::{Algorithm, BoxError, KeyId, SigningKey};

fn main() -> Result<(), BoxError> {
    let Ok(path) = std::env::var("KOPPELTAAL_KEY") else {
        println!("Set KOPPELTAAL_KEY to the path of a PEM private key (and optionally");
        println!("KOPPELTAAL_KID and KOPPELTAAL_ALG) to print its public JWK Set.");
        return Ok(());
    };
    let kid = std::env::var("KOPPELTAAL_KID").map_or(KeyId::Thumbprint, KeyId::from);
    let alg = match std::env::var("KOPPELTAAL_ALG") {
        Ok(alg) => Some(alg.parse::<Algorithm>()?),
        Err(_) => None,
    };
    // At most 1 MiB read, wiped from memory when done; `None`: the key type's default.
    let key = SigningKey::from_pem_file(&path, alg, kid)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&JwkSet::from_keys([&key])?)?
    );
    Ok(())
}
