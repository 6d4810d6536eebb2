//! Time for the limiters: nanoseconds on the Unix time scale, read from a monotonic clock.
//!
//! Every algorithm takes `now` as an argument; only [`Clock::now`] reads a real clock, so tests
//! drive time through a [`Clock::Manual`] and never sleep.
//!
//! The real clock is `CLOCK_MONOTONIC` (through `Instant`), anchored once to the Unix time scale.
//! On x86-64 machines whose kernel itself keeps time with an invariant TSC, reading the TSC
//! directly costs 10 ns where `clock_gettime` costs 26 (measured here), a fifth of a decision.
//! So once the sweeper thread has watched both for a second, [`calibrate`] publishes a TSC
//! calibration and `now` switches to it; until then, and anywhere the TSC is not trusted,
//! `Instant` is used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the monotonic clock was anchored to the Unix time scale, once per process, so that
/// every limiter in the process agrees on `now` and windows align with wall-clock multiples
/// of their period (a 1-minute window starts on the minute, as it does in Redis).
struct Anchor {
    instant: Instant,
    unix_ns: u64,
    /// The TSC read around `instant` (0 where there is no TSC).
    tsc: u64,
}

/// Sets the anchor at import, on the importing thread, before any other thread (or fork) can
/// be in the middle of setting it.
pub fn warm_up() {
    let _ = anchor();
}

fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let (instant, tsc) = tsc::sample();
        Anchor {
            instant,
            unix_ns,
            tsc,
        }
    })
}

#[inline]
fn instant_now(a: &Anchor) -> u64 {
    let since = a.instant.elapsed().as_nanos();
    a.unix_ns.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
}

/// How long the sweeper watches the TSC against `CLOCK_MONOTONIC` before trusting it.
const CALIBRATION_WINDOW: Duration = Duration::from_secs(1);

/// Publishes the TSC calibration once `CALIBRATION_WINDOW` has passed since the anchor; a no-op
/// before then, after it succeeded, or where the TSC is not used. Returns whether the TSC is in
/// use. Called by the sweeper thread on every tick.
pub fn calibrate() -> bool {
    tsc::calibrate(anchor(), CALIBRATION_WINDOW)
}

#[cfg(target_arch = "x86_64")]
mod tsc {
    use super::{instant_now, Anchor};
    use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
    use std::time::{Duration, Instant};

    /// `ns = ns0 + (tsc - tsc0) * mult / 2^32`, fixed point.
    struct Calibration {
        tsc0: u64,
        ns0: u64,
        mult: u64,
    }

    // Published once, without locks: a fork() can happen at any moment (the sweeper thread
    // calibrates), and a child must never inherit a half-done initialisation it would wait on.
    // STATE: 0 none, 1 being written (forever, in a child forked right then: it keeps using
    // clock_gettime), 2 ready.
    static STATE: AtomicU8 = AtomicU8::new(0);
    static TSC0: AtomicU64 = AtomicU64::new(0);
    static NS0: AtomicU64 = AtomicU64::new(0);
    static MULT: AtomicU64 = AtomicU64::new(0);

    fn published() -> Option<Calibration> {
        if STATE.load(Ordering::Acquire) != 2 {
            return None;
        }
        Some(Calibration {
            tsc0: TSC0.load(Ordering::Relaxed),
            ns0: NS0.load(Ordering::Relaxed),
            mult: MULT.load(Ordering::Relaxed),
        })
    }

