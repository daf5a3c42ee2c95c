//! The token request's form body, built in memory that is wiped when the body is dropped: it
//! holds the signed client assertion (see `crate::wipe`).

use bytes::Bytes;
use zeroize::Zeroizing;

use super::CLIENT_ASSERTION_TYPE;

/// `grant_type=client_credentials&client_assertion_type=...&client_assertion=<jwt>[&scope=...]`,
/// form-encoded as reqwest's `form` would, in one buffer sized once (so no copy is left behind
/// by growing it) and wiped when the last handle on the body is dropped.
pub(super) fn token_request_body(assertion: &str, scope: Option<&str>) -> Bytes {
    let pairs = [
        ("grant_type", Some("client_credentials")),
        ("client_assertion_type", Some(CLIENT_ASSERTION_TYPE)),
        ("client_assertion", Some(assertion)),
        ("scope", scope),
    ];
    // Encoding makes a byte at most three (`%XX`); one `=` and one `&` per pair.
    let capacity: usize = pairs
        .iter()
        .filter_map(|(name, value)| Some(name.len() + 3 * (*value)?.len() + 2))
        .sum();
    let mut text = Zeroizing::new(String::with_capacity(capacity));
    let mut form = url::form_urlencoded::Serializer::new(&mut *text);
    for (name, value) in pairs {
        if let Some(value) = value {
            form.append_pair(name, value);
        }
    }
    form.finish();
    crate::wipe::bytes(Zeroizing::new(std::mem::take(&mut *text).into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_form_encoded_in_order_with_the_scope_only_when_set() {
        assert_eq!(
            &token_request_body("aaa.bbb.ccc", None)[..],
            b"grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3A\
              client-assertion-type%3Ajwt-bearer&client_assertion=aaa.bbb.ccc"
        );
        let body = token_request_body("a-b_c.d", Some("system/*.read launch&x=é"));
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(pairs[2], ("client_assertion".into(), "a-b_c.d".into()));
        assert_eq!(
            pairs[3],
            ("scope".into(), "system/*.read launch&x=é".into())
        );
        assert_eq!(pairs.len(), 4);
    }

    #[test]
    fn the_body_leaves_no_assertion_in_freed_memory() {
        const ASSERTION: &str = "eyJhbGciOiJSUzUxMiJ9.eyJpc3MiOiJrdC1mb3JtIn0.c2lnbmF0dXJlLWZvcm0";
        let found = crate::freed_scan::freed_blocks_holding(&[ASSERTION.as_bytes()], || {
            // A long scope comes after the assertion: a buffer grown for it would leave a copy.
            let long = "system/Patient.read ".repeat(40);
            for scope in [
                None,
                Some("system/*.cruds with spaces and %"),
                Some(&long[..]),
            ] {
                let body = token_request_body(ASSERTION, scope);
                drop(body.clone());
                drop(body);
            }
        });
        assert_eq!(found, 0, "freed blocks held the assertion");
    }
}
