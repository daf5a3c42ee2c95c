//! The cell's OpenTelemetry metrics (feature `opentelemetry`), collected with the SDK's
//! in-memory exporter while a client goes through a token's life against `MockKoppeltaal`:
//! token requests by outcome, their duration, renewals and replays after a `401`, waits, time
//! to expiry; the attributes identify the cell and carry no secret.
#![cfg(feature = "opentelemetry")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::{KoppeltaalAuth, RefreshPolicy};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use support::{CLIENT_ID, mock, rsa_key};
use tower::{ServiceBuilder, ServiceExt};

/// One data point: its attributes (sorted) and its value (a count, a sum or a gauge reading;
/// for a histogram, its count).
#[derive(Debug)]
struct Point {
    attributes: BTreeMap<String, String>,
    value: f64,
    sum: f64,
}

/// Every metric the provider collected last, by name, with its unit.
fn collect(
    provider: &SdkMeterProvider,
    exporter: &InMemoryMetricExporter,
) -> BTreeMap<String, (String, Vec<Point>)> {
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let last = exported.last().expect("metrics were exported");
    let mut out = BTreeMap::new();
    for scope in last.scope_metrics() {
        for metric in scope.metrics() {
            let attributes = |kvs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                kvs.map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect::<BTreeMap<_, _>>()
            };
            let points: Vec<Point> = match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                    .data_points()
                    .map(|p| Point {
                        attributes: attributes(&mut p.attributes()),
                        value: p.value() as f64,
                        sum: p.value() as f64,
                    })
                    .collect(),
                AggregatedMetrics::F64(MetricData::Sum(sum)) => sum
                    .data_points()
                    .map(|p| Point {
                        attributes: attributes(&mut p.attributes()),
                        value: p.value(),
                        sum: p.value(),
                    })
                    .collect(),
                AggregatedMetrics::F64(MetricData::Gauge(gauge)) => gauge
                    .data_points()
                    .map(|p| Point {
                        attributes: attributes(&mut p.attributes()),
                        value: p.value(),
                        sum: p.value(),
                    })
                    .collect(),
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => histogram
                    .data_points()
                    .map(|p| Point {
                        attributes: attributes(&mut p.attributes()),
                        value: p.count() as f64,
                        sum: p.sum(),
                    })
                    .collect(),
                other => panic!("unexpected data for {}: {other:?}", metric.name()),
            };
            out.insert(metric.name().to_owned(), (metric.unit().to_owned(), points));
        }
    }
    out
}

