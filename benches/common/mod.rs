//! What both bench binaries share: the request every bench sends, and the end-to-end report.
//! `benches/auth.rs` runs it with the system allocator, `benches/e2e_mimalloc.rs` with mimalloc
//! (`benches/README.md` explains why both).

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, USER_AGENT};
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{Authenticator, KoppeltaalAuth};
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceExt};

pub(crate) mod evicted;
pub(crate) mod floor;
pub(crate) mod oneshot;
pub(crate) mod warm;

pub(crate) type Body = Full<Bytes>;

/// The FHIR base of the in-process benches.
pub(crate) const BASE: &str = "https://fhir.example.org/fhir/DEFAULT";

pub(crate) const DAY: Duration = Duration::from_secs(86_400);

/// A FHIR read as a client sends it.
pub(crate) fn request() -> Request<Body> {
    Request::get("https://fhir.example.org/fhir/DEFAULT/Patient/123?_format=json")
        .header(ACCEPT, "application/fhir+json")
        .header(ACCEPT_ENCODING, "gzip")
        .header(USER_AGENT, "koppeltaal-client/1.0")
        .header("x-request-id", "7d9f1c2e-5b1a-4c39-9f47-0c6b1e2d3a4f")
        .header("x-correlation-id", "b2c4e6f8-1a3b-4c5d-8e9f-0a1b2c3d4e5f")
        .body(Body::default())
        .unwrap()
}

/// The same read, for `url` (the loopback server's).
pub(crate) fn request_to(url: &http::Uri) -> Request<Body> {
    let mut request = request();
    *request.uri_mut() = url.clone();
    request
}

/// The median of `values` (the upper one of an even count).
pub(crate) fn median<T: PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values.swap_remove(values.len() / 2)
}

