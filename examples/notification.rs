//! Koppeltaal's trace headers along a notification chain (TOP-KT-006, TOP-KT-011), against the
//! embedded mock Koppeltaal on loopback.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example notification
//! ```
//!
//! Application B updates a Task; the FHIR server notifies application A's rest-hook (an axum
//! handler) with a new `X-Request-Id`, B's `X-Trace-Id`, and B's request id as
//! `X-Correlation-Id`. A acknowledges, then fetches what changed in the notification's context
//! (`TraceContext::from_notification`), and the Patient and Practitioner the Task points to, in
//! parallel, in the context of the Task's response (`TraceContext::caused_by`). Finally it
//! records an `AuditEvent` about one of those exchanges with its three ids (TOP-KT-012b). The
//! table at the end is what the FHIR server recorded.
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use axum::extract::State;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::trace::{ResponseTrace, TraceContext};
use koppeltaal_auth::{Algorithm, Authenticator, BoxError, KoppeltaalAuth, SigningKey};
use tokio::sync::mpsc;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

type FhirClient =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<hyper::body::Incoming>, BoxError>;

/// An application's FHIR client: the auth layer, then the trace layer inside it.
async fn application(mock: &MockKoppeltaal, client_id: &str) -> Result<FhirClient, BoxError> {
    let key = SigningKey::generate(Algorithm::ES384)?;
    mock.register_key(client_id, &key);
    let auth: Authenticator = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(client_id)
        .signing_key(key)
        .discover()
        .await?;
    Ok(BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(auth.layer())
            .layer(auth.trace_layer())
            .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()),
    ))
}

fn get(url: String) -> Result<Request<Full<Bytes>>, BoxError> {
    Ok(Request::get(url).body(Full::default())?)
}

struct AppA {
    fhir: FhirClient,
    base: String,
    done: mpsc::Sender<Result<(), BoxError>>,
}

/// Application A's rest-hook: acknowledge at once, process in the notification's context.
async fn on_notification(State(app): State<Arc<AppA>>, headers: HeaderMap) -> StatusCode {
    let context = TraceContext::from_notification(&headers);
    tokio::spawn(context.scope(async move {
        let outcome = process(&app).await;
        let _ = app.done.send(outcome).await;
    }));
    StatusCode::OK
}

async fn process(app: &AppA) -> Result<(), BoxError> {
    // The subscription's criteria: this request carries the notification's context.
    let tasks = app
        .fhir
        .clone()
        .oneshot(get(format!("{}/Task?_id=42", app.base))?)
        .await?;
    let trace = tasks
        .extensions()
        .get::<ResponseTrace>()
        .ok_or("no trace on a FHIR response")?
        .clone();
    // What the Task points to, fetched in parallel: both are caused by the search's response
    // and carry its request id as correlation id.
    let caused = TraceContext::caused_by(&trace.ids());
    let patient = caused.clone().scope(
        app.fhir
            .clone()
            .oneshot(get(format!("{}/Patient/7", app.base))?),
    );
    let practitioner = caused.scope(
        app.fhir
            .clone()
            .oneshot(get(format!("{}/Practitioner/3", app.base))?),
    );
    let (patient, _practitioner) = tokio::try_join!(patient, practitioner)?;
    // Say the Patient could not be processed: an AuditEvent records that exchange's ids.
    let failed = patient
        .extensions()
        .get::<ResponseTrace>()
        .ok_or("no trace on a FHIR response")?
        .ids();
    let audit_event = serde_json::json!({
        "resourceType": "AuditEvent",
        "extension": failed.audit_event_extensions(),
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110100"},
        "outcome": "8",
        "recorded": httpdate::fmt_http_date(std::time::SystemTime::now()),
    });
    let post = Request::post(format!("{}/AuditEvent", app.base))
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from(audit_event.to_string())))?;
    // The AuditEvent is caused by the Patient's response too.
    TraceContext::caused_by(&failed)
        .scope(app.fhir.clone().oneshot(post))
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockKoppeltaal::start().await?;
    let base = mock.fhir_base_url();
    let app_b = application(&mock, "app-b").await?;
    let (done, mut finished) = mpsc::channel(1);
    let app_a = Arc::new(AppA {
        fhir: application(&mock, "app-a").await?,
        base: base.clone(),
        done,
    });
    let hook = axum::Router::new()
        .route("/hook", axum::routing::post(on_notification))
        .with_state(app_a);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, hook).await });

    // Application B updates the Task, starting a trace of its own.
    let update = Request::put(format!("{base}/Task/42"))
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from_static(
            br#"{"resourceType":"Task","id":"42","status":"ready","for":{"reference":"Patient/7"}}"#,
        )))?;
    TraceContext::start().scope(app_b.oneshot(update)).await?;
    let cause = mock
        .fhir_requests()
        .pop()
        .ok_or("the update did not arrive")?;

    // The FHIR server notifies application A's rest-hook.
    let notification = mock.notify(&hook_url, &cause).await?;
    finished.recv().await.ok_or("application A stopped")??;

    println!("what the FHIR server recorded (request id / trace id / correlation id):\n");
    let short = |id: Option<&koppeltaal_auth::trace::FhirId>| {
        id.map_or_else(
            || "-".to_owned(),
            |id| id.as_str().chars().take(8).collect(),
        )
    };
    let mut rows: Vec<(String, &koppeltaal_auth::trace::TraceIds)> = Vec::new();
    let log = mock.fhir_requests();
    rows.push((
        format!("B   {} {}", cause.method, cause.path_and_query),
        &cause.trace,
    ));
    rows.push((
        "    notification to A's rest-hook".to_owned(),
        &notification.trace,
    ));
    for request in log.iter().skip(1) {
        rows.push((
            format!("A   {} {}", request.method, request.path_and_query),
            &request.trace,
        ));
    }
    for (what, ids) in rows {
        println!(
            "  {what:<48} {}  {}  {}",
            short(ids.request_id()),
            short(ids.trace_id()),
            short(ids.correlation_id()),
        );
    }
    println!(
        "\n(ids shortened to 8 characters; each correlation id is the request id of its cause)"
    );
    server.abort();
    Ok(())
}
