//! The `oneshot_ratios` report: the layer as hyper-util's client is mostly used, a clone of the
//! service per request (`service.clone().oneshot(request)`), from many tasks on a multi-thread
//! runtime, against tower-http's static `AddAuthorization` over the same in-process inner
//! service. This is the in-process half of the 32-stream end-to-end target: what a service clone
//! and a call cost when every core sends requests, without loopback HTTP's noise around it.
// Not every bench binary uses every helper.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

use super::warm::{inner, warm_authenticator};
use super::{Body, CloneForRetry, median, request};

/// `tasks` tasks each send `per_task` requests through a fresh clone of `service`; the wall time.
fn clone_per_request<S>(
    runtime: &tokio::runtime::Runtime,
    service: &S,
    tasks: usize,
    per_task: usize,
) -> Duration
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    runtime.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let response = service.clone().oneshot(request()).await.unwrap();
                        black_box(response);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        start.elapsed()
    })
}

/// Prints, for 2 and 32 tasks, the median nanoseconds per request of the layer (replay off and
/// on) and of its floors, and the medians of the per-round ratios (rounds rotate the order).
pub(crate) fn oneshot_ratios() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let floor = tower_http::auth::AddAuthorizationLayer::bearer("fake-token-1").layer(inner());
    let floor_replayable = CloneForRetry(floor.clone());
    let no_replay = warm_authenticator(&runtime, false).layer().layer(inner());
    let replay = warm_authenticator(&runtime, true).layer().layer(inner());
    let (requests, rounds) = (64_000, 31);
    println!(
        "\noneshot, a clone of the service per request, interleaved ({rounds} rounds of \
         {requests} requests per side; medians of ns per request, and of the ratios within each \
         round)"
    );
    println!(
        "{:>6} {:>10} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "tasks", "add_auth", "ours, off", "add+copy", "ours", "off/add", "on/copy"
    );
    for tasks in [2usize, 32] {
        let per_task = requests / tasks;
        let per = |d: Duration| d.as_nanos() as f64 / (per_task * tasks) as f64;
        let mut ns = vec![[0.0; 4]; rounds];
        for (round, ns) in ns.iter_mut().enumerate() {
            for side in (0..4).map(|k| (round + k) % 4) {
                ns[side] = per(match side {
                    0 => clone_per_request(&runtime, &floor, tasks, per_task),
                    1 => clone_per_request(&runtime, &no_replay, tasks, per_task),
                    2 => clone_per_request(&runtime, &floor_replayable, tasks, per_task),
                    _ => clone_per_request(&runtime, &replay, tasks, per_task),
                });
            }
        }
        let column = |side: usize| median(ns.iter().map(|ns| ns[side]).collect());
        println!(
            "{tasks:>6} {:>10.1} {:>12.1} {:>12.1} {:>12.1} {:>9.3} {:>9.3}",
            column(0),
            column(1),
            column(2),
            column(3),
            median(ns.iter().map(|ns| ns[1] / ns[0]).collect()),
            median(ns.iter().map(|ns| ns[3] / ns[2]).collect()),
        );
    }
}
