//! Time for the limiters: nanoseconds on the Unix time scale, read from a monotonic clock.
//!
//! Every algorithm takes `now` as an argument; only [`Clock::now`] reads a real clock, so tests
//! drive time through a [`Clock::Manual`] and never sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the monotonic clock was anchored to the Unix time scale, once per process, so that
/// every limiter in the process agrees on `now` and windows align with wall-clock multiples
/// of their period (a 1-minute window starts on the minute, as it does in Redis).
struct Anchor {
    instant: Instant,
    unix_ns: u64,
}

fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Anchor {
            instant: Instant::now(),
            unix_ns,
        }
    })
}

/// A source of "now" in nanoseconds since the Unix epoch.
///
/// `Monotonic` never goes backwards (a wall-clock step after start-up does not move it);
/// `Manual` is shared between the test and every limiter it was handed to.
///
/// ```
/// use _native::clock::Clock;
/// let clock = Clock::manual(1_000);
/// clock.advance(500);
/// assert_eq!(clock.now(), 1_500);
/// ```
#[derive(Clone, Debug)]
pub enum Clock {
    Monotonic,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn manual(start_ns: u64) -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(start_ns)))
    }

    #[inline]
    pub fn now(&self) -> u64 {
        match self {
            Clock::Monotonic => {
                let a = anchor();
                let since = a.instant.elapsed().as_nanos();
                a.unix_ns
                    .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
            }
            // Relaxed: the manual clock orders nothing else; a test that advances it and then
            // calls a limiter from the same thread sees its own write.
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward; a no-op on the monotonic clock.
    pub fn advance(&self, ns: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Sets a manual clock; a no-op on the monotonic clock.
    pub fn set(&self, ns: u64) {
        if let Clock::Manual(t) = self {
            t.store(ns, Ordering::Relaxed);
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }

    /// Lets `ns` pass: a real sleep on the monotonic clock, an instant advance on a manual one
    /// (so `acquire` can be tested without waiting).
    pub fn sleep(&self, ns: u64) {
        match self {
            Clock::Monotonic => std::thread::sleep(Duration::from_nanos(ns)),
            Clock::Manual(_) => self.advance(ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_is_unix_scale_and_non_decreasing() {
        let c = Clock::Monotonic;
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        // After 2020-01-01 and before 2200: the anchor is on the Unix time scale.
        assert!(a > 1_577_836_800_000_000_000 && a < 7_258_118_400_000_000_000);
    }

    #[test]
    fn manual_is_shared_between_clones() {
        let c = Clock::manual(10);
        let d = c.clone();
        c.advance(5);
        assert_eq!(d.now(), 15);
        d.set(3);
        assert_eq!(c.now(), 3);
        c.sleep(7);
        assert_eq!(c.now(), 10);
    }
}
