//! The policy's pure functions, without a clock.
use super::*;
use crate::ErrorKind;
use http::StatusCode;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn refresh_ahead_follows_design_section_3() {
    let p = RefreshPolicy::default();
    // (lifetime, window without jitter, window with the largest jitter)
    let cases = [
        (secs(300), secs(60), secs(90)),
        (secs(5), Duration::from_millis(2500), secs(3)),
        (secs(2), secs(1), Duration::from_millis(1200)),
        (secs(60), secs(30), secs(36)),
        (
            secs(86_400),
            Duration::from_secs(17_280),
            Duration::from_secs(25_920),
        ),
    ];
    for (lifetime, lo, hi) in cases {
        assert_eq!(p.refresh_ahead_for(lifetime, 0.0), lo, "{lifetime:?}");
        let top = p.refresh_ahead_for(lifetime, 1.0);
        assert!(
            (top.as_secs_f64() - hi.as_secs_f64()).abs() < 1e-6,
            "{lifetime:?}: {top:?}"
        );
    }
}

#[test]
fn expiry_margin_is_ten_seconds_or_ten_percent() {
    let p = RefreshPolicy::default();
    assert_eq!(p.expiry_margin_for(secs(300)), secs(10));
    assert_eq!(p.expiry_margin_for(secs(60)), secs(6));
    assert_eq!(p.expiry_margin_for(secs(2)), Duration::from_millis(200));
    assert_eq!(p.expiry_margin_for(secs(1)), Duration::from_millis(100));
}

#[test]
fn every_lifetime_refreshes_before_its_margin() {
    let p = RefreshPolicy::default();
    for lifetime_ms in [
        1_000u64, 1_500, 2_000, 5_000, 30_000, 300_000, 3_600_000, 86_400_000,
    ] {
        let lifetime = Duration::from_millis(lifetime_ms);
        for random in [0.0, 0.5, 0.999] {
            let ahead = p.refresh_ahead_for(lifetime, random);
            let margin = p.expiry_margin_for(lifetime);
            assert!(ahead > margin, "{lifetime:?}: refresh before the margin");
            assert!(
                ahead <= lifetime / 2 + lifetime / 10,
                "{lifetime:?}: not before half-life"
            );
        }
    }
}

#[test]
fn no_setting_refreshes_a_token_in_its_first_tenth() {
    // The whole lifetime refresh-ahead, and the largest jitter on top.
    let p = RefreshPolicy::default()
        .refresh_ahead(MAX_TOKEN_LIFETIME, 1.0, 1.0)
        .refresh_jitter(1.0);
    for lifetime in [secs(1), secs(60), secs(300), MAX_TOKEN_LIFETIME] {
        for random in [0.0, 0.5, 0.999] {
            assert_eq!(
                p.refresh_ahead_for(lifetime, random),
                lifetime.mul_f64(MAX_REFRESH_AHEAD_SHARE),
                "{lifetime:?}"
            );
        }
    }
    assert_eq!(
        RefreshPolicy::default()
            .refresh_jitter(1.0)
            .refresh_ahead_for(secs(300), 0.999),
        secs(270)
    );
}

#[test]
fn backoff_doubles_with_jitter_and_caps() {
    let p = RefreshPolicy::default();
    let transient = Error::new(ErrorKind::Transport, "");
    assert_eq!(
        p.backoff_for(1, &transient, 0.0),
        Duration::from_millis(200)
    );
    assert_eq!(
        p.backoff_for(1, &transient, 1.0),
        Duration::from_millis(200)
    );
    assert_eq!(
        p.backoff_for(2, &transient, 1.0),
        Duration::from_millis(400)
    );
    assert_eq!(
        p.backoff_for(3, &transient, 1.0),
        Duration::from_millis(800)
    );
    assert_eq!(
        p.backoff_for(3, &transient, 0.5),
        Duration::from_millis(500)
    );
    assert_eq!(p.backoff_for(9, &transient, 1.0), secs(30));
    assert_eq!(p.backoff_for(u32::MAX, &transient, 1.0), secs(30));
}

#[test]
fn permanent_errors_wait_the_cap_and_retry_after_is_honoured() {
    let p = RefreshPolicy::default();
    let denied = Error::new(ErrorKind::TokenRejected, "").with_status(StatusCode::UNAUTHORIZED);
    assert_eq!(p.backoff_for(1, &denied, 0.0), secs(30));
    let limited = Error::new(ErrorKind::TokenRejected, "")
        .with_status(StatusCode::TOO_MANY_REQUESTS)
        .with_retry_after(Some(secs(2)));
    assert_eq!(p.backoff_for(1, &limited, 0.0), secs(2));
    let far = Error::new(ErrorKind::TokenRejected, "")
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .with_retry_after(Some(secs(3_600)));
    assert_eq!(p.backoff_for(1, &far, 0.0), MAX_RETRY_AFTER);
}

#[test]
fn fractions_are_clamped() {
    let p = RefreshPolicy::default()
        .refresh_jitter(f64::NAN)
        .refresh_ahead(secs(1), 7.0, -1.0);
    assert_eq!(p.jitter_fraction, 0.0);
    // A zero window: refreshed when the margin (10 s of 100 s) begins, never after it.
    assert_eq!(p.refresh_ahead_for(secs(100), 0.5), secs(10));
}

#[test]
fn a_window_at_or_below_the_margin_still_refreshes_before_the_margin() {
    let big_margin = RefreshPolicy::default()
        .expiry_margin(secs(120), 0.5)
        .refresh_jitter(0.0);
    // Window 60 s, margin 120 s: 60 s before the margin begins.
    assert_eq!(big_margin.refresh_ahead_for(secs(300), 0.0), secs(180));
    let exact = RefreshPolicy::default()
        .refresh_ahead(Duration::ZERO, 0.0, 0.0)
        .refresh_jitter(0.0);
    assert_eq!(exact.refresh_ahead_for(secs(300), 0.0), secs(10));
    for margin in [secs(1), secs(10), secs(30), secs(60), secs(100), secs(200)] {
        for window in [secs(0), secs(5), secs(30), secs(60), secs(120)] {
            let p = RefreshPolicy::default()
                .expiry_margin(margin, 1.0)
                .refresh_ahead(window, 0.0, 1.0)
                .refresh_jitter(0.0);
            let (ahead, margin) = (
                p.refresh_ahead_for(secs(300), 0.0),
                p.expiry_margin_for(secs(300)),
            );
            let capped = ahead == secs(300).mul_f64(MAX_REFRESH_AHEAD_SHARE);
            assert!(
                capped || ahead >= margin + window.min(margin),
                "{margin:?} {window:?}"
            );
            assert!(
                ahead >= window.min(secs(270)),
                "never later than the window asks"
            );
        }
    }
}
