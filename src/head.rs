//! The replay copy of a request's head: its URI and headers in one buffer.

/// A request's URI and headers in one buffer: one allocation and a copy of their bytes. Cloning
/// the `HeaderMap` and the `Uri` instead allocates the map's table and shares every header value,
/// custom header name and URI part by reference count (an allocation each the first time, and
/// atomic counts that the thread sending the request, and every other request with the same
/// URI, also write). Replays are rare; the URI and the map are rebuilt only for one.
pub(crate) struct HeadSnapshot {
    /// Fields, each a length (`u32`, little endian; `u32::MAX` when absent) and its bytes: the
    /// scheme, authority and path-and-query; then per header a sensitive flag byte, its name and
    /// its value.
    bytes: Vec<u8>,
    headers: usize,
}

/// The length of an absent field.
const ABSENT: u32 = u32::MAX;

impl HeadSnapshot {
    pub(crate) fn of(uri: &http::Uri, headers: &http::HeaderMap) -> Self {
        let parts = [
            uri.scheme_str(),
            uri.authority().map(http::uri::Authority::as_str),
            uri.path_and_query().map(http::uri::PathAndQuery::as_str),
        ];
        let size = parts
            .iter()
            .map(|part| 4 + part.map_or(0, str::len))
            .sum::<usize>()
            + headers
                .iter()
                .map(|(name, value)| 1 + 4 + name.as_str().len() + 4 + value.len())
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(size);
        for part in parts {
            put(&mut bytes, part.map(str::as_bytes));
        }
        for (name, value) in headers {
            bytes.push(u8::from(value.is_sensitive()));
            put(&mut bytes, Some(name.as_str().as_bytes()));
            put(&mut bytes, Some(value.as_bytes()));
        }
        Self {
            bytes,
            headers: headers.len(),
        }
    }

    pub(crate) fn rebuild(&self) -> Option<(http::Uri, http::HeaderMap)> {
        let mut rest = self.bytes.as_slice();
        let mut uri = http::Uri::builder();
        if let Some(scheme) = take(&mut rest)? {
            uri = uri.scheme(scheme);
        }
        if let Some(authority) = take(&mut rest)? {
            uri = uri.authority(authority);
        }
        if let Some(path_and_query) = take(&mut rest)? {
            uri = uri.path_and_query(path_and_query);
        }
        let uri = uri.build().ok()?;
        // The capacity counts names, `headers` values (unbounded under one name): a hint, capped.
        let mut headers = http::HeaderMap::try_with_capacity(self.headers.min(1024)).ok()?;
        while let Some((&flag, tail)) = rest.split_first() {
            rest = tail;
            let name = http::HeaderName::from_bytes(take(&mut rest)??).ok()?;
            let mut value = http::HeaderValue::from_bytes(take(&mut rest)??).ok()?;
            value.set_sensitive(flag != 0);
            headers.try_append(name, value).ok()?;
        }
        // A buffer cut at a header boundary would parse: the count catches it.
        (headers.len() == self.headers).then_some((uri, headers))
    }
}

/// Appends a field. One of 4 GiB or more (no server takes such a header; the http crate caps a
/// URI at 64 KiB) is stored as absent, which a header position refuses at rebuild: the replay is
/// then given up, never sent with a different header.
fn put(buffer: &mut Vec<u8>, field: Option<&[u8]>) {
    match field.and_then(|field| Some((u32::try_from(field.len()).ok()?, field))) {
        Some((len, field)) if len != ABSENT => {
            buffer.extend_from_slice(&len.to_le_bytes());
            buffer.extend_from_slice(field);
        }
        _ => buffer.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

/// Takes a field off the front of `rest`: `Some(None)` when absent, `None` when the buffer is
/// damaged.
fn take<'a>(rest: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len);
    if len == ABSENT {
        *rest = tail;
        return Some(None);
    }
    let (field, tail) = tail.split_at_checked(usize::try_from(len).ok()?)?;
    *rest = tail;
    Some(Some(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn a_head_snapshot_rebuilds_the_same_uri_and_headers_in_the_same_order() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("application/fhir+json"));
        headers.append("x-request-id", HeaderValue::from_static("req-42"));
        headers.append("cookie", HeaderValue::from_static("a=1"));
        headers.append("cookie", HeaderValue::from_static("b=2"));
        let mut secret = HeaderValue::from_static("Basic dXNlcjpwYXNz");
        secret.set_sensitive(true);
        headers.insert("proxy-authorization", secret);
        headers.insert(
            HeaderName::from_static("x-obs-text"),
            HeaderValue::from_bytes(b"caf\xe9 \t!").unwrap(),
        );
        headers.insert("x-empty", HeaderValue::from_static(""));
        let uri: http::Uri = "https://fhir.example.org:8443/fhir/DEFAULT/Task?_count=10&x=%2F"
            .parse()
            .unwrap();
        let (rebuilt_uri, rebuilt) = HeadSnapshot::of(&uri, &headers).rebuild().unwrap();
        assert_eq!(rebuilt_uri, uri);
        assert_eq!(rebuilt, headers);
        let order = |map: &HeaderMap| -> Vec<(String, Vec<u8>, bool)> {
            map.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
                .collect()
        };
        assert_eq!(order(&rebuilt), order(&headers));
        assert!(rebuilt["proxy-authorization"].is_sensitive());
        let relative: http::Uri = "/fhir/Patient/1".parse().unwrap();
        let (rebuilt_uri, none) = HeadSnapshot::of(&relative, &HeaderMap::new())
            .rebuild()
            .unwrap();
        assert_eq!(rebuilt_uri, relative);
        assert!(none.is_empty());
    }

    #[test]
    fn a_damaged_snapshot_is_refused_not_misread() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("application/fhir+json"));
        let uri: http::Uri = "https://fhir.example.org/fhir/Task".parse().unwrap();
        let snapshot = HeadSnapshot::of(&uri, &headers);
        for cut in 1..snapshot.bytes.len() {
            let damaged = HeadSnapshot {
                bytes: snapshot.bytes[..cut].to_vec(),
                headers: 1,
            };
            assert!(damaged.rebuild().is_none(), "{cut}");
        }
    }
}
