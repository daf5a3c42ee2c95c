//! The runtime a cell may fetch on: the current tokio runtime, if it has timers.
//!
//! Every fetch is bounded in time (the attempt timeout, the wait timeout, the backoff), and tokio
//! panics when a timer is made on a runtime built without them (`Builder::enable_time`). A cell
//! therefore fetches, waits and runs its background refresher only on a runtime with timers; on
//! one without, it hands out the token it holds and a caller that needs a new one gets
//! [`ErrorKind::NoRuntime`](crate::ErrorKind::NoRuntime), as outside any runtime.
//!
//! tokio has no way to ask whether a runtime has timers, so the first time a cell meets a runtime
//! it makes a timer inside `catch_unwind` and remembers the answer for that runtime. On a runtime
//! without timers tokio's panic message is printed once (by the panic hook) before the cell
//! reports it with a `tracing` error; the panic goes no further.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::runtime::Handle;

use crate::error::{Error, ErrorKind};

/// Why there is no runtime to fetch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unusable {
    /// No tokio runtime at all.
    NoRuntime,
    /// A tokio runtime built without timers.
    NoTimers,
}

impl Unusable {
    pub(super) fn error(self) -> Error {
        Error::new(
            ErrorKind::NoRuntime,
            match self {
                Self::NoRuntime => {
                    "no tokio runtime: a token can only be fetched inside a tokio runtime"
                }
                Self::NoTimers => {
                    "the tokio runtime has no timers: a token can only be fetched on a runtime \
                     built with `enable_time()` (or `enable_all()`)"
                }
            },
        )
    }
}

/// What a cell knows of the runtimes it met: the last one with timers and the last one
/// without, by id (0: none yet).
#[derive(Debug, Default)]
pub(super) struct Runtimes {
    with_timers: AtomicU64,
    without_timers: AtomicU64,
}

impl Runtimes {
    /// The current runtime, if a cell may fetch on it.
    pub(super) fn usable(&self) -> Result<Handle, Unusable> {
        let handle = Handle::try_current().map_err(|_| Unusable::NoRuntime)?;
        let id = number_of(&handle.id()).max(1);
        if self.with_timers.load(Ordering::Relaxed) == id {
            return Ok(handle);
        }
        if self.without_timers.load(Ordering::Relaxed) == id {
            return Err(Unusable::NoTimers);
        }
        if has_timers() {
            self.with_timers.store(id, Ordering::Relaxed);
            Ok(handle)
        } else {
            self.without_timers.store(id, Ordering::Relaxed);
            tracing::error!(
                "this tokio runtime was built without timers (`enable_time()`): tokens are not \
                 fetched or refreshed on it (the panic message above is tokio's, caught)"
            );
            Err(Unusable::NoTimers)
        }
    }
}

/// Whether the current runtime has timers: makes one, catching tokio's panic if it has none.
#[cold]
fn has_timers() -> bool {
    std::panic::catch_unwind(|| drop(tokio::time::sleep(std::time::Duration::ZERO))).is_ok()
}

/// A value that hashes as one integer (a `ThreadId`, a runtime `Id`) as that integer; any other
/// value as some mix of its bytes. Neither id type exposes its number on stable Rust.
pub(super) fn number_of(value: &impl Hash) -> u64 {
    /// Keeps what is hashed, mixed as little as possible, so sequential ids stay sequential.
    #[derive(Default)]
    struct Capture(u64);
    impl Hasher for Capture {
        fn write(&mut self, bytes: &[u8]) {
            for &byte in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(byte);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 ^= n;
        }
        fn finish(&self) -> u64 {
            self.0
        }
    }
    let mut capture = Capture::default();
    value.hash(&mut capture);
    capture.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_there_is_none() {
        assert_eq!(
            Runtimes::default().usable().unwrap_err(),
            Unusable::NoRuntime
        );
    }

    #[test]
    fn a_runtime_with_timers_is_usable_and_remembered() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let runtimes = Runtimes::default();
        let _entered = runtime.enter();
        assert!(runtimes.usable().is_ok());
        assert_eq!(
            runtimes.with_timers.load(Ordering::Relaxed),
            number_of(&runtime.handle().id()).max(1)
        );
        assert!(runtimes.usable().is_ok());
    }

    #[test]
    fn sequential_numbers_stay_sequential() {
        assert_eq!(number_of(&std::num::NonZero::new(41u64).unwrap()), 41);
        assert_eq!(number_of(&42u64), 42);
    }
}
