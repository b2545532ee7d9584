//! The fleet-wide gate's counts (SPEC §7): each replica's rollout step counters, published
//! under its lease, read by the leader, and this replica's own counts of each step.

use super::store::Op;
use super::{Fleet, FleetError, StepId};
use crate::metrics::step::StepStats;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Fleet {
    /// The other replicas' rollout counters (node, value), as last read.
    pub fn remote_counters(&self) -> Vec<(String, Vec<u8>)> {
        self.remote_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keep what the leader read of the other replicas' counters.
    pub fn set_remote_counters(&self, c: Vec<(String, Vec<u8>)>) {
        *self
            .remote_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = c;
        self.counters_read.store(true, Ordering::Release);
    }

    /// Has this replica read the others' counters since it took leadership? A new leader
    /// judges no step before it has (it would judge on its own share alone).
    pub fn counters_read(&self) -> bool {
        self.counters_read.load(Ordering::Acquire)
    }

    /// This replica's counters of `route`'s step `id` (made by `make` the first time): the
    /// follower's counting and the leader's controller count one step into the same ones.
    pub fn step_counts(
        &self,
        route: &str,
        id: StepId,
        make: impl FnOnce() -> Arc<StepStats>,
    ) -> Arc<StepStats> {
        let mut m = self.own_counts.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(route) {
            Some((at, s)) if *at == id => s.clone(),
            _ => {
                let s = make();
                m.insert(route.to_string(), (id, s.clone()));
                s
            }
        }
    }

    /// Publish this replica's rollout counters under its lease (gone with it).
    pub async fn publish_counters(&self, value: Vec<u8>) -> Result<(), FleetError> {
        let lease = self.lease();
        if lease == 0 {
            return Err(FleetError::Unreachable("no lease".into()));
        }
        self.store
            .txn(
                vec![],
                vec![Op::Put {
                    key: format!("{}{}", self.counters_prefix(), self.node),
                    value,
                    lease,
                }],
            )
            .await?;
        Ok(())
    }

    /// Every live replica's published counters, by node.
    pub async fn read_counters(&self) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
        let p = self.counters_prefix();
        let r = self.store.get(&p, true).await?;
        Ok(r.kvs
            .into_iter()
            .map(|kv| (kv.key[p.len()..].to_string(), kv.value))
            .collect())
    }
}