/// The value of the point of `name` whose attributes include `with`.
fn value(
    metrics: &BTreeMap<String, (String, Vec<Point>)>,
    name: &str,
    with: &[(&str, &str)],
) -> f64 {
    let (_, points) = metrics
        .get(name)
        .unwrap_or_else(|| panic!("no {name}: {metrics:#?}"));
    points
        .iter()
        .filter(|p| {
            with.iter()
                .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|p| p.value)
        .sum()
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

#[tokio::test]
async fn the_instruments_follow_a_token_through_its_life() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let mock = mock().await;
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .refresh_policy(
            RefreshPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(10)),
        )
        .meter(provider.meter("koppeltaal-auth-test"))
        .discover()
        .await
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(auth.layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let url = format!("{}/Patient/1", mock.fhir_base_url());

    // The first request waits for the first token.
    let response = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A revoked token: one renewal, one replay.
    mock.revoke_all_tokens();
    let response = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The token endpoint fails once (503): a transient error, then a token again.
    mock.fail_next_token_requests(1, StatusCode::SERVICE_UNAVAILABLE, None);
    let generation = auth.stats().generation;
    assert!(auth.cell().invalidate(generation));
    assert!(auth.token().await.is_err());
    // The background refresher retries after the backoff (10 ms here) and succeeds.
    for _ in 0..500 {
        if auth.health().is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    auth.token().await.unwrap();

    let metrics = collect(&provider, &exporter);
    let cell = [
        ("server.address", "127.0.0.1"),
        ("koppeltaal.client_id", CLIENT_ID),
    ];
    let ok = [("outcome", "ok"), ("http.response.status_class", "2xx")];
    let requests = "koppeltaal_auth.token.requests";
    assert_eq!(
        value(&metrics, requests, &[cell[0], cell[1], ok[0], ok[1]]),
        3.0
    );
    assert_eq!(
        value(
            &metrics,
            requests,
            &[
                ("outcome", "transient_error"),
                ("http.response.status_class", "5xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(&metrics, "koppeltaal_auth.token.request.duration", &cell),
        4.0
    );
    let (unit, points) = &metrics["koppeltaal_auth.token.request.duration"];
    assert_eq!(unit, "s");
    assert!(
        points.iter().all(|p| p.sum > 0.0 && p.sum < 10.0),
        "{points:?}"
    );
    assert_eq!(
        value(&metrics, "koppeltaal_auth.token.renewals", &cell),
        2.0
    );
    assert_eq!(
        value(&metrics, "koppeltaal_auth.request.replays", &cell),
        1.0
    );
    assert!(value(&metrics, "koppeltaal_auth.token.waits", &cell) >= 3.0);
    assert!(value(&metrics, "koppeltaal_auth.token.wait.time", &cell) > 0.0);
    assert_eq!(
        value(&metrics, "koppeltaal_auth.store.adoptions", &cell),
        0.0
    );
    assert_eq!(
        value(&metrics, "koppeltaal_auth.store.failures", &cell),
        0.0
    );
    let left = value(&metrics, "koppeltaal_auth.token.time_to_expiry", &cell);
    assert!(left > 250.0 && left <= 300.0, "{left}");
    assert_eq!(metrics["koppeltaal_auth.token.time_to_expiry"].0, "s");
    assert_eq!(metrics[requests].0, "{request}");

    // The attributes are these and only these: nothing else (no token, no assertion) can be in
    // them.
    let allowed = [
        ("server.address", &["127.0.0.1"][..]),
        ("koppeltaal.client_id", &[CLIENT_ID][..]),
        (
            "outcome",
            &["ok", "transient_error", "permanent_error", "cancelled"][..],
        ),
        (
            "http.response.status_class",
            &["2xx", "3xx", "4xx", "5xx", "other", "none"][..],
        ),
    ];
    for (name, (_, points)) in &metrics {
        assert!(name.starts_with("koppeltaal_auth."), "{name}");
        for point in points {
            for (key, value) in &point.attributes {
                let known = allowed
                    .iter()
                    .any(|(k, values)| k == key && values.contains(&value.as_str()));
                assert!(known, "{name}: {key}={value}");
            }
        }
    }
}

#[tokio::test]
async fn a_refused_client_is_a_permanent_error_with_its_status_class() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let mock = mock().await;
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id("not-registered")
        .signing_key(rsa_key())
        .meter(provider.meter("koppeltaal-auth-test"))
        .discover()
        .await
        .unwrap();
    assert!(auth.token().await.is_err());
    let metrics = collect(&provider, &exporter);
    assert_eq!(
        value(
            &metrics,
            "koppeltaal_auth.token.requests",
            &[
                ("koppeltaal.client_id", "not-registered"),
                ("outcome", "permanent_error"),
                ("http.response.status_class", "4xx"),
            ]
        ),
        1.0
    );
    // No token: no time-to-expiry reading.
    assert!(
        metrics
            .get("koppeltaal_auth.token.time_to_expiry")
            .is_none_or(|(_, points)| points.is_empty())
    );
}

/// A provider with an in-memory exporter, and an authenticator on `source` reporting to it.
fn metered(
    source: koppeltaal_auth::testing::FakeTokenSource,
    policy: RefreshPolicy,
) -> (
    SdkMeterProvider,
    InMemoryMetricExporter,
    koppeltaal_auth::Authenticator,
) {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url("https://fhir.example.org/fhir/DEFAULT")
        .token_source(source)
        .refresh_policy(policy)
        .meter(provider.meter("koppeltaal-auth-test"))
        .build()
        .unwrap();
    (provider, exporter, auth)
}

#[tokio::test(start_paused = true)]
async fn a_token_request_cut_off_by_the_attempt_timeout_counts_as_cancelled() {
    let source = koppeltaal_auth::testing::FakeTokenSource::new();
    source.close_gate();
    let policy = RefreshPolicy::default().attempt_timeout(Duration::from_secs(2));
    let (provider, exporter, auth) = metered(source.clone(), policy);
    let error = auth.token().await.unwrap_err();
    assert_eq!(error.kind(), koppeltaal_auth::ErrorKind::Timeout);
    let metrics = collect(&provider, &exporter);
    let requests = "koppeltaal_auth.token.requests";
    assert_eq!(value(&metrics, requests, &[("outcome", "cancelled")]), 1.0);
    assert_eq!(value(&metrics, requests, &[("outcome", "ok")]), 0.0);
    assert_eq!(
        value(&metrics, "koppeltaal_auth.token.request.duration", &[]),
        1.0
    );
    // A custom source: no endpoint host, and no client id, to name.
    let (_, points) = &metrics[requests];
    assert!(
        points
            .iter()
            .all(|p| !p.attributes.contains_key("server.address"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_its_caller_gives_up_still_counts_its_time() {
    let source = koppeltaal_auth::testing::FakeTokenSource::new();
    source.close_gate();
    let (_provider, _exporter, auth) = metered(source, RefreshPolicy::default());
    let gave_up = tokio::time::timeout(Duration::from_secs(5), auth.token()).await;
    assert!(gave_up.is_err(), "the caller gave up");
    let stats = auth.stats();
    assert_eq!(stats.waits, 1);
    assert_eq!(stats.wait_time, Duration::from_secs(5));
}

#[tokio::test]
async fn cells_sharing_an_endpoint_and_client_id_are_told_apart_by_their_attributes() {
    use opentelemetry::KeyValue;
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let cell = |domain: &str| {
        KoppeltaalAuth::builder()
            .fhir_base_url("https://fhir.example.org/fhir/DEFAULT")
            .token_source(koppeltaal_auth::testing::FakeTokenSource::new())
            .meter(provider.meter("koppeltaal-auth-test"))
            .meter_attributes([
                KeyValue::new("koppeltaal.domain", domain.to_owned()),
                // A key of the crate's own is not taken over.
                KeyValue::new("outcome", "mine"),
            ])
            .build()
            .unwrap()
    };
    let (a, b) = (cell("a"), cell("b"));
    a.token().await.unwrap();
    b.token().await.unwrap();
    assert!(b.cell().invalidate(1));
    b.token().await.unwrap();

    let metrics = collect(&provider, &exporter);
    let requests = "koppeltaal_auth.token.requests";
    let ok = ("outcome", "ok");
    assert_eq!(
        value(&metrics, requests, &[("koppeltaal.domain", "a"), ok]),
        1.0
    );
    assert_eq!(
        value(&metrics, requests, &[("koppeltaal.domain", "b"), ok]),
        2.0
    );
    assert_eq!(value(&metrics, requests, &[("outcome", "mine")]), 0.0);
    let (_, expiry) = &metrics["koppeltaal_auth.token.time_to_expiry"];
    let domains: Vec<_> = expiry
        .iter()
        .map(|p| p.attributes["koppeltaal.domain"].as_str())
        .collect();
    assert_eq!(domains.len(), 2, "one series per cell: {domains:?}");
    assert!(domains.contains(&"a") && domains.contains(&"b"));
    // The crate sets no `outcome` there, so the user's would show if it were not dropped.
    assert!(
        expiry.iter().all(|p| !p.attributes.contains_key("outcome")),
        "{expiry:?}"
    );
}
