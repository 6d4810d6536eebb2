//! The "denied until" cache of the shared (Redis) modes.
//!
//! When the shared store denies a request of cost `c` with `retry_after = r`, every request of
//! cost >= `c` on that key stays denied for `r` more: time passing is the only thing that
//! turns a denial into an allowance (other replicas' hits only deny longer), and a larger cost
//! never fits earlier than a smaller one. So the answer can be given locally until then,
//! without a round trip. Entries past their time are fresh and are swept like any key.
//!
//! What it cannot see: a `reset` of the key made by another process. Such a key stays denied
//! here until the cached time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::algo::Outcome;
use crate::clock::Clock;
use crate::sweeper::Sweep;
use crate::table::{KeyHash, Table};

/// One cached denial. The three words are written together under the shard's exclusive lock
/// on insert, or one after another on overwrite; a reader racing an overwrite may mix two
/// recent denials of the same key, each of them true, which only blurs `remaining`.
#[derive(Debug, Default)]
pub struct Entry {
    until: AtomicU64,
    reset_at: AtomicU64,
    /// remaining << 32 | the smallest cost this entry answers for.
    packed: AtomicU64,
}

#[derive(Debug)]
pub struct DenyCache {
    table: Table<Entry>,
    clock: Clock,
    sweep_interval: Duration,
}

impl DenyCache {
    pub fn new(shards: usize, max_keys: usize, clock: Clock, sweep_interval: Duration) -> Self {
        DenyCache {
            table: Table::new(shards, max_keys),
            clock,
            sweep_interval,
        }
    }

    /// The cached denial for a request of `cost`, if one still holds.
    #[inline]
    pub fn check(&self, key: &KeyHash, cost: u64) -> Option<Outcome> {
        self.table
            .with_existing(key, |e| {
                let now = self.clock.now();
                let until = e.until.load(Ordering::Relaxed);
                let packed = e.packed.load(Ordering::Relaxed);
                if now >= until || cost < (packed & 0xFFFF_FFFF) {
                    return None;
                }
                Some(Outcome {
                    allowed: false,
                    remaining: packed >> 32,
                    reset_after: e.reset_at.load(Ordering::Relaxed).saturating_sub(now),
                    retry_after: until - now,
                })
            })
            .flatten()
    }

    /// Remembers a denial of `cost` with the store's `remaining`, `reset_after` and
    /// `retry_after` (ns). The newest denial replaces an older one. Returns false when the
    /// cache is full (nothing is evicted: the request simply goes to the store next time).
    pub fn record(
        &self,
        key: &KeyHash,
        cost: u64,
        remaining: u64,
        reset_after: u64,
        retry_after: u64,
    ) -> bool {
        if retry_after == 0 {
            return false;
        }
        let now = self.clock.now();
        let clock = &self.clock;
        let write = |e: &Entry| {
            e.reset_at
                .store(now.saturating_add(reset_after), Ordering::Relaxed);
            e.packed.store(
                (remaining.min(u64::from(u32::MAX)) << 32) | cost.min(u64::from(u32::MAX)),
                Ordering::Relaxed,
            );
            e.until.store(now.saturating_add(retry_after), Ordering::Relaxed);
        };
        if self.table.with_existing(key, write).is_some() {
            return true;
        }
        self.table
            .with_inserted(key, clock, |e, now| e.until.load(Ordering::Relaxed) <= now, write)
            .is_ok()
    }

    pub fn forget(&self, key: &KeyHash) -> bool {
        self.table.remove(key)
    }
}

impl DenyCache {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

impl Sweep for DenyCache {
    fn shard_count(&self) -> usize {
        self.table.shard_count()
    }

    fn sweep_shard(&self, index: usize) -> usize {
        self.table.sweep_shard(
            index,
            |e, now| e.until.load(Ordering::Relaxed) <= now,
            &self.clock,
        )
    }

    fn sweep_interval(&self) -> Duration {
        self.sweep_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn answers_larger_costs_until_the_time_then_forgets() {
        let t = Arc::new(AtomicU64::new(1_000));
        let cache = DenyCache::new(4, 100, Clock::Manual(t.clone()), Duration::from_secs(1));
        let k = [1, 2];
        assert!(cache.check(&k, 1).is_none());
        assert!(cache.record(&k, 2, 1, 900, 500));
        assert!(
            cache.check(&k, 1).is_none(),
            "a smaller cost may fit sooner: ask the store"
        );
        let o = cache.check(&k, 3).expect("a larger cost is denied too");
        assert_eq!(
            (o.allowed, o.remaining, o.reset_after, o.retry_after),
            (false, 1, 900, 500)
        );
        t.store(1_499, Ordering::Relaxed);
        assert_eq!(cache.check(&k, 2).map(|o| o.retry_after), Some(1));
        t.store(1_500, Ordering::Relaxed);
        assert!(cache.check(&k, 2).is_none(), "over at retry_after");
        assert_eq!(cache.sweep(), 1);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_full_cache_evicts_nothing_live() {
        let t = Arc::new(AtomicU64::new(0));
        let cache = DenyCache::new(1, 2, Clock::Manual(t.clone()), Duration::from_secs(1));
        assert!(cache.record(&[1, 1], 1, 0, 10, 10));
        assert!(cache.record(&[2, 2], 1, 0, 10, 10));
        assert!(!cache.record(&[3, 3], 1, 0, 10, 10));
        assert!(cache.check(&[1, 1], 1).is_some());
        t.store(10, Ordering::Relaxed);
        assert!(cache.record(&[3, 3], 1, 0, 10, 10), "expired entries make room");
    }
}
