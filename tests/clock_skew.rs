//! Clock-skew correction against `MockKoppeltaal` running its clock behind and ahead of ours.
//! The mock, like the reference server, checks `iat` and `exp` with zero leeway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use koppeltaal_auth::testing::MockKoppeltaal;
use koppeltaal_auth::{ClientCredentials, KoppeltaalAuth, TokenSource};
use support::{CLIENT_ID, rsa_key, source};

async fn mock_with_offset(seconds: i64) -> MockKoppeltaal {
    let mock = MockKoppeltaal::builder()
        .clock_offset_secs(seconds)
        .start()
        .await
        .unwrap();
    mock.register_key(CLIENT_ID, &rsa_key());
    mock
}

fn refusals(mock: &MockKoppeltaal) -> Vec<Option<String>> {
    mock.token_requests()
        .into_iter()
        .map(|r| r.refusal)
        .collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_server_30_s_behind_refuses_once_then_the_corrected_assertion_passes() {
    let mock = mock_with_offset(-30).await;
    let source = source(&mock, rsa_key());
    source.fetch().await.unwrap();
    source.fetch().await.unwrap();
    assert_eq!(
        refusals(&mock),
        [Some("iat in the future".to_owned()), None, None],
        "one refused attempt, then the offset is known for good"
    );
    let claims = mock.token_requests()[1].assertion_claims.clone().unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    let server_now = now_secs() - 30;
    assert!(
        (server_now - 8..=server_now - 3).contains(&iat),
        "iat {iat} vs server {server_now}"
    );
}

#[tokio::test]
async fn a_server_30_s_ahead_gets_corrected_times_without_a_refusal() {
    let mock = mock_with_offset(30).await;
    let source = source(&mock, rsa_key());
    source.fetch().await.unwrap();
    source.fetch().await.unwrap();
    assert_eq!(refusals(&mock), [None, None]);
    let claims = mock.token_requests()[1].assertion_claims.clone().unwrap();
    let exp = claims["exp"].as_i64().unwrap();
    let server_now = now_secs() + 30;
    assert!(
        (server_now + 55..=server_now + 62).contains(&exp),
        "the second assertion lives 60 s by the server's clock: exp {exp} vs server {server_now}"
    );
}

#[tokio::test]
async fn a_server_two_minutes_ahead_sees_an_expired_assertion_once() {
    let mock = mock_with_offset(120).await;
    let source = source(&mock, rsa_key());
    source.fetch().await.unwrap();
    assert_eq!(refusals(&mock), [Some("expired".to_owned()), None]);
}

#[tokio::test]
async fn small_offsets_are_left_to_the_iat_backdate() {
    let mock = mock_with_offset(-3).await;
    let source = source(&mock, rsa_key());
    source.fetch().await.unwrap();
    source.fetch().await.unwrap();
    assert_eq!(refusals(&mock), [None, None]);
    let claims = mock.token_requests()[1].assertion_claims.clone().unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    assert!(
        (now_secs() - 7..=now_secs() - 4).contains(&iat),
        "uncorrected: iat {iat}"
    );
}

/// The offset is learned from the auth server only: discovery is the FHIR server's answer, whose
/// clock may differ from the auth server's (the mock's share one clock, so the first token
/// request is still refused once).
#[tokio::test]
async fn the_offset_is_learned_from_the_token_endpoint_not_from_discovery() {
    let mock = mock_with_offset(-30).await;
    let auth = KoppeltaalAuth::builder()
        .fhir_base_url(mock.fhir_base_url())
        .client_id(CLIENT_ID)
        .signing_key(rsa_key())
        .discover()
        .await
        .unwrap();
    auth.ready().await.unwrap();
    assert_eq!(
        refusals(&mock),
        [Some("iat in the future".to_owned()), None]
    );
}

/// A token endpoint whose clock is a year ahead (or someone on the path faking its `Date`) does
/// not make the client sign assertions a year in the future: corrections over 5 minutes are not
/// applied.
#[tokio::test]
async fn a_clock_a_year_ahead_is_not_followed() {
    let year = 365 * 86_400;
    let mock = mock_with_offset(year).await;
    let source = source(&mock, rsa_key());
    for _ in 0..3 {
        assert!(source.fetch().await.is_err());
    }
    let requests = mock.token_requests();
    assert_eq!(requests.len(), 3, "no second attempt with corrected times");
    for request in requests {
        let claims = request.assertion_claims.unwrap();
        let iat = claims["iat"].as_i64().unwrap();
        assert!(
            (iat - now_secs()).abs() < 60,
            "iat {iat} is our time, not the server's"
        );
    }
}

/// The longest assertion lifetime with the default back-dating (295 s) still works against a
/// server a few seconds behind; 300 s would put `exp` more than five minutes into its future, and
/// is refused when the configuration is built.
#[tokio::test]
async fn the_longest_assertion_lifetime_works_against_a_server_behind() {
    let mock = mock_with_offset(-4).await;
    let source = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(mock.token_endpoint())
        .signing_key(rsa_key())
        .assertion_lifetime(std::time::Duration::from_secs(295))
        .build()
        .unwrap();
    source.fetch().await.unwrap();
    assert_eq!(refusals(&mock), [None]);
    let err = ClientCredentials::builder()
        .client_id(CLIENT_ID)
        .token_endpoint(mock.token_endpoint())
        .signing_key(rsa_key())
        .assertion_lifetime(std::time::Duration::from_secs(300))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), koppeltaal_auth::ErrorKind::Config);
    assert!(err.to_string().contains("300 seconds"), "{err}");
}

#[tokio::test]
async fn a_plain_401_for_other_reasons_is_not_retried() {
    let mock = MockKoppeltaal::start().await.unwrap();
    // Not registered: refused, and the clocks agree, so no second attempt.
    let source = source(&mock, rsa_key());
    assert!(source.fetch().await.is_err());
    assert_eq!(mock.stats().token_requests, 1);
}
