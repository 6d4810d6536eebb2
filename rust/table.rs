//! The sharded key -> state table, its bound on keys, and the expiry sweeper.
//!
//! Keys are stored as a 128-bit SipHash-1-3 of their bytes under a secret drawn once per
//! process, not as strings: a slot is 16 bytes of key plus the state, so a million token
//! buckets fit in about 50 MB. Two distinct keys share state only on a 128-bit collision
//! (about n^2 / 2^129: below 10^-26 at a billion keys), and the secret keeps an attacker from
//! aiming for one.
//!
//! Concurrency: each shard is a `RwLock<HashTable>`. A request for a key that exists takes its
//! shard's lock shared (many at once, no waiting on each other) and updates the state in place
//! by compare-and-swap. The lock is taken exclusively only to insert a key, by the sweeper
//! for a bounded batch of removals, and to shrink a shard. There is no lock over the whole
//! table.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::RwLock;
use siphasher::sip128::SipHasher13;

use crate::algo::{Outcome, WordAlgorithm};
use crate::clock::Clock;
use crate::log::{Log, SlidingLog};

/// A key as the table stores it: its 128-bit keyed hash.
pub type KeyHash = [u64; 2];

/// Hashes key bytes under the process secret.
pub fn hash_key(bytes: &[u8]) -> KeyHash {
    static SECRET: OnceLock<SipHasher13> = OnceLock::new();
    let hasher = SECRET.get_or_init(|| {
        let r = RandomState::new();
        SipHasher13::new_with_keys(r.hash_one(0x686f_746c_u64), r.hash_one(0x696d_6974_u64))
    });
    let (a, b) = hasher.hash(bytes).as_u64();
    [a, b]
}

/// Scan this many buckets per shared-lock hold while sweeping.
const SCAN_CHUNK: usize = 2048;
/// Remove at most this many keys per exclusive-lock hold.
const REMOVE_BATCH: usize = 256;

/// The table is full and no key in the shard could be reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// One shard: a hash table of (key, state), behind its own lock, alone on its cache line.
type Shard<S> = CachePadded<RwLock<HashTable<(KeyHash, S)>>>;

pub struct Table<S> {
    shards: Box<[Shard<S>]>,
    mask: usize,
    len: AtomicUsize,
    max_keys: usize,
}

impl<S> std::fmt::Debug for Table<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("shards", &self.shards.len())
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

#[inline]
fn table_hash(key: &KeyHash) -> u64 {
    key[0]
}

impl<S: Default> Table<S> {
    /// `shards` is rounded up to a power of two.
    pub fn new(shards: usize, max_keys: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        Table {
            shards: (0..n)
                .map(|_| CachePadded::new(RwLock::new(HashTable::new())))
                .collect(),
            mask: n - 1,
            len: AtomicUsize::new(0),
            max_keys,
        }
    }

