//! What a limiter consumed per key and has not yet told the shared store.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use pyo3::prelude::*;

use crate::table::KeyHash;

const SHARDS: usize = 64;

/// Consumption not yet sent to the shared store, per key: hybrid mode's deltas, and what a
/// fallback limiter admitted during an outage. Keeps the key object itself (the table only
/// has its hash) so the store can be told which key.
///
/// Bounded: at most `max_keys` keys wait at once (the limiter's own bound). Units of a new key
/// past that are not kept: they are counted as lost (`lost_units`, `lost_keys`), so a long
/// outage with keys cycling costs at most one table's worth of memory. Drained in bounded
/// batches, so that no single call holds the GIL for long.
pub(super) struct Tracker {
    shards: Box<[parking_lot::Mutex<TrackMap>]>,
    max_keys: usize,
    len: AtomicUsize,
    /// The shard the next bounded drain starts at, so every shard gets its turn.
    cursor: AtomicUsize,
    lost_units: AtomicU64,
    lost_keys: AtomicU64,
}

type TrackMap = std::collections::HashMap<KeyHash, (Py<PyAny>, u64), BuildFold>;

/// Keys are already secret-keyed 128-bit hashes: folding their words is a good enough hash.
#[derive(Clone, Copy, Default)]
struct BuildFold;

#[derive(Default)]
struct Fold(u64);

impl std::hash::BuildHasher for BuildFold {
    type Hasher = Fold;
    fn build_hasher(&self) -> Fold {
        Fold(0)
    }
}

impl std::hash::Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(23) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

impl Tracker {
    pub(super) fn new(max_keys: usize) -> Self {
        Tracker {
            shards: (0..SHARDS)
                .map(|_| parking_lot::Mutex::new(TrackMap::with_hasher(BuildFold)))
                .collect(),
            max_keys,
            len: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
            lost_units: AtomicU64::new(0),
            lost_keys: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(super) fn add(&self, hash: &KeyHash, key: &Bound<'_, PyAny>, cost: u64) {
        let mut shard = self.shards[(hash[1] as usize) & (SHARDS - 1)].lock();
        match shard.entry(*hash) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().1 += cost,
            std::collections::hash_map::Entry::Vacant(e) => {
                if self.len.load(Ordering::Relaxed) >= self.max_keys {
                    self.lost_units.fetch_add(cost, Ordering::Relaxed);
                    self.lost_keys.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.len.fetch_add(1, Ordering::Relaxed);
                e.insert((key.clone().unbind(), cost));
            }
        }
    }

    /// Takes out up to `max` keys' consumption (all of it for `None`).
    pub(super) fn drain(&self, max: Option<usize>) -> Vec<(Py<PyAny>, u64)> {
        let mut budget = max.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let start = self.cursor.load(Ordering::Relaxed);
        for i in 0..SHARDS {
            if budget == 0 {
                break;
            }
            let index = (start + i) % SHARDS;
            let mut shard = self.shards[index].lock();
            if shard.len() <= budget {
                let taken = std::mem::take(&mut *shard);
                drop(shard);
                budget -= taken.len();
                out.extend(taken.into_values());
            } else {
                let keys: Vec<KeyHash> = shard.keys().take(budget).copied().collect();
                out.extend(keys.iter().filter_map(|k| shard.remove(k)));
                // This shard still has keys: the next drain starts here.
                self.cursor.store(index, Ordering::Relaxed);
                self.len.fetch_sub(out.len(), Ordering::Relaxed);
                return out;
            }
        }
        self.cursor.store((start + 1) % SHARDS, Ordering::Relaxed);
        self.len.fetch_sub(out.len(), Ordering::Relaxed);
        out
    }

    /// Keys waiting to be sent.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// `(units, keys)` not kept since the start because the tracker was full.
    pub(super) fn lost(&self) -> (u64, u64) {
        (
            self.lost_units.load(Ordering::Relaxed),
            self.lost_keys.load(Ordering::Relaxed),
        )
    }
}
