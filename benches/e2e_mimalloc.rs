//! The end-to-end report of `benches/auth.rs` again, with mimalloc as the global allocator.
//!
//! With glibc's allocator, any seventh request header (six set by the client, plus `host`)
//! costs 15-30% of loopback throughput under load: hyper's header table grows past the size glibc
//! serves from its per-thread cache, on the client and the server side of every request. That
//! is the same for any layer that adds a header, so the layer's own cost is measured here too,
//! with an allocator without that cliff. `benches/README.md` has the numbers.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `cargo bench -- <filter>` passes the filter on: run only when it names this report.
    if common::report_wanted("e2e_ratio_mimalloc") {
        common::e2e_ratio("mimalloc");
    }
}
