//! Secrets this crate holds in memory are wiped before that memory is freed: the access token in
//! every copy the crate makes (its `Authorization` value, the token cell's per-thread copies, the
//! token response as read and parsed, the shared-store forms), as the private key is (see
//! `key_pem`).
//!
//! What is not covered: copies made by the libraries the bytes pass through (hyper's and
//! reqwest's read and write buffers, rustls' records, serde_json's scratch buffer for a string
//! with escapes, a store client's buffers), and whatever a caller copies out of
//! [`AccessToken::as_str`](crate::AccessToken::as_str). Tests: `tests/token_memory.rs`.

use bytes::Bytes;
use http::HeaderValue;
use http::header::InvalidHeaderValue;
use zeroize::{Zeroize, Zeroizing};

/// Bytes wiped when dropped: the owner of a [`Bytes`] made by [`bytes`].
struct WipeOnDrop(Vec<u8>);

impl AsRef<[u8]> for WipeOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for WipeOnDrop {
    fn drop(&mut self) {
        // The whole capacity, not only the length.
        self.0.zeroize();
    }
}

/// `buffer` as [`Bytes`] whose memory is wiped when the last clone is dropped. Clones only count
/// references: they never copy or allocate.
pub(crate) fn bytes(buffer: Zeroizing<Vec<u8>>) -> Bytes {
    let mut buffer = buffer;
    Bytes::from_owner(WipeOnDrop(std::mem::take(&mut *buffer)))
}

/// The concatenation of `parts` as a header value marked sensitive, whose bytes are wiped when
/// its last clone is dropped. Nothing is left behind when the bytes are not a valid value.
pub(crate) fn sensitive_header(parts: &[&[u8]]) -> Result<HeaderValue, InvalidHeaderValue> {
    let mut buffer = Zeroizing::new(Vec::with_capacity(
        parts.iter().map(|part| part.len()).sum(),
    ));
    for part in parts {
        buffer.extend_from_slice(part);
    }
    let mut value = HeaderValue::from_maybe_shared(bytes(buffer))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Appends `more` to `buffer`, growing it (when it must) into a new allocation and wiping the
/// old one, so that no freed block keeps a part of the bytes. Capacity at least doubles, as
/// `Vec`'s own growth does, but never beyond `limit` when `limit` is enough.
pub(crate) fn extend(buffer: &mut Zeroizing<Vec<u8>>, more: &[u8], limit: usize) {
    let needed = buffer.len().saturating_add(more.len());
    if needed > buffer.capacity() {
        let capacity = needed.max(buffer.capacity().saturating_mul(2).min(limit));
        let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
        grown.extend_from_slice(buffer);
        // The old buffer is wiped as it is dropped here.
        *buffer = grown;
    }
    buffer.extend_from_slice(more);
}

/// Wipes every string in `value` (keys aside: they are names, not secrets).
pub(crate) fn json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => text.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(json),
        serde_json::Value::Object(object) => object.values_mut().for_each(json),
        _ => {}
    }
}

/// A JSON object whose strings are all wiped when it is dropped, including on every way parsing
/// can fail part way: a syntax error after some members (serde_json would drop its half-built
/// map unwiped), bytes after the object, and a key given twice (the first value is wiped as the
/// second replaces it). A body that is valid JSON but not an object is a data error
/// (`serde_json::error::Category::Data`).
pub(crate) struct JsonObject(pub(crate) serde_json::Map<String, serde_json::Value>);

