//! A lock-free queue of idle connections that takes memory as it fills, not up front.
//!
//! One `ArrayQueue` of [`super::conn_pool`]'s full capacity cost every backend 64 KiB from its
//! creation, used or not (4,000 backends: a quarter of a GiB). Here the capacity is split into
//! tiers that double in size; a tier is allocated the first time every tier before it is
//! full, and kept (a backend's peak of idle connections is the best guess of its next one).
//! Pushing and popping start at the newest (largest) tier, which holds the connections in
//! steady use, so the request path does what it did with one queue plus one atomic load:
//! nothing is locked, and nothing is allocated except when a tier is first needed. Earlier
//! tiers are used when it is full or empty; what sits there unused, the reaper retires.

use crossbeam_queue::ArrayQueue;
use once_cell::race::OnceBox;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Slots of the first tier; each next tier has twice as many, the last takes the rest.
const FIRST: usize = 4;
/// Tiers: 4, 8, …, 256 and the rest up to the capacity (1,024 in all: 8 tiers).
const TIERS: usize = 8;

pub(crate) struct IdleQueue<T> {
    /// Boxed: an `ArrayQueue` is a few hundred bytes of cache-padded indices by itself.
    /// `OnceBox` is one pointer (a `OnceLock<Box<_>>` is two words): every backend has two
    /// queues, used or not (issue 15).
    tiers: [OnceBox<ArrayQueue<T>>; TIERS],
    /// Tiers allocated so far (they are allocated in order).
    allocated: AtomicUsize,
    capacity: usize,
}

impl<T> IdleQueue<T> {
    /// A queue for up to `capacity` items, nothing allocated yet.
    pub(crate) fn new(capacity: usize) -> Self {
        IdleQueue {
            tiers: Default::default(),
            allocated: AtomicUsize::new(0),
            capacity,
        }
    }

    /// The size of tier `i`: doubling from [`FIRST`], the last one taking what is left of the
    /// capacity (none for a tier past it).
    fn tier_size(&self, i: usize) -> usize {
        let before = FIRST * ((1 << i) - 1); // FIRST + 2·FIRST + … of the tiers before
        let left = self.capacity.saturating_sub(before);
        if i + 1 == TIERS {
            left
        } else {
            left.min(FIRST << i)
        }
    }

    /// Add an item; gives it back when the queue is full.
    pub(crate) fn push(&self, mut item: T) -> Result<(), T> {
        for q in self.allocated().rev() {
            match q.push(item) {
                Ok(()) => return Ok(()),
                Err(back) => item = back,
            }
        }
        // Every allocated tier is full: the next one, if the capacity has room for it.
        let next = self.allocated.load(Ordering::Acquire);
        for i in next..TIERS {
            let size = self.tier_size(i);
            if size == 0 {
                break;
            }
            let q = self.tiers[i].get_or_init(|| Box::new(ArrayQueue::new(size)));
            self.allocated.fetch_max(i + 1, Ordering::AcqRel);
            match q.push(item) {
                Ok(()) => return Ok(()),
                Err(back) => item = back,
            }
        }
        Err(item)
    }

    /// Take an item, from the newest tier that has one.
    pub(crate) fn pop(&self) -> Option<T> {
        self.allocated().rev().find_map(|q| q.pop())
    }

    /// Items queued now.
    pub(crate) fn len(&self) -> usize {
        self.allocated().map(|q| q.len()).sum()
    }

    /// Keep only the items `keep` accepts (for the reaper; concurrent pushes and pops go on).
    pub(crate) fn retain(&self, mut keep: impl FnMut(&mut T) -> bool) {
        for q in self.allocated() {
            for _ in 0..q.len() {
                let Some(mut item) = q.pop() else { break };
                if keep(&mut item) {
                    // Back into the same tier; if others filled it meanwhile, the item is
                    // dropped (an idle connection closed early, which is harmless).
                    let _ = q.push(item);
                }
            }
        }
    }

    /// Slots allocated (for tests: memory follows use).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.allocated().map(|q| q.capacity()).sum()
    }

    /// The allocated tiers, oldest first.
    fn allocated(&self) -> impl DoubleEndedIterator<Item = &ArrayQueue<T>> {
        let n = self.allocated.load(Ordering::Acquire);
        self.tiers[..n].iter().filter_map(|t| t.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_allocated_until_the_first_push() {
        let q: IdleQueue<u32> = IdleQueue::new(1024);
        assert_eq!(q.slots(), 0);
        assert_eq!(q.pop(), None);
        assert_eq!(q.len(), 0);
        q.push(1).unwrap();
        assert_eq!(q.slots(), FIRST);
    }

    #[test]
    fn tiers_grow_with_the_peak_and_hold_exactly_the_capacity() {
        let q = IdleQueue::new(1024);
        for i in 0..12 {
            q.push(i).unwrap();
        }
        assert_eq!(q.slots(), 4 + 8);
        for i in 12..1024 {
            q.push(i).unwrap();
        }
        assert_eq!(q.slots(), 1024);
        assert_eq!(q.len(), 1024);
        assert_eq!(q.push(9999), Err(9999), "a full queue gives the item back");
        // Everything comes back out, the newest tier's first.
        assert_eq!(q.pop(), Some(508));
        let mut rest: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        rest.push(508);
        rest.sort();
        assert_eq!(rest, (0..1024).collect::<Vec<_>>());
    }

    #[test]
    fn steady_use_stays_in_the_newest_tier() {
        let q = IdleQueue::new(1024);
        for i in 0..14 {
            q.push(i).unwrap();
        }
        assert_eq!(q.slots(), 4 + 8 + 16);
        // Take one, give it back, many times: the newest tier serves and nothing grows.
        for _ in 0..100 {
            let c = q.pop().unwrap();
            assert!(c >= 12, "{c} came from an older tier");
            q.push(c).unwrap();
        }
        assert_eq!((q.slots(), q.len()), (28, 14));
    }

    #[test]
    fn a_small_capacity_uses_only_the_tiers_it_needs() {
        let q = IdleQueue::new(6);
        for i in 0..6 {
            q.push(i).unwrap();
        }
        assert_eq!(q.push(6), Err(6));
        assert_eq!(q.slots(), 6);
    }

    #[test]
    fn retain_drops_what_it_rejects_in_every_tier() {
        let q = IdleQueue::new(1024);
        for i in 0..40 {
            q.push(i).unwrap();
        }
        q.retain(|i| *i % 2 == 0);
        assert_eq!(q.len(), 20);
        let mut left: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        left.sort();
        assert_eq!(left, (0..40).step_by(2).collect::<Vec<_>>());
    }
}
