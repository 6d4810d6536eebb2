//! The sliding window counter, packed into one `u64`.
//!
//! Windows are aligned to the Unix time scale: window `w` covers `[w * period, (w+1) * period)`.
//! A word remembers which window it counts for by a tag (the window number modulo 2^bits), so
//! a word left from an old window reads as empty without anyone clearing it. A tag could only
//! be mistaken for a current one after 2^bits periods untouched; the sweeper drops such words
//! (they are fresh) long before that.

use crate::algo::{Outcome, WordAlgorithm};

const MS: u64 = 1_000_000;

/// The sliding window counter: the previous window's count, weighted by the share of it
/// still inside the sliding period, plus the current window's count.
///
/// The weight moves in whole milliseconds, and the test is done in integers:
/// `prev * (P - e) <= (limit - curr - cost) * P` with `P` the period and `e` the time elapsed in
/// the current window, both in ms. Every product stays below 2^53, so the Redis scripts
/// (Lua numbers are doubles) compute exactly the same decisions.
///
/// Word layout: 24-bit window tag, 20-bit previous count, 20-bit current count.
///
/// ```
/// use _native::algo::WordAlgorithm;
/// use _native::algo::sliding_window::SlidingWindow;
/// let s = SlidingWindow::new(10, 1_000_000_000);
/// let (_, w) = s.step(0, 5_000_000_000, 10); // window 5 is full
/// // A quarter into window 6, 75% of window 5 still counts: 7.5 -> 2 more fit.
/// let (o, w) = s.step(w, 6_250_000_000, 2);
/// assert!(o.allowed);
/// let (o, _) = s.step(w, 6_250_000_000, 1);
/// assert!(!o.allowed);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct SlidingWindow {
    limit: u64,
    period: u64,
    period_ms: u64,
}

const TAG_BITS: u32 = 24;
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// The counts in effect for one request, window numbers in full.
struct Counts {
    window: u64,
    elapsed_ms: u64,
    prev: u64,
    curr: u64,
}

impl SlidingWindow {
    /// Maximum limit: keeps every product in the decision below 2^53 with periods up to the
    /// maximum period (100 days), and fits the 20-bit counts.
    pub const MAX_LIMIT: u64 = 1_000_000;

    /// `period_ns` must be a whole number of milliseconds.
    pub fn new(limit: u64, period_ns: u64) -> Self {
        SlidingWindow {
            limit,
            period: period_ns,
            period_ms: period_ns / MS,
        }
    }

    /// The counts in effect at `now`; like the fixed window, a word already in the next window
    /// pulls a late request forward to that window's start.
    #[inline]
    fn counts(&self, word: u64, now: u64) -> (Counts, u64) {
        let mut window = now / self.period;
        let mut now = now;
        if word & ((1 << (2 * COUNT_BITS)) - 1) != 0 && word >> (2 * COUNT_BITS) == (window + 1) & TAG_MASK {
            window += 1;
            now = window * self.period;
        }
        let elapsed_ms = (now - window * self.period) / MS;
        let tag = word >> (2 * COUNT_BITS);
        let stored_prev = (word >> COUNT_BITS) & COUNT_MASK;
        let stored_curr = word & COUNT_MASK;
        let (prev, curr) = if tag == window & TAG_MASK {
            (stored_prev, stored_curr)
        } else if tag == window.wrapping_sub(1) & TAG_MASK {
            (stored_curr, 0)
        } else {
            (0, 0)
        };
        let counts = Counts {
            window,
            elapsed_ms,
            prev,
            curr,
        };
        (counts, now)
    }

    /// `floor(limit - prev * (P - e) / P - used)`, or 0 when that is negative.
    #[inline]
    fn remaining(&self, c: &Counts, used: u64) -> u64 {
        let p = self.period_ms;
        let room = self.limit.saturating_sub(used) * p;
        let weighted = c.prev * (p - c.elapsed_ms);
        room.saturating_sub(weighted) / p
    }

    fn fits(&self, prev: u64, elapsed_ms: u64, used: u64) -> bool {
        used <= self.limit && prev * (self.period_ms - elapsed_ms) <= (self.limit - used) * self.period_ms
    }

    /// Time until a request of `cost` fits, assuming no other hits in between.
    fn retry_after(&self, c: &Counts, cost: u64, now: u64) -> u64 {
        let p = self.period_ms;
        let start = c.window * self.period;
        // Later in the current window, as the previous window's weight falls.
        if c.curr + cost <= self.limit && c.prev > 0 {
            let slack = ((self.limit - c.curr - cost) * p) / c.prev;
            let e_ms = p.saturating_sub(slack);
            if e_ms < p {
                return start + e_ms * MS - now;
            }
        }
        // In the next window, where the current count becomes the weighted one.
        let e_ms = ((self.limit - cost) * p)
            .checked_div(c.curr)
            .map_or(0, |slack| p.saturating_sub(slack));
        start + self.period + e_ms * MS - now
    }

