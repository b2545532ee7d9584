//! Per-backend latency histograms for the status console's p99 (issue 20): log-linear
//! buckets, four per power of two of microseconds (a bucket is at most 19% wide), from 1 µs
//! to 2^36 µs (about 19 hours). Fed by the request path with one relaxed atomic add; read
//! once a second by the console's sampler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const OCTAVES: usize = 36;
const SUB: usize = 4;
/// Number of buckets.
pub const BUCKETS: usize = OCTAVES * SUB;

/// The bucket of a latency in microseconds.
pub fn bucket(us: u64) -> usize {
    let us = us.max(1);
    let msb = 63 - us.leading_zeros() as usize;
    if msb >= OCTAVES {
        return BUCKETS - 1;
    }
    // The two bits below the leading one pick the quarter of the octave.
    let sub = if msb >= 2 {
        ((us >> (msb - 2)) & 3) as usize
    } else {
        ((us << (2 - msb)) & 3) as usize
    };
    msb * SUB + sub
}

/// The largest latency (µs) a bucket holds.
pub fn upper_us(i: usize) -> u64 {
    let msb = i / SUB;
    let sub = (i % SUB) as u64;
    if msb >= 2 {
        ((4 + sub + 1) << (msb - 2)) - 1
    } else {
        // 1 to 3 µs: the bucket's only value.
        (4 + sub) >> (2 - msb)
    }
}

/// One histogram: a count per bucket.
#[derive(Debug)]
pub struct Latency {
    counts: Box<[AtomicU64; BUCKETS]>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            counts: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl Latency {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Add this histogram's counts into `into` (cumulative, since the histogram was made).
    pub fn add_to(&self, into: &mut [u64; BUCKETS]) {
        for (o, c) in into.iter_mut().zip(self.counts.iter()) {
            *o += c.load(Ordering::Relaxed);
        }
    }
}

/// The nearest-rank quantile `q` (0..1) of bucket counts, as its bucket's upper bound (µs);
/// `None` without observations.
pub fn quantile_us(counts: &[u64], q: f64) -> Option<u64> {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = ((n as f64 * q).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(upper_us(i));
        }
    }
    Some(upper_us(counts.len().saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values_and_are_tight() {
        let mut last = 0;
        for us in [
            1u64, 2, 3, 4, 5, 7, 8, 100, 999, 1000, 12_345, 500_000, 10_000_000,
        ] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            let up = upper_us(b);
            assert!(up >= us, "{us} above its bucket's bound {up}");
            assert!(
                up as f64 <= us as f64 * 1.25 + 1.0,
                "{us}: bound {up} too loose"
            );
            if b > 0 {
                assert!(upper_us(b - 1) < us, "{us} also fits the bucket below");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let h = Latency::default();
        for i in 0..1000 {
            let ms = if i % 100 == 0 { 900 } else { 10 };
            h.observe(Duration::from_millis(ms));
        }
        let mut c = [0; BUCKETS];
        h.add_to(&mut c);
        let p99 = quantile_us(&c, 0.99).unwrap();
        assert!((10_000..12_500).contains(&p99), "{p99}");
        let p999 = quantile_us(&c, 0.999).unwrap();
        assert!(p999 >= 900_000, "{p999}");
        assert_eq!(quantile_us(&[0; BUCKETS], 0.99), None);
    }
}
