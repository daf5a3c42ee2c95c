//! The runtime a cell may fetch on: the current tokio runtime, if it has timers.
//!
//! Every fetch is bounded in time (the attempt timeout, the wait timeout, the backoff), and tokio
//! panics when a timer is made on a runtime built without them (`Builder::enable_time`). A cell
//! therefore fetches, waits and runs its background refresher only on a runtime with timers; on
//! one without, it hands out the token it holds and a caller that needs a new one gets
//! [`ErrorKind::NoRuntime`](crate::ErrorKind::NoRuntime), as outside any runtime.
//!
//! tokio has no way to ask whether a runtime has timers, so the cell makes one inside
//! `catch_unwind` (and polls it once, which also finds a runtime that is shutting down), on the
//! slow paths only: before a wait, a refresh or starting the background refresher. A runtime
//! found without them is remembered by its id (the last 16, per cell), so that it is probed once
//! per cell: tokio's panic message is then printed once per cell and runtime by the panic hook (a hook that reports panics, or
//! `panic = "abort"`, sees it as a panic: build runtimes with `enable_time()`), and the cell
//! reports it with a `tracing` error. The panic goes no further.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Waker};

use tokio::runtime::{Handle, Id};

use crate::error::{Error, ErrorKind};

/// How many runtimes without timers a cell remembers (the oldest is forgotten first).
const REMEMBERED: usize = 16;

/// Why there is no runtime to fetch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unusable {
    /// No tokio runtime at all.
    NoRuntime,
    /// A tokio runtime built without timers, or shutting down.
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
                    "the tokio runtime has no timers (or is shutting down): a token can only be \
                     fetched on a running runtime built with `enable_time()` (or `enable_all()`)"
                }
            },
        )
    }
}

/// The runtimes a cell found without timers, most recent last.
#[derive(Debug, Default)]
pub(super) struct Runtimes {
    without_timers: Mutex<Vec<Id>>,
}

impl Runtimes {
    /// The current runtime, if a cell may fetch on it. For slow paths: it may take a lock and
    /// make a timer.
    pub(super) fn usable(&self) -> Result<Handle, Unusable> {
        let handle = Handle::try_current().map_err(|_| Unusable::NoRuntime)?;
        let id = handle.id();
        let mut without = self
            .without_timers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if without.contains(&id) {
            return Err(Unusable::NoTimers);
        }
        if has_timers() {
            return Ok(handle);
        }
        if without.len() >= REMEMBERED {
            without.remove(0);
        }
        without.push(id);
        drop(without);
        tracing::error!(
            "this tokio runtime has no timers (built without `enable_time()`) or is shutting \
             down: tokens are not fetched or refreshed on it (the panic message above is tokio's, \
             caught)"
        );
        Err(Unusable::NoTimers)
    }
}

/// Whether the current runtime has working timers: makes one and polls it once, catching
/// tokio's panic if it has none (or is shutting down, or there is no runtime).
#[cold]
pub(crate) fn has_timers() -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        let mut sleep = std::pin::pin!(tokio::time::sleep(std::time::Duration::ZERO));
        let _ = sleep.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    }))
    .is_ok()
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
    fn a_runtime_with_timers_is_usable() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let runtimes = Runtimes::default();
        let _entered = runtime.enter();
        for _ in 0..3 {
            assert_eq!(runtimes.usable().unwrap().id(), runtime.handle().id());
        }
        assert!(runtimes.without_timers.lock().unwrap().is_empty());
    }
}
