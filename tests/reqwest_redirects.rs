//! `KoppeltaalAuthMiddleware` and redirects, which reqwest follows inside the client, below the
//! middleware: `Authenticator::redirect_policy` keeps the token inside the FHIR base and stops a
//! chain coming back into it without the token; a `401` that a redirect led to outside the base
//! renews nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::StatusCode;
use reqwest_middleware::ClientWithMiddleware;
use support::RecordingServer;
use support::middleware::{client, guarded};

/// A chain from the FHIR base to another origin and back: reqwest takes the token out on the
/// way there, so the hop back goes without it, and its `401` says nothing about the token. With
/// reqwest's default policy that `401` renewed the token (and replayed the chain); with
/// `redirect_policy` the hop back is not followed: the `3xx` is returned, nothing renewed.
#[tokio::test]
async fn the_redirect_policy_stops_a_chain_coming_back_into_the_base_without_the_token() {
    let server = RecordingServer::start().await;
    let elsewhere = RecordingServer::start().await;
    let auth = server.authenticator();
    let encode =
        |url: &str| url::form_urlencoded::byte_serialize(url.as_bytes()).collect::<String>();
    let back = server.url("/fhir/DEFAULT/Patient/2?status=401");
    let away = format!("{}?to={}", elsewhere.url("/a"), encode(&back));
    let first = server.url(&format!("/fhir/DEFAULT/Patient/1?to={}", encode(&away)));
    let response = client(&auth).get(&first).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let seen = server.seen();
    assert!(
        seen[1].authorization.is_none(),
        "back without the token: {seen:?}"
    );
    assert_eq!(
        auth.stats().invalidations,
        1,
        "reqwest's own policy: renewed for nothing"
    );
    let guarded = guarded(&auth);
    let before = server.seen().len();
    let response = guarded.get(&first).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(response.url().as_str(), away, "the hop back is returned");
    assert_eq!(
        server.seen().len(),
        before + 1,
        "only the first hop reached the base"
    );
    assert_eq!(auth.stats().invalidations, 1, "nothing renewed");
}

/// reqwest follows redirects below the middleware and keeps `Authorization` on one origin: with
/// `redirect_policy` a redirect from the FHIR base to elsewhere on its server is returned, not
/// followed (with reqwest's default policy the token went along: the first assertion block),
/// while one within the base is followed.
#[tokio::test]
async fn the_redirect_policy_keeps_the_token_inside_the_fhir_base() {
    let server = RecordingServer::start().await;
    let auth = server.authenticator();
    let away = |to: &str| {
        let to = server.url(to);
        server.url(&format!("/fhir/DEFAULT/Patient/1?to={to}"))
    };
    // reqwest's default policy: the token goes to /admin.
    client(&auth).get(away("/admin")).send().await.unwrap();
    let seen = server.seen();
    assert_eq!(seen[1].path, "/admin");
    assert!(seen[1].authorization.is_some(), "{seen:?}");
    let guarded = guarded(&auth);
    for to in ["/admin", "/fhir/OTHER/Patient/1", "/fhir/DEFAULT/../admin"] {
        let before = server.seen().len();
        let response = guarded.get(away(to)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT, "{to}");
        assert_eq!(server.seen().len(), before + 1, "{to}: not followed");
    }
    // Two hops: to another origin (followed: reqwest drops the token), then within that origin,
    // where reqwest puts the first request's headers back: the token, without the policy.
    let elsewhere = RecordingServer::start().await;
    let two_hops = |client: &ClientWithMiddleware| {
        let target = format!("{}?to={}", elsewhere.url("/a"), elsewhere.url("/b"));
        client.get(server.url(&format!("/fhir/DEFAULT/Patient/1?to={target}")))
    };
    two_hops(&client(&auth)).send().await.unwrap();
    let seen = elsewhere.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].authorization.is_none(), "{seen:?}");
    assert!(
        seen[1].authorization.is_some(),
        "{seen:?}: reqwest's own policy"
    );
    let response = two_hops(&guarded).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    let seen = elsewhere.seen();
    assert_eq!(seen.len(), 3, "{seen:?}: the second hop is not followed");
    assert!(seen[2].authorization.is_none(), "{seen:?}");
    // Within the base: followed, with the token.
    let response = guarded
        .get(away("/fhir/DEFAULT/Patient/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = server.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/fhir/DEFAULT/Patient/2");
    assert!(last.authorization.is_some());
}

/// A `401` from another origin that a redirect led to (reqwest sent no token there) says nothing
/// about the token: it is returned as is, the token is kept and the request is not replayed.
#[tokio::test]
async fn a_401_from_a_redirect_target_outside_the_base_keeps_the_token() {
    let server = RecordingServer::start().await;
    let storage = RecordingServer::start().await;
    let auth = server.authenticator();
    let blob = storage.url("/blob?status=401");
    let url = server.url(&format!("/fhir/DEFAULT/Binary/1?to={blob}"));
    for client in [client(&auth), guarded(&auth)] {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let stats = auth.stats();
    assert_eq!(
        (stats.fetches_ok, stats.invalidations, stats.replays),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_eq!(server.seen().len(), 2, "each request sent once");
    assert!(
        storage
            .seen()
            .iter()
            .all(|seen| seen.authorization.is_none())
    );
}