impl Drop for JsonObject {
    fn drop(&mut self) {
        self.0.values_mut().for_each(json);
    }
}

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;

        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JsonObject;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut members: A,
            ) -> Result<JsonObject, A::Error> {
                let mut object = JsonObject(serde_json::Map::new());
                while let Some(name) = members.next_key::<String>()? {
                    let value = members.next_value()?;
                    if let Some(mut replaced) = object.0.insert(name, value) {
                        json(&mut replaced);
                    }
                }
                Ok(object)
            }
        }

        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sensitive_header_holds_the_parts_and_clones_share_them() {
        let value = sensitive_header(&[b"Bearer ", b"abc"]).unwrap();
        assert_eq!(value, "Bearer abc");
        assert!(value.is_sensitive());
        let clone = value.clone();
        assert_eq!(clone.as_bytes().as_ptr(), value.as_bytes().as_ptr());
    }

    #[test]
    fn an_invalid_header_is_refused() {
        assert!(sensitive_header(&[b"Bearer ", b"a\nb"]).is_err());
    }

    #[test]
    fn extend_keeps_the_bytes_in_order_and_grows_within_the_limit() {
        let mut buffer = Zeroizing::new(Vec::new());
        for chunk in [&b"abc"[..], b"", b"defgh", b"i"] {
            extend(&mut buffer, chunk, 16);
        }
        assert_eq!(&buffer[..], b"abcdefghi");
        assert!(buffer.capacity() <= 16, "{}", buffer.capacity());
        // Beyond the limit (the caller refuses that first), it still appends.
        extend(&mut buffer, &[b'x'; 20], 16);
        assert_eq!(buffer.len(), 29);
    }

    /// A body delivered in chunks, as a network would.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(
                self.0
                    .pop_front()
                    .map(|data| Ok(http_body::Frame::data(data))),
            )
        }
    }

    #[test]
    fn a_token_response_read_and_parsed_leaves_no_token_in_freed_memory() {
        const TOKEN: &[u8] = b"kt-response-3d9a6b2e01f4c7";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The test's own chunks are wiped too: only the crate's copies are looked at.
        let chunk = |text: &[u8]| bytes(Zeroizing::new(text.to_vec()));
        let found = crate::freed_scan::freed_blocks_holding(&[TOKEN], || {
            for (token_type, usable) in [("Bearer", true), ("DPoP", false)] {
                let chunks = Chunks(
                    [
                        chunk(br#"{"access_token":"kt-response-3d9a6b2e01f4c7","#),
                        chunk(format!(r#""token_type":"{token_type}","#).as_bytes()),
                        chunk(br#""expires_in":300,"scope":"system/*.cruds"}"#),
                    ]
                    .into(),
                );
                let response =
                    reqwest::Response::from(http::Response::new(reqwest::Body::wrap(chunks)));
                // Read in three chunks: the buffer grows twice.
                let body = runtime
                    .block_on(crate::fetch::read_limited(response, 64 * 1024))
                    .unwrap();
                let parsed = crate::token::parse_token_response(
                    &body,
                    tokio::time::Instant::now(),
                    std::time::Duration::from_secs(300),
                    &[],
                );
                assert_eq!(parsed.is_ok(), usable, "{token_type}");
                if let Ok(token) = &parsed {
                    assert_eq!(token.as_str().as_bytes(), TOKEN);
                    drop(token.clone());
                }
                drop((parsed, body));
            }
        });
        assert_eq!(found, 0, "freed blocks held the access token");
    }

    #[test]
    fn a_broken_token_response_leaves_no_token_in_freed_memory() {
        const TOKEN: &str = "kt-broken-8e04c2f91a7b5d36";
        // The server's body, in memory the test wipes itself.
        let bodies: Vec<Zeroizing<Vec<u8>>> = [
            format!(r#"{{"access_token":"{TOKEN}","token_type":"Bearer",}}"#),
            format!(r#"{{"access_token":"{TOKEN}","token_type":"Bearer"}} trailing"#),
            format!(r#"{{"access_token":"{TOKEN}","access_token":"other","token_type":"Bearer"}}"#),
            format!(r#"{{"access_token":"{TOKEN}","token_type":"DPoP"}}"#),
            format!(r#"{{"access_token":"{TOKEN}","token_type":"Bearer","expires_in":[1,{{"#),
        ]
        .into_iter()
        .map(|body| Zeroizing::new(body.into_bytes()))
        .collect();
        let found = crate::freed_scan::freed_blocks_holding(&[TOKEN.as_bytes()], || {
            for body in &bodies {
                let parsed = crate::token::parse_token_response(
                    body,
                    tokio::time::Instant::now(),
                    std::time::Duration::from_secs(300),
                    &[],
                );
                // A key given twice: the last one counts (as before).
                if let Ok(token) = &parsed {
                    assert_eq!(token.as_str(), "other");
                }
            }
        });
        assert_eq!(found, 0, "freed blocks held the access token");
    }

    #[test]
    fn json_wipes_every_string() {
        let mut value: serde_json::Value =
            serde_json::from_str(r#"{"a":"secret","b":["x",{"c":"y"}],"n":1}"#).unwrap();
        json(&mut value);
        assert_eq!(value, serde_json::json!({"a":"","b":["",{"c":""}],"n":1}));
    }
}
