//! The sharded key -> state table, its bound on keys, and the expiry sweeper.
//!
//! Keys are not stored as strings but as a 128-bit SipHash-1-3 of their bytes under a secret
//! drawn once per process: one half picks the shard, the other half is stored in the slot. A
//! slot is therefore 8 bytes of key plus the state (16 bytes for the word algorithms), and a
//! million token buckets fit in about 36 MB. A key's identity is the 64 stored bits plus the
//! shard's log2(shards) bits (16 to 1024 shards: 68 to 74 bits). Two distinct keys share state
//! only if both agree: about n^2 / 2^69 for n keys with 16 shards, so below 2 * 10^-9 at a
//! million keys and below 10^-4 at a billion (which takes 1024 shards, 74 bits). The secret keeps
//! an attacker from aiming for a collision; a chance one shares a limit with another key.
//!
//! Concurrency: each shard is a `RwLock<HashTable>`. A request for a key that exists takes its
//! shard's lock shared (many at once, no waiting on each other) and updates the state in place
//! by compare-and-swap. The lock is taken exclusively only to insert a key, by the sweeper
//! for a bounded batch of removals, and to shrink a shard. There is no lock over the whole
//! table.
//!
//! The bound on keys (`max_keys`): when the table is full, a new key makes room by reclaiming
//! keys whose state is back to fresh (indistinguishable from an absent key). Each insertion at
//! the bound examines at most `RECLAIM_SCAN` slots of its shard, from a per-shard hand that
//! moves on round the shard from call to call (a clock hand), and removes every fresh key it
//! sees there; so a flood of new keys costs a bounded amount per key, never a scan of the shard,
//! and a live key is never evicted.

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

/// A key's 128-bit keyed hash: `[stored in the slot, picks the shard]`.
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

/// At `max_keys`, an insertion examines at most this many slots of its shard for keys to reclaim.
pub const RECLAIM_SCAN: usize = 64;
/// Scan this many buckets per shared-lock hold while sweeping.
const SCAN_CHUNK: usize = 2048;
/// Remove at most this many keys per exclusive-lock hold.
const REMOVE_BATCH: usize = 256;

/// The table is full and no key in the shard could be reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// One shard's slots, and where its reclaiming hand stands.
struct Slots<S> {
    map: HashTable<(u64, S)>,
    /// The next slot index an insertion at the bound examines.
    hand: usize,
}

/// One shard: its slots behind their own lock, alone on a cache line.
type Shard<S> = CachePadded<RwLock<Slots<S>>>;

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

/// hashbrown's hash of a stored key: the stored half is already uniform.
#[inline]
fn slot_hash(stored: u64) -> u64 {
    stored
}

impl<S: Default> Table<S> {
    /// `shards` is rounded up to a power of two.
    pub fn new(shards: usize, max_keys: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        Table {
            shards: (0..n)
                .map(|_| {
                    CachePadded::new(RwLock::new(Slots {
                        map: HashTable::new(),
                        hand: 0,
                    }))
                })
                .collect(),
            mask: n - 1,
            len: AtomicUsize::new(0),
            max_keys,
        }
    }

    #[inline]
    fn shard_of(&self, key: &KeyHash) -> usize {
        // The second half picks the shard; the first is stored, so the two are independent.
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

    /// Slots allocated over all shards (occupied or not), for memory tests.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.read().map.capacity()).sum()
    }

    /// Runs `f` on the key's state under a shared lock, if the key is present.
    #[inline]
    pub fn with_existing<R>(&self, key: &KeyHash, f: impl FnOnce(&S) -> R) -> Option<R> {
        let shard = self.shards[self.shard_of(key)].read();
        let k = key[0];
        shard.map.find(slot_hash(k), |e| e.0 == k).map(|e| f(&e.1))
    }

