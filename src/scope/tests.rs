//! Tests of the scope check: what gets the token, in every spelling a server may resolve.

use super::*;

fn scope(base: &str) -> FhirScope {
    FhirScope::new(&Url::parse(base).unwrap()).unwrap()
}

fn uri(s: &str) -> http::Uri {
    s.parse().unwrap()
}

#[test]
fn same_origin_and_under_the_path() {
    let s = scope("https://fhir.example.org/fhir/DEFAULT");
    for yes in [
        "https://fhir.example.org/fhir/DEFAULT",
        "https://fhir.example.org/fhir/DEFAULT/",
        "https://fhir.example.org/fhir/DEFAULT/Patient/1?_format=json",
        "https://FHIR.example.org:443/fhir/DEFAULT/Task",
        "HTTPS://fhir.example.org/fhir/DEFAULT/Task",
    ] {
        assert!(s.matches_uri(&uri(yes)), "{yes}");
        assert!(s.matches_url(&Url::parse(yes).unwrap()), "{yes}");
    }
    for no in [
        "http://fhir.example.org/fhir/DEFAULT/Patient",
        "https://fhir.example.org:8443/fhir/DEFAULT/Patient",
        "https://evil.example.org/fhir/DEFAULT/Patient",
        "https://fhir.example.org.evil.org/fhir/DEFAULT/Patient",
        "https://fhir.example.org/fhir/DEFAULTX/Patient",
        "https://fhir.example.org/fhir/OTHER/Patient",
        "https://fhir.example.org/",
        "https://fhir.example.org/fhir/DEFAULT/../admin",
        "https://fhir.example.org/fhir/DEFAULT/%2e%2e/admin",
        "https://user@fhir.example.org/fhir/DEFAULT/Patient",
        "https://fhir.example.org:80/fhir/DEFAULT/Patient",
        "https://fhir.example.org/fhir/DEFAULT/./Patient",
        "https://fhir.example.org/fhir/DEFAULT/..;/OTHER",
        "https://fhir.example.org/fhir/DEFAULT/..;x=1/OTHER",
        "https://fhir.example.org/fhir/DEFAULT/.%2e;/OTHER",
        "https://fhir.example.org/fhir/DEFAULT/..%2fOTHER",
        "https://fhir.example.org/fhir/DEFAULT/..%5COTHER",
        "https://fhir.example.org/fhir/DEFAULT/%2F",
        "/fhir/DEFAULT/Patient",
    ] {
        assert!(!s.matches_uri(&uri(no)), "{no}");
    }
    for no in [
        "http://fhir.example.org/fhir/DEFAULT/Patient",
        "https://fhir.example.org:8443/fhir/DEFAULT/Patient",
        "https://evil.example.org/fhir/DEFAULT/Patient",
        "https://fhir.example.org/fhir/DEFAULTX/Patient",
        "https://fhir.example.org/",
    ] {
        assert!(!s.matches_url(&Url::parse(no).unwrap()), "{no}");
    }
}

#[test]
fn a_backslash_after_the_base_gets_no_token() {
    let s = scope("https://fhir.example.org/fhir/DEFAULT");
    // `http` keeps a backslash as a plain byte; WHATWG parsers (reqwest) read it as `/`.
    let sneaky: http::Uri = "https://fhir.example.org/fhir/DEFAULT/..\\OTHER/Patient"
        .parse()
        .unwrap();
    assert!(!s.matches_uri(&sneaky));
    assert!(!s.matches_text("https://fhir.example.org/fhir/DEFAULT/..\\OTHER/Patient"));
    assert!(!s.matches_text("https://fhir.example.org/fhir/DEFAULT/a\\b"));
    // Path parameters on an ordinary segment are fine.
    assert!(s.matches_text("https://fhir.example.org/fhir/DEFAULT/Patient;x=1"));
}

#[test]
fn the_quick_scan_finds_dots_and_percents_anywhere() {
    for len in 0..40 {
        let clean = "a".repeat(len);
        assert!(!may_escape(clean.as_bytes()));
        for at in 0..len {
            for c in ['.', '%', '\\'] {
                let mut dirty = clean.clone().into_bytes();
                dirty[at] = c as u8;
                assert!(may_escape(&dirty), "{len} {at} {c}");
            }
        }
    }
    assert!(!may_escape(b"/fhir/DEFAULT/Patient/123"));
    // Bytes that differ from '.' and '%' by the high bit or borrow tricks are not found.
    assert!(!may_escape(&[
        0xae,
        0xa5,
        0x2f,
        0x2d,
        0x24,
        0x26,
        0x00,
        0xff,
        0x2e ^ 0x80
    ]));
}

