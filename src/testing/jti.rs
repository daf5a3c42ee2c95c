//! The assertion ids (`jti`) the mock token endpoint has consumed. The reference server keeps
//! every one for as long as it runs; the mock forgets one a day after its assertion stopped being
//! usable, so that a long-running `koppeltaal-auth mock` does not grow without bound.

use std::collections::HashMap;

/// How long, in seconds, an id is kept after its assertion's `exp`: a replay within it is
/// refused as a replay even when the mock's clock was moved back meanwhile.
const GRACE_SECS: i64 = 86_400;

/// The set is swept when it reaches this size, or twice its size after the last sweep.
const MIN_SWEEP: usize = 1024;

/// Consumed ids, each with the instant (the mock's epoch seconds) it may be forgotten.
#[derive(Debug)]
pub(super) struct SeenJti {
    keep_until: HashMap<String, i64>,
    next_sweep: usize,
}

impl SeenJti {
    pub(super) fn new() -> Self {
        Self {
            keep_until: HashMap::new(),
            next_sweep: MIN_SWEEP,
        }
    }

    /// Consumes `jti` of an assertion usable until `exp` (epoch seconds; `None` when it has no
    /// usable `exp`, which the endpoint then refuses) at `now`. False when it was consumed before.
    ///
    /// An assertion is never usable past `now` plus `max_ahead` (the endpoint refuses a later
    /// `exp`), so no id is kept past that plus [`GRACE_SECS`], whatever its `exp` says.
    pub(super) fn consume(
        &mut self,
        jti: String,
        exp: Option<i64>,
        now: i64,
        max_ahead: i64,
    ) -> bool {
        if self.keep_until.contains_key(&jti) {
            return false;
        }
        if self.keep_until.len() >= self.next_sweep {
            self.keep_until.retain(|_, until| *until > now);
            self.next_sweep = MIN_SWEEP.max(self.keep_until.len().saturating_mul(2));
        }
        let usable_until = exp.unwrap_or(now).min(now.saturating_add(max_ahead));
        self.keep_until
            .insert(jti, usable_until.saturating_add(GRACE_SECS));
        true
    }

    /// How many ids are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keep_until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn an_id_is_refused_again_while_its_assertion_could_be_replayed() {
        let mut seen = SeenJti::new();
        assert!(seen.consume("a".into(), Some(NOW + 60), NOW, 300));
        assert!(!seen.consume("a".into(), Some(NOW + 60), NOW + 1, 300));
        // Long after the assertion expired, past many sweeps: still a replay within the grace.
        for i in 0..5 * MIN_SWEEP {
            seen.consume(format!("filler-{i}"), Some(NOW), NOW + GRACE_SECS, 300);
        }
        assert!(!seen.consume("a".into(), Some(NOW + 60), NOW + GRACE_SECS, 300));
    }

    #[test]
    fn ids_of_expired_assertions_are_forgotten_so_the_set_stays_bounded() {
        let mut seen = SeenJti::new();
        // One new id a second for three and a half days, each usable for at most 300 s.
        let live = 86_400 + 300 + 1;
        for i in 0..300_000 {
            let now = NOW + i64::from(i);
            // Hostile: an `exp` far ahead, or none at all, keeps an id no longer than any other.
            let exp = match i % 3 {
                0 => Some(now + 60),
                1 => Some(i64::MAX),
                _ => None,
            };
            assert!(seen.consume(format!("jti-{i}"), exp, now, 300));
            // At most twice what can still be replayed (the sweep runs when the set doubles).
            assert!(seen.len() <= 2 * live, "{} ids after {i}", seen.len());
        }
    }
}
