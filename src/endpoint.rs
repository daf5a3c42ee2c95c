//! URL checks shared by the token endpoint, discovery and the FHIR base.

use std::net::IpAddr;

use url::Url;

use crate::error::Error;

/// Whether `url` points at this machine: `localhost`, 127.0.0.0/8 or `::1`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Parses an absolute endpoint URL and requires HTTPS, except for loopback hosts (tests and the
/// mock server): bearer tokens and client assertions are credentials.
pub(crate) fn parse_secure_url(what: &'static str, input: &str) -> Result<Url, Error> {
    if has_stray_bytes(input) {
        return Err(Error::config(format!(
            "{what} holds whitespace or a control character (a trailing newline from a file or \
             a secret?)"
        )));
    }
    let url = Url::parse(input)
        .map_err(|err| Error::config(format!("{what} is not an absolute URL")).with_source(err))?;
    check_secure(what, &url)?;
    Ok(url)
}

/// Whether `input` holds ASCII whitespace or a control character. A URL parser drops them
/// silently (leading and trailing ones, and tabs and newlines anywhere), while a token endpoint
/// goes into the assertion's `aud` as written, which the server compares byte for byte.
pub(crate) fn has_stray_bytes(input: &str) -> bool {
    input
        .bytes()
        .any(|byte| byte.is_ascii_whitespace() || byte.is_ascii_control())
}

pub(crate) fn check_secure(what: &'static str, url: &Url) -> Result<(), Error> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => {
            return Err(Error::config(format!(
                "{what} must use https (plain http is allowed for loopback hosts only)"
            )));
        }
        _ => return Err(Error::config(format!("{what} must be an https URL"))),
    }
    if url.host().is_none() {
        return Err(Error::config(format!("{what} has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::config(format!(
            "{what} must not contain credentials"
        )));
    }
    if url.fragment().is_some() {
        return Err(Error::config(format!("{what} must not contain a fragment")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_required_except_loopback() {
        for ok in [
            "https://auth.example.org/oauth2/token",
            "http://127.0.0.1:8080/token",
            "http://127.1.2.3/token",
            "http://[::1]:9/token",
            "http://localhost:3000/token",
        ] {
            assert!(parse_secure_url("token endpoint", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://auth.example.org/token",
            "http://10.0.0.1/token",
            "ftp://auth.example.org/token",
            "/relative/token",
            "https://auth.example.org/token\n",
            " https://auth.example.org/token",
            "https://auth.example.org/to\tken",
            "https://user:pw@auth.example.org/token",
            "https://auth.example.org/token#frag",
            "not a url",
        ] {
            let err = parse_secure_url("token endpoint", bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config, "{bad}");
        }
    }
}
