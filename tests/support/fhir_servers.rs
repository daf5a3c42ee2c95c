//! Servers whose clocks differ, for the FHIR-clock tests (`tests/fhir_clock_skew.rs`,
//! `tests/refresh_pace.rs`): an auth server and a FHIR server sharing tokens, the FHIR server
//! validating like Koppeltaal's HAPI server.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use koppeltaal_auth::token::BoxFuture;
use koppeltaal_auth::{
    AccessToken, Error, KoppeltaalAuthLayer, RefreshPolicy, TokenCell, TokenSource,
};
use tokio::time::Instant;
use tower::Layer;

use super::secs;

pub const BASE: &str = "http://127.0.0.1/fhir";

/// An auth server and a FHIR server sharing tokens, each with its own clock, both following
/// tokio's (paused) clock: the auth server's is the local one, the FHIR server's is shifted by
/// `offset_ms`.
pub struct Servers {
    pub anchor: (SystemTime, Instant),
    pub offset_ms: i64,
    /// Token -> (iat, exp), epoch seconds by the auth server's clock.
    pub issued: Mutex<HashMap<String, (u64, u64)>>,
    pub revoked: Mutex<HashSet<String>>,
    pub fetches: AtomicU64,
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    /// The token of every request, in order.
    pub sent: Mutex<Vec<String>>,
    /// When set, every request is refused with a `Date` a second before the token's `iat`.
    pub always_young: bool,
    pub lifetime: Duration,
}

impl Servers {
    /// The auth server's clock starts at `phase_ms` into a whole second (where the `Date`
    /// resolution falls matters, and the test must not depend on the real clock's).
    pub fn new(offset_ms: i64, lifetime: Duration, phase_ms: u64) -> Arc<Self> {
        let start = UNIX_EPOCH + secs(1_800_000_000) + Duration::from_millis(phase_ms);
        Arc::new(Self {
            anchor: (start, Instant::now()),
            offset_ms,
            issued: Mutex::default(),
            revoked: Mutex::default(),
            fetches: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            sent: Mutex::default(),
            always_young: false,
            lifetime,
        })
    }

    pub fn auth_now(&self) -> SystemTime {
        self.anchor.0 + (Instant::now() - self.anchor.1)
    }

    pub fn fhir_now(&self) -> SystemTime {
        let offset = Duration::from_millis(self.offset_ms.unsigned_abs());
        if self.offset_ms >= 0 {
            self.auth_now() + offset
        } else {
            self.auth_now() - offset
        }
    }

    pub fn revoke_all(&self) {
        let issued = self.issued.lock().unwrap();
        self.revoked.lock().unwrap().extend(issued.keys().cloned());
    }

    /// HAPI's check: a known, unrevoked token, `iat` reached by its clock (truncated to whole
    /// seconds, no leeway), `exp` not 60 s past.
    pub fn answer(&self, request: &Request<Full<Bytes>>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let now = self.fhir_now();
        let seconds = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let token = request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        self.sent.lock().unwrap().push(token.to_owned());
        let claims = self.issued.lock().unwrap().get(token).copied();
        let (status, date) = match claims {
            Some((iat, _)) if self.always_young => {
                (StatusCode::UNAUTHORIZED, UNIX_EPOCH + secs(iat - 1))
            }
            Some((iat, exp))
                if seconds >= iat
                    && seconds < exp + 60
                    && !self.revoked.lock().unwrap().contains(token) =>
            {
                (StatusCode::OK, now)
            }
            _ => (StatusCode::UNAUTHORIZED, now),
        };
        if status == StatusCode::UNAUTHORIZED {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        Response::builder()
            .status(status)
            .header("date", httpdate::fmt_http_date(date))
            .body(Full::default())
            .unwrap()
    }
}

/// The auth server's token endpoint: opaque tokens, `not_before` from its clock (as
/// `ClientCredentials` takes it from the response's `Date`).
pub struct Issuing(pub Arc<Servers>);

impl TokenSource for Issuing {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async move {
            let servers = &self.0;
            let n = servers.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("token-{n}");
            let issued = servers.auth_now();
            let iat = issued.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let exp = iat + servers.lifetime.as_secs();
            servers
                .issued
                .lock()
                .unwrap()
                .insert(token.clone(), (iat, exp));
            Ok(AccessToken::new(&token, servers.lifetime, Instant::now())?
                .with_not_before(Some(issued)))
        })
    }
}

pub fn fhir_request() -> Request<Full<Bytes>> {
    Request::get(format!("{BASE}/Patient/1"))
        .body(Full::default())
        .unwrap()
}

/// The layer over the in-test FHIR server, with a cell on `servers`' token endpoint.
pub fn client(
    servers: &Arc<Servers>,
    policy: RefreshPolicy,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = koppeltaal_auth::BoxError,
    Future: Send,
> + Clone
+ Send
+ 'static {
    layered(
        servers,
        TokenCell::new(Issuing(Arc::clone(servers)), policy),
    )
}

/// The layer with `cell` over the in-test FHIR server.
pub fn layered(
    servers: &Arc<Servers>,
    cell: TokenCell,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = koppeltaal_auth::BoxError,
    Future: Send,
> + Clone
+ Send
+ 'static {
    KoppeltaalAuthLayer::new(cell, BASE)
        .unwrap()
        .layer(fhir_service(servers))
}

/// The in-test FHIR server as a service.
pub fn fhir_service(
    servers: &Arc<Servers>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    let servers = Arc::clone(servers);
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let response = servers.answer(&request);
        async move { Ok::<_, Infallible>(response) }
    })
}
