//! Heap allocations of one warm-path request, counted by a global allocator: the layer must add
//! none to tower-http's static `AddAuthorization` (replay off), and none to `AddAuthorization`
//! plus the request copy a retry policy keeps (replay on).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A global allocator cannot be written without `unsafe`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use koppeltaal_auth::testing::FakeTokenSource;
use koppeltaal_auth::{Authenticator, KoppeltaalAuth};
use tower::{Layer, Service};

type Body = Full<Bytes>;

/// Counts allocations made on the current thread while counting is on.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|count| count.set(count.get() + 1));
        }
        // SAFETY: forwarding the caller's contract to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarding the caller's contract to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|count| count.set(count.get() + 1));
        }
        // SAFETY: forwarding the caller's contract to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn request() -> Request<Body> {
    Request::get("https://fhir.example.org/fhir/DEFAULT/Patient/123?_format=json")
        .header("accept", "application/fhir+json")
        .header("user-agent", "koppeltaal-client/1.0")
        .header("x-request-id", "7d9f1c2e-5b1a-4c39-9f47-0c6b1e2d3a4f")
        .body(Full::new(Bytes::from_static(b"")))
        .unwrap()
}

fn inner()
-> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_request: Request<Body>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::default())))
    })
}

/// Allocations of one call (request built before counting, response dropped after).
fn allocations<S>(service: &mut S) -> usize
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let request = request();
    COUNT.with(|count| count.set(0));
    COUNTING.with(|counting| counting.set(true));
    counted_call(service, request)
}

/// Allocations of cloning `template` and making one call through the clone, as
/// `service.clone().oneshot(request)` does.
fn allocations_of_a_clone<S>(template: &S) -> usize
where
    S: Service<Request<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    let request = request();
    COUNT.with(|count| count.set(0));
    COUNTING.with(|counting| counting.set(true));
    let mut service = template.clone();
    let count = counted_call(&mut service, request);
    drop(service);
    count
}

/// Calls `service` while counting is on; stops counting and returns the count.
fn counted_call<S>(service: &mut S, request: Request<Body>) -> usize
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let response = {
        let mut future = pin!(service.call(request));
        loop {
            if let Poll::Ready(response) = future.as_mut().poll(&mut cx) {
                break response;
            }
        }
    };
    COUNTING.with(|counting| counting.set(false));
    drop(response.unwrap());
    COUNT.with(Cell::get)
}

/// The allocations of a call once warm: the first calls warm thread-local state (and the
/// layer's service makes its own copy of the token at its second call); every later call must
/// allocate the same.
fn steady_allocations<S>(mut service: S) -> usize
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..3 {
        allocations(&mut service);
    }
    let counts: Vec<_> = (0..5).map(|_| allocations(&mut service)).collect();
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "{counts:?}");
    counts[0]
}

/// As `steady_allocations`, for a fresh clone of `template` per call.
fn steady_clone_allocations<S>(template: &S) -> usize
where
    S: Service<Request<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    for _ in 0..3 {
        allocations_of_a_clone(template);
    }
    let counts: Vec<_> = (0..5).map(|_| allocations_of_a_clone(template)).collect();
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "{counts:?}");
    counts[0]
}

fn authenticator(replay: bool) -> (tokio::runtime::Runtime, Authenticator) {
    authenticator_for("https://fhir.example.org/fhir/DEFAULT", replay)
}

fn authenticator_for(base: &str, replay: bool) -> (tokio::runtime::Runtime, Authenticator) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = runtime.block_on(async {
        let auth = KoppeltaalAuth::builder()
            .fhir_base_url(base)
            .token_source(FakeTokenSource::new().with_lifetime(Duration::from_secs(86_400)))
            .replay_on_401(replay)
            .build()
            .unwrap();
        auth.ready().await.unwrap();
        auth
    });
    (runtime, auth)
}

/// tower's `Retry` keeps `Policy::clone_request`'s copy and a clone of the service.
#[derive(Clone)]
struct CloneForRetry<S>(S);

impl<S: Service<Request<Body>> + Clone> Service<Request<Body>> for CloneForRetry<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::future::Ready<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        let kept = (copy, self.0.clone());
        let mut future = pin!(self.0.call(request));
        let mut cx = Context::from_waker(Waker::noop());
        let output = loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                break output;
            }
        };
        drop(kept);
        std::future::ready(output)
    }
}

#[test]
fn replay_off_adds_no_allocation_to_add_authorization() {
    let (_runtime, auth) = authenticator(false);
    let floor = steady_allocations(
        tower_http::auth::AddAuthorizationLayer::bearer("fake-token-1").layer(inner()),
    );
    let ours = steady_allocations(auth.layer().layer(inner()));
    assert_eq!(
        ours, floor,
        "KoppeltaalAuthLayer (replay off) vs AddAuthorization"
    );
}

#[test]
fn replay_on_adds_no_allocation_to_a_retry_copy() {
    let (_runtime, auth) = authenticator(true);
    let floor = steady_allocations(CloneForRetry(
        tower_http::auth::AddAuthorizationLayer::bearer("fake-token-1").layer(inner()),
    ));
    let ours = steady_allocations(auth.layer().layer(inner()));
    let (_runtime, no_replay) = authenticator(false);
    let without_copy = steady_allocations(no_replay.layer().layer(inner()));
    println!(
        "allocations per request: replay on {ours}, replay off {without_copy}, \
         AddAuthorization + retry copy {floor}"
    );
    assert!(
        ours <= floor,
        "KoppeltaalAuthLayer (replay on) {ours} vs AddAuthorization + copy {floor}"
    );
    // The whole replay copy is one buffer for the headers (method, URI, body and service are
    // shared or copied by reference count).
    assert_eq!(ours, without_copy + 1, "the replay copy");
}

#[test]
fn a_clone_per_call_adds_no_allocation_to_add_authorization() {
    let (_runtime, auth) = authenticator(false);
    let floor = steady_clone_allocations(
        &tower_http::auth::AddAuthorizationLayer::bearer("fake-token-1").layer(inner()),
    );
    let ours = steady_clone_allocations(&auth.layer().layer(inner()));
    assert_eq!(
        ours, floor,
        "clone + call: KoppeltaalAuthLayer (replay off) vs AddAuthorization"
    );
}

#[test]
fn requests_outside_the_base_pass_through_without_allocating() {
    let (_runtime, auth) = authenticator_for("https://other.example.org/fhir", true);
    let floor = steady_allocations(inner());
    let ours = steady_allocations(auth.layer().layer(inner()));
    assert_eq!(
        ours, floor,
        "a request the token does not go to costs nothing"
    );
}
