//! The sliding log: an exact count of the units consumed in `(now - period, now]`.
//!
//! Per key it keeps runs of (time, units), oldest first, so it costs memory in proportion to
//! the limit; hence a maximum limit. It is the only algorithm whose state does not fit a word:
//! a key's log sits behind its own small mutex, held only for the few instructions of one
//! decision (never across a call into Python or a wait).

use std::collections::VecDeque;

use crate::algo::Outcome;

#[derive(Clone, Copy, Debug)]
pub struct SlidingLog {
    limit: u64,
    period: u64,
}

/// The log of one key: `(time_ns, units)`, times non-decreasing, and the units it holds.
#[derive(Debug, Default)]
pub struct Log {
    runs: VecDeque<(u64, u32)>,
    total: u64,
}

impl SlidingLog {
    /// Maximum limit: a full log of single-unit hits costs 16 bytes a unit.
    pub const MAX_LIMIT: u64 = 10_000;

    pub fn new(limit: u64, period_ns: u64) -> Self {
        SlidingLog {
            limit,
            period: period_ns,
        }
    }

    /// Hits at or before this time have left the window at `now`.
    #[inline]
    fn horizon(&self, now: u64) -> u64 {
        now.saturating_sub(self.period)
    }

    /// Decides; on `commit` an allowed request is recorded and expired runs are dropped.
    pub fn step(&self, log: &mut Log, now: u64, cost: u64, commit: bool) -> Outcome {
        // A request stamped before the newest entry (its thread read the clock a moment earlier
        // and locked later) is taken at the newest entry's time, keeping the log sorted.
        let now = log.runs.back().map_or(now, |&(t, _)| now.max(t));
        let horizon = self.horizon(now);
        // Units that have left the window: dropped on commit, skipped otherwise. Either way
        // only the expired prefix is walked, never the whole log.
        let mut expired = 0u64;
        let mut first_live = 0;
        if commit {
            while let Some(&(t, n)) = log.runs.front() {
                if t > horizon {
                    break;
                }
                log.total -= u64::from(n);
                log.runs.pop_front();
            }
        } else {
            for &(t, n) in &log.runs {
                if t > horizon {
                    break;
                }
                expired += u64::from(n);
                first_live += 1;
            }
        }
        let count = log.total - expired;
        if count + cost <= self.limit {
            let outcome = Outcome {
                allowed: true,
                remaining: self.limit - count - cost,
                // The newest hit (this one) leaves the window last.
                reset_after: self.period,
                retry_after: 0,
            };
            if commit {
                log.total += cost;
                match log.runs.back_mut() {
                    // cost <= limit <= MAX_LIMIT, and a run never holds more than the limit.
                    Some((t, n)) if *t == now => *n += cost as u32,
                    _ => log.runs.push_back((now, cost as u32)),
                }
            }
            outcome
        } else {
            // Wait until enough of the oldest units have left the window.
            let mut excess = count + cost - self.limit;
            let mut retry_at = now;
            for &(t, n) in log.runs.iter().skip(first_live) {
                retry_at = t + self.period;
                if u64::from(n) >= excess {
                    break;
                }
                excess -= u64::from(n);
            }
            let newest = log.runs.back().map_or(now, |&(t, _)| t + self.period);
            Outcome {
                allowed: false,
                remaining: self.limit.saturating_sub(count),
                reset_after: newest - now,
                retry_after: retry_at - now,
            }
        }
    }

    /// Takes `cost` units back from the newest end of the log.
    pub fn refund(&self, log: &mut Log, cost: u64) {
        let mut left = cost;
        while left > 0 {
            let Some((_, n)) = log.runs.back_mut() else { break };
            let take = left.min(u64::from(*n));
            *n -= take as u32;
            log.total -= take;
            left -= take;
            if *n == 0 {
                log.runs.pop_back();
            }
        }
    }

    pub fn is_fresh(&self, log: &Log, now: u64) -> bool {
        let horizon = self.horizon(now);
        log.runs.back().is_none_or(|&(t, _)| t <= horizon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_late_request_keeps_the_log_sorted() {
        let s = SlidingLog::new(3, 10 * S);
        let mut log = Log::default();
        assert!(s.step(&mut log, 100 * S, 1, true).allowed);
        assert!(s.step(&mut log, 100 * S - 5, 1, true).allowed);
        assert_eq!(log.runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![100 * S]);
        assert_eq!(log.total, 2);
    }

    #[test]
    fn exact_count_in_the_window() {
        let s = SlidingLog::new(3, 10 * S);
        let mut log = Log::default();
        assert!(s.step(&mut log, 100 * S, 1, true).allowed);
        assert!(s.step(&mut log, 104 * S, 2, true).allowed);
        let o = s.step(&mut log, 105 * S, 1, true);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 5 * S, "the first unit leaves at 110 s");
        assert_eq!(o.reset_after, 9 * S);
        let o = s.step(&mut log, 105 * S, 2, false);
        assert_eq!(o.retry_after, 9 * S, "two units need the run at 104 s gone");
        assert!(!s.step(&mut log, 110 * S - 1, 1, true).allowed);
        assert!(s.step(&mut log, 110 * S, 1, true).allowed);
        assert!(!s.is_fresh(&log, 119 * S));
        assert!(s.is_fresh(&log, 120 * S));
    }
}
