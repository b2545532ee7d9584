//! The weighted split over sticky buckets.
//!
//! A user's key hashes (fixed seed) into one of [`BUCKETS`] buckets; a table built once per
//! snapshot maps each bucket to a pool. With two pools the table gives the second pool the
//! lowest buckets up to its exact share, so raising a pool's weight only moves users into it.
//! With more pools, weighted rendezvous hashing keeps the same property (a pool's score rises
//! with its weight alone), at the price of a split exact only in expectation.

/// Number of sticky buckets.
pub const BUCKETS: u32 = 10_000;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

const SEED: u64 = 0x7665_6572_5f62_6b74; // "veer_bkt"

/// 64-bit FNV-1a with a fixed seed and a final avalanche, stable across builds and versions.
pub fn hash64(data: &[u8]) -> u64 {
    mix(fnv(0xcbf2_9ce4_8422_2325 ^ SEED, data))
}

fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bucket of a sticky key.
pub fn bucket_of(key: &[u8]) -> u32 {
    (hash64(key) % BUCKETS as u64) as u32
}

/// Bucket → pool index, for one route's weights. Costs what the split needs: nothing for one
/// pool, a share for two (the position of a bucket is computed, not looked up), and a table
/// of one byte per bucket for more, shared by every route with the same pools and weights.
#[derive(Debug, Clone)]
pub struct SplitTable(Split);

#[derive(Debug, Clone)]
enum Split {
    /// Every bucket goes to the first pool (one pool, or two that weigh nothing).
    First,
    /// Two pools: the buckets whose [`position`] is below `share` go to the second.
    Two { share: u32 },
    /// Three pools or more: weighted rendezvous, one byte per bucket.
    Table(Arc<[u8]>),
}

impl SplitTable {
    /// `pools` are the pool names (for rendezvous scores), `weights` their weights.
    pub fn new(pools: &[&str], weights: &[u32]) -> Self {
        let n = weights.len();
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        SplitTable(if n == 2 && total > 0 {
            let share = ((weights[1] as u64 * BUCKETS as u64 + total / 2) / total) as u32;
            Split::Two { share }
        } else if n > 2 {
            Split::Table(shared_table(pools, weights))
        } else {
            Split::First
        })
    }

    /// The pool index of a bucket.
    pub fn pool_of(&self, bucket: u32) -> usize {
        match &self.0 {
            Split::First => 0,
            Split::Two { share } => (position(bucket % BUCKETS) < *share) as usize,
            Split::Table(t) => t[(bucket % BUCKETS) as usize] as usize,
        }
    }
}

/// Rendezvous tables by pools and weights, held weakly: the routes that use one keep it, and
/// a reload that changes nothing about a split finds the one it already built.
type TableKey = (Vec<String>, Vec<u32>);
static TABLES: Mutex<Option<HashMap<TableKey, Weak<[u8]>>>> = Mutex::new(None);

fn shared_table(pools: &[&str], weights: &[u32]) -> Arc<[u8]> {
    let key = (
        pools.iter().map(|p| p.to_string()).collect(),
        weights.to_vec(),
    );
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let tables = tables.get_or_insert_with(HashMap::new);
    if let Some(t) = tables.get(&key).and_then(Weak::upgrade) {
        return t;
    }
    tables.retain(|_, t| t.strong_count() > 0);
    let t: Arc<[u8]> = (0..BUCKETS)
        .map(|b| rendezvous(b, pools, weights, usize::MAX).unwrap_or(0) as u8)
        .collect();
    tables.insert(key, Arc::downgrade(&t));
    t
}

/// A fixed permutation of the buckets, so that a pool's share is not one contiguous run of
/// hash values (keeps the split honest even for keys that hash alike).
pub fn position(bucket: u32) -> u32 {
    // 7919 is prime and coprime with 10,000: a bijection on 0..10,000.
    (bucket as u64 * 7919 % BUCKETS as u64) as u32
}

