//! `ShardedMap`: a hash map cut into shards behind `Arc`s, so that the next table, built
//! from the previous one's maps, copies only the shards a change touches (a flat map of
//! 100k `Arc`ed entries costs ~10 ms to copy and as much to drop; one shard of ~64, a few
//! microseconds). A lookup hashes once: the hash's middle bits pick the shard, and the
//! shard is probed with the same hash.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::ops::Index;
use std::sync::Arc;

use hashbrown::HashTable;

/// Entries a shard holds on average before the map doubles its shards.
const SHARD_TARGET: usize = 64;
/// The shard is chosen from these bits of the hash: below the 7 top bits hashbrown tags
/// control bytes with, above the low bits that pick a shard's bucket.
const SHARD_SHIFT: u32 = 32;

/// One shard: its own hash table, shared by every map that has not changed it.
type Shard<K, V> = Arc<HashTable<(K, V)>>;

/// A hash map whose clone shares its shards; `insert` and `remove` copy one shard at
/// most (copy on write).
pub struct ShardedMap<K, V> {
    hasher: foldhash::fast::RandomState,
    shards: Box<[Shard<K, V>]>,
    /// `shards.len() - 1` (a power of two).
    mask: usize,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            hasher: foldhash::fast::RandomState::default(),
            shards: Box::new([Arc::new(HashTable::new())]),
            mask: 0,
            len: 0,
        }
    }
}

impl<K, V> Clone for ShardedMap<K, V> {
    fn clone(&self) -> Self {
        ShardedMap {
            hasher: self.hasher.clone(),
            shards: self.shards.clone(),
            mask: self.mask,
            len: self.len,
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> ShardedMap<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(k, v)| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    fn shard_of(&self, hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & self.mask
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// The hot path: one hash, one shard, one probe.
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        self.shards[self.shard_of(hash)]
            .find(hash, |(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    /// Inserts or replaces; returns the previous value. Copies the key's shard if another
    /// map shares it.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hasher.hash_one(&key);
        let shard = self.shard_of(hash);
        let hasher = &self.hasher;
        let table = Arc::make_mut(&mut self.shards[shard]);
        match table.find_mut(hash, |(k, _)| *k == key) {
            Some((_, slot)) => Some(std::mem::replace(slot, value)),
            None => {
                table.insert_unique(hash, (key, value), |(k, _)| hasher.hash_one(k));
                self.len += 1;
                if self.len > self.shards.len() * SHARD_TARGET * 2 {
                    self.reshard(self.shards.len() * 2);
                }
                None
            }
        }
    }

    /// Removes `key`; copies its shard only when it is there.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard_of(hash);
        self.shards[shard].find(hash, |(k, _)| k.borrow() == key)?;
        let table = Arc::make_mut(&mut self.shards[shard]);
        let (_, value) = table
            .find_entry(hash, |(k, _)| k.borrow() == key)
            .ok()?
            .remove()
            .0;
        self.len -= 1;
        Some(value)
    }

    /// Sizes the map for `len` entries before a bulk insert (a cold build), so that it
    /// does not reshard on the way.
    pub fn reserve_for(&mut self, len: usize) {
        let wanted = len.div_ceil(SHARD_TARGET).next_power_of_two();
        if wanted > self.shards.len() {
            self.reshard(wanted);
        }
    }

    fn reshard(&mut self, count: usize) {
        let per_shard = (self.len / count).max(1) + 1;
        let mut shards: Vec<HashTable<(K, V)>> = (0..count)
            .map(|_| HashTable::with_capacity(per_shard))
            .collect();
        let mask = count - 1;
        for shard in std::mem::take(&mut self.shards).into_vec() {
            let entries = Arc::try_unwrap(shard).unwrap_or_else(|shared| (*shared).clone());
            for entry in entries {
                let hash = self.hasher.hash_one(&entry.0);
                let hasher = &self.hasher;
                shards[(hash >> SHARD_SHIFT) as usize & mask].insert_unique(
                    hash,
                    entry,
                    |(k, _)| hasher.hash_one(k),
                );
            }
        }
        self.shards = shards.into_iter().map(Arc::new).collect();
        self.mask = mask;
    }
}

impl<K, V, Q> Index<&Q> for ShardedMap<K, V>
where
    K: Hash + Eq + Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    type Output = V;

    /// Panics when `key` is absent (tests and benches; the router uses `get`).
    fn index(&self, key: &Q) -> &V {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no such key in the map"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_shards_and_a_change_copies_one() {
        let mut map = ShardedMap::<Arc<str>, u32>::default();
        map.reserve_for(1000);
        for i in 0..1000u32 {
            map.insert(Arc::from(format!("k{i}").as_str()), i);
        }
        assert_eq!(map.len(), 1000);
        let before = map.clone();
        map.insert(Arc::from("k7"), 70);
        map.remove("k8");
        map.insert(Arc::from("new"), 1);
        assert_eq!(
            (map.get("k7"), map.get("k8"), map.get("new")),
            (Some(&70), None, Some(&1))
        );
        assert_eq!((before.get("k7"), before.get("k8")), (Some(&7), Some(&8)));
        let copied = map
            .shards
            .iter()
            .zip(before.shards.iter())
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert!(copied <= 3, "{copied} shards copied");
        assert_eq!(map.len(), 1000);
        assert_eq!(map.iter().count(), 1000);
    }

    #[test]
    fn grows_by_resharding_and_keeps_every_entry() {
        let mut map = ShardedMap::<u64, u64>::default();
        for i in 0..10_000 {
            map.insert(i, i * 2);
        }
        assert!(map.shards.len() > 1);
        assert!((0..10_000).all(|i| map.get(&i) == Some(&(i * 2))));
        assert_eq!(map.get(&10_000), None);
    }
}
