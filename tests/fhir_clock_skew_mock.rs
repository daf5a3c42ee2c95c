//! A FHIR server whose clock is behind its auth server's, with `MockKoppeltaal` in real time (its
//! clocks are the wall clock), through hyper-util's client and the reqwest middleware. The
//! paused-clock matrix against a HAPI-like FHIR service is `fhir_clock_skew.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::secs;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

/// Against `MockKoppeltaal` in real time (its clocks are the wall clock): a FHIR endpoint 2 s
/// behind its auth server, 4 s tokens, 16 workers through hyper-util's client for three
/// lifetimes with a revocation in between. No request fails, none waits much longer than the
/// offset, and token requests stay what they are without skew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mock_koppeltaal_2_s_behind_no_request_fails() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use koppeltaal_auth::KoppeltaalAuth;
    use koppeltaal_auth::testing::MockKoppeltaal;

    let lifetime = secs(4);
    let mock = MockKoppeltaal::builder()
        .token_lifetime(lifetime)
        .fhir_clock_offset_secs(-2)
        .start()
        .await
        .unwrap();
    mock.register_key(support::CLIENT_ID, &support::rsa_key());
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(support::CLIENT_ID)
        .signing_key(support::rsa_key())
        .token_endpoint(mock.token_endpoint())
        .build()
        .unwrap();
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = auth.layer().layer(http);
    let url = format!("{}/Patient/1", mock.fhir_base_url());
    let start = std::time::Instant::now();
    let run = lifetime * 3;
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let (mut failed, mut longest) = (0, Duration::ZERO);
                while start.elapsed() < run {
                    let sent = std::time::Instant::now();
                    let request = Request::get(&url).body(Full::default()).unwrap();
                    let ok = client
                        .clone()
                        .oneshot(request)
                        .await
                        .is_ok_and(|response| response.status() == StatusCode::OK);
                    longest = longest.max(sent.elapsed());
                    failed += u64::from(!ok);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (failed, longest)
            })
        })
        .collect();
    tokio::time::sleep(lifetime + lifetime / 2).await;
    mock.revoke_all_tokens();
    let (mut failed, mut longest) = (0, Duration::ZERO);
    for worker in workers {
        let (f, l) = worker.await.unwrap();
        failed += f;
        longest = longest.max(l);
    }
    assert_eq!(failed, 0);
    // 2 s behind plus the `Date` resolution, plus real-time slack for a loaded machine.
    assert!(
        longest <= Duration::from_millis(5_000),
        "a request waited {longest:?}"
    );
    // 4 s tokens refresh 1.6-2 s apart: over 12 s at most 8 refreshes, the first token, one
    // renewal for the revocation.
    let issued = mock.stats().tokens_issued;
    assert!(issued <= 10, "{issued} tokens");
}

/// The same through the reqwest middleware, fewer workers.
#[cfg(feature = "reqwest-middleware")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reqwest_middleware_waits_for_a_fhir_clock_behind_too() {
    use koppeltaal_auth::KoppeltaalAuth;
    use koppeltaal_auth::testing::MockKoppeltaal;

    let mock = MockKoppeltaal::builder()
        .token_lifetime(secs(300))
        .fhir_clock_offset_secs(-1)
        .start()
        .await
        .unwrap();
    mock.register_key(support::CLIENT_ID, &support::rsa_key());
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(support::CLIENT_ID)
        .signing_key(support::rsa_key())
        .token_endpoint(mock.token_endpoint())
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build();
    let url = format!("{}/Patient/1", mock.fhir_base_url());
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    let stats = mock.stats();
    assert_eq!(
        stats.tokens_issued, 1,
        "no renewal for a token not valid yet"
    );
    assert!(stats.fhir_unauthorized <= 20, "{stats:?}");
    // Revoked: renewed, and the new token (not valid yet either) waited for.
    mock.revoke_all_tokens();
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(mock.stats().tokens_issued, 2);
}
