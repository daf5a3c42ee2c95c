//! Runtimes, a watchdog and a CPU clock for the lifecycle tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

/// A current-thread runtime on the real clock.
pub fn real_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A current-thread runtime whose clock starts paused (at the real time).
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Runs `f` on a thread of its own and returns its result, or fails the test if it has not
/// returned after `limit` (a wedge would otherwise hang the test binary).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("did not return within {limit:?}: wedged")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the test thread panicked"),
    }
}

/// CPU time (user and system) the calling thread has used so far, from
/// `/proc/thread-self/stat` (Linux; zero elsewhere, which makes CPU assertions pass vacuously).
pub fn cpu_time_of_this_thread() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return Duration::ZERO;
    };
    // The fields after the command name (in parentheses, and it may hold spaces) start with the
    // 3rd field of the line, the state.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; clock ticks
    // are 100 per second on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