    /// Runs `f` on the key's state, inserting a fresh state first if the key is absent.
    ///
    /// At `max_keys`, first reclaims keys that `is_fresh(state, now)` says are back to a fresh
    /// state, among at most `RECLAIM_SCAN` slots of the same shard from its hand; if none of
    /// them can be, returns `Full` and changes nothing else. A live key is never dropped to make
    /// room. `now` is the clock's reading under the shard's exclusive lock.
    pub fn with_inserted<R>(
        &self,
        key: &KeyHash,
        clock: &Clock,
        is_fresh: impl Fn(&S, u64) -> bool,
        f: impl FnOnce(&S) -> R,
    ) -> Result<R, Full> {
        let mut guard = self.shards[self.shard_of(key)].write();
        let slots = &mut *guard;
        let k = key[0];
        let h = slot_hash(k);
        if let Some(e) = slots.map.find(h, |e| e.0 == k) {
            return Ok(f(&e.1));
        }
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
            self.len.fetch_sub(1, Ordering::Relaxed);
            let now = clock.now();
            let reclaimed = reclaim(slots, RECLAIM_SCAN, |s| is_fresh(s, now));
            self.len.fetch_sub(reclaimed, Ordering::Relaxed);
            if self.len.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
                self.len.fetch_sub(1, Ordering::Relaxed);
                return Err(Full);
            }
        }
        let entry = slots.map.insert_unique(h, (k, S::default()), |e| slot_hash(e.0));
        Ok(f(&entry.get().1))
    }

    /// Removes the key; true if it was present.
    pub fn remove(&self, key: &KeyHash) -> bool {
        let mut shard = self.shards[self.shard_of(key)].write();
        let k = key[0];
        match shard.map.find_entry(slot_hash(k), |e| e.0 == k) {
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
        let mut candidates: Vec<u64> = Vec::new();
        let mut start = 0;
        loop {
            let shard = lock.read();
            let buckets = shard.map.num_buckets();
            if start >= buckets {
                break;
            }
            let end = (start + SCAN_CHUNK).min(buckets);
            let now = clock.now();
            for b in start..end {
                if let Some((k, s)) = shard.map.get_bucket(b) {
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
            for &k in batch {
                if let Ok(e) = shard.map.find_entry(slot_hash(k), |e| e.0 == k) {
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
            let slots = &mut *shard;
            if slots.map.capacity() > 0 && slots.map.len() * 4 < slots.map.capacity() {
                let target = slots.map.len() * 2;
                slots.map.shrink_to(target, |e| slot_hash(e.0));
                slots.hand = 0;
            }
        }
        removed
    }
}

/// Examines up to `scan` slots of a shard from its hand, removes the keys `is_fresh` accepts
/// (it is called once per occupied slot), moves the hand past them; returns how many it removed.
fn reclaim<S>(slots: &mut Slots<S>, scan: usize, is_fresh: impl Fn(&S) -> bool) -> usize {
    let buckets = slots.map.num_buckets();
    if buckets == 0 {
        return 0;
    }
    let mut i = slots.hand % buckets;
    let mut removed = 0;
    for _ in 0..scan.min(buckets) {
        if let Ok(entry) = slots.map.get_bucket_entry(i) {
            if is_fresh(&entry.get().1) {
                entry.remove();
                removed += 1;
            }
        }
        i += 1;
        if i == buckets {
            i = 0;
        }
    }
    slots.hand = i;
    removed
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
        self.table.with_inserted(
            key,
            &self.clock,
            |w, now| algo.is_fresh(w.load(Ordering::Relaxed), now),
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
                clock,
                |w, now| algo.is_fresh(w.load(Ordering::Relaxed), now),
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
            .with_inserted(key, clock, |m, now| algo.is_fresh(&m.lock(), now), apply)
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
        let cap = e.table.capacity();
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
        let after = e.len();
        assert!(
            after < 100,
            "fresh keys were reclaimed to make room ({after} left)"
        );
        // Reclaiming is bounded per insertion: one insertion examined RECLAIM_SCAN slots of the
        // 128, so it reclaimed part of the shard, not all of it.
        assert!(
            after > 1,
            "one insertion reclaimed the whole shard ({after} left)"
        );
    }

    /// A flood of new keys at the bound: every key in the table is live, so each insertion is
    /// refused, and each examines a bounded number of slots (it used to rescan the whole shard
    /// under its write lock: 67 us a call at 100k keys). Counted, not timed: a probe counts how
    /// many times `is_fresh` runs.
    #[test]
    fn a_flood_at_the_bound_examines_a_bounded_number_of_slots() {
        use std::sync::atomic::AtomicUsize;
        let clock = Clock::manual(1_000 * S);
        let t: Table<AtomicU64> = Table::new(1, 50_000);
        let examined = AtomicUsize::new(0);
        let live = |_: &AtomicU64, _: u64| {
            examined.fetch_add(1, Ordering::Relaxed);
            false
        };
        for i in 0..50_000u64 {
            t.with_inserted(&hash_key(&i.to_le_bytes()), &clock, live, |w| {
                w.store(1, Ordering::Relaxed)
            })
            .unwrap();
        }
        assert_eq!(
            examined.load(Ordering::Relaxed),
            0,
            "no reclaiming below the bound"
        );
        for i in 50_000..60_000u64 {
            let r = t.with_inserted(&hash_key(&i.to_le_bytes()), &clock, live, |_| ());
            assert_eq!(r, Err(Full), "a live key was evicted for key {i}");
        }
        let per_call = examined.load(Ordering::Relaxed) as f64 / 10_000.0;
        assert!(
            per_call <= RECLAIM_SCAN as f64,
            "{per_call} slots examined per insertion"
        );
        assert_eq!(t.len(), 50_000);
        // The hand moved round the shard: over enough calls it has seen every slot, so a fresh
        // key anywhere is found within num_buckets / RECLAIM_SCAN insertions.
        let fresh_key = hash_key(&7u64.to_le_bytes());
        t.with_existing(&fresh_key, |w| w.store(0, Ordering::Relaxed))
            .unwrap();
        let fresh = |w: &AtomicU64, _: u64| w.load(Ordering::Relaxed) == 0;
        let buckets = t.shards[0].read().map.num_buckets();
        let mut admitted_after = None;
        for n in 0..buckets / RECLAIM_SCAN + 1 {
            let key = hash_key(format!("new{n}").as_bytes());
            if t.with_inserted(&key, &clock, fresh, |w| w.store(1, Ordering::Relaxed))
                .is_ok()
            {
                admitted_after = Some(n);
                break;
            }
        }
        assert!(admitted_after.is_some(), "the one fresh key was never reclaimed");
        assert!(
            t.with_existing(&fresh_key, |_| ()).is_none(),
            "the fresh key was the one reclaimed"
        );
        assert_eq!(t.len(), 50_000);
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
