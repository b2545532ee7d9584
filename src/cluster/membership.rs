//! Membership and leadership: this replica's lease and node key, and the leader key taken
//! in a transaction bound to the lease.

use super::store::{Compare, Op, StoreError};
use super::{now_ms, Fleet};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

impl Fleet {
    pub(super) fn step_down(&self, why: &str) {
        self.leader_rev.store(0, Ordering::Release);
        if self.is_leader.swap(false, Ordering::AcqRel) {
            tracing::warn!(node = %self.node, "fleet leadership lost: {why}");
            self.leadership.send_replace(false);
        }
    }

    fn become_leader(&self, create_rev: i64) {
        self.leader_rev.store(create_rev, Ordering::Release);
        if !self.is_leader.load(Ordering::Acquire) {
            // What a past leadership read is stale: read the fleet's counts afresh first.
            self.remote_counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.counters_read.store(false, Ordering::Release);
        }
        if !self.is_leader.swap(true, Ordering::AcqRel) {
            tracing::info!(node = %self.node, "this replica leads the fleet");
            self.leadership.send_replace(true);
        }
    }

    /// Membership and leadership until `stop`: keep a lease of `ttl` (re-granted when lost),
    /// this replica's node key on it, and take the leader key when nobody holds it. Store
    /// unreachable for longer than the lease could live: leadership ends here at once (the
    /// store will give it to another replica when the lease expires there).
    pub async fn run_membership(self: Arc<Self>, stop: CancellationToken) {
        let beat = (self.ttl / 3).min(Duration::from_secs(1));
        // The lease lives at least `ttl` after the keep-alive that was sent at `last_ok`.
        let last_ok = Arc::new(Mutex::new(None::<Instant>));
        let watchdog = {
            let me = self.clone();
            let last_ok = last_ok.clone();
            let stop = stop.clone();
            // Step down a beat before the lease can have expired in the store.
            let limit = self.ttl.saturating_sub(beat);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let ok = *last_ok.lock().unwrap_or_else(|p| p.into_inner());
                    if me.is_leader() && ok.is_none_or(|t| t.elapsed() >= limit) {
                        me.step_down("the store did not renew the lease in time");
                    }
                }
            })
        };
        loop {
            let sent = Instant::now();
            match self.round().await {
                Ok(()) => {
                    *last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(sent);
                    self.set_store_up(true);
                }
                Err(e) => {
                    if self.store_up() {
                        tracing::warn!(node = %self.node, "cluster store unreachable: {e}");
                    }
                    self.set_store_up(false);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(beat) => {}
            }
        }
        watchdog.abort();
        // A clean stop hands leadership on at once instead of after the TTL.
        let lease = self.lease.swap(0, Ordering::AcqRel);
        self.step_down("veer is shutting down");
        if lease != 0 {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.store.lease_revoke(lease)).await;
        }
    }

    /// One beat: renew (or get) the lease, say this replica is alive, take or check the
    /// leader key, list the nodes.
    async fn round(&self) -> Result<(), StoreError> {
        let mut lease = self.lease();
        if lease != 0 {
            match self.store.lease_keepalive(lease).await {
                Ok(()) => {}
                Err(StoreError::LeaseExpired) => {
                    self.step_down("the lease expired");
                    self.lease.store(0, Ordering::Release);
                    lease = 0;
                }
                Err(e) => return Err(e),
            }
        }
        if lease == 0 {
            lease = self
                .store
                .lease_grant(self.ttl.as_secs().max(1) as i64)
                .await?;
            self.lease.store(lease, Ordering::Release);
        }
        let me = json!({"node": self.node, "seen_ms": now_ms()}).to_string();
        self.store
            .txn(
                vec![],
                vec![Op::Put {
                    key: format!("{}{}", self.nodes_prefix(), self.node),
                    value: me.into_bytes(),
                    lease,
                }],
            )
            .await?;
        let leader_key = self.leader_key();
        let mut current = self
            .store
            .get(&leader_key, false)
            .await?
            .kvs
            .into_iter()
            .next();
        if current.is_none() {
            let r = self
                .store
                .txn(
                    vec![Compare::CreateRevision(leader_key.clone(), 0)],
                    vec![Op::Put {
                        key: leader_key.clone(),
                        value: self.node.as_bytes().to_vec(),
                        lease,
                    }],
                )
                .await?;
            if !r.succeeded {
                tracing::debug!("another replica took the leader key first");
            }
            current = self
                .store
                .get(&leader_key, false)
                .await?
                .kvs
                .into_iter()
                .next();
        }
        let leader = current
            .as_ref()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        match &current {
            Some(kv) if kv.value == self.node.as_bytes() && kv.lease == lease => {
                self.become_leader(kv.create_revision)
            }
            _ => self.step_down("another replica leads the fleet"),
        }
        let p = self.nodes_prefix();
        let nodes = self
            .store
            .get(&p, true)
            .await?
            .kvs
            .into_iter()
            .map(|kv| {
                let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                (
                    kv.key[p.len()..].to_string(),
                    v["seen_ms"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        info.leader = leader;
        info.nodes = nodes;
        Ok(())
    }
}
