//! Which requests get the token: those to the FHIR base's origin, under its path.

use url::Url;

use crate::endpoint::check_secure;
use crate::error::Error;

/// The FHIR base a token belongs to: scheme, host, effective port and path prefix
/// (RFC 6750 section 5.2, token redirection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FhirScope {
    scheme: String,
    /// The same scheme as `http` has it, for a cheap comparison on every request.
    uri_scheme: http::uri::Scheme,
    host: String,
    port: u16,
    /// The request authorities that mean this host and port: `host:port`, and `host` alone when
    /// the port is the scheme's default. Compared as strings, so that the per-request check
    /// parses nothing.
    authorities: Vec<String>,
    /// Without a trailing slash; empty for a base at the root.
    path: String,
}

impl FhirScope {
    /// The FHIR base as configured (`text`, handed back as set by `fhir_base_url()`), parsed,
    /// and its scope. Refused: whitespace or control characters (the parser would drop them),
    /// and a spelling the parser rewrites (a dot segment, a character it percent-encodes,
    /// `:0443`, a backslash): requests are built from the text, the scope from the parsed URL,
    /// so every such request would go out without the token.
    pub(crate) fn parse(text: &str) -> Result<(Url, Self), Error> {
        if crate::endpoint::has_stray_bytes(text) {
            return Err(Error::config(
                "FHIR base URL holds whitespace or a control character (a trailing newline from \
                 a file or a secret?)",
            ));
        }
        let url = Url::parse(text).map_err(|err| {
            Error::config("FHIR base URL is not an absolute URL").with_source(err)
        })?;
        let scope = Self::new(&url)?;
        if !scope.spelled_as(text) {
            return Err(Error::config(format!(
                "FHIR base URL is not in the form a URL parser gives it: write it as {}",
                url.as_str().trim_end_matches('/')
            )));
        }
        Ok((url, scope))
    }

