//! What the cell tests share: an exact policy, a paused runtime, an error.

use koppeltaal_auth::{Error, ErrorKind, RefreshPolicy};

/// The default policy without jitter, so that refresh points are exact.
pub fn exact() -> RefreshPolicy {
    RefreshPolicy::default().refresh_jitter(0.0)
}

/// A current-thread runtime whose clock starts paused (each one's clock starts at the real time).
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

pub fn transport_error() -> Error {
    Error::new(ErrorKind::Transport, "connection refused")
}