    fn publish(c: &Calibration) {
        if STATE
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            TSC0.store(c.tsc0, Ordering::Relaxed);
            NS0.store(c.ns0, Ordering::Relaxed);
            MULT.store(c.mult, Ordering::Relaxed);
            STATE.store(2, Ordering::Release);
        }
    }

    #[inline]
    fn rdtsc() -> u64 {
        // SAFETY: RDTSC exists on every x86-64 CPU and has no side effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// An `Instant` and the TSC at (the midpoint of the reads around) the same moment.
    pub fn sample() -> (Instant, u64) {
        let a = rdtsc();
        let i = Instant::now();
        let b = rdtsc();
        (i, a / 2 + b / 2)
    }

    /// The kernel keeps time with the TSC and the CPU says it is invariant: the TSC then ticks
    /// at one rate on every core, through frequency changes and idle states.
    fn trusted() -> bool {
        // 0 unknown, 1 no, 2 yes; worked out without a lock (see STATE).
        static TRUSTED: AtomicU8 = AtomicU8::new(0);
        match TRUSTED.load(Ordering::Relaxed) {
            1 => return false,
            2 => return true,
            _ => {}
        }
        let source =
            std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource");
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|w| w == f);
        let yes = source.is_ok_and(|s| s.trim() == "tsc") && has("constant_tsc") && has("nonstop_tsc");
        TRUSTED.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
        yes
    }

    pub fn calibrate(anchor: &Anchor, window: Duration) -> bool {
        if STATE.load(Ordering::Acquire) != 0 {
            return STATE.load(Ordering::Acquire) == 2;
        }
        if anchor.tsc == 0 || anchor.instant.elapsed() < window || !trusted() {
            return false;
        }
        let (instant, tsc) = sample();
        let ns = instant.duration_since(anchor.instant).as_nanos() as u64;
        let ticks = tsc.saturating_sub(anchor.tsc);
        if ticks == 0 {
            return false;
        }
        let mult = ((u128::from(ns) << 32) / u128::from(ticks)) as u64;
        // Between 100 MHz and 10 GHz, or something is off: keep clock_gettime.
        if !(1u64 << 30..=10u64 << 32).contains(&mult) {
            return false;
        }
        let c = Calibration {
            tsc0: tsc,
            ns0: anchor.unix_ns + ns,
            mult,
        };
        // Cross-check against clock_gettime right now; refuse a calibration 50 us off.
        let check = now_with(&c);
        let reference = instant_now(anchor);
        if check.abs_diff(reference) > 50_000 {
            return false;
        }
        publish(&c);
        true
    }

    #[inline]
    fn now_with(c: &Calibration) -> u64 {
        let ticks = rdtsc().saturating_sub(c.tsc0);
        c.ns0 + ((u128::from(ticks) * u128::from(c.mult)) >> 32) as u64
    }

    #[inline]
    pub fn now() -> Option<u64> {
        published().map(|c| now_with(&c))
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tsc {
    use super::Anchor;
    use std::time::{Duration, Instant};

    pub fn sample() -> (Instant, u64) {
        (Instant::now(), 0)
    }

    pub fn calibrate(_anchor: &Anchor, _window: Duration) -> bool {
        false
    }

    #[inline]
    pub fn now() -> Option<u64> {
        None
    }
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
            Clock::Monotonic => match tsc::now() {
                Some(ns) => ns,
                None => instant_now(anchor()),
            },
            // Relaxed: the manual clock orders nothing else; a test that advances it and then
            // calls a limiter from the same thread sees its own write.
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward, stopping at `u64::MAX` rather than wrapping to the past;
    /// a no-op on the monotonic clock.
    pub fn advance(&self, ns: u64) {
        if let Clock::Manual(t) = self {
            let _ = t.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some(now.saturating_add(ns))
            });
        }
    }

    /// Moves a manual clock forward by `ns` if that keeps it at or below `max`; else leaves it
    /// and returns its time. A no-op on the monotonic clock.
    pub fn try_advance(&self, ns: u64, max: u64) -> Result<(), u64> {
        match self {
            Clock::Manual(t) => t
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                    now.checked_add(ns).filter(|&then| then <= max)
                })
                .map(|_| ()),
            Clock::Monotonic => Ok(()),
        }
    }

    /// Sets a manual clock to `ns` if that is not before its time; else leaves it and returns
    /// its time. A no-op on the monotonic clock.
    pub fn try_set_forward(&self, ns: u64) -> Result<(), u64> {
        match self {
            Clock::Manual(t) => t
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                    (ns >= now).then_some(ns)
                })
                .map(|_| ()),
            Clock::Monotonic => Ok(()),
        }
    }

    /// Sets a manual clock, even backwards; a no-op on the monotonic clock.
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
    fn tsc_calibration_agrees_with_clock_gettime() {
        let a = anchor();
        if !tsc::calibrate(a, Duration::from_millis(20)) {
            std::thread::sleep(Duration::from_millis(30));
        }
        if tsc::calibrate(a, Duration::from_millis(20)) {
            for _ in 0..50 {
                let t = tsc::now().unwrap();
                let r = instant_now(a);
                assert!(t.abs_diff(r) < 100_000, "tsc {t} vs clock_gettime {r}");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Either way the public clock keeps moving forward.
        let c = Clock::Monotonic;
        let x = c.now();
        std::thread::sleep(Duration::from_millis(1));
        assert!(c.now() > x);
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

    #[test]
    fn manual_never_wraps_nor_goes_back_unless_set() {
        let c = Clock::manual(u64::MAX - 5);
        c.advance(10);
        assert_eq!(c.now(), u64::MAX, "saturates instead of wrapping to the past");
        let c = Clock::manual(100);
        assert_eq!(c.try_advance(50, 200), Ok(()));
        assert_eq!(c.try_advance(51, 200), Err(150));
        assert_eq!(c.try_advance(u64::MAX, u64::MAX), Err(150), "overflow is refused");
        assert_eq!(c.now(), 150);
        assert_eq!(c.try_set_forward(149), Err(150));
        assert_eq!(c.try_set_forward(150), Ok(()));
        assert_eq!(c.try_set_forward(170), Ok(()));
        assert_eq!(c.now(), 170);
    }
}
