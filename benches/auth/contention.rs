//! `contention/*` and the `contention_ratios` report: N tasks on a multi-thread runtime
//! hammering the warm path through the layer, against the token holders people hand-roll (a
//! `std::sync::Mutex<Option<Token>>` and a `tokio::sync::RwLock<Option<Token>>`).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service, ServiceExt};

use crate::common::warm::{inner, warm_authenticator};
use crate::common::{Body, DAY, median, request};

/// The token a hand-rolled holder keeps: the header value and when it expires.
#[derive(Clone)]
struct Token {
    header: HeaderValue,
    expires_at: Instant,
}

impl Token {
    /// The header while the token has not expired: what every holder must check per request.
    fn usable(&self) -> Option<HeaderValue> {
        (Instant::now() < self.expires_at).then(|| self.header.clone())
    }
}

/// The hand-rolled holder with a `std::sync::Mutex<Option<Token>>`.
#[derive(Clone)]
struct MutexAuth<S> {
    token: Arc<Mutex<Option<Token>>>,
    inner: S,
}

impl<S: Service<Request<Body>>> Service<Request<Body>> for MutexAuth<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let token = self.token.lock().unwrap().as_ref().and_then(Token::usable);
        request.headers_mut().insert(AUTHORIZATION, token.unwrap());
        self.inner.call(request)
    }
}

/// The hand-rolled holder with a `tokio::sync::RwLock<Option<Token>>`, read in an async block.
#[derive(Clone)]
struct RwLockAuth<S> {
    token: Arc<tokio::sync::RwLock<Option<Token>>>,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for RwLockAuth<S>
where
    S: Service<Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let token = Arc::clone(&self.token);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let value = token.read().await.as_ref().and_then(Token::usable);
            request.headers_mut().insert(AUTHORIZATION, value.unwrap());
            inner.call(request).await
        })
    }
}

/// Runs `iters` requests through clones of `service` spread over `tasks` tasks; the wall time.
fn hammer<S>(runtime: &tokio::runtime::Runtime, service: &S, tasks: u64, iters: u64) -> Duration
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    runtime.block_on(async {
        let per_task = iters.div_ceil(tasks);
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let mut service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let response = service
                            .ready()
                            .await
                            .unwrap()
                            .call(request())
                            .await
                            .unwrap();
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

/// The three token holders compared under contention, over the same inner service, and the
/// multi-thread runtime they run on (the layer's refresher lives there).
struct Holders<S> {
    runtime: tokio::runtime::Runtime,
    mutex: MutexAuth<S>,
    rwlock: RwLockAuth<S>,
    koppeltaal: koppeltaal_auth::KoppeltaalAuth<S>,
}

fn holders() -> Holders<
    impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Hand-rolled holders do not replay; compare like with like.
    let auth = warm_authenticator(&runtime, false);
    let token = Token {
        header: runtime.block_on(auth.token()).unwrap().into_value(),
        expires_at: Instant::now() + DAY,
    };
    let mutex = MutexAuth {
        token: Arc::new(Mutex::new(Some(token.clone()))),
        inner: inner(),
    };
    let rwlock = RwLockAuth {
        token: Arc::new(tokio::sync::RwLock::new(Some(token))),
        inner: inner(),
    };
    let koppeltaal = auth.layer().layer(inner());
    Holders {
        runtime,
        mutex,
        rwlock,
        koppeltaal,
    }
}

pub(crate) fn contention(c: &mut Criterion) {
    let Holders {
        runtime,
        mutex,
        rwlock,
        koppeltaal,
    } = holders();
    let mut group = c.benchmark_group("contention");
    for tasks in [1u64, 2, 8, 64] {
        group.bench_with_input(BenchmarkId::new("mutex", tasks), &tasks, |b, &n| {
            b.iter_custom(|iters| hammer(&runtime, &mutex, n, iters));
        });
        group.bench_with_input(BenchmarkId::new("rwlock", tasks), &tasks, |b, &n| {
            b.iter_custom(|iters| hammer(&runtime, &rwlock, n, iters));
        });
        group.bench_with_input(
            BenchmarkId::new("koppeltaal_auth", tasks),
            &tasks,
            |b, &n| {
                b.iter_custom(|iters| hammer(&runtime, &koppeltaal, n, iters));
            },
        );
    }
    group.finish();
}

/// Contention measured interleaved: for each task count, rounds of the three holders in turn
/// (rotating the order); median nanoseconds per request and median per-round ratios.
pub(crate) fn contention_ratios() {
    let Holders {
        runtime,
        mutex,
        rwlock,
        koppeltaal: ours,
    } = holders();
    let (iters, rounds) = (40_000, 31);
    println!(
        "\ncontention, interleaved ({rounds} rounds of {iters} requests; medians of ns per \
         request, and of the ratios within each round, which the machine's drift over the rounds \
         does not move)"
    );
    println!(
        "{:>6} {:>9} {:>9} {:>16} {:>9} {:>11} {:>10}",
        "tasks", "mutex", "rwlock", "koppeltaal_auth", "vs mutex", "rounds won", "vs rwlock"
    );
    for tasks in [1u64, 2, 8, 64] {
        let per = |d: Duration| d.as_nanos() as f64 / iters as f64;
        let mut ns = vec![[0.0; 3]; rounds];
        for (round, ns) in ns.iter_mut().enumerate() {
            // Rotate the order, so that no holder always runs right after the same other one.
            for side in (0..3).map(|k| (round + k) % 3) {
                ns[side] = per(match side {
                    0 => hammer(&runtime, &mutex, tasks, iters),
                    1 => hammer(&runtime, &rwlock, tasks, iters),
                    _ => hammer(&runtime, &ours, tasks, iters),
                });
            }
        }
        let won = ns.iter().filter(|[m, _, k]| k < m).count();
        println!(
            "{tasks:>6} {:>9.1} {:>9.1} {:>16.1} {:>9.3} {:>11} {:>10.3}",
            median(ns.iter().map(|ns| ns[0]).collect()),
            median(ns.iter().map(|ns| ns[1]).collect()),
            median(ns.iter().map(|ns| ns[2]).collect()),
            median(ns.iter().map(|[m, _, k]| k / m).collect()),
            format!("{won}/{rounds}"),
            median(ns.iter().map(|[_, r, k]| k / r).collect()),
        );
    }
}
