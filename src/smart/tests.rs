//! Parsing and checking SMART configuration documents, and where they are fetched from.

use super::*;

fn base(s: &str) -> Url {
    Url::parse(s).unwrap()
}

#[test]
fn well_known_url_with_and_without_trailing_slash() {
    for b in [
        "https://fhir.example.org/fhir/DEFAULT",
        "https://fhir.example.org/fhir/DEFAULT/",
    ] {
        assert_eq!(
            well_known_url(&base(b)).unwrap().as_str(),
            "https://fhir.example.org/fhir/DEFAULT/.well-known/smart-configuration"
        );
    }
}

#[test]
fn absolute_endpoint_is_kept_byte_for_byte() {
    let doc = br#"{"token_endpoint":"https://Auth.example.org:443/oauth2/token/","foo":1}"#;
    let config =
        SmartConfiguration::from_json(doc, &base("https://fhir.example.org/fhir")).unwrap();
    assert_eq!(
        config.token_endpoint,
        "https://Auth.example.org:443/oauth2/token/"
    );
    assert_eq!(config.other["foo"], 1);
}

#[test]
fn relative_endpoints_resolve_against_the_base() {
    let b = base("https://fhir.example.org/fhir/DEFAULT");
    let cases = [
        (
            "oauth2/token",
            "https://fhir.example.org/fhir/DEFAULT/oauth2/token",
        ),
        ("/oauth2/token", "https://fhir.example.org/oauth2/token"),
        ("../auth/token", "https://fhir.example.org/fhir/auth/token"),
    ];
    for (relative, expected) in cases {
        let doc = format!(r#"{{"token_endpoint":"{relative}"}}"#);
        let config = SmartConfiguration::from_json(doc.as_bytes(), &b).unwrap();
        assert_eq!(config.token_endpoint, expected, "{relative}");
    }
}

#[test]
fn refuses_unusable_documents() {
    let b = base("https://fhir.example.org/fhir");
    let cases: &[(&str, ErrorKind, &str)] = &[
        ("{}", ErrorKind::Discovery, "no token_endpoint"),
        (
            r#"{"token_endpoint":""}"#,
            ErrorKind::Discovery,
            "no token_endpoint",
        ),
        (
            r#"{"token_endpoint":5}"#,
            ErrorKind::Discovery,
            "not a string",
        ),
        ("<html></html>", ErrorKind::Discovery, "not a JSON object"),
        (
            r#"{"token_endpoint":"https://a/t","token_endpoint_auth_methods_supported":["client_secret_basic"]}"#,
            ErrorKind::Discovery,
            "private_key_jwt",
        ),
        (
            r#"{"token_endpoint":"https://a/t","token_endpoint_auth_methods_supported":"private_key_jwt"}"#,
            ErrorKind::Discovery,
            "malformed member",
        ),
        (
            r#"{"token_endpoint":"https://a/t","token_endpoint_auth_signing_alg_values_supported":["RS512",5]}"#,
            ErrorKind::Discovery,
            "malformed member",
        ),
        (
            r#"{"token_endpoint":"http://auth.example.org/t"}"#,
            ErrorKind::Config,
            "https",
        ),
        // An https server pointing the assertion at a plain port on this machine.
        (
            r#"{"token_endpoint":"http://127.0.0.1:15000/admin"}"#,
            ErrorKind::Discovery,
            "plain-http",
        ),
        (
            r#"{"token_endpoint":"/oauth2/token\n"}"#,
            ErrorKind::Discovery,
            "whitespace",
        ),
        (
            r#"{"token_endpoint":"https://auth.example.org/token "}"#,
            ErrorKind::Discovery,
            "whitespace",
        ),
    ];
    for (doc, kind, expected) in cases {
        let err = SmartConfiguration::from_json(doc.as_bytes(), &b).unwrap_err();
        assert_eq!(err.kind(), *kind, "{doc}");
        assert!(err.to_string().contains(expected), "{doc}: {err}");
    }
}

#[test]
fn a_huge_malformed_member_is_not_echoed_whole() {
    let b = base("https://fhir.example.org/fhir");
    let huge = "s".repeat(60_000);
    let doc = format!(
        r#"{{"token_endpoint":"https://a/t","token_endpoint_auth_methods_supported":"{huge}"}}"#
    );
    let err = SmartConfiguration::from_json(doc.as_bytes(), &b).unwrap_err();
    assert!(err.to_string().contains("malformed member"), "{err}");
    let all = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
    assert!(all.len() < 1_500, "{} bytes: {all:.300}", all.len());
}

#[test]
fn an_unread_member_of_another_type_is_kept_as_published() {
    let b = base("https://fhir.example.org/fhir");
    let doc = serde_json::json!({
        "token_endpoint": "https://a/t",
        "issuer": 7,
        "jwks_uri": ["https://a/jwks"],
        "introspection_endpoint": {"url": "https://a/i"},
        "grant_types_supported": "client_credentials",
        "scopes_supported": ["system/*.read", 5],
        "capabilities": null,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    });
    let config = SmartConfiguration::from_json(&serde_json::to_vec(&doc).unwrap(), &b).unwrap();
    assert_eq!(config.token_endpoint, "https://a/t");
    assert_eq!(
        config.token_endpoint_auth_methods_supported.as_deref(),
        Some(&["private_key_jwt".to_owned()][..])
    );
    let unread = (
        &config.issuer,
        &config.jwks_uri,
        &config.introspection_endpoint,
        &config.grant_types_supported,
        &config.scopes_supported,
        &config.capabilities,
    );
    assert_eq!(unread, (&None, &None, &None, &None, &None, &None));
    let members = ["issuer", "jwks_uri", "introspection_endpoint"];
    for name in members
        .into_iter()
        .chain(["grant_types_supported", "scopes_supported"])
    {
        assert_eq!(config.other.get(name), Some(&doc[name]), "{name}");
    }
    // Exact on output: it serialises back to what was published (`null` aside).
    let mut published = doc;
    published.as_object_mut().unwrap().remove("capabilities");
    assert_eq!(serde_json::to_value(&config).unwrap(), published);
    // Members of the right type still fill their fields.
    let fitting =
        br#"{"token_endpoint":"https://a/t","issuer":"https://a","scopes_supported":["s"]}"#;
    let config = SmartConfiguration::from_json(fitting, &b).unwrap();
    assert_eq!(config.issuer.as_deref(), Some("https://a"));
    assert_eq!(config.scopes_supported, Some(vec!["s".to_owned()]));
    assert!(config.other.is_empty(), "{:?}", config.other);
}

#[test]
fn a_loopback_fhir_base_may_use_a_plain_http_loopback_token_endpoint() {
    let config = SmartConfiguration::from_json(
        br#"{"token_endpoint":"http://127.0.0.1:15000/token"}"#,
        &base("http://127.0.0.1:15000/fhir"),
    )
    .unwrap();
    assert_eq!(config.token_endpoint, "http://127.0.0.1:15000/token");
}

#[test]
fn signing_alg_support() {
    let b = base("https://fhir.example.org/fhir");
    let koppeltaal =
        SmartConfiguration::from_json(br#"{"token_endpoint":"https://a/t"}"#, &b).unwrap();
    assert!(koppeltaal.supports_signing_alg(Algorithm::RS512));
    let smart = SmartConfiguration::from_json(
        br#"{"token_endpoint":"https://a/t","token_endpoint_auth_methods_supported":["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported":["RS384","ES384"]}"#,
        &b,
    )
    .unwrap();
    assert!(smart.supports_signing_alg(Algorithm::ES384));
    assert!(!smart.supports_signing_alg(Algorithm::RS512));
}