#[test]
fn same_bytes_is_slice_equality() {
    for len in 0..40usize {
        let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        assert!(same_bytes(&a, &a.clone()));
        for at in 0..len {
            let mut b = a.clone();
            b[at] ^= 0x20;
            assert!(!same_bytes(&a, &b), "{len} {at}");
        }
        assert!(!same_bytes(&a, &a[..len.saturating_sub(1)]) || len == 0);
    }
}

#[test]
fn encoded_separators_are_recognised_in_every_spelling() {
    for separator in [
        "%2f",
        "%2F",
        "a%5cb",
        "%5C",
        "%u002f",
        "x%U002F..",
        "%u005c",
        "%U005C",
    ] {
        assert!(has_encoded_separator(separator.as_bytes()), "{separator}");
    }
    for other in ["%2", "%u002", "%u002e", "%25", "a/b", "%u00", "%"] {
        assert!(!has_encoded_separator(other.as_bytes()), "{other}");
    }
}

#[test]
fn dot_segments_are_recognised_in_every_spelling() {
    for dot in [
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2E",
        ".%2e",
        "%2e.",
        "%u002e",
        "%U002E%u002E",
        ".%u002e",
        "..%00",
        "%00..",
        ".%00",
        "%2e%00%2e",
        "..%00x",
        ".%00.html",
    ] {
        assert!(is_dot_segment(dot.as_bytes()), "{dot}");
    }
    for other in [
        "",
        "...",
        "a.",
        ".a",
        "%2",
        "%2f",
        "Patient",
        "%2e%2e%2e",
        "v1.0",
        "%00",
        "%u002",
        "%u002f",
        "...%00",
        "a%00..",
    ] {
        assert!(!is_dot_segment(other.as_bytes()), "{other}");
    }
}

#[test]
fn dots_in_the_base_are_the_url_parsers_business() {
    // A dot in a segment name is no dot segment; only the part after the base is scanned.
    let s = scope("https://fhir.example.org/fhir/v1.0");
    assert!(s.matches_uri(&uri("https://fhir.example.org/fhir/v1.0/Patient/1")));
    assert!(!s.matches_uri(&uri("https://fhir.example.org/fhir/v1.0/../admin")));
    assert!(!s.matches_uri(&uri("https://fhir.example.org/fhir/v1.0/%2E%2e/admin")));
    // Dot segments in the configured base are resolved before it becomes a scope.
    let s = scope("https://fhir.example.org/other/%2e%2E/fhir/./DEFAULT");
    assert_eq!(s.path, "/fhir/DEFAULT");
    assert!(s.matches_uri(&uri("https://fhir.example.org/fhir/DEFAULT/Task")));
    assert!(!s.matches_uri(&uri(
        "https://fhir.example.org/other/%2e%2E/fhir/./DEFAULT/Task"
    )));
}

#[test]
fn root_base_and_loopback() {
    let s = scope("http://127.0.0.1:8080/");
    assert!(s.matches_uri(&uri("http://127.0.0.1:8080/Patient/1")));
    assert!(s.matches_uri(&uri("http://127.0.0.1:8080")));
    assert!(!s.matches_uri(&uri("http://127.0.0.1:8081/Patient/1")));
    assert!(!s.matches_uri(&uri("http://localhost:8080/Patient/1")));
    let v6 = scope("http://[::1]:9000/fhir");
    assert!(v6.matches_uri(&uri("http://[::1]:9000/fhir/Patient")));
    assert!(v6.matches_url(&Url::parse("http://[::1]:9000/fhir/Patient").unwrap()));
}

#[test]
fn plain_http_bases_are_refused_off_loopback() {
    let err = FhirScope::new(&Url::parse("http://fhir.example.org/fhir").unwrap()).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Config);
    assert!(FhirScope::new(&Url::parse("https://fhir.example.org/fhir?x=1").unwrap()).is_err());
}
