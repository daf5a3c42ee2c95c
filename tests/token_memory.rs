//! No access token is left in memory this crate frees: a global allocator scans every block as it
//! is freed (or moved by `realloc`) for the tokens, on every thread, while tokens are made, handed
//! out by the cell on two worker threads (each with its own copy), sent through the layer,
//! rejected with a `401` and renewed, replaced, shared through a store, and dropped with the cell
//! and the runtime. The token response's own path (the body as read, its parsed form) is covered
//! by the unit tests of `src/wipe.rs`; copies made by hyper, reqwest or rustls are outside this
//! crate (see the module comment there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/freed_memory.rs"]
mod freed_memory;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use koppeltaal_auth::store::StorePolicy;
use koppeltaal_auth::testing::MemoryTokenStore;
use koppeltaal_auth::token::BoxFuture;
use koppeltaal_auth::{
    AccessToken, Error, KoppeltaalAuthLayer, RefreshPolicy, TokenCell, TokenSource,
};
use tower::{Layer, ServiceExt};
use zeroize::Zeroizing;

/// Hands out the prepared tokens in turn (the test's own copies, wiped when the test is done).
struct Tokens {
    tokens: Arc<Vec<Zeroizing<String>>>,
    next: AtomicUsize,
}

impl TokenSource for Tokens {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async move {
            let n = self.next.fetch_add(1, Ordering::SeqCst) % self.tokens.len();
            AccessToken::new(
                &self.tokens[n],
                Duration::from_secs(300),
                tokio::time::Instant::now(),
            )
        })
    }
}

const FHIR_BASE: &str = "https://fhir.example.org/fhir";

#[test]
fn no_access_token_is_left_in_freed_memory_after_use_renewal_and_drop() {
    let tokens: Arc<Vec<Zeroizing<String>>> = Arc::new(
        (0..4)
            .map(|n| Zeroizing::new(format!("kt-memory-{n}-9f2c41d07be35a68e1")))
            .collect(),
    );
    freed_memory::look_for(
        tokens
            .iter()
            .map(|token| token.as_bytes().to_vec())
            .collect(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let first = Arc::clone(&tokens);
    let ((), found) = freed_memory::scanning(|| {
        runtime.block_on(async move {
            let store = MemoryTokenStore::new();
            let cell = TokenCell::with_store(
                Tokens {
                    tokens: Arc::clone(&first),
                    next: AtomicUsize::new(0),
                },
                RefreshPolicy::default(),
                store.clone(),
                StorePolicy::default(),
            );
            // The FHIR server rejects the first token once seen: a renewal and replays.
            let mut rejected = Zeroizing::new(String::with_capacity(7 + first[0].len()));
            rejected.push_str("Bearer ");
            rejected.push_str(&first[0]);
            let fhir = tower::service_fn(move |request: Request<Full<Bytes>>| {
                let status = match request.headers().get(AUTHORIZATION) {
                    Some(value) if value.as_bytes() == rejected.as_bytes() => {
                        StatusCode::UNAUTHORIZED
                    }
                    Some(_) => StatusCode::OK,
                    None => StatusCode::BAD_REQUEST,
                };
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = status;
                async move { Ok::<_, Infallible>(response) }
            });
            let service = KoppeltaalAuthLayer::new(cell.clone(), FHIR_BASE)
                .unwrap()
                .layer(fhir);
            let send_all = |rounds: usize| {
                let tasks: Vec<_> = (0..16)
                    .map(|_| {
                        let service = service.clone();
                        tokio::spawn(async move {
                            for _ in 0..rounds {
                                let request = Request::get(format!("{FHIR_BASE}/Patient/1"))
                                    .body(Full::new(Bytes::from_static(b"")))
                                    .unwrap();
                                let response = service.clone().oneshot(request).await.unwrap();
                                assert_eq!(response.status(), StatusCode::OK);
                                tokio::task::yield_now().await;
                            }
                        })
                    })
                    .collect();
                async move {
                    for task in tasks {
                        task.await.unwrap();
                    }
                }
            };
            send_all(20).await;
            assert_eq!(cell.stats().generation, 2, "the first token was renewed");
            // Replaced once more, as the server rejecting it would.
            assert!(cell.invalidate(2));
            send_all(20).await;
            assert_eq!(cell.stats().generation, 3);
            assert!(store.saves() >= 3, "every token went through the store");
            drop((service, cell, store));
        });
        drop(runtime);
    });
    assert_eq!(found, 0, "freed blocks held an access token");
    // The scanner does see a copy that is freed without being wiped.
    let copy = tokens[1].as_str().to_owned();
    let ((), found) = freed_memory::scanning(|| drop(copy));
    assert!(found > 0, "the scanner works");
}
