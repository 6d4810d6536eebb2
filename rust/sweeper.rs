//! The sweeper: one native thread per process removes keys whose state is back to fresh, for
//! every limiter and deny cache, a shard at a time; and the hooks that keep it safe across
//! `fork()`.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// A lock that a forked child can take over as it is. The sweeper's locks are held across
/// `fork()` by the forking thread; the child, where that thread lives on, must release them.
/// A parking_lot mutex with waiters cannot be released in the child safely: its unlock goes
/// through the parking lot's queue, whose internal lock a parent thread may have held (caught
/// mid-park) when the fork happened, and the child then waits forever (seen intermittently on
/// CPython 3.12). This lock is one flag: its waiters spin, then yield, then sleep briefly, and
/// there is no queue to inherit. It is held for a shard's sweep at most, and waited on only by
/// the sweeper, explicit sweeps and forks, so the short sleeps cost nothing on the hot path.
struct ForkLock<T> {
    held: AtomicBool,
    /// Set while a fork waits for the lock: other takers stand back, so a fork is not starved
    /// by a sweep that takes the lock again for each shard.
    fork_waits: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a guard, and `held` admits one guard at a time.
unsafe impl<T: Send> Sync for ForkLock<T> {}
// SAFETY: moving the lock moves the value it owns, which is Send.
unsafe impl<T: Send> Send for ForkLock<T> {}

struct ForkLockGuard<'a, T> {
    lock: &'a ForkLock<T>,
}

impl<T> ForkLock<T> {
    const fn new(value: T) -> Self {
        ForkLock {
            held: AtomicBool::new(false),
            fork_waits: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    fn lock(&self) -> ForkLockGuard<'_, T> {
        self.acquire(true);
        ForkLockGuard { lock: self }
    }

    fn acquire(&self, defer_to_fork: bool) {
        let mut tries = 0u32;
        while (defer_to_fork && self.fork_waits.load(Ordering::Acquire))
            || self
                .held
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            tries += 1;
            if tries < 64 {
                std::hint::spin_loop();
            } else if tries < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Takes the lock ahead of other takers and keeps it until `release_held`: for `fork()`.
    fn hold(&self) {
        self.fork_waits.store(true, Ordering::Release);
        self.acquire(false);
        self.fork_waits.store(false, Ordering::Release);
    }

    /// Releases a lock taken by `hold`, in the parent or in a child (where the forking thread
    /// is the one that holds it): one store, nothing to wake.
    fn release_held(&self) {
        self.held.store(false, Ordering::Release);
    }
}

impl<T> Deref for ForkLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (see `ForkLock::lock`).
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for ForkLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for ForkLockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.held.store(false, Ordering::Release);
    }
}

/// What the sweeper needs from a table of keys: its shards, and how to sweep one.
pub trait Sweep: Send + Sync + 'static {
    fn shard_count(&self) -> usize;
    /// Removes the fresh keys of one shard; returns how many.
    fn sweep_shard(&self, index: usize) -> usize;
    /// How often the background thread sweeps it.
    fn sweep_interval(&self) -> Duration;
    /// Sweeps every shard now; returns how many keys were removed.
    ///
    /// Each shard under the sweeper's gate, as the background sweeper does: an explicit sweep
    /// runs with the GIL released, so another thread can `fork()` meanwhile, and a child
    /// forked while a shard lock was held would wait on it forever. `before_fork` takes the
    /// gate, so a fork waits for the shard in progress and the next one waits for the fork.
    fn sweep(&self) -> usize {
        let removed = (0..self.shard_count())
            .map(|i| {
                let _held = sweeper().gate.lock();
                self.sweep_shard(i)
            })
            .sum();
        if removed >= TRIM_AFTER {
            release_free_memory(); // as the background sweeper does
        }
        removed
    }
}

struct Registered {
    engine: Weak<dyn Sweep>,
    next: Instant,
}

struct Sweeper {
    /// Also held across `fork()` (see `before_fork`), so a child never inherits it locked.
    engines: ForkLock<Vec<Registered>>,
    running: AtomicBool,
    /// Held by the sweeper while it works on a shard, and by a forking thread across `fork()`,
    /// so a child never inherits a shard lock held by a thread that does not exist there.
    gate: ForkLock<()>,
    /// Counts completed sweeps, for tests that wait on the background thread.
    passes: AtomicU64,
}

