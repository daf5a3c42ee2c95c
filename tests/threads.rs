//! The token as every thread hands it out. Callers without a copy of their own (`current()`, a
//! service cloned per request) hand out their thread's copy of the token: each copy must be the
//! current token, follow every renewal, and lead a `401` back to the one cell.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{KoppeltaalAuthLayer, RefreshPolicy, TokenCell};
use support::layer::authorization_recorder;
use tower::{Layer, ServiceExt};

const BASE: &str = "https://fhir.example.org/fhir";
const THREADS: usize = 8;

type Body = Full<Bytes>;

/// A cell with day-long tokens and no background refresher (renewals happen when the test says).
fn cell() -> (FakeTokenSource, TokenCell) {
    let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(86_400));
    let policy = RefreshPolicy::default().background_refresh(false);
    (source.clone(), TokenCell::new(source, policy))
}

/// Runs `work` on `THREADS` threads at once (each on a current-thread runtime of its own), and
/// returns what each returned.
fn on_threads<T: Send + 'static>(work: impl Fn() -> T + Send + Sync + 'static) -> Vec<T> {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (work, start) = (Arc::clone(&work), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                work()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The `Authorization` value and generation `current()` hands out on this thread, three times.
fn current_thrice(cell: &TokenCell) -> Vec<(String, u64)> {
    (0..3)
        .map(|_| {
            let token = cell.current().expect("a usable token");
            (
                token.value().to_str().unwrap().to_owned(),
                token.generation(),
            )
        })
        .collect()
}

#[test]
fn every_thread_hands_out_the_current_token_and_follows_a_renewal() {
    let (source, cell) = cell();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let first = runtime.block_on(cell.token()).unwrap();
    let first_value = first.value().to_str().unwrap().to_owned();
    let seen = on_threads({
        let cell = cell.clone();
        move || current_thrice(&cell)
    });
    for calls in &seen {
        assert_eq!(calls, &vec![(first_value.clone(), 1); 3]);
    }
    // A renewal: every thread hands out the new token, none the old one.
    let second = runtime.block_on(cell.renewed(1)).unwrap();
    let second_value = second.value().to_str().unwrap().to_owned();
    assert_ne!(second_value, first_value);
    let seen = on_threads(move || current_thrice(&cell));
    for calls in &seen {
        assert_eq!(calls, &vec![(second_value.clone(), 2); 3]);
    }
    assert_eq!(source.fetches_completed(), 2);
}

#[test]
fn one_call_clones_on_every_thread_renew_once_after_a_401() {
    let (source, cell) = cell();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let first = runtime.block_on(cell.token()).unwrap();
    let first_value: &'static str = first.value().to_str().unwrap().to_owned().leak();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = KoppeltaalAuthLayer::new(cell.clone(), BASE).unwrap();
    let service = layer.layer(authorization_recorder(
        Arc::clone(&seen),
        move |values, _| {
            if values.first().is_some_and(|value| value == first_value) {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            }
        },
    ));
    // Every thread sends through a fresh clone (its first call: the thread's copy of the token).
    // The server rejects the first token: each request is renewed and replayed.
    let statuses = on_threads(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let request = Request::get(format!("{BASE}/Patient/1"))
            .body(Body::default())
            .unwrap();
        runtime
            .block_on(service.clone().oneshot(request))
            .unwrap()
            .status()
    });
    assert_eq!(statuses, vec![StatusCode::OK; THREADS]);
    assert_eq!(source.fetches_completed(), 2, "one renewal for all threads");
    assert_eq!(cell.current().unwrap().generation(), 2);
    let seen = seen.lock().unwrap();
    let renewed = seen
        .iter()
        .filter(|values| values.first().is_none_or(|value| value != first_value))
        .count();
    assert_eq!(renewed, THREADS, "each request replayed once: {seen:?}");
    assert!(seen.len() <= 2 * THREADS);
}