    #[inline]
    fn shard_of(&self, key: &KeyHash) -> usize {
        // The high word picks the shard; hashbrown uses the low word, so the two are independent.
        (key[1] as usize) & self.mask
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Runs `f` on the key's state under a shared lock, if the key is present.
    #[inline]
    pub fn with_existing<R>(&self, key: &KeyHash, f: impl FnOnce(&S) -> R) -> Option<R> {
        let shard = self.shards[self.shard_of(key)].read();
        shard.find(table_hash(key), |e| e.0 == *key).map(|e| f(&e.1))
    }

    /// Runs `f` on the key's state, inserting a fresh state first if the key is absent.
    ///
    /// At `max_keys`, first reclaims keys of the same shard that `is_fresh` says are back to a
    /// fresh state; if none can be, returns `Full` and changes nothing. A live key is never
    /// dropped to make room.
    pub fn with_inserted<R>(
        &self,
        key: &KeyHash,
        is_fresh: impl Fn(&S) -> bool,
        f: impl FnOnce(&S) -> R,
    ) -> Result<R, Full> {
        let mut shard = self.shards[self.shard_of(key)].write();
        let h = table_hash(key);
        if let Some(e) = shard.find(h, |e| e.0 == *key) {
            return Ok(f(&e.1));
        }
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
            self.len.fetch_sub(1, Ordering::Relaxed);
            let before = shard.len();
            shard.retain(|e| !is_fresh(&e.1));
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
            if self.len.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
                self.len.fetch_sub(1, Ordering::Relaxed);
                return Err(Full);
            }
        }
        let entry = shard.insert_unique(h, (*key, S::default()), |e| table_hash(&e.0));
        Ok(f(&entry.get().1))
    }

    /// Removes the key; true if it was present.
    pub fn remove(&self, key: &KeyHash) -> bool {
        let mut shard = self.shards[self.shard_of(key)].write();
        match shard.find_entry(table_hash(key), |e| e.0 == *key) {
            Ok(e) => {
                e.remove();
                self.len.fetch_sub(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Drops the keys of one shard whose state is fresh, holding the shard's lock only briefly:
    /// candidates are found under the shared lock a chunk at a time, then removed under the
    /// exclusive lock a batch at a time, each re-checked with a `now` read under that lock (so a
    /// key revived since the scan stays). Shrinks the shard when it has become sparse.
    /// Returns the number of keys removed.
    pub fn sweep_shard(&self, index: usize, is_fresh: impl Fn(&S, u64) -> bool, clock: &Clock) -> usize {
        let lock = &self.shards[index];
        let mut candidates: Vec<KeyHash> = Vec::new();
        let mut start = 0;
        loop {
            let shard = lock.read();
            let buckets = shard.num_buckets();
            if start >= buckets {
                break;
            }
            let end = (start + SCAN_CHUNK).min(buckets);
            let now = clock.now();
            for b in start..end {
                if let Some((k, s)) = shard.get_bucket(b) {
                    if is_fresh(s, now) {
                        candidates.push(*k);
                    }
                }
            }
            start = end;
        }
        let mut removed = 0;
        for batch in candidates.chunks(REMOVE_BATCH) {
            let mut shard = lock.write();
            let now = clock.now();
            for k in batch {
                if let Ok(e) = shard.find_entry(table_hash(k), |e| e.0 == *k) {
                    if is_fresh(&e.get().1, now) {
                        e.remove();
                        removed += 1;
                    }
                }
            }
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        {
            let mut shard = lock.write();
            // Shrink when under a quarter full, so a shard that emptied gives its memory back.
            if shard.capacity() > 0 && shard.len() * 4 < shard.capacity() {
                let target = shard.len() * 2;
                shard.shrink_to(target, |e| table_hash(&e.0));
            }
        }
        removed
    }
}

/// What the Python binding needs from a limiter, whatever its algorithm.
pub trait Engine: Send + Sync + 'static {
    /// Decides a request. `commit = false` is a peek: nothing is written, nothing inserted.
    fn decide(&self, key: &KeyHash, cost: u64, commit: bool) -> Result<Outcome, Full>;
    /// Forgets the key; true if it was tracked.
    fn reset(&self, key: &KeyHash) -> bool;
    /// Gives back `cost` units just consumed for the key (see `WordAlgorithm::refund`).
    fn refund(&self, key: &KeyHash, cost: u64);
    /// Leaves exactly `available` units for the key now (hybrid mode's fold). False where the
    /// algorithm cannot (the sliding log), or when the table is full.
    fn set_available(&self, _key: &KeyHash, _available: u64) -> bool {
        false
    }
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn clock(&self) -> &Clock;
    fn shard_count(&self) -> usize;
    /// Removes the fresh keys of one shard; returns how many.
    fn sweep_shard(&self, index: usize) -> usize;
    /// Sweeps every shard now; returns how many keys were removed.
    ///
    /// Each shard under the sweeper's gate, as the background sweeper does: an explicit sweep
    /// runs with the GIL released, so another thread can `fork()` meanwhile, and a child
    /// forked while a shard lock was held would wait on it forever. `before_fork` takes the
    /// gate, so a fork waits for the shard in progress and the next one waits for the fork.
    fn sweep(&self) -> usize {
        (0..self.shard_count())
            .map(|i| {
                let _held = sweeper().gate.lock();
                self.sweep_shard(i)
            })
            .sum()
    }
    fn sweep_interval(&self) -> Duration;
}

/// A limiter whose per-key state is one atomic word.
#[derive(Debug)]
pub struct WordEngine<A> {
    algo: A,
    table: Table<AtomicU64>,
    clock: Clock,
    sweep_interval: Duration,
}

impl<A: WordAlgorithm> WordEngine<A> {
    pub fn new(algo: A, shards: usize, max_keys: usize, clock: Clock, sweep_interval: Duration) -> Self {
        WordEngine {
            algo,
            table: Table::new(shards, max_keys),
            clock,
            sweep_interval,
        }
    }

    /// The compare-and-swap loop. Relaxed ordering is enough: the word is the key's whole
    /// state and publishes no other memory, and read-modify-write operations on one location
    /// are totally ordered whatever the ordering argument, so every decision sees the result
    /// of every earlier successful one.
    #[inline]
    fn apply(&self, word: &AtomicU64, cost: u64, commit: bool) -> Outcome {
        // `now` is read while the shard lock is held, so the sweeper (exclusive lock) can never
        // judge a key fresh at a later time than a decision that is about to write it.
        let now = self.clock.now();
        let mut current = word.load(Ordering::Relaxed);
        loop {
            let (outcome, next) = self.algo.step(current, now, cost);
            if !commit || next == current {
                return outcome;
            }
            match word.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return outcome,
                Err(actual) => current = actual,
            }
        }
    }
}

impl<A: WordAlgorithm> Engine for WordEngine<A> {
    #[inline]
    fn decide(&self, key: &KeyHash, cost: u64, commit: bool) -> Result<Outcome, Full> {
        if let Some(o) = self.table.with_existing(key, |w| self.apply(w, cost, commit)) {
            return Ok(o);
        }
        let (fresh, _) = self.algo.step(0, self.clock.now(), cost);
        if !commit || !fresh.allowed {
            return Ok(fresh);
        }
        let algo = &self.algo;
        let clock = &self.clock;
        self.table.with_inserted(
            key,
            |w| algo.is_fresh(w.load(Ordering::Relaxed), clock.now()),
            |w| self.apply(w, cost, commit),
        )
    }

    fn reset(&self, key: &KeyHash) -> bool {
        self.table.remove(key)
    }

    fn set_available(&self, key: &KeyHash, available: u64) -> bool {
        let set = |w: &AtomicU64| {
            let now = self.clock.now();
            let mut current = w.load(Ordering::Relaxed);
            loop {
                let next = self.algo.set_available(current, now, available);
                match w.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(actual) => current = actual,
                }
            }
        };
        if self.table.with_existing(key, set).is_some() {
            return true;
        }
        if self.algo.set_available(0, self.clock.now(), available) == 0 {
            return true; // a fresh key already has that much
        }
        let algo = &self.algo;
        let clock = &self.clock;
        self.table
            .with_inserted(
                key,
                |w| algo.is_fresh(w.load(Ordering::Relaxed), clock.now()),
                set,
            )
            .is_ok()
    }

    fn refund(&self, key: &KeyHash, cost: u64) {
        self.table.with_existing(key, |w| {
            let now = self.clock.now();
            let mut current = w.load(Ordering::Relaxed);
            loop {
                let next = self.algo.refund(current, now, cost);
                match w.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(actual) => current = actual,
                }
            }
        });
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn shard_count(&self) -> usize {
        self.table.shard_count()
    }

    fn sweep_shard(&self, index: usize) -> usize {
        let algo = &self.algo;
        self.table.sweep_shard(
            index,
            |w, now| algo.is_fresh(w.load(Ordering::Relaxed), now),
            &self.clock,
        )
    }

    fn sweep_interval(&self) -> Duration {
        self.sweep_interval
    }
}

/// The sliding log limiter: per-key logs behind per-key mutexes.
#[derive(Debug)]
pub struct LogEngine {
    algo: SlidingLog,
    table: Table<parking_lot::Mutex<Log>>,
    clock: Clock,
    sweep_interval: Duration,
}

impl LogEngine {
    pub fn new(
        algo: SlidingLog,
        shards: usize,
        max_keys: usize,
        clock: Clock,
        sweep_interval: Duration,
    ) -> Self {
        LogEngine {
            algo,
            table: Table::new(shards, max_keys),
            clock,
            sweep_interval,
        }
    }
}

impl Engine for LogEngine {
    fn decide(&self, key: &KeyHash, cost: u64, commit: bool) -> Result<Outcome, Full> {
        let apply = |m: &parking_lot::Mutex<Log>| {
            let mut log = m.lock();
            self.algo.step(&mut log, self.clock.now(), cost, commit)
        };
        if let Some(o) = self.table.with_existing(key, apply) {
            return Ok(o);
        }
        let fresh = self.algo.step(&mut Log::default(), self.clock.now(), cost, false);
        if !commit || !fresh.allowed {
            return Ok(fresh);
        }
        let algo = &self.algo;
        let clock = &self.clock;
        self.table
            .with_inserted(key, |m| algo.is_fresh(&m.lock(), clock.now()), apply)
    }

    fn reset(&self, key: &KeyHash) -> bool {
        self.table.remove(key)
    }

    fn refund(&self, key: &KeyHash, cost: u64) {
        self.table
            .with_existing(key, |m| self.algo.refund(&mut m.lock(), cost));
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn shard_count(&self) -> usize {
        self.table.shard_count()
    }

    fn sweep_shard(&self, index: usize) -> usize {
        let algo = &self.algo;
        self.table
            .sweep_shard(index, |m, now| algo.is_fresh(&m.lock(), now), &self.clock)
    }

    fn sweep_interval(&self) -> Duration {
        self.sweep_interval
    }
}

// ---------------------------------------------------------------------------------------------
// The sweeper: one native thread per process for every limiter.

struct Registered {
    engine: Weak<dyn Engine>,
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

/// How often the sweeper thread wakes to see whether some limiter is due.
const TICK: Duration = Duration::from_millis(50);

/// Registers an engine with the sweeper thread, starting the thread if needed.
pub fn register(engine: &Arc<dyn Engine>) {
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
        let due: Vec<Arc<dyn Engine>> = {
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
        if freed_since_trim >= 65_536 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::Gcra;
    use crate::window::{FixedWindow, SlidingWindow};
    use std::sync::Barrier;

    const S: u64 = 1_000_000_000;

    fn gcra(limit: u64, max_keys: usize, clock: &Clock) -> WordEngine<Gcra> {
        WordEngine::new(
            Gcra::new(limit, S, limit),
            64,
            max_keys,
            clock.clone(),
            Duration::from_secs(1),
        )
    }

    /// Many threads on one key and on many keys: exactly the limit is admitted.
    fn hammer(
        engine: Arc<dyn Engine>,
        prefix: &'static str,
        threads: usize,
        keys: usize,
        attempts: usize,
    ) -> Vec<usize> {
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let engine = engine.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut allowed = vec![0usize; keys];
                    for i in 0..attempts {
                        let k = (i + t) % keys;
                        let key = hash_key(format!("{prefix}-{k}").as_bytes());
                        if engine.decide(&key, 1, true).unwrap().allowed {
                            allowed[k] += 1;
                        }
                    }
                    allowed
                })
            })
            .collect();
        let mut total = vec![0usize; keys];
        for h in handles {
            for (k, n) in h.join().unwrap().into_iter().enumerate() {
                total[k] += n;
            }
        }
        total
    }

    #[test]
    fn exact_under_contention_every_word_algorithm() {
        let clock = Clock::manual(1_000 * S + 123);
        let engines: Vec<Arc<dyn Engine>> = vec![
            Arc::new(gcra(500, 1 << 20, &clock)),
            Arc::new(WordEngine::new(
                FixedWindow::new(500, S),
                64,
                1 << 20,
                clock.clone(),
                Duration::from_secs(1),
            )),
            Arc::new(WordEngine::new(
                SlidingWindow::new(500, S),
                64,
                1 << 20,
                clock.clone(),
                Duration::from_secs(1),
            )),
            Arc::new(LogEngine::new(
                SlidingLog::new(500, S),
                64,
                1 << 20,
                clock.clone(),
                Duration::from_secs(1),
            )),
        ];
        for engine in engines {
            // One hot key, 8 threads.
            assert_eq!(hammer(engine.clone(), "hot", 8, 1, 2_000), vec![500]);
            // 1,000 keys, 8 threads each touching every key 4 times: 32 attempts a key, all fit.
            let per_key = hammer(engine.clone(), "many", 8, 1_000, 4_000);
            assert!(per_key.iter().all(|&n| n == 32), "{per_key:?}");
        }
    }

    #[test]
    fn sweep_removes_only_fresh_keys_and_shrinks() {
        let clock = Clock::manual(1_000 * S);
        let e = gcra(10, 1 << 20, &clock);
        for i in 0..10_000 {
            e.decide(&hash_key(format!("k{i}").as_bytes()), 1, true).unwrap();
        }
        assert_eq!(e.len(), 10_000);
        clock.advance(S / 20); // 50 ms: half of the one token used (T = 100 ms) is back
        let hot = hash_key(b"hot");
        e.decide(&hot, 5, true).unwrap();
        assert_eq!(e.sweep(), 0, "no key is full again yet");
        clock.advance(S / 10);
        assert_eq!(e.sweep(), 10_000, "every key but the hot one is full again");
        assert_eq!(e.len(), 1);
        let o = e.decide(&hot, 1, false).unwrap();
        assert_eq!(o.remaining, 5, "the live key kept its state");
        let cap: usize = e.table.shards.iter().map(|s| s.read().capacity()).sum();
        assert!(cap < 100, "shards shrank, capacity {cap}");
    }

    #[test]
    fn refund_gives_back_exactly_what_was_taken() {
        let t = Arc::new(AtomicU64::new(1_000 * S + 123));
        let clock = Clock::Manual(t.clone());
        let si = Duration::from_secs(1);
        let engines: Vec<Arc<dyn Engine>> = vec![
            Arc::new(gcra(10, 100, &clock)),
            Arc::new(WordEngine::new(
                FixedWindow::new(10, S),
                4,
                100,
                clock.clone(),
                si,
            )),
            Arc::new(WordEngine::new(
                SlidingWindow::new(10, S),
                4,
                100,
                clock.clone(),
                si,
            )),
            Arc::new(LogEngine::new(SlidingLog::new(10, S), 4, 100, clock.clone(), si)),
        ];
        let k = hash_key(b"k");
        for e in &engines {
            assert!(e.decide(&k, 3, true).unwrap().allowed);
            let before = e.decide(&k, 1, false).unwrap();
            assert!(e.decide(&k, 4, true).unwrap().allowed);
            e.refund(&k, 4);
            assert_eq!(e.decide(&k, 1, false).unwrap().remaining, before.remaining);
            e.refund(&k, 3);
            assert_eq!(
                e.decide(&k, 1, false).unwrap().remaining,
                9,
                "back to a fresh key"
            );
        }
    }

    #[test]
    fn max_keys_reclaims_fresh_keys_and_never_drops_live_ones() {
        let clock = Clock::manual(1_000 * S);
        // One shard so reclaiming sees every key.
        let e = WordEngine::new(
            Gcra::new(10, S, 10),
            1,
            100,
            clock.clone(),
            Duration::from_secs(1),
        );
        for i in 0..100 {
            assert!(
                e.decide(&hash_key(format!("k{i}").as_bytes()), 10, true)
                    .unwrap()
                    .allowed
            );
        }
        assert_eq!(e.decide(&hash_key(b"new"), 1, true), Err(Full));
        assert_eq!(e.len(), 100);
        // Every key drained: denied, and still tracked.
        assert!(!e.decide(&hash_key(b"k7"), 1, true).unwrap().allowed);
        // A peek never inserts, so it is answered even when full.
        assert!(e.decide(&hash_key(b"new"), 1, false).unwrap().allowed);
        clock.advance(S); // all keys full again: reclaimable.
        assert!(e.decide(&hash_key(b"new"), 1, true).unwrap().allowed);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn background_sweeper_empties_idle_tables() {
        let clock = Clock::manual(1_000 * S);
        let e: Arc<dyn Engine> = Arc::new(WordEngine::new(
            Gcra::new(10, S, 10),
            16,
            1 << 20,
            clock.clone(),
            Duration::from_millis(10),
        ));
        register(&e);
        for i in 0..1_000 {
            e.decide(&hash_key(format!("k{i}").as_bytes()), 1, true).unwrap();
        }
        clock.advance(S);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !e.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(e.len(), 0);
    }

    #[test]
    fn keys_hash_apart() {
        assert_ne!(hash_key(b"a"), hash_key(b"b"));
        assert_eq!(hash_key("ключ".as_bytes()), hash_key("ключ".as_bytes()));
        assert_ne!(hash_key(b""), hash_key(b"\0"));
    }
}
