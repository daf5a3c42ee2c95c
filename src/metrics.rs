//! OpenTelemetry metrics of a token cell (feature `opentelemetry`).
//!
//! Token requests are recorded as they happen (a wrapper around the token source); everything
//! else is read from the cell's counters when the meter is collected (observable instruments),
//! so that nothing is added to the request path.

use std::sync::Arc;
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use crate::error::Error;
use crate::token::{AccessToken, BoxFuture, CellStats, TokenCell, TokenSource, WeakCell};

/// Keys the crate sets on a cell's series: the user's attributes may not take them over.
const OWN_KEYS: [&str; 4] = [
    "server.address",
    "koppeltaal.client_id",
    "outcome",
    "http.response.status_class",
];

/// What identifies a cell in its metrics: the token endpoint's host and the client id (never a
/// secret), then the user's own attributes (without the keys the crate sets).
pub(crate) fn cell_attributes(
    endpoint: Option<&str>,
    client_id: Option<&str>,
    user: Vec<KeyValue>,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(2 + user.len());
    if let Some(host) = endpoint
        .and_then(|endpoint| url::Url::parse(endpoint).ok())
        .and_then(|url| url.host_str().map(str::to_owned))
    {
        attributes.push(KeyValue::new("server.address", host));
    }
    if let Some(client_id) = client_id {
        attributes.push(KeyValue::new("koppeltaal.client_id", client_id.to_owned()));
    }
    attributes.extend(
        user.into_iter()
            .filter(|attribute| !OWN_KEYS.contains(&attribute.key.as_str())),
    );
    attributes
}

/// A token source that records each token request: outcome and duration.
pub(crate) struct MeteredSource {
    inner: Box<dyn TokenSource>,
    requests: Counter<u64>,
    duration: Histogram<f64>,
    attributes: Arc<[KeyValue]>,
}

impl MeteredSource {
    pub(crate) fn new(inner: Box<dyn TokenSource>, meter: &Meter, attributes: &[KeyValue]) -> Self {
        Self {
            inner,
            requests: meter
                .u64_counter("koppeltaal_auth.token.requests")
                .with_unit("{request}")
                .with_description(
                    "Token requests, by outcome (ok, transient_error, permanent_error, cancelled) \
                     and status class; one per attempt (a resend after a clock-skew refusal \
                     counts with it)",
                )
                .build(),
            duration: meter
                .f64_histogram("koppeltaal_auth.token.request.duration")
                .with_unit("s")
                .with_description("Duration of token requests")
                .with_boundaries(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
            attributes: attributes.into(),
        }
    }

    fn record(&self, result: Option<&Result<AccessToken, Error>>, started: Instant) {
        let (outcome, status_class) = match result {
            // Dropped before it ended: cut off (the attempt timeout, a stall, its runtime gone)
            // or unwinding from a panic.
            None => ("cancelled", "none"),
            Some(Ok(_)) => ("ok", "2xx"),
            Some(Err(error)) => (
                if error.is_transient() {
                    "transient_error"
                } else {
                    "permanent_error"
                },
                match error.status().map(|status| status.as_u16() / 100) {
                    Some(2) => "2xx",
                    Some(3) => "3xx",
                    Some(4) => "4xx",
                    Some(5) => "5xx",
                    Some(_) => "other",
                    None => "none",
                },
            ),
        };
        let mut attributes = self.attributes.to_vec();
        attributes.push(KeyValue::new("outcome", outcome));
        attributes.push(KeyValue::new("http.response.status_class", status_class));
        self.requests.add(1, &attributes);
        self.duration
            .record(started.elapsed().as_secs_f64(), &attributes);
    }
}

impl TokenSource for MeteredSource {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async move {
            let mut pending = Pending {
                source: self,
                started: Instant::now(),
                ended: false,
            };
            let result = self.inner.fetch().await;
            pending.ended = true;
            self.record(Some(&result), pending.started);
            result
        })
    }
}

/// Records a token request that is dropped before it ends as `cancelled`.
struct Pending<'a> {
    source: &'a MeteredSource,
    started: Instant,
    ended: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.source.record(None, self.started);
        }
    }
}

impl std::fmt::Debug for MeteredSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredSource").finish_non_exhaustive()
    }
}

/// Registers the cell's observable instruments: read from [`TokenCell::stats`] at collection.
pub(crate) fn observe(cell: &TokenCell, meter: &Meter, attributes: &[KeyValue]) {
    let attributes: Arc<[KeyValue]> = attributes.into();
    let counter = |name: &'static str,
                   unit: &'static str,
                   description: &'static str,
                   read: fn(&CellStats) -> u64| {
        let cell = cell.downgrade();
        let attributes = Arc::clone(&attributes);
        meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer| {
                if let Some(stats) = stats_of(&cell) {
                    observer.observe(read(&stats), &attributes);
                }
            })
            .build();
    };
    counter(
        "koppeltaal_auth.token.renewals",
        "{renewal}",
        "Tokens renewed because the FHIR server answered 401 (one per token generation)",
        |stats| stats.invalidations,
    );
    counter(
        "koppeltaal_auth.request.replays",
        "{request}",
        "Requests sent again after a 401",
        |stats| stats.replays,
    );
    counter(
        "koppeltaal_auth.token.waits",
        "{request}",
        "Requests that found no usable token and waited for one (or failed)",
        |stats| stats.waits,
    );
    counter(
        "koppeltaal_auth.store.adoptions",
        "{token}",
        "Tokens taken from the shared store (fetched by another instance)",
        |stats| stats.adopted_from_store,
    );
    counter(
        "koppeltaal_auth.store.failures",
        "{refresh}",
        "Refreshes that fetched alone because the shared store was unavailable",
        |stats| stats.store_unavailable,
    );
    let weak = cell.downgrade();
    let attrs = Arc::clone(&attributes);
    meter
        .f64_observable_counter("koppeltaal_auth.token.wait.time")
        .with_unit("s")
        .with_description("Total time requests spent waiting for a token")
        .with_callback(move |observer| {
            if let Some(stats) = stats_of(&weak) {
                observer.observe(stats.wait_time.as_secs_f64(), &attrs);
            }
        })
        .build();
    let weak = cell.downgrade();
    let attrs = Arc::clone(&attributes);
    meter
        .f64_observable_gauge("koppeltaal_auth.token.time_to_expiry")
        .with_unit("s")
        .with_description("Time until the current token expires (absent without a token)")
        .with_callback(move |observer| {
            if let Some(left) = stats_of(&weak).and_then(|stats| stats.time_to_expiry) {
                observer.observe(left.as_secs_f64(), &attrs);
            }
        })
        .build();
}

fn stats_of(cell: &WeakCell) -> Option<CellStats> {
    cell.upgrade().map(|cell| cell.stats())
}
