//! [`FhirId`]: a trace header value, checked against FHIR's `id` type, and new request ids.

use std::fmt;

use http::HeaderValue;

/// The longest FHIR `id`: 64 characters.
pub const MAX_FHIR_ID_LEN: usize = 64;

/// A value for `X-Request-Id`, `X-Trace-Id` or `X-Correlation-Id`: a FHIR `id`, at most
/// [`MAX_FHIR_ID_LEN`] characters from `[A-Za-z0-9-.]`, as the `AuditEvent` extensions that
/// record them require.
///
/// Ids are not secrets: `Debug` and `Display` show them.
///
/// # Example
///
/// ```
/// use koppeltaal_auth::trace::FhirId;
///
/// let id = FhirId::new("58aafb4e-0283-4c12-b95f-16be142b1e11")?;
/// assert_eq!(id.as_str(), "58aafb4e-0283-4c12-b95f-16be142b1e11");
/// assert!(FhirId::new("not an id").is_err());
/// # Ok::<(), koppeltaal_auth::trace::InvalidFhirId>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FhirId(HeaderValue);

/// Why a value is not a [`FhirId`]. The value itself is not repeated (it came from outside).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidFhirId {
    /// The value is empty.
    #[error("not a FHIR id: empty")]
    Empty,
    /// The value is longer than [`MAX_FHIR_ID_LEN`] bytes.
    #[error("not a FHIR id: {len} bytes, at most {MAX_FHIR_ID_LEN} allowed")]
    TooLong {
        /// The value's length in bytes.
        len: usize,
    },
    /// The value has a byte outside `[A-Za-z0-9-.]`.
    #[error("not a FHIR id: a character outside [A-Za-z0-9-.] at byte {at}")]
    Character {
        /// The byte offset of the first such character.
        at: usize,
    },
}

fn check(bytes: &[u8]) -> Result<(), InvalidFhirId> {
    if bytes.is_empty() {
        return Err(InvalidFhirId::Empty);
    }
    if bytes.len() > MAX_FHIR_ID_LEN {
        return Err(InvalidFhirId::TooLong { len: bytes.len() });
    }
    match bytes
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        Some(at) => Err(InvalidFhirId::Character { at }),
        None => Ok(()),
    }
}

impl FhirId {
    /// `value` as an id.
    ///
    /// # Errors
    ///
    /// [`InvalidFhirId`] when `value` is empty, longer than 64 bytes, or has a character
    /// outside `[A-Za-z0-9-.]`.
    pub fn new(value: &str) -> Result<Self, InvalidFhirId> {
        check(value.as_bytes())?;
        // Checked above: visible ASCII only.
        HeaderValue::from_str(value)
            .map(Self)
            .map_err(|_| InvalidFhirId::Character { at: 0 })
    }

    /// A header's value as an id; the header value is shared, not copied.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_header(value: &HeaderValue) -> Result<Self, InvalidFhirId> {
        check(value.as_bytes())?;
        Ok(Self(value.clone()))
    }

    /// A new random id: a UUID version 4 in its hyphenated, lower-case form, as Koppeltaal
    /// recommends for `X-Request-Id` and `X-Trace-Id`.
    #[must_use]
    pub fn new_uuid() -> Self {
        let uuid = uuid::Builder::from_random_bytes(random_16()).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid.hyphenated().encode_lower(&mut text);
        Self(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("0")))
    }

    /// The id.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only `[A-Za-z0-9-.]` gets in.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value (a shared copy).
    #[must_use]
    pub fn to_header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

/// Random bytes for one id: 16 from a per-thread pool that AWS-LC's generator fills 64 ids at a
/// time (one call to it per id costs some 450 ns, as it mixes in fresh system entropy each time;
/// per request that is more than the rest of the layer). A process that forks without `exec`
/// hands each child the rest of its threads' pools: such a child must not send FHIR requests
/// before `exec`.
fn random_16() -> [u8; 16] {
    const IDS: usize = 64;
    struct Pool {
        bytes: [u8; 16 * IDS],
        next: usize,
    }
    thread_local! {
        static POOL: std::cell::RefCell<Pool> = const {
            std::cell::RefCell::new(Pool { bytes: [0; 16 * IDS], next: IDS })
        };
    }
    let pooled = POOL.try_with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        if pool.next == IDS {
            aws_lc_rs::rand::fill(&mut pool.bytes).ok()?;
            pool.next = 0;
        }
        let at = pool.next * 16;
        let mut out = [0u8; 16];
        out.copy_from_slice(&pool.bytes[at..at + 16]);
        // Used bytes are not handed out twice.
        pool.bytes[at..at + 16].fill(0);
        pool.next += 1;
        Some(out)
    });
    match pooled {
        Ok(Some(bytes)) => bytes,
        // No thread-local storage left (thread exit) or a failed fill: the system's generator.
        _ => *uuid::Uuid::new_v4().as_bytes(),
    }
}

impl fmt::Debug for FhirId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FhirId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for FhirId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FhirId {
    type Err = InvalidFhirId;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fhir_id_rules() {
        assert!(FhirId::new("a").is_ok());
        assert!(FhirId::new("A-z.0-9").is_ok());
        assert!(FhirId::new(&"x".repeat(64)).is_ok());
        assert_eq!(
            FhirId::new(&"x".repeat(65)),
            Err(InvalidFhirId::TooLong { len: 65 })
        );
        assert_eq!(FhirId::new(""), Err(InvalidFhirId::Empty));
        for bad in ["a b", "a_b", "a/b", "a:b", "é", "a\u{0}", "a,b", "a\tb"] {
            assert!(
                matches!(FhirId::new(bad), Err(InvalidFhirId::Character { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            FhirId::from_header(&HeaderValue::from_static("ab cd")),
            Err(InvalidFhirId::Character { at: 2 })
        );
    }

    #[test]
    fn new_uuids_are_version_4_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| FhirId::new_uuid().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id, &uuid.hyphenated().to_string());
            assert!(FhirId::new(id).is_ok());
        }
    }
}
