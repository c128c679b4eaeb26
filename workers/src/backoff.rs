//! Capped exponential backoff with jitter, for waiting out PostgreSQL or NATS being away.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

/// Delays that double from `base` up to `cap`.
///
/// Each delay is half the nominal one plus a random part of the other half ("equal
/// jitter"): copies of a worker that failed together, when PostgreSQL went away, do not
/// all come back in the same instant.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// What the workers use: from 100 ms to 5 s.
    pub fn standard() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay_at(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The delay before retry number `attempt` (0 for the first), without keeping count:
    /// for retries whose count is stored elsewhere (a row's `attempts`).
    pub fn delay_at(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        let nominal = self.base.saturating_mul(factor).min(self.cap);
        let half = nominal / 2;
        half + half.mul_f64(random_unit())
    }

    /// Starts again from `base`, after something succeeded.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in [0, 1); jitter needs spread, not cryptographic quality.
fn random_unit() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_stay_within_jitter_and_are_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        let mut backoff = Backoff::new(base, cap);
        for attempt in 0..40u32 {
            let nominal = base
                .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .min(cap);
            let delay = backoff.next_delay();
            assert!(
                delay >= nominal / 2 && delay <= nominal,
                "{attempt}: {delay:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= base);
    }
}
