//! The sweeper: one native thread per process removes keys whose state is back to fresh, for
//! every limiter and deny cache, a shard at a time; and the hooks that keep it safe across
//! `fork()`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

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
    engines: parking_lot::Mutex<Vec<Registered>>,
    running: AtomicBool,
    /// Held by the sweeper while it works on a shard, and by a forking thread across `fork()`,
    /// so a child never inherits a shard lock held by a thread that does not exist there.
    gate: parking_lot::Mutex<()>,
    /// Counts completed sweeps, for tests that wait on the background thread.
    passes: AtomicU64,
}

fn sweeper() -> &'static Sweeper {
    static SWEEPER: OnceLock<Sweeper> = OnceLock::new();
    SWEEPER.get_or_init(|| Sweeper {
        engines: parking_lot::Mutex::new(Vec::new()),
        running: AtomicBool::new(false),
        gate: parking_lot::Mutex::new(()),
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
    std::mem::forget(s.gate.lock());
    std::mem::forget(s.engines.lock());
}

/// Called in the parent after `fork()`.
pub fn after_fork_parent() {
    let s = sweeper();
    // SAFETY: `before_fork` locked both and forgot their guards; these are their unlocks.
    unsafe {
        s.engines.force_unlock(Default::default());
        s.gate.force_unlock(Default::default());
    }
}

/// Called in the child after `fork()`: the sweeper thread did not survive the fork.
pub fn after_fork_child() {
    let s = sweeper();
    // SAFETY: `before_fork` locked both and forgot their guards; these are their unlocks.
    unsafe {
        s.engines.force_unlock(Default::default());
        s.gate.force_unlock(Default::default());
    }
    s.running.store(false, Ordering::Release);
    let any = !s.engines.lock().is_empty();
    if any {
        ensure_thread();
    }
    release_free_memory();
}
