//! What the trace headers cost per request: `KoppeltaalAuthLayer` alone against the auth layer
//! with `KoppeltaalTraceLayer` inside it (a new request id, and the trace and correlation ids of
//! a scope), on the same in-process warm path as `benches/auth.rs`. `benches/README.md` has the
//! numbers.
//!
//! - `trace/{auth_only,auth_and_trace,auth_and_trace_no_context}`: criterion, one request each;
//! - `trace_ratio`: the same two interleaved round by round, as ratios;
//! - `trace_e2e`: the two over loopback HTTP with hyper-util's client, one request at a time
//!   (alternating) and with 32 concurrent streams (rounds alternating).
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

/// `untraced` for `url`.
fn untraced_to(url: &http::Uri) -> Request<Body> {
    let mut request = untraced();
    *request.uri_mut() = url.clone();
    request
}

/// `untraced_to` carrying the bench's context as a request extension (for streams on spawned
/// tasks, which have no scope).
fn untraced_with_context_to(url: &http::Uri) -> Request<Body> {
    static CONTEXT: std::sync::OnceLock<TraceContext> = std::sync::OnceLock::new();
    let mut request = untraced_to(url);
    request
        .extensions_mut()
        .insert(CONTEXT.get_or_init(context).clone());
    request
}

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

/// `untraced_to` with the three trace headers set by the client itself: what three more
/// headers cost, whoever adds them.
fn pretraced_to(url: &http::Uri) -> Request<Body> {
    let mut request = untraced_to(url);
    let headers = request.headers_mut();
    headers.insert(
        X_REQUEST_ID,
        http::HeaderValue::from_static("7d9f1c2e-5b1a-4c39-9f47-0c6b1e2d3a4f"),
    );
    headers.insert(
        koppeltaal_auth::trace::X_TRACE_ID,
        http::HeaderValue::from_static("4d9a6f5e-2b7c-4a0d-9f4e-8c5b9d2a3f64"),
    );
    headers.insert(
        X_CORRELATION_ID,
        http::HeaderValue::from_static("58aafb4e-0283-4c12-b95f-16be142b1e11"),
    );
    request
}

/// The auth layer alone, alone with three client-set headers, and with the trace layer (the
/// context in a request extension), end to end over loopback.
fn trace_e2e() {
    use http_body_util::BodyExt;
    use std::hint::black_box;
    use std::time::{Duration, Instant};
    use tower::ServiceExt;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (base, auth) = runtime.block_on(common::loopback_fhir_server());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let alone = auth.layer().layer(client.clone());
    let traced = auth.layer().layer(auth.trace_layer().layer(client));
    let url: http::Uri = format!("{base}/Patient/123").parse().unwrap();
    type Make = fn(&http::Uri) -> Request<Body>;
    const SIDES: [&str; 3] = [
        "auth alone",
        "auth alone, client sets the 3 headers",
        "auth + trace (3 headers)",
    ];
    let side_make: [Make; 3] = [untraced_to, pretraced_to, untraced_with_context_to];
    let pairs = 6_000;
    let mut latencies: [Vec<Duration>; 3] = Default::default();
    runtime.block_on(async {
        for n in 0..pairs {
            for k in 0..3 {
                let side = (n + k) % 3;
                let request = side_make[side](&url);
                let start = Instant::now();
                let response = if side == 2 {
                    traced.clone().oneshot(request).await.unwrap()
                } else {
                    alone.clone().oneshot(request).await.unwrap()
                };
                black_box(response.into_body().collect().await.unwrap());
                latencies[side].push(start.elapsed());
            }
        }
    });
    let trimmed_mean = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        let kept = &v[..v.len() * 99 / 100];
        kept.iter().sum::<Duration>().as_secs_f64() / kept.len() as f64
    };
    let means = latencies.map(|mut v| trimmed_mean(&mut v));
    println!(
        "\ntrace e2e, one request at a time, rotating ({pairs} rounds, trimmed means; req/s, \
         ratio to auth alone, to auth alone with the 3 headers):"
    );
    for (side, name) in SIDES.iter().enumerate() {
        println!(
            "  {name:<38} {:>7.0} req/s  {:.3}  {:.3}",
            1.0 / means[side],
            means[0] / means[side],
            means[1] / means[side]
        );
    }
    let (tasks, per_task, rounds) = (32, 150, 21);
    let mut rps: [Vec<f64>; 3] = Default::default();
    runtime.block_on(async {
        common::e2e_load_with(&alone, &url, tasks, 20, untraced_to).await;
        for round in 0..rounds {
            for k in 0..3 {
                let side = (round + k) % 3;
                let make = side_make[side];
                rps[side].push(if side == 2 {
                    common::e2e_load_with(&traced, &url, tasks, per_task, make).await
                } else {
                    common::e2e_load_with(&alone, &url, tasks, per_task, make).await
                });
            }
        }
    });
    let rps = rps.map(common::median);
    println!(
        "trace e2e, {tasks} concurrent streams ({rounds} rounds, medians; req/s, ratio to auth \
         alone, to auth alone with the 3 headers):"
    );
    for (side, name) in SIDES.iter().enumerate() {
        println!(
            "  {name:<38} {:>7.0} req/s  {:.3}  {:.3}",
            rps[side],
            rps[side] / rps[0],
            rps[side] / rps[1]
        );
    }
}

criterion_group!(benches, trace);

fn main() {
    benches();
    if common::report_wanted("trace_ratio") {
        trace_ratio();
    }
    if common::report_wanted("trace_e2e") {
        trace_e2e();
    }
    Criterion::default().configure_from_args().final_summary();
}