fn sweeper() -> &'static Sweeper {
    static SWEEPER: OnceLock<Sweeper> = OnceLock::new();
    SWEEPER.get_or_init(|| Sweeper {
        engines: ForkLock::new(Vec::new()),
        running: AtomicBool::new(false),
        gate: ForkLock::new(()),
        passes: AtomicU64::new(0),
    })
}

/// Freed memory goes back to the operating system after this many keys are removed.
const TRIM_AFTER: usize = 65_536;

/// How often the sweeper thread wakes to see whether some limiter is due.
const TICK: Duration = Duration::from_millis(50);

/// Registers an engine with the sweeper thread, starting the thread if needed.
pub fn register(engine: &Arc<dyn Sweep>) {
    let s = sweeper();
    let interval = engine.sweep_interval();
    s.engines.lock().push(Registered {
        engine: Arc::downgrade(engine),
        next: Instant::now() + interval,
    });
    ensure_thread();
}

fn ensure_thread() {
    let s = sweeper();
    if s.running.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("hotlimit-sweeper".into())
        .spawn(sweep_loop);
    if spawned.is_err() {
        // No thread: keys are still reclaimed at max_keys and by explicit sweeps; try again at
        // the next registration.
        s.running.store(false, Ordering::Release);
    }
}

fn sweep_loop() {
    let s = sweeper();
    let mut freed_since_trim = 0usize;
    loop {
        std::thread::sleep(TICK);
        crate::clock::calibrate();
        let now = Instant::now();
        let due: Vec<Arc<dyn Sweep>> = {
            let mut list = s.engines.lock();
            list.retain(|r| r.engine.strong_count() > 0);
            list.iter_mut()
                .filter(|r| r.next <= now)
                .filter_map(|r| {
                    let e = r.engine.upgrade()?;
                    r.next = now + e.sweep_interval();
                    Some(e)
                })
                .collect()
        };
        for engine in due {
            for shard in 0..engine.shard_count() {
                let held = s.gate.lock();
                let removed = engine.sweep_shard(shard);
                drop(held);
                freed_since_trim += removed;
            }
        }
        if freed_since_trim >= TRIM_AFTER {
            freed_since_trim = 0;
            release_free_memory();
        }
        s.passes.fetch_add(1, Ordering::Release);
    }
}

/// Hands freed heap pages back to the operating system (glibc keeps them otherwise).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only takes glibc's own arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Completed sweeper passes (any limiter); tests wait for it to move.
pub fn sweeper_passes() -> u64 {
    sweeper().passes.load(Ordering::Acquire)
}

/// Called before `fork()`: waits for the sweeper to finish its current shard and holds it off.
pub fn before_fork() {
    // Both kept locked until one of the after-fork calls releases them. The sweeper never
    // holds one while taking the other, so this order cannot deadlock with it.
    let s = sweeper();
    s.gate.hold();
    s.engines.hold();
}

/// Called in the parent after `fork()`.
pub fn after_fork_parent() {
    let s = sweeper();
    s.engines.release_held();
    s.gate.release_held();
}

/// Called in the child after `fork()`: the sweeper thread did not survive the fork.
pub fn after_fork_child() {
    let s = sweeper();
    s.engines.release_held();
    s.gate.release_held();
    s.running.store(false, Ordering::Release);
    let any = !s.engines.lock().is_empty();
    if any {
        ensure_thread();
    }
    release_free_memory();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn fork_lock_admits_one_holder_at_a_time() {
        let lock = Arc::new(ForkLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let mut v = lock.lock();
                        let seen = *v;
                        std::hint::spin_loop();
                        *v = seen + 1; // lost updates if two guards overlapped
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 80_000);
    }

    /// A fork waiting for the gate gets it although another thread takes it again and again
    /// (an explicit sweep takes it once per shard): takers stand back while a fork waits.
    #[test]
    fn a_fork_is_not_starved_by_a_busy_taker() {
        let lock = Arc::new(ForkLock::new(()));
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let busy = {
            let (lock, stop, rounds) = (lock.clone(), stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _g = lock.lock();
                    std::thread::sleep(Duration::from_micros(200));
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        while rounds.load(Ordering::Relaxed) < 5 {
            std::thread::yield_now();
        }
        for _ in 0..50 {
            lock.hold();
            let during = rounds.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
            assert_eq!(rounds.load(Ordering::Relaxed), during, "taken while held");
            lock.release_held();
        }
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
    }
}
