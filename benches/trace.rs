//! What the trace headers cost per request: `KoppeltaalAuthLayer` alone against the auth layer
//! with `KoppeltaalTraceLayer` inside it (a new request id, and the trace and correlation ids of
//! a scope), on the same in-process warm path as `benches/auth.rs`. `benches/README.md` has the
//! numbers.
//!
//! - `trace/{auth_only,auth_and_trace,auth_and_trace_no_context}`: criterion, one request each;
//! - `trace_ratio`: the same two interleaved round by round, as ratios.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use criterion::{BatchSize, Criterion, criterion_group};
use http::Request;
use koppeltaal_auth::trace::{FhirId, TraceContext, X_CORRELATION_ID, X_REQUEST_ID};
use tower::Layer;

// The end-to-end helpers of `common` are for the other bench binaries.
#[allow(dead_code)]
mod common;
use common::Body;
use common::warm::{call_now, inner, interleaved, warm_authenticator};

/// The benches' FHIR read without the trace headers the client set itself, so that the layer
/// adds all three.
fn untraced() -> Request<Body> {
    let mut request = common::request();
    request.headers_mut().remove(X_REQUEST_ID);
    request.headers_mut().remove(X_CORRELATION_ID);
    request
}

fn context() -> TraceContext {
    TraceContext::new()
        .with_trace_id(FhirId::new("4d9a6f5e-2b7c-4a0d-9f4e-8c5b9d2a3f64").unwrap())
        .with_correlation_id(FhirId::new("58aafb4e-0283-4c12-b95f-16be142b1e11").unwrap())
}

fn trace(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let auth = warm_authenticator(&runtime, true);
    let mut group = c.benchmark_group("trace");
    macro_rules! bench {
        ($name:literal, $service:expr, $context:expr) => {{
            let mut service = $service;
            call_now(&mut service, untraced());
            let run = |b: &mut criterion::Bencher<'_>| {
                b.iter_batched(
                    untraced,
                    |r| call_now(&mut service, r),
                    BatchSize::SmallInput,
                )
            };
            match $context {
                Some(context) => TraceContext::sync_scope(context, || {
                    group.bench_function($name, run);
                }),
                None => {
                    group.bench_function($name, run);
                }
            }
        }};
    }
    bench!("auth_only", auth.layer().layer(inner()), Some(context()));
    bench!(
        "auth_and_trace",
        auth.layer().layer(auth.trace_layer().layer(inner())),
        Some(context())
    );
    bench!(
        "auth_and_trace_no_context",
        auth.layer().layer(auth.trace_layer().layer(inner())),
        None::<TraceContext>
    );
    group.finish();

    // The parts, to see where the time goes.
    let mut group = c.benchmark_group("trace_parts");
    group.bench_function("new_request_id", |b| b.iter(FhirId::new_uuid));
    group.bench_function("current_context", |b| {
        context().sync_scope(|| b.iter(TraceContext::current))
    });
    group.finish();
}

/// The two stacks interleaved round by round (see `common::warm::interleaved`).
fn trace_ratio() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let auth = warm_authenticator(&runtime, true);
    let (batch, rounds) = (10_000, 41);
    println!(
        "\ntrace ratio, interleaved ({rounds} rounds of {batch} calls; medians of ns per call, and \
         of the ratios within each round)"
    );
    let mut alone = auth.layer().layer(inner());
    let mut traced = auth.layer().layer(auth.trace_layer().layer(inner()));
    for (what, context) in [
        ("scope with trace and correlation ids", Some(context())),
        ("no context", None),
    ] {
        let mut measure = || interleaved(&mut traced, &mut alone, batch, rounds, untraced);
        let (ns_traced, ns_alone, ratio) = match context {
            Some(context) => context.sync_scope(measure),
            None => measure(),
        };
        println!(
            "  auth+trace {ns_traced:7.1} ns / auth alone {ns_alone:7.1} ns: {ratio:.3}, +{:.1} ns ({what})",
            ns_traced - ns_alone
        );
    }
}

criterion_group!(benches, trace);

fn main() {
    benches();
    if common::report_wanted("trace_ratio") {
        trace_ratio();
    }
    Criterion::default().configure_from_args().final_summary();
}
