//! Running the `koppeltaal-auth` binary (its path is [`BIN`]) from a test (`cli.rs`, `cli_keygen.rs`). Included with
//! `#[path]` rather than through `support`: the binary's path exists only for tests that require
//! the `cli` feature.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_koppeltaal-auth");

/// Runs the binary off the async runtime (a mock keeps serving meanwhile), with a clean
/// environment so that no KOPPELTAAL_* variable of the developer leaks in.
pub(crate) async fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The output's stdout, as text.
pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The output's stderr, as text.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// A path as an argument.
pub(crate) fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
