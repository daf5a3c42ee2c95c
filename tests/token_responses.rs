//! What the token endpoint answers that is not a token, as the caller sees it: malformed or
//! oversized token responses are typed errors that never echo the body, and a big error page
//! keeps its status and `Retry-After`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::StatusCode;
use koppeltaal_auth::testing::MockResponse;
use koppeltaal_auth::{ErrorKind, TokenSource as _};
use serde_json::json;
use support::{mock, rsa_key, source};

#[tokio::test]
async fn malformed_token_responses_are_typed_errors() {
    let mock = mock().await;
    let source = source(&mock, rsa_key());
    let ok = |body: serde_json::Value| MockResponse::json(&body);
    let cases: Vec<(MockResponse, ErrorKind)> = vec![
        (MockResponse::garbage(), ErrorKind::InvalidTokenResponse),
        (
            MockResponse::new(StatusCode::OK, "<html><body>Login</body></html>")
                .header("content-type", "text/html"),
            ErrorKind::InvalidTokenResponse,
        ),
        (
            MockResponse::new(
                StatusCode::BAD_GATEWAY,
                "<html><body>502 Bad Gateway</body></html>",
            ),
            ErrorKind::TokenRejected,
        ),
        (
            ok(json!({"token_type": "Bearer", "expires_in": 300})),
            ErrorKind::InvalidTokenResponse,
        ),
        (
            ok(json!({"access_token": "t", "token_type": "DPoP"})),
            ErrorKind::InvalidTokenResponse,
        ),
        (
            ok(json!({"access_token": "t", "token_type": "Bearer", "expires_in": -1})),
            ErrorKind::InvalidTokenResponse,
        ),
        (
            ok(json!({"access_token": "t", "token_type": "Bearer", "expires_in": 1e300})),
            ErrorKind::InvalidTokenResponse,
        ),
        (
            ok(json!({"access_token": "t", "token_type": "Bearer", "expires_in": "five minutes"})),
            ErrorKind::InvalidTokenResponse,
        ),
        (
            MockResponse::oversized(10 * 1024 * 1024),
            ErrorKind::ResponseTooLarge,
        ),
        (
            MockResponse::oversized(10 * 1024 * 1024).chunked(),
            ErrorKind::ResponseTooLarge,
        ),
        // An error page is read up to 64 KiB, for its message: the status counts.
        (
            MockResponse::new(StatusCode::BAD_REQUEST, vec![b'x'; 200 * 1024]).chunked(),
            ErrorKind::TokenRejected,
        ),
    ];
    for (i, (response, kind)) in cases.into_iter().enumerate() {
        mock.push_token_response(response);
        let err = source.fetch().await.expect_err("the token request fails");
        assert_eq!(err.kind(), kind, "case {i}: {err}");
    }
    let err = {
        mock.push_token_response(MockResponse::new(
            StatusCode::BAD_GATEWAY,
            "<html><body>502 Bad Gateway</body></html>",
        ));
        source.fetch().await.expect_err("the token request fails")
    };
    assert_eq!(
        err.body_snippet(),
        Some("<html><body>502 Bad Gateway</body></html>")
    );
    assert!(source.fetch().await.is_ok(), "the source is unharmed");
}

/// A `429` or `503` with a big error page (a WAF's or a maintenance page) keeps its meaning: its
/// status, its `Retry-After`, transient. Only the first 64 KiB of the page are read.
#[tokio::test]
async fn a_big_error_page_keeps_its_status_and_retry_after() {
    let mock = mock().await;
    let source = source(&mock, rsa_key());
    let page = format!("<html>{}</html>", "x".repeat(100 * 1024));
    for chunked in [false, true] {
        for status in [
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            let response = MockResponse::new(status, page.clone())
                .header("content-type", "text/html")
                .header("retry-after", "120");
            let response = if chunked {
                response.chunked()
            } else {
                response
            };
            mock.push_token_response(response);
            let error = source.fetch().await.unwrap_err();
            let what = format!("{status}, chunked {chunked}: {error}");
            assert_eq!(error.kind(), ErrorKind::TokenRejected, "{what}");
            assert_eq!(error.status(), Some(status), "{what}");
            assert_eq!(
                error.retry_after(),
                Some(Duration::from_secs(120)),
                "{what}"
            );
            assert!(error.is_transient(), "{what}");
        }
    }
}
