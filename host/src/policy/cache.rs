//! The two caches of the policy engine: user entities per (generation, user fingerprint), and
//! decisions per everything a decision depends on. A key always holds the generation, so a
//! reload can never serve an old answer; both caches are bounded and simply cleared when full.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};

use cedar_policy::Entities;

const SHARDS: usize = 16;

/// Everything a decision depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DecisionKey {
    pub(crate) generation: u64,
    pub(crate) user: u128,
    pub(crate) action: String,
    pub(crate) resource: String,
    /// A fingerprint of the runtime data, when the slice reads it (else 0).
    pub(crate) runtime: u128,
    /// Which side of every time boundary the request is on, when the slice reads the time.
    pub(crate) time: u64,
}

/// The caches' hasher: foldhash with a seed of this process's own, several times cheaper than
/// the standard SipHash on a decision key (two short strings and four numbers), asked for on
/// every decision. What a caller controls in a key is hashed to a fingerprint first (the user,
/// the runtime data), and a full shard is cleared, not grown, so colliding keys cannot make a
/// shard expensive.
type Hasher = foldhash::quality::RandomState;

/// A bounded, sharded map.
#[derive(Debug)]
pub(crate) struct BoundedCache<K, V> {
    shards: Vec<Mutex<HashMap<K, V, Hasher>>>,
    /// Picks the shard (with a seed of its own, so a shard's keys still spread in its map).
    shard_hasher: Hasher,
    per_shard: usize,
}

impl<K: Hash + Eq, V: Clone> BoundedCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Hasher::default())))
                .collect(),
            shard_hasher: Hasher::default(),
            per_shard: (capacity / SHARDS).max(1),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, V, Hasher>> {
        &self.shards[(self.shard_hasher.hash_one(key) as usize) % SHARDS]
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.shard(key)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard {
            shard.clear();
        }
        shard.insert(key, value);
    }

    pub(crate) fn clear(&self) {
        for s in &self.shards {
            s.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// User entities, keyed by (generation, user fingerprint): the slots projected depend on both.
pub(crate) type EntityCache = BoundedCache<(u64, u128), Arc<Entities>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_shards_are_cleared_not_grown() {
        let c: BoundedCache<u32, u32> = BoundedCache::new(32);
        for i in 0..1000 {
            c.insert(i, i);
        }
        assert!(c.len() <= 32);
        c.insert(5000, 1);
        assert_eq!(c.get(&5000), Some(1));
    }
}