    /// The scope of `base`, which must be HTTPS (or HTTP on a loopback host).
    pub(crate) fn new(base: &Url) -> Result<Self, Error> {
        check_secure("FHIR base URL", base)?;
        let host = base
            .host_str()
            .ok_or_else(|| Error::config("FHIR base URL has no host"))?
            .to_ascii_lowercase();
        let port = base
            .port_or_known_default()
            .ok_or_else(|| Error::config("FHIR base URL has no port"))?;
        if base.query().is_some() {
            return Err(Error::config("FHIR base URL must not have a query"));
        }
        // The common form first: no port when it is the default.
        let mut authorities = Vec::with_capacity(2);
        if base.port().is_none() {
            authorities.push(host.clone());
        }
        authorities.push(format!("{host}:{port}"));
        let uri_scheme = http::uri::Scheme::try_from(base.scheme())
            .map_err(|err| Error::config("FHIR base URL has an invalid scheme").with_source(err))?;
        Ok(Self {
            scheme: base.scheme().to_owned(),
            uri_scheme,
            host,
            port,
            authorities,
            path: base.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Whether `text`, the base as configured, is spelled so that a request URI made by
    /// appending to it is in this scope: the scheme and an authority this scope takes (any
    /// case), and the path exactly as the parser left it (a trailing slash aside).
    fn spelled_as(&self, text: &str) -> bool {
        let Some((scheme, rest)) = text.split_once("://") else {
            return false;
        };
        let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        scheme.eq_ignore_ascii_case(&self.scheme)
            && self
                .authorities
                .iter()
                .any(|ours| ours.eq_ignore_ascii_case(authority))
            && path.trim_end_matches('/') == self.path
    }

    /// Whether a request to `uri` may carry the token. A URI without scheme and authority (a
    /// relative request) never does.
    #[inline]
    pub(crate) fn matches_uri(&self, uri: &http::Uri) -> bool {
        // Cheapest test first: most requests of a FHIR client go to the base, and the others
        // usually differ in their authority.
        let Some(authority) = uri.authority() else {
            return false;
        };
        let authority = authority.as_str();
        // An authority with user info ("user@host") matches none of ours: no token.
        self.authorities.iter().any(|ours| {
            // Exact bytes first: clients nearly always write the host as configured.
            same_bytes(ours.as_bytes(), authority.as_bytes())
                || (ours.len() == authority.len() && ours.eq_ignore_ascii_case(authority))
        }) && uri.scheme() == Some(&self.uri_scheme)
            && self.path_matches(uri.path())
    }

    /// Whether the request's `Host` headers, if it has any, name this scope's host and port
    /// (any case): a client that sends its own `Host` (hyper-util and reqwest keep it) has the
    /// server route the request by it, so a `Host` naming another virtual host on the same
    /// server (another Koppeltaal domain behind one ingress) would take the token there.
    #[inline]
    pub(crate) fn takes_host(&self, headers: &http::HeaderMap) -> bool {
        headers.get_all(http::header::HOST).iter().all(|host| {
            self.authorities
                .iter()
                .any(|ours| ours.as_bytes().eq_ignore_ascii_case(host.as_bytes()))
        })
    }

    /// Whether a request for `text`, a URL as a caller writes it, may carry the token: the one
    /// decision for [`Authenticator::covers`](crate::Authenticator::covers) and the CLI. Both
    /// spellings a client may send must pass: the URI as written (what the tower layer sees and
    /// hyper sends), and the URL as a WHATWG parser normalises it (what reqwest sends).
    pub(crate) fn matches_text(&self, text: &str) -> bool {
        text.parse::<http::Uri>()
            .is_ok_and(|uri| self.matches_uri(&uri))
            && Url::parse(text).is_ok_and(|url| self.matches_url(&url))
    }

    /// Whether a request to `url` may carry the token.
    pub(crate) fn matches_url(&self, url: &Url) -> bool {
        // User info matches none of ours, as for a URI.
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        self.matches(url.scheme(), host, url.port(), url.path())
    }

    fn matches(&self, scheme: &str, host: &str, port: Option<u16>, path: &str) -> bool {
        if !scheme.eq_ignore_ascii_case(&self.scheme) || !host.eq_ignore_ascii_case(&self.host) {
            return false;
        }
        let port = port.or(match self.scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        });
        port == Some(self.port) && self.path_matches(path)
    }

    /// Whether a request path is under the base *as a server would resolve it*: it starts with
    /// the base path at a segment boundary, and the rest has nothing a server could resolve out
    /// of the base. Refused after the base: a backslash (WHATWG parsers and some servers read it
    /// as `/`), an encoded slash or backslash (`%2f`, `%5c`: decoded by some), and a dot segment
    /// in any spelling (`.`, `..`, percent-encoded, or with `;` parameters, which Tomcat and
    /// Jetty strip: `..;x=1` is `..` to them).
    #[inline]
    fn path_matches(&self, path: &str) -> bool {
        let (path, prefix) = (path.as_bytes(), self.path.as_bytes());
        let Some((start, rest)) = path.split_at_checked(prefix.len()) else {
            return false;
        };
        if !same_bytes(start, prefix) {
            return false;
        }
        if !(rest.is_empty() || rest[0] == b'/') {
            return false;
        }
        // Anything to refuse needs a '.', a '%' or a '\': most paths are done after one byte
        // scan. Only the part after the base is scanned: the base itself went through the URL
        // parser, which removes dot segments, and `rest` starts at a segment boundary.
        !may_escape(rest) || rest.split(|&byte| byte == b'/').all(is_plain_segment)
    }
}

/// Whether `path` has a `.`, a `%` or a `\` at all, eight bytes at a time (paths are short; this
/// beats a SIMD search's set-up cost). Up to 16 bytes (the rest of most FHIR paths after the
/// base: `/Patient/123`) take two overlapping words and no loop.
#[inline]
fn may_escape(path: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The classic "has a zero byte" test on `word ^ needle`, for the three needles at once.
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x;
    let any = |word: u64| {
        (zero_bytes(word ^ (ONES * u64::from(b'.')))
            | zero_bytes(word ^ (ONES * u64::from(b'%')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\'))))
            & HIGHS
            != 0
    };
    let len = path.len();
    if len < 8 {
        return path.iter().any(|&b| matches!(b, b'.' | b'%' | b'\\'));
    }
    if len <= 16 {
        // Two words, overlapping when shorter: a search, so bytes seen twice are harmless.
        return any(word_at(path, 0)) | any(word_at(path, len - 8));
    }
    // Whole words, the last one overlapping the one before.
    let last = len - 8;
    let mut at = 0;
    loop {
        if any(word_at(path, at.min(last))) {
            return true;
        }
        if at >= last {
            return false;
        }
        at += 8;
    }
}

/// The eight bytes of `bytes` from `at` (which must leave eight).
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// `a == b`, for the short strings compared on every request (an authority, the base's path)
/// a word at a time and inline, rather than through a `memcmp` call; up to 16 bytes in two
/// overlapping words.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if len < 8 {
        return a == b;
    }
    if len <= 16 {
        return (word_at(a, 0) ^ word_at(b, 0)) | (word_at(a, len - 8) ^ word_at(b, len - 8)) == 0;
    }
    let last = len - 8;
    let mut at = 0;
    loop {
        let at_now = at.min(last);
        if word_at(a, at_now) != word_at(b, at_now) {
            return false;
        }
        if at >= last {
            return true;
        }
        at += 8;
    }
}

/// Whether a path segment after the base is one no server resolves out of the base: no
/// backslash, no encoded slash or backslash, and not a dot segment (see
/// [`FhirScope::path_matches`]). Checked on every request that has a `.`, `%` or `\`, so
/// without allocating.
fn is_plain_segment(segment: &[u8]) -> bool {
    if segment.contains(&b'\\') || has_encoded_separator(segment) {
        return false;
    }
    // Path parameters (`;x=1`) are stripped before servers resolve dot segments.
    let name = segment
        .split(|&byte| byte == b';')
        .next()
        .unwrap_or(segment);
    !is_dot_segment(name)
}

/// `%2f` or `%5c` in `segment`, in any case, or their `%u002f` and `%u005c` forms (which IIS
/// and old Jetty decode, as they do `%u002e`).
fn has_encoded_separator(segment: &[u8]) -> bool {
    segment.iter().enumerate().any(|(at, &byte)| {
        let rest = &segment[at..];
        byte == b'%'
            && (rest.get(1..3).is_some_and(|hex| {
                hex.eq_ignore_ascii_case(b"2f") || hex.eq_ignore_ascii_case(b"5c")
            }) || rest.get(1..6).is_some_and(|hex| {
                hex.eq_ignore_ascii_case(b"u002f") || hex.eq_ignore_ascii_case(b"u005c")
            }))
    })
}

/// Whether a path segment is `.` or `..`, also percent-encoded (`%2e`, `.%2E`, ...), in the
/// `%u002e` form (IIS, and Jetty before 9.4.43, decode it), or around encoded NULs (`..%00`,
/// CVE-2021-34429): whether a server drops the NULs or cuts the segment at the first one.
fn is_dot_segment(bytes: &[u8]) -> bool {
    let cut = bytes
        .windows(3)
        .position(|window| window == b"%00")
        .is_some_and(|at| dots_only(&bytes[..at]));
    cut || dots_only(bytes)
}

/// Whether `bytes` spell one or two dots, NULs dropped (see [`is_dot_segment`]).
fn dots_only(bytes: &[u8]) -> bool {
    let mut dots = 0;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest[0] == b'.' {
            i += 1;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            i += 3;
        } else if rest.len() >= 6 && rest[..6].eq_ignore_ascii_case(b"%u002e") {
            i += 6;
        } else if rest.starts_with(b"%00") {
            i += 3;
            continue;
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
