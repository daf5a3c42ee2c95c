//! The warm-path harness both `benches/auth.rs` and `benches/trace.rs` use: an answering
//! service, a call driven without an executor, a warm authenticator, and interleaved ratios.
// Not every bench binary uses every helper.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use http::{Request, Response};
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{Authenticator, KoppeltaalAuth};
use tower::Service;

use super::{BASE, Body, DAY, median};

/// The innermost service: answers at once.
pub(crate) fn inner()
-> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|request: Request<Body>| {
        black_box(&request);
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::default())))
    })
}

/// Drives a service call that completes without waiting, with no executor in the measurement.
/// Never inlined, so that profiles (callgrind) show the cost of one call as one function.
#[inline(never)]
pub(crate) fn call_now<S: Service<Request<Body>>>(
    service: &mut S,
    request: Request<Body>,
) -> S::Response
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut future = pin!(service.call(request));
    loop {
        if let Poll::Ready(response) = future.as_mut().poll(&mut cx) {
            return response.unwrap();
        }
    }
}

/// An authenticator with a warm 24 h token from a fake source, its background task on `runtime`.
pub(crate) fn warm_authenticator(runtime: &tokio::runtime::Runtime, replay: bool) -> Authenticator {
    runtime.block_on(async {
        let auth = KoppeltaalAuth::builder()
            .fhir_base_url(BASE)
            .token_source(FakeTokenSource::new().with_lifetime(DAY))
            .replay_on_401(replay)
            .build()
            .unwrap();
        auth.ready().await.unwrap();
        auth
    })
}

/// Median nanoseconds per call of two services over `rounds` rounds of `batch` calls each (of
/// requests from `make`), and
/// the median of the per-round ratios (a / b), interleaved round by round (alternating which
/// goes first), so that both see the same machine state (this machine's load drifts from one
/// criterion benchmark to the next more than the differences measured). As in criterion's
/// `iter_batched`, requests are built and responses dropped outside the timing.
pub(crate) fn interleaved<A, B>(
    a: &mut A,
    b: &mut B,
    batch: usize,
    rounds: usize,
    make: fn() -> Request<Body>,
) -> (f64, f64, f64)
where
    A: Service<Request<Body>>,
    A::Error: std::fmt::Debug,
    B: Service<Request<Body>>,
    B::Error: std::fmt::Debug,
{
    fn round<S>(service: &mut S, batch: usize, make: fn() -> Request<Body>) -> f64
    where
        S: Service<Request<Body>>,
        S::Error: std::fmt::Debug,
    {
        let requests: Vec<_> = (0..batch).map(|_| make()).collect();
        let mut responses = Vec::with_capacity(batch);
        let start = Instant::now();
        for request in requests {
            responses.push(call_now(service, request));
        }
        let elapsed = start.elapsed();
        drop(responses);
        elapsed.as_nanos() as f64 / batch as f64
    }
    let (mut xs, mut ys, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..rounds {
        // Alternate which side goes first.
        let (x, y) = if n % 2 == 0 {
            let x = round(a, batch, make);
            (x, round(b, batch, make))
        } else {
            let y = round(b, batch, make);
            (round(a, batch, make), y)
        };
        xs.push(x);
        ys.push(y);
        ratios.push(x / y);
    }
    (median(xs), median(ys), median(ratios))
}
