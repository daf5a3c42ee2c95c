//! A token in the cell, with the instants that govern it, and what the cell hands out at a given
//! instant: the token from the moment the FHIR server takes it until its usable-until instant;
//! before that moment, the token it replaces, while that one is still usable.

use tokio::time::Instant;

use super::TokenHeader;
use crate::token::AccessToken;

/// A token in the cell.
pub(super) struct CachedToken {
    pub(super) token: AccessToken,
    pub(super) generation: u64,
    pub(super) refresh_at: Instant,
    /// The token is never handed out from this instant on (its expiry less the safety margin).
    pub(super) usable_until: Instant,
    /// The token is handed out from this instant on: when it arrived, or, when the FHIR
    /// server's clock is known to be behind the issuer's, when that server will take it.
    pub(super) valid_from: Instant,
    /// The token this one replaced, handed out until `valid_from` while it is usable.
    pub(super) previous: Option<Previous>,
    /// The token's header value: the template of the per-thread copies (see
    /// [`Slots`](super::slots::Slots)), and what is handed out when a thread's slot is busy.
    pub(super) local: TokenHeader,
    /// The server refused the token, and its renewal waits out the backoff for young tokens
    /// refused again (see [`Shared::drop_rejected`](super::Shared::drop_rejected)): it is still
    /// handed out to callers that do not need a later one, never for a replay, and is never a
    /// successor's previous token.
    pub(super) refused: bool,
}

/// What a token hands out at an instant (see [`CachedToken::serves`]).
pub(super) enum Serves<'a> {
    /// Nothing: past its usable-until instant, or before its start with no usable predecessor.
    No,
    /// The token it replaced: the FHIR server does not take this one yet.
    Previous(&'a Previous),
    /// The token itself.
    Current,
}

/// The token a new one replaced, while the FHIR server does not take the new one yet.
pub(super) struct Previous {
    pub(super) token: AccessToken,
    pub(super) generation: u64,
    pub(super) usable_until: Instant,
    pub(super) local: TokenHeader,
}

/// A token handed out by the slow path: the header, and the token itself.
pub(super) struct Usable {
    pub(super) header: TokenHeader,
    pub(super) token: AccessToken,
}

impl CachedToken {
    /// What the fast path hands out at `now`.
    #[inline]
    pub(super) fn serves(&self, now: Instant) -> Serves<'_> {
        if now >= self.usable_until {
            return Serves::No;
        }
        if now < self.valid_from {
            return self.previous_at(now).map_or(Serves::No, Serves::Previous);
        }
        Serves::Current
    }

    /// The header value.
    pub(super) fn header(&self) -> TokenHeader {
        self.local.clone()
    }

    /// Until when a thread's slot may hand the token out: its refresh point, or its usable-until
    /// instant if that comes first.
    pub(super) fn cacheable_until(&self) -> Instant {
        self.refresh_at.min(self.usable_until)
    }

    /// The previous token, if it serves at `now` (before `valid_from`).
    #[cold]
    pub(super) fn previous_at(&self, now: Instant) -> Option<&Previous> {
        self.previous
            .as_ref()
            .filter(|previous| now < self.valid_from && now < previous.usable_until)
    }

    /// What is handed out at `now` to a caller who needs a generation after `after`.
    pub(super) fn usable_at(&self, now: Instant, after: u64) -> Option<Usable> {
        if now < self.valid_from {
            return self
                .previous_at(now)
                .filter(|previous| previous.generation > after)
                .map(|previous| Usable {
                    header: previous.header(),
                    token: previous.token.clone(),
                });
        }
        (self.generation > after && now < self.usable_until).then(|| Usable {
            header: self.header(),
            token: self.token.clone(),
        })
    }

    /// Whether the token (not a previous one) is handed out at `now`.
    pub(super) fn serves_at(&self, now: Instant) -> bool {
        self.valid_from <= now && now < self.usable_until
    }

    /// What a successor installed at `now` keeps as its previous token: this token if it
    /// serves, else the previous one if that does.
    pub(super) fn previous_for_successor(&self, now: Instant) -> Option<Previous> {
        if self.refused {
            return None;
        }
        if self.serves_at(now) {
            return Some(Previous {
                token: self.token.clone(),
                generation: self.generation,
                usable_until: self.usable_until,
                local: self.local.clone(),
            });
        }
        self.previous_at(now).map(|previous| Previous {
            token: previous.token.clone(),
            generation: previous.generation,
            usable_until: previous.usable_until,
            local: previous.local.clone(),
        })
    }
}

impl Previous {
    pub(super) fn header(&self) -> TokenHeader {
        self.local.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, SystemTime};

    use http::HeaderMap;

    use super::super::TokenCell;
    use super::*;
    use crate::Error;
    use crate::token::{BoxFuture, RefreshPolicy, TokenSource};

    /// Tokens that start now by the wall clock, as an issuer's `iat` says.
    #[derive(Default)]
    struct Starting(AtomicU64);

    impl TokenSource for Starting {
        fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Ok(
                    AccessToken::new(&format!("t{n}"), Duration::from_secs(300), Instant::now())?
                        .with_not_before(Some(SystemTime::now())),
                )
            })
        }
    }

    /// While the FHIR server does not take a new token yet, the token it replaced serves, but
    /// never one the server refused: the cell waits for the new one instead.
    #[tokio::test(start_paused = true)]
    async fn a_refused_token_never_serves_as_its_successors_previous() {
        let backoff = Duration::from_secs(10);
        let policy = RefreshPolicy::default()
            .backoff(backoff, backoff)
            .background_refresh(false);
        let cell = TokenCell::new(Starting::default(), policy);
        cell.ready().await.unwrap();
        assert!(cell.invalidate(1), "young once: renewed at once");
        assert_eq!(cell.token().await.unwrap().generation(), 2);
        assert!(
            cell.invalidate(2),
            "young again: kept, refused, renewed after the backoff"
        );
        assert_eq!(cell.current().map(|token| token.generation()), Some(2));
        // The FHIR server's clock is 30 s behind: a new token serves only once it passes.
        let mut headers = HeaderMap::new();
        let behind = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        headers.insert(http::header::DATE, behind.parse().unwrap());
        let _ = cell.judge_401(2, &headers, false);
        tokio::time::advance(backoff).await;
        let renewal = tokio::spawn({
            let cell = cell.clone();
            async move { cell.renewed(2).await.map(|token| token.generation()) }
        });
        while cell.shared.current.load().as_ref().map(|c| c.generation) != Some(3) {
            tokio::task::yield_now().await;
        }
        let installed = cell.shared.current.load_full().unwrap();
        assert!(
            installed.valid_from > Instant::now(),
            "the FHIR server takes it later"
        );
        assert!(
            installed.previous.is_none(),
            "the refused token is not kept"
        );
        assert!(
            cell.current().is_none(),
            "the refused token is not handed out"
        );
        assert_eq!(
            renewal.await.unwrap().unwrap(),
            3,
            "the renewal waits for the new one"
        );
        assert!(Instant::now() >= installed.valid_from);
    }
}
