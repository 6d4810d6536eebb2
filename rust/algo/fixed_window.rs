//! The fixed window: a count per clock-aligned window, packed into one `u64`.
//!
//! Windows are aligned to the Unix time scale: window `w` covers `[w * period, (w+1) * period)`.
//! A word remembers which window it counts for by a tag (the window number modulo 2^bits), so
//! a word left from an old window reads as empty without anyone clearing it. A tag could only
//! be mistaken for a current one after 2^bits periods untouched; the sweeper drops such words
//! (they are fresh) long before that.

use crate::algo::{Outcome, WordAlgorithm};

/// Counts hits per clock-aligned window: `count + cost <= limit` is allowed.
///
/// Word layout: high 32 bits the window tag, low 32 bits the count.
///
/// ```
/// use _native::algo::WordAlgorithm;
/// use _native::algo::fixed_window::FixedWindow;
/// let f = FixedWindow::new(2, 1_000_000_000);
/// let (_, w) = f.step(0, 7_100_000_000, 2);
/// let (o, _) = f.step(w, 7_900_000_000, 1);
/// assert!(!o.allowed);
/// assert_eq!(o.retry_after, 100_000_000); // the window ends at 8 s
/// let (o, _) = f.step(w, 8_000_000_000, 1);
/// assert!(o.allowed);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FixedWindow {
    limit: u64,
    period: u64,
}

impl FixedWindow {
    /// Maximum limit: the count has 32 bits.
    pub const MAX_LIMIT: u64 = u32::MAX as u64;

    pub fn new(limit: u64, period_ns: u64) -> Self {
        FixedWindow {
            limit,
            period: period_ns,
        }
    }

    /// The window a request at `now` counts in, and that window's count so far.
    ///
    /// Threads read the clock before their compare-and-swap, so a request stamped just before
    /// a boundary can arrive after one stamped just after it. When the word is already in the
    /// next window, the late request is counted there (as if it came a moment later) rather
    /// than overwriting the newer window's count with an older one.
    #[inline]
    fn current(&self, word: u64, now: u64) -> (u64, u64) {
        let mut window = now / self.period;
        let count = word & 0xFFFF_FFFF;
        if count > 0 && word >> 32 == (window + 1) & 0xFFFF_FFFF {
            window += 1;
        }
        let count = if word >> 32 == window & 0xFFFF_FFFF {
            count
        } else {
            0
        };
        (window, count)
    }
}

impl WordAlgorithm for FixedWindow {
    #[inline]
    fn step(&self, word: u64, now: u64, cost: u64) -> (Outcome, u64) {
        let (window, count) = self.current(word, now);
        let now = now.max(window * self.period);
        let until_end = (window + 1) * self.period - now;
        if count + cost <= self.limit {
            let count = count + cost;
            let outcome = Outcome {
                allowed: true,
                remaining: self.limit - count,
                reset_after: until_end,
                retry_after: 0,
            };
            (outcome, ((window & 0xFFFF_FFFF) << 32) | count)
        } else {
            let outcome = Outcome {
                allowed: false,
                remaining: self.limit.saturating_sub(count),
                reset_after: if count > 0 { until_end } else { 0 },
                retry_after: until_end,
            };
            (outcome, word)
        }
    }

    #[inline]
    fn is_fresh(&self, word: u64, now: u64) -> bool {
        self.current(word, now).1 == 0
    }

    fn set_available(&self, word: u64, now: u64, available: u64) -> u64 {
        let (window, _) = self.current(word, now);
        let count = self.limit.saturating_sub(available);
        if count == 0 {
            0
        } else {
            ((window & 0xFFFF_FFFF) << 32) | count
        }
    }

    fn refund(&self, word: u64, _now: u64, cost: u64) -> u64 {
        // The count belongs to the window the refunded hit was counted in; if that window has
        // ended, the refund no longer matters.
        let count = word & 0xFFFF_FFFF;
        (word & !0xFFFF_FFFF) | count.saturating_sub(cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    #[test]
    fn fixed_window_resets_on_the_boundary() {
        let f = FixedWindow::new(3, 10 * S);
        let mut w = 0;
        for i in 0..3 {
            let (o, nw) = f.step(w, 105 * S, 1);
            assert!(o.allowed);
            assert_eq!(o.remaining, 2 - i);
            assert_eq!(o.reset_after, 5 * S);
            w = nw;
        }
        let (o, w2) = f.step(w, 109 * S, 1);
        assert!(!o.allowed && w2 == w);
        assert_eq!(o.retry_after, S);
        assert!(!f.is_fresh(w, 109 * S));
        assert!(f.is_fresh(w, 110 * S));
        let (o, _) = f.step(w, 110 * S, 3);
        assert!(o.allowed);
    }

    #[test]
    fn a_late_request_never_rewinds_a_window() {
        // Thread B stamped 10.000 s wrote window 10; thread A, stamped 9.999 s, lands after.
        let f = FixedWindow::new(5, S);
        let (_, w) = f.step(0, 10 * S, 2);
        let (o, w2) = f.step(w, 10 * S - MS, 1);
        assert!(o.allowed);
        assert_eq!(o.remaining, 2, "counted in window 10 with the other two");
        assert_eq!(w2 >> 32, 10);
    }
}
