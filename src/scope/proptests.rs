//! Property test of the scope check: on URLs spelled the way clients and servers write and
//! normalise them, the layer's, the middleware's and the CLI's checks never give a token where an
//! independent resolving reference says no, and never refuse a plain URL under the base.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_scope_check_agrees_with_a_resolving_reference(
        scheme in prop_oneof![Just("https"), Just("http"), Just("HTTPS")],
        host in prop_oneof![
            Just("fhir.example.org"),
            Just("FHIR.example.org"),
            Just("fhir.example.org.evil.org"),
            Just("fhir.example.or"),
            Just("fhir.exampla.org"),
            Just("user@fhir.example.org"),
        ],
        port in prop_oneof![Just(""), Just(":443"), Just(":8443"), Just(":80")],
        base in prop_oneof![
            3 => Just("fhir/DEFAULT"),
            1 => Just("fhir/DEFAULTX"),
            1 => Just("fhir/DEFAULS"),
            1 => Just("fhiR/DEFAULT"),
            1 => Just("fhir"),
        ],
        segments in prop::collection::vec(
            prop_oneof![
                Just("Patient"), Just("1"), Just("."), Just(".."), Just("%2e"), Just("%2E%2e"),
                Just("v1.0"), Just("a%2Fb"), Just(""), Just("DEFAULT"), Just("OTHER"),
                Just("..;"), Just("..;x=1"), Just(".;"), Just("%2e%2e;jsessionid=1"),
                Just("a;b"), Just("..\\OTHER"), Just("a\\b"), Just("%5c"), Just("%5C.."),
                Just("%2f"), Just("%252e%252e"), Just("x.y;z"), Just("%41"),
                Just("..%00"), Just("%u002e%u002e"), Just("%U002E"), Just("a%00"),
                Just("..%00x"), Just("x%u002f.."), Just("%u005c"),
            ],
            0..5,
        ),
    ) {
        let scope = super::FhirScope::new(
            &url::Url::parse("https://fhir.example.org/fhir/DEFAULT").unwrap(),
        )
        .unwrap();
        let mut path = base.to_owned();
        for segment in &segments {
            path.push('/');
            path.push_str(segment);
        }
        let text = format!("{scheme}://{host}{port}/{path}");
        let expected = resolving_reference(&text, &path);
        // The layer's check on the URI as written (when `http` parses it), the middleware's on
        // the URL reqwest sends, and `covers`/the CLI's on the text: never a token where the
        // reference says no, and no refusal of a plain URL under the base.
        if let Ok(uri) = text.parse::<http::Uri>() {
            let fast = scope.matches_uri(&uri);
            prop_assert!(!fast || expected, "layer: {}", text);
            if is_plain(&path) && !host.contains('@') {
                prop_assert_eq!(fast, expected, "layer: {}", text);
            }
        }
        if let Ok(url) = url::Url::parse(&text) {
            let middleware = scope.matches_url(&url);
            prop_assert!(!middleware || expected_for_normalised(&url), "middleware: {}", text);
        }
        let covers = scope.matches_text(&text);
        prop_assert!(!covers || expected, "covers: {}", text);
        if is_plain(&path) && !host.contains('@') {
            prop_assert_eq!(covers, expected, "covers: {}", text);
        }
    }
}

/// No byte a server could resolve: letters, digits and slashes only.
fn is_plain(path: &str) -> bool {
    path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/')
}

/// An independent reference: the origin and path as the url crate normalises them are under
/// the base, and no segment of the raw path after the base, split on `/` and `\\`, stripped of
/// `;` parameters and percent-decoded once (as Tomcat does; `%u002e` as IIS and old Jetty do, and
/// NULs dropped, as old Jetty cut at them), is `.` or `..` or holds a separator.
fn resolving_reference(text: &str, raw_path: &str) -> bool {
    let Ok(url) = url::Url::parse(text) else {
        return false;
    };
    if !expected_for_normalised(&url) {
        return false;
    }
    let Some(rest) = raw_path.strip_prefix("fhir/DEFAULT") else {
        return false;
    };
    rest.split(['/', '\\']).skip(1).all(|segment| {
        let name = segment.split(';').next().unwrap_or("");
        let name = ["%u002e", "%U002E", "%u002f", "%U002F", "%u005c", "%U005C"]
            .iter()
            .zip([".", ".", "/", "/", "\\", "\\"])
            .fold(name.to_owned(), |name, (from, to)| name.replace(from, to));
        let decoded = percent_decode(&name);
        // A server that drops NULs, and one that cuts the segment at the first.
        let dropped: Vec<u8> = decoded.iter().copied().filter(|&byte| byte != 0).collect();
        let cut = decoded.split(|&byte| byte == 0).next().unwrap_or_default();
        [&dropped[..], cut]
            .iter()
            .all(|name| *name != b"." && *name != b"..")
            && !decoded.contains(&b'/')
            && !decoded.contains(&b'\\')
    }) && !raw_path.contains('\\')
}

fn expected_for_normalised(url: &url::Url) -> bool {
    url.scheme() == "https"
        && url.host_str() == Some("fhir.example.org")
        && url.port_or_known_default() == Some(443)
        && url.username().is_empty()
        && (url.path() == "/fhir/DEFAULT" || url.path().starts_with("/fhir/DEFAULT/"))
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}
