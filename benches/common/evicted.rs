//! The `evicted_ratios` report: a clone of the service per request, as hyper-util's client is
//! used, with the caches evicted between requests, as the kernel's network path evicts them
//! between two requests of a loopback stream. With hot caches the layer costs tens of
//! nanoseconds more than tower-http's `AddAuthorization`; what it costs end to end is mostly the
//! cache lines it touches, each one a miss when the caches are cold. This report measures that
//! deterministically, in one thread, without loopback HTTP's noise: the time of the clone, the
//! call and the drops alone, the eviction between requests not counted.
// Not every bench binary uses every helper.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use http::{Request, Response};
use tower::{Layer, Service};

use super::warm::{call_now, inner, warm_authenticator};
use super::{Body, median, request};

/// Bytes written between two requests: more than the L2 cache of the machines this runs on
/// (1 MiB per core on the CI's), less than their shared L3, as the kernel's network path is.
const EVICT: usize = 4 << 20;

/// Writes one byte per cache line of `buffer`.
fn evict(buffer: &mut [u8]) {
    for line in buffer.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    black_box(buffer);
}

/// Time of `requests` requests, each through a fresh clone of `service` after an eviction.
fn evicted<S>(service: &S, buffer: &mut [u8], requests: usize) -> Duration
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    for _ in 0..requests {
        let request = request();
        evict(buffer);
        let start = Instant::now();
        let mut clone = service.clone();
        let response = call_now(&mut clone, request);
        drop(clone);
        drop(black_box(response));
        total += start.elapsed();
    }
    total
}

/// Prints the median ns per request of `AddAuthorization`, of the layer with replay off, and of
/// the inner service alone, with the caches evicted before every request, and the median of the
/// per-round differences to `AddAuthorization`.
pub(crate) fn evicted_ratios() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bare = inner();
    let floor = tower_http::auth::AddAuthorizationLayer::bearer("fake-token-1").layer(inner());
    let ours = warm_authenticator(&runtime, false).layer().layer(inner());
    let mut buffer = vec![0u8; EVICT];
    let (requests, rounds) = (2_000, 31);
    let mut rows = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut ns = [0.0; 3];
        for side in (0..3).map(|k| (round + k) % 3) {
            let time = match side {
                0 => evicted(&bare, &mut buffer, requests),
                1 => evicted(&floor, &mut buffer, requests),
                _ => evicted(&ours, &mut buffer, requests),
            };
            ns[side] = time.as_nanos() as f64 / requests as f64;
        }
        rows.push(ns);
    }
    let column = |k: usize| median(rows.iter().map(|ns| ns[k]).collect());
    let over_floor = median(rows.iter().map(|ns| ns[2] - ns[1]).collect());
    println!(
        "\nevicted, a clone of the service per request, {} MiB written between requests \
         ({rounds} rounds of {requests} requests per side; medians of ns per request)\n  \
         inner alone {:7.1} ns, add_authorization {:7.1} ns, koppeltaal_auth replay off {:7.1} \
         ns: {over_floor:+.1} ns per request over add_authorization",
        EVICT >> 20,
        column(0),
        column(1),
        column(2),
    );
}
