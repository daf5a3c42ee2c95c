//! The fast path: handing out the token. A thread finds it in its own slot in the cell (see
//! [`Slots`](super::slots::Slots)); when its slot does not hold it, it reads the cell's current
//! token, hands it out if the clock says it is usable, fills its slot with it, and does the
//! upkeep a slot hit skips (a refresh past the refresh point, a background refresher when none
//! runs). Either way the clock is read on every use: a token is never handed out past its
//! usable-until instant.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::cached::{CachedToken, Serves};
use super::{CellLink, Shared, TokenHeader};

impl Shared {
    /// The fast path: `f` of this thread's slot if it holds the token (see [`slots`]), else of
    /// the token handed out now (filling the slot), after which a refresh is started if the
    /// token is past its refresh point, and a background refresher if none runs.
    #[inline]
    pub(super) fn hand_out<R, F>(self: &Arc<Self>, f: F) -> Option<R>
    where
        F: Fn(&TokenHeader, &CellLink) -> R + Copy,
    {
        match self.slots.get(f) {
            Some(out) => Some(out),
            None => self.hand_out_unslotted(f),
        }
    }

    /// The fast path past a slot that does not hold the token.
    fn hand_out_unslotted<R, F>(self: &Arc<Self>, f: F) -> Option<R>
    where
        F: Fn(&TokenHeader, &CellLink) -> R + Copy,
    {
        let guard = self.current.load();
        // After the load: no earlier than the instant the token was installed at.
        let now = Instant::now();
        let cached = guard.as_ref()?;
        match cached.serves(now) {
            Serves::No => None,
            Serves::Previous(previous) => Some(f(&previous.local, &self.link)),
            Serves::Current => {
                let until = cached.cacheable_until();
                let slotted = if now < until {
                    self.slots.fill(
                        &cached.local,
                        until,
                        || self.may_slot(cached),
                        || CellLink::new(Arc::downgrade(self)),
                        f,
                    )
                } else {
                    None
                };
                let out = slotted.unwrap_or_else(|| f(&cached.local, &self.link));
                let stale = now >= cached.refresh_at;
                drop(guard);
                self.tend(stale, now);
                Some(out)
            }
        }
    }

    /// Whether a slot may hold `cached`: it is still the cell's token, and a slot hit, which
    /// skips the fast path's upkeep, misses nothing (a background refresher runs, or none is
    /// wanted). Called under the slot's lock: the cell clears every slot after changing either.
    fn may_slot(&self, cached: &Arc<CachedToken>) -> bool {
        !self.needs_refresher.load(Ordering::Acquire)
            && self
                .current
                .load()
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, cached))
    }
}

#[cfg(test)]
mod tests {
    use super::super::TokenCell;
    use super::*;
    use crate::testing::FakeTokenSource;
    use crate::token::RefreshPolicy;
    use std::time::Duration;

    fn cell(source: &FakeTokenSource) -> TokenCell {
        TokenCell::new(
            source.clone(),
            RefreshPolicy::default().background_refresh(false),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_never_handed_out_at_or_after_its_usable_until_instant() {
        let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(100));
        let cell = cell(&source);
        cell.ready().await.unwrap();
        // The refresh that the stale token starts never completes.
        source.close_gate();
        let usable_until = cell.shared.current.load_full().unwrap().usable_until;
        // 100 s token, margin min(10 s, 10 s): usable for 90 s.
        tokio::time::advance(Duration::from_secs(90) - Duration::from_nanos(1)).await;
        assert!(Instant::now() < usable_until);
        assert_eq!(cell.current().map(|t| t.generation()), Some(1));
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert_eq!(Instant::now(), usable_until);
        assert!(cell.current().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_never_hands_out_a_token_the_cell_no_longer_has() {
        let source = FakeTokenSource::new();
        let cell = cell(&source);
        cell.ready().await.unwrap();
        assert_eq!(cell.current().map(|t| t.generation()), Some(1));
        assert_eq!(cell.shared.slots.filled(), 1, "this thread's slot holds it");
        // Rejected: gone from the slot as from the cell, before any renewal.
        source.close_gate();
        assert!(cell.invalidate(1));
        assert!(cell.current().is_none());
        assert_eq!(cell.shared.slots.filled(), 0);
        source.open_gate();
        assert_eq!(cell.token().await.unwrap().generation(), 2);
        assert_eq!(cell.current().map(|t| t.generation()), Some(2));
        // Replaced: the slot hands out the new token, never the old one.
        let renewed = cell.renewed(2).await.unwrap();
        assert_eq!(renewed.generation(), 3);
        assert_eq!(cell.current().map(|t| t.generation()), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_holds_a_token_until_its_refresh_point_only() {
        let source = FakeTokenSource::new().with_lifetime(Duration::from_secs(100));
        let cell = cell(&source);
        cell.ready().await.unwrap();
        let refresh_at = cell.shared.current.load_full().unwrap().refresh_at;
        let _ = cell.current();
        assert_eq!(cell.shared.slots.filled(), 1);
        tokio::time::advance(refresh_at - Instant::now()).await;
        // Past the refresh point the fast path's upkeep must run: no slot serves, and the
        // call starts the refresh.
        assert_eq!(cell.current().map(|t| t.generation()), Some(1));
        tokio::task::yield_now().await;
        cell.token().await.unwrap();
        assert_eq!(source.fetches_started(), 2, "refreshed by the fast path");
        assert_eq!(cell.current().map(|t| t.generation()), Some(2));
    }
}