/// An axum server on loopback that answers every request with a small FHIR resource, and a
/// warm authenticator for its base URL (replay on, the default).
pub(crate) async fn loopback_fhir_server() -> (String, Authenticator) {
    let app = axum::Router::new().fallback(|| async { "{\"resourceType\":\"Patient\"}" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let base = format!("http://{addr}/fhir");
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(&base)
        .token_source(FakeTokenSource::new().with_lifetime(DAY))
        .build()
        .unwrap();
    auth.ready().await.unwrap();
    (base, auth)
}

/// Whether the report `name` should run: not when criterion only lists or tests the benches
/// (`--list`, `--test`), nor when a filter was given that `name` does not contain
/// (`cargo bench -- warm_path` runs only the criterion benches of that name).
pub(crate) fn report_wanted(name: &str) -> bool {
    if std::env::args().any(|arg| arg == "--list" || arg == "--test") {
        return false;
    }
    positional_filter().is_none_or(|filter| name.contains(filter.as_str()))
}

/// Criterion's positional filter argument, if any (option values are skipped).
fn positional_filter() -> Option<String> {
    const WITH_VALUE: [&str; 14] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--profile-time",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

/// End-to-end throughput measured interleaved, over loopback HTTP, with and without the layer.
/// `allocator` names the global allocator of the running binary, for the printout.
pub(crate) fn e2e_ratio(allocator: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (base, auth) = runtime.block_on(loopback_fhir_server());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let layered = auth.layer().layer(client.clone());
    let url: http::Uri = format!("{base}/Patient/123").parse().unwrap();
    // Alternate request by request, so that both sides see the same machine state; compare
    // trimmed mean latencies (the slowest 1% of each side dropped), i.e. throughput.
    let pairs = 20_000;
    let (mut plain, mut ours) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
    runtime.block_on(async {
        for pair in 0..pairs {
            // Swap which goes first every pair: the second request of a pair finds the pooled
            // connection in a different state than the first.
            for side in [pair % 2, 1 - pair % 2] {
                let start = Instant::now();
                if side == 0 {
                    let response = client.clone().oneshot(request_to(&url)).await.unwrap();
                    black_box(response.into_body().collect().await.unwrap());
                    plain.push(start.elapsed());
                } else {
                    let response = layered.clone().oneshot(request_to(&url)).await.unwrap();
                    black_box(response.into_body().collect().await.unwrap());
                    ours.push(start.elapsed());
                }
            }
        }
    });
    let trimmed_mean = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        let kept = &v[..v.len() * 99 / 100];
        kept.iter().sum::<Duration>().as_secs_f64() / kept.len() as f64
    };
    let (plain, ours) = (trimmed_mean(&mut plain), trimmed_mean(&mut ours));
    println!(
        "\ne2e ({allocator}), one request at a time, alternating ({pairs} request pairs, trimmed \
         means): no layer {:.0} req/s, koppeltaal_auth {:.0} req/s, ratio {:.3}",
        1.0 / plain,
        1.0 / ours,
        plain / ours
    );
    // Throughput: both cores busy with 32 concurrent request streams (the pool opens as many
    // connections), rounds rotating between the sides; medians. More sides show where the cost
    // comes from: the client setting a sixth header itself and tower-http's static
    // `AddAuthorization` (what one more header costs, whoever adds it: the floor for a layer),
    // the layer with replay off (no copy of the request and the service for a replay), and
    // `AddAuthorization` keeping the copy tower's `Retry` keeps (the floor for replay on).
    let floor =
        tower_http::auth::AddAuthorizationLayer::bearer("fake-token-1").layer(client.clone());
    let floor_replayable = CloneForRetry(floor.clone());
    let no_replay = auth.layer().replay_on_401(false).layer(client.clone());
    let (tasks, per_task, rounds) = (32, 150, 31);
    const SIDES: [&str; 6] = [
        "no layer",
        "no layer, a sixth header",
        "add_authorization",
        "koppeltaal_auth, replay off",
        "add_authorization + retry copy",
        "koppeltaal_auth",
    ];
    let mut rps: [Vec<f64>; SIDES.len()] = Default::default();
    let mut cpu = [Duration::ZERO; SIDES.len()];
    runtime.block_on(async {
        // Warm the pool to its working size first.
        e2e_load(&client, &url, false, tasks, 20).await;
        for round in 0..rounds {
            for k in 0..SIDES.len() {
                let side = (round + k) % SIDES.len();
                let before = process_cpu_time();
                rps[side].push(match side {
                    0 => e2e_load(&client, &url, false, tasks, per_task).await,
                    1 => e2e_load(&client, &url, true, tasks, per_task).await,
                    2 => e2e_load(&floor, &url, false, tasks, per_task).await,
                    3 => e2e_load(&no_replay, &url, false, tasks, per_task).await,
                    4 => e2e_load(&floor_replayable, &url, false, tasks, per_task).await,
                    _ => e2e_load(&layered, &url, false, tasks, per_task).await,
                });
                if let (Some(before), Some(after)) = (before, process_cpu_time()) {
                    cpu[side] += after.saturating_sub(before);
                }
            }
        }
    });
    // Ratios within each round (the sides of one round see the same machine state), then
    // their medians: the machine's drift over the rounds moves both sides of a ratio alike.
    let ratio = |side: usize, to: usize| {
        median(rps[side].iter().zip(&rps[to]).map(|(a, b)| a / b).collect())
    };
    let requests = (tasks * per_task * rounds) as f64;
    println!(
        "e2e throughput ({allocator}), {tasks} concurrent streams ({rounds} rounds of {} \
         requests per side; median req/s, CPU of client and server per request, and medians of \
         the per-round ratios to no layer, to add_authorization and to add_authorization + retry \
         copy; targets: koppeltaal_auth replay off >= 1.00 of add_authorization, replay on >= \
         1.00 of add_authorization + retry copy):",
        tasks * per_task
    );
    for (side, name) in SIDES.iter().enumerate() {
        println!(
            "  {name:<31} {:>7.0} req/s  {:>5.1} us CPU  {:.3}  {:.3}  {:.3}",
            median(rps[side].clone()),
            cpu[side].as_secs_f64() * 1e6 / requests,
            ratio(side, 0),
            ratio(side, 2),
            ratio(side, 4)
        );
    }
}

/// End-to-end throughput under load: `tasks` tasks each send `per_task` sequential requests
/// through clones of `service` at once; requests per second. With `sixth_header` the client sets
/// one more header itself.
async fn e2e_load<S>(
    service: &S,
    url: &http::Uri,
    sixth_header: bool,
    tasks: usize,
    per_task: usize,
) -> f64
where
    S: Service<Request<Body>, Response = Response<hyper::body::Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let make = if sixth_header {
        |url: &http::Uri| {
            let mut request = request_to(url);
            request.headers_mut().insert(
                HeaderName::from_static("x-client-version"),
                HeaderValue::from_static("1.0.0"),
            );
            request
        }
    } else {
        request_to
    };
    e2e_load_with(service, url, tasks, per_task, make).await
}

/// As `e2e_load`, with the requests `make` builds.
pub(crate) async fn e2e_load_with<S>(
    service: &S,
    url: &http::Uri,
    tasks: usize,
    per_task: usize,
    make: fn(&http::Uri) -> Request<Body>,
) -> f64
where
    S: Service<Request<Body>, Response = Response<hyper::body::Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let service = service.clone();
            let url = url.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let response = service.clone().oneshot(make(&url)).await.unwrap();
                    black_box(response.into_body().collect().await.unwrap());
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    (tasks * per_task) as f64 / start.elapsed().as_secs_f64()
}

/// CPU time of all of this process's threads so far (user and kernel), from Linux's
/// `/proc/self/task/*/schedstat`; `None` elsewhere. Threads that ended are not counted, which
/// is fine for a runtime whose workers live for the whole measurement.
fn process_cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

pin_project! {
    /// Keeps a copy of the request and of the service until the response is in, as tower's
    /// `Retry` does with `Policy::clone_request`.
    pub(crate) struct KeepCopy<F, S> {
        #[pin]
        future: F,
        copy: Option<(Request<Body>, S)>,
    }
}

impl<F: Future, S> Future for KeepCopy<F, S> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.future.poll(cx));
        black_box(this.copy.take());
        Poll::Ready(output)
    }
}

/// Keeps what a retry policy needs (a copy of the request and a clone of the service) until the
/// response is in: the floor for a layer that replays.
#[derive(Clone)]
pub(crate) struct CloneForRetry<S>(pub(crate) S);

fn clone_request(request: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}

impl<S: Service<Request<Body>> + Clone> Service<Request<Body>> for CloneForRetry<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = KeepCopy<S::Future, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let copy = Some((clone_request(&request), self.0.clone()));
        KeepCopy {
            future: self.0.call(request),
            copy,
        }
    }
}
