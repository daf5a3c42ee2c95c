//! What the cell tests share: an exact policy, a paused runtime, an error.

use koppeltaal_auth::{Error, ErrorKind, RefreshPolicy};

// Not every test binary that has this module uses it.
#[allow(unused_imports)]
pub use super::runtimes::paused_runtime;

/// The default policy without jitter, so that refresh points are exact.
pub fn exact() -> RefreshPolicy {
    RefreshPolicy::default().refresh_jitter(0.0)
}

/// A transport error, as a refused connection gives.
pub fn transport_error() -> Error {
    Error::new(ErrorKind::Transport, "connection refused")
}
