//! What a limiter consumed per key and has not yet told the shared store.

use pyo3::prelude::*;

use crate::table::KeyHash;

/// Consumption not yet sent to the shared store, per key: hybrid mode's deltas, and what a
/// fallback limiter admitted during an outage. Keeps the key object itself (the table only
/// has its hash) so the store can be told which key.
pub(super) struct Tracker {
    shards: Box<[parking_lot::Mutex<TrackMap>]>,
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
    pub(super) fn new() -> Self {
        Tracker {
            shards: (0..64)
                .map(|_| parking_lot::Mutex::new(TrackMap::with_hasher(BuildFold)))
                .collect(),
        }
    }

    #[inline]
    pub(super) fn add(&self, hash: &KeyHash, key: &Bound<'_, PyAny>, cost: u64) {
        let mut shard = self.shards[(hash[1] as usize) & 63].lock();
        match shard.entry(*hash) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().1 += cost,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((key.clone().unbind(), cost));
            }
        }
    }

    pub(super) fn drain(&self) -> Vec<(Py<PyAny>, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *shard.lock());
            out.extend(taken.into_values());
        }
        out
    }
}
