//! A pool as the request path sees it: an immutable list of backends plus the balancer.

use super::backend::RAMP_FULL;
use super::{Backend, Lease};
use crate::config::{LbKind, PoolConfig};
use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A pool in one config snapshot. Backends are shared with the [`super::Registry`].
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub config: Arc<PoolConfig>,
    pub backends: Vec<Arc<Backend>>,
    /// Each backend's weight in the balancers (a name's weight split over its addresses,
    /// scaled to whole numbers; see [`super::registry`]).
    pub weights: Vec<u32>,
    /// Smooth weighted round-robin order (nginx's algorithm), computed once per snapshot so
    /// picking is one atomic increment.
    rr_order: Vec<u32>,
    rr_next: AtomicUsize,
}

impl Pool {
    /// `weights[i]` is the weight of `backends[i]`.
    pub fn new(config: Arc<PoolConfig>, backends: Vec<Arc<Backend>>, weights: Vec<u32>) -> Self {
        debug_assert_eq!(backends.len(), weights.len());
        Pool {
            name: config.name.as_str().into(),
            rr_order: smooth_wrr_order(&weights),
            rr_next: AtomicUsize::new(rand::thread_rng().gen_range(0..weights.len().max(1))),
            weights,
            config,
            backends,
        }
    }

    /// Is any backend able to take a request now?
    pub fn has_available(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.is_available() && !bulkhead_full(b))
    }

    /// Is any backend healthy (for swap's safety check)?
    pub fn has_healthy(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.is_healthy() && !b.is_draining())
    }

    /// Pick a backend and take a lease on it, skipping those in `exclude` (already tried).
    pub fn pick(&self, exclude: &[usize]) -> Option<Lease> {
        let skip = |b: &Arc<Backend>| exclude.contains(&backend_key(b));
        match self.config.lb {
            LbKind::RoundRobin => self.pick_rr(&skip),
            LbKind::LeastRequest => self.pick_p2c(&skip).or_else(|| self.pick_rr(&skip)),
        }
    }

    fn pick_rr(&self, skip: &dyn Fn(&Arc<Backend>) -> bool) -> Option<Lease> {
        let n = self.rr_order.len();
        if n == 0 {
            return None;
        }
        let mut start = self.rr_next.fetch_add(1, Ordering::Relaxed);
        let mut declined = 0;
        // Walk the order from our slot; weighted order means at most `n` steps to see all.
        let mut i = 0;
        while i < n {
            let slot = self.rr_order[(start + i) % n] as usize;
            i += 1;
            let b = &self.backends[slot];
            if skip(b) {
                continue;
            }
            // Slow start: a ramping backend takes the pick with the probability of its ramp,
            // else the pick starts over at the next slot of the order. Starting over (not
            // walking on) keeps every share proportional to weight × ramp.
            let ramp = b.ramp();
            if ramp < RAMP_FULL
                && declined < MAX_DECLINED
                && rand::thread_rng().gen_range(0..RAMP_FULL) >= ramp
            {
                declined += 1;
                start = self.rr_next.fetch_add(1, Ordering::Relaxed);
                i = 0;
                continue;
            }
            if let Some(mut l) = b.try_lease() {
                l.slot = slot;
                return Some(l);
            }
        }
        None
    }

    /// Power of two choices on in-flight, weighted: lower in_flight/weight wins.
    fn pick_p2c(&self, skip: &dyn Fn(&Arc<Backend>) -> bool) -> Option<Lease> {
        let n = self.backends.len();
        if n == 1 {
            let b = &self.backends[0];
            return if skip(b) { None } else { b.try_lease() };
        }
        let mut rng = rand::thread_rng();
        for _ in 0..3 {
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ba, bb) = (&self.backends[a], &self.backends[b]);
            let ok_a = !skip(ba) && ba.is_available();
            let ok_b = !skip(bb) && bb.is_available();
            let slot = match (ok_a, ok_b) {
                (true, true) => {
                    // Load per unit of weight now (slow start lowers a ramping one's weight).
                    let wa = self.weights[a] as u64 * ba.ramp() as u64;
                    let wb = self.weights[b] as u64 * bb.ramp() as u64;
                    let la = (ba.in_flight() as u64 + 1) * wb;
                    let lb = (bb.in_flight() as u64 + 1) * wa;
                    if la <= lb {
                        a
                    } else {
                        b
                    }
                }
                (true, false) => a,
                (false, true) => b,
                (false, false) => continue,
            };
            if let Some(mut l) = self.backends[slot].try_lease() {
                l.slot = slot;
                return Some(l);
            }
        }
        None
    }
}

/// How often one pick may start over because of slow start: past this the backend in hand
/// is taken, so a pool whose backends all ramp still picks in bounded time.
const MAX_DECLINED: u32 = 32;

/// A cheap identity for "already tried" lists (the address of the shared state).
pub fn backend_key(b: &Arc<Backend>) -> usize {
    Arc::as_ptr(b) as usize
}

fn bulkhead_full(b: &Backend) -> bool {
    let m = b.max_concurrent();
    m > 0 && b.in_flight() >= m
}

/// nginx's smooth weighted round robin, unrolled into one period of picks.
pub fn smooth_wrr_order(weights: &[u32]) -> Vec<u32> {
    // Reduce by the gcd so the period stays short.
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| (x / g) as i64).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_order_interleaves() {
        assert_eq!(smooth_wrr_order(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr_order(&[2, 2]), vec![0, 1]);
        assert_eq!(smooth_wrr_order(&[1]), vec![0]);
    }
}