    fn reset_after(&self, c: &Counts, curr: u64, now: u64) -> u64 {
        let start = c.window * self.period;
        if curr > 0 {
            start + 2 * self.period - now
        } else if c.prev > 0 {
            start + self.period - now
        } else {
            0
        }
    }
}

impl WordAlgorithm for SlidingWindow {
    #[inline]
    fn step(&self, word: u64, now: u64, cost: u64) -> (Outcome, u64) {
        let (c, now) = self.counts(word, now);
        if self.fits(c.prev, c.elapsed_ms, c.curr + cost) {
            let curr = c.curr + cost;
            let outcome = Outcome {
                allowed: true,
                remaining: self.remaining(&c, curr),
                reset_after: self.reset_after(&c, curr, now),
                retry_after: 0,
            };
            let new_word = ((c.window & TAG_MASK) << (2 * COUNT_BITS)) | (c.prev << COUNT_BITS) | curr;
            (outcome, new_word)
        } else {
            let outcome = Outcome {
                allowed: false,
                remaining: self.remaining(&c, c.curr),
                reset_after: self.reset_after(&c, c.curr, now),
                retry_after: self.retry_after(&c, cost, now),
            };
            (outcome, word)
        }
    }

    #[inline]
    fn is_fresh(&self, word: u64, now: u64) -> bool {
        let (c, _) = self.counts(word, now);
        c.prev == 0 && c.curr == 0
    }

    fn set_available(&self, word: u64, now: u64, available: u64) -> u64 {
        // The current count that leaves `available` units next to the weighted previous one.
        let (c, _) = self.counts(word, now);
        let p = self.period_ms;
        let weighted = (c.prev * (p - c.elapsed_ms)).div_ceil(p);
        let curr = self
            .limit
            .saturating_sub(available)
            .saturating_sub(weighted)
            .min(COUNT_MASK);
        if curr == 0 && c.prev == 0 {
            return 0;
        }
        ((c.window & TAG_MASK) << (2 * COUNT_BITS)) | (c.prev << COUNT_BITS) | curr
    }

    fn refund(&self, word: u64, _now: u64, cost: u64) -> u64 {
        // Taken from the stored current count; if a later hit has opened a new window since,
        // the refunded units sit in the stored previous count instead.
        let curr = word & COUNT_MASK;
        let prev = (word >> COUNT_BITS) & COUNT_MASK;
        let tag = word & !((1 << (2 * COUNT_BITS)) - 1);
        let (prev, curr) = if curr >= cost {
            (prev, curr - cost)
        } else {
            (prev.saturating_sub(cost - curr), 0)
        };
        tag | (prev << COUNT_BITS) | curr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let s = SlidingWindow::new(100, 60 * S);
        let (_, w) = s.step(0, 600 * S, 100); // window 10 full
                                              // 15 s into window 11: 75 of the 100 still count.
        let (o, w) = s.step(w, 675 * S, 25);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        let (o, _) = s.step(w, 675 * S, 1);
        assert!(!o.allowed);
        // Weight falls by 1/60000 a ms; one more unit fits once 75*... is below 74.
        let (c, _) = s.counts(w, 675 * S);
        let retry = s.retry_after(&c, 1, 675 * S);
        let (o, _) = s.step(w, 675 * S + retry, 1);
        assert!(o.allowed, "allowed exactly at retry_after");
        let (o, _) = s.step(w, 675 * S + retry - MS, 1);
        assert!(!o.allowed, "not a millisecond before");
    }

    #[test]
    fn a_late_request_never_rewinds_a_window() {
        // Thread B stamped 10.000 s wrote window 10; thread A, stamped 9.999 s, lands after.
        let s = SlidingWindow::new(5, S);
        let (_, w) = s.step(0, 10 * S, 2);
        let (o, w2) = s.step(w, 10 * S - MS, 1);
        assert!(o.allowed);
        assert_eq!(o.remaining, 2);
        assert_eq!(w2 >> (2 * COUNT_BITS), 10);
        assert_eq!(w2 & COUNT_MASK, 3);
    }

    #[test]
    fn sliding_window_is_fresh_after_two_periods() {
        let s = SlidingWindow::new(5, S);
        let (o, w) = s.step(0, 10 * S + 1, 1);
        assert_eq!(o.reset_after, 2 * S - 1);
        assert!(!s.is_fresh(w, 11 * S + 500 * MS));
        assert!(s.is_fresh(w, 12 * S));
    }
}