/// Weighted rendezvous: the pool with the highest [`score`] wins (the first on a tie);
/// `skip` is left out, and so are pools of weight 0.
pub fn rendezvous(bucket: u32, pools: &[&str], weights: &[u32], skip: usize) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (&p, &w)) in pools.iter().zip(weights).enumerate() {
        if w == 0 || i == skip {
            continue;
        }
        let score = score(bucket, p, w);
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// A pool's rendezvous score for a bucket, `w / -ln(u)` with `u` from the hash of the pool's
/// name and the bucket: it rises with the weight alone, so a heavier pool only gains buckets.
/// Computed without allocating (it runs on the request path when a pool falls back).
pub fn score(bucket: u32, pool: &str, weight: u32) -> f64 {
    let h = fnv(0xcbf2_9ce4_8422_2325 ^ SEED, pool.as_bytes());
    let h = mix(fnv(h, &bucket.to_le_bytes()));
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight as f64 / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(t: &SplitTable, pool: usize) -> u32 {
        (0..BUCKETS).filter(|&b| t.pool_of(b) == pool).count() as u32
    }

    #[test]
    fn two_pools_exact_and_monotone() {
        let t10 = SplitTable::new(&["blue", "green"], &[90, 10]);
        assert_eq!(share(&t10, 1), 1000);
        let t25 = SplitTable::new(&["blue", "green"], &[75, 25]);
        assert_eq!(share(&t25, 1), 2500);
        for b in 0..BUCKETS {
            if t10.pool_of(b) == 1 {
                assert_eq!(t25.pool_of(b), 1, "bucket {b} left green when green grew");
            }
        }
        let all = SplitTable::new(&["blue", "green"], &[0, 100]);
        assert_eq!(share(&all, 1), BUCKETS);
    }

    #[test]
    fn three_pools_monotone() {
        let a = SplitTable::new(&["a", "b", "c"], &[50, 30, 20]);
        let b = SplitTable::new(&["a", "b", "c"], &[50, 60, 20]);
        for k in 0..BUCKETS {
            if a.pool_of(k) == 1 {
                assert_eq!(b.pool_of(k), 1);
            } else if b.pool_of(k) != 1 {
                assert_eq!(a.pool_of(k), b.pool_of(k), "bucket moved between others");
            }
        }
        let s = share(&a, 0) as f64 / BUCKETS as f64;
        assert!((0.47..0.53).contains(&s), "{s}");
    }

    #[test]
    fn routes_with_the_same_pools_and_weights_share_one_table() {
        let a = SplitTable::new(&["a", "b", "c"], &[5, 3, 2]);
        let b = SplitTable::new(&["a", "b", "c"], &[5, 3, 2]);
        let c = SplitTable::new(&["a", "b", "c"], &[5, 3, 3]);
        let table = |t: &SplitTable| match &t.0 {
            Split::Table(t) => t.clone(),
            other => panic!("three pools make a table, not {other:?}"),
        };
        assert!(Arc::ptr_eq(&table(&a), &table(&b)));
        assert!(!Arc::ptr_eq(&table(&a), &table(&c)));
        assert_eq!(SplitTable::new(&["blue"], &[7]).pool_of(3), 0);
        assert_eq!(SplitTable::new(&["blue", "green"], &[0, 0]).pool_of(3), 0);
    }

    #[test]
    fn scores_hash_the_name_then_the_bucket() {
        // The same key as ever (name bytes, then the bucket little-endian), so rendezvous
        // order does not move when veer is upgraded.
        let mut key = b"green".to_vec();
        key.extend_from_slice(&1234u32.to_le_bytes());
        let u = ((hash64(&key) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        assert_eq!(score(1234, "green", 7), 7.0 / -u.ln());
    }

    #[test]
    fn buckets_are_stable() {
        assert_eq!(bucket_of(b"user-1"), bucket_of(b"user-1"));
        assert_ne!(bucket_of(b"user-1"), bucket_of(b"user-2"));
    }
}
