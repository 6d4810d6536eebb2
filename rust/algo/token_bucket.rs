//! Token bucket as GCRA (the generic cell rate algorithm).
//!
//! The state word is the theoretical arrival time (TAT): nanoseconds on the Unix time scale at
//! which the bucket would be full again. `0`, or any TAT at or before `now`, is a full bucket.

use crate::algo::{Outcome, WordAlgorithm};

/// A token bucket of `burst` tokens refilled at `limit` per `period`.
///
/// ```
/// use _native::algo::WordAlgorithm;
/// use _native::algo::token_bucket::TokenBucket;
/// let g = TokenBucket::new(10, 1_000_000_000, 2); // 10/s, burst 2: T = 100 ms
/// let (a, w) = g.step(0, 5_000, 1);
/// let (b, w) = g.step(w, 5_000, 1);
/// let (c, _) = g.step(w, 5_000, 1);
/// assert!(a.allowed && b.allowed && !c.allowed);
/// assert_eq!(c.retry_after, 100_000_000);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    /// Emission interval T = period / limit, rounded up so rounding never admits more.
    emission: u64,
    /// burst * T: how far TAT may run ahead of now.
    capacity: u64,
}

impl TokenBucket {
    /// `limit`, `period_ns` and `burst` must be validated by the caller (see `config`).
    pub fn new(limit: u64, period_ns: u64, burst: u64) -> Self {
        let emission = period_ns.div_ceil(limit);
        TokenBucket {
            emission,
            capacity: burst * emission,
        }
    }

    pub fn emission(&self) -> u64 {
        self.emission
    }
}

impl WordAlgorithm for TokenBucket {
    #[inline]
    fn step(&self, word: u64, now: u64, cost: u64) -> (Outcome, u64) {
        let tat = word.max(now);
        let new_tat = tat + cost * self.emission;
        if new_tat - now <= self.capacity {
            let outcome = Outcome {
                allowed: true,
                remaining: (self.capacity - (new_tat - now)) / self.emission,
                reset_after: new_tat - now,
                retry_after: 0,
            };
            (outcome, new_tat)
        } else {
            // Stored TATs only come from allowed hits, so tat - now <= capacity here.
            let outcome = Outcome {
                allowed: false,
                // Saturating: a state folded in from the shared store may be past capacity.
                remaining: self.capacity.saturating_sub(tat - now) / self.emission,
                reset_after: tat - now,
                retry_after: new_tat - now - self.capacity,
            };
            (outcome, word)
        }
    }

    #[inline]
    fn is_fresh(&self, word: u64, now: u64) -> bool {
        word <= now
    }

    fn set_available(&self, _word: u64, now: u64, available: u64) -> u64 {
        let used = self
            .capacity
            .saturating_sub(available.saturating_mul(self.emission));
        if used == 0 {
            0
        } else {
            now + used
        }
    }

    fn refund(&self, word: u64, now: u64, cost: u64) -> u64 {
        if word <= now {
            return word;
        }
        word.saturating_sub(cost * self.emission).max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_steady_rate() {
        let g = TokenBucket::new(10, S, 10);
        let mut w = 0;
        let now = 1_000 * S;
        for i in 0..10 {
            let (o, nw) = g.step(w, now, 1);
            assert!(o.allowed, "hit {i}");
            assert_eq!(o.remaining, 9 - i);
            w = nw;
        }
        let (o, w2) = g.step(w, now, 1);
        assert!(!o.allowed);
        assert_eq!(w2, w, "a denial writes nothing");
        assert_eq!(o.retry_after, S / 10);
        assert_eq!(o.reset_after, S);
        // One emission interval later exactly one more token.
        let (o, w) = g.step(w, now + S / 10, 1);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        assert!(!g.is_fresh(w, now + S / 10));
        assert!(g.is_fresh(w, now + S + S / 10));
    }

    #[test]
    fn cost_and_rounding_never_over_admit() {
        // 3/s does not divide a second: T rounds up to 333_333_334 ns.
        let g = TokenBucket::new(3, S, 3);
        assert_eq!(g.emission(), 333_333_334);
        let (o, w) = g.step(0, 10 * S, 3);
        assert!(o.allowed && o.remaining == 0);
        let t = g.emission();
        let (o, _) = g.step(w, 10 * S + t - 1, 1);
        assert!(
            !o.allowed,
            "one token needs a whole (rounded-up) emission interval"
        );
        assert_eq!(o.retry_after, 1);
        let (o, _) = g.step(w, 10 * S + t, 1);
        assert!(o.allowed);
    }
}
