//! The fleet's drained backends: one key, a JSON list of `pool/addr`.

use super::store::{Compare, Op};
use super::{Fleet, FleetError, CAS_TRIES};
use std::collections::BTreeSet;
use std::net::SocketAddr;

impl Fleet {
    /// The fleet's drained backends as the store holds them, with the key's mod revision.
    pub async fn read_drains(&self) -> Result<(i64, BTreeSet<String>), FleetError> {
        let r = self.store.get(&self.drains_key(), false).await?;
        Ok(match r.kvs.first() {
            Some(kv) => (kv.mod_revision, parse_drains(&kv.value)),
            None => (0, BTreeSet::new()),
        })
    }

    /// Drain or restore a backend on every replica: a compare-and-swap of the drains key.
    pub async fn write_drain(
        &self,
        pool: &str,
        addr: SocketAddr,
        on: bool,
    ) -> Result<BTreeSet<String>, FleetError> {
        let entry = drain_entry(pool, addr);
        let key = self.drains_key();
        for _ in 0..CAS_TRIES {
            let (rev, mut set) = self.read_drains().await?;
            let changed = if on {
                set.insert(entry.clone())
            } else {
                set.remove(&entry)
            };
            if !changed {
                return Ok(set);
            }
            let value = serde_json::to_vec(&set).unwrap_or_default();
            let r = self
                .store
                .txn(
                    vec![Compare::ModRevision(key.clone(), rev)],
                    vec![Op::Put {
                        key: key.clone(),
                        value,
                        lease: 0,
                    }],
                )
                .await?;
            if r.succeeded {
                return Ok(set);
            }
        }
        Err(FleetError::Busy)
    }
}
/// `pool/addr`, as the drains key lists a backend.
pub fn drain_entry(pool: &str, addr: SocketAddr) -> String {
    format!("{pool}/{addr}")
}

/// The drains key's value (a JSON array of `pool/addr`); junk reads as nothing drained.
pub fn parse_drains(v: &[u8]) -> BTreeSet<String> {
    serde_json::from_slice::<Vec<String>>(v)
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

/// A drains entry back into pool and address.
pub fn split_drain_entry(e: &str) -> Option<(String, SocketAddr)> {
    let (pool, addr) = e.rsplit_once('/')?;
    Some((pool.to_string(), addr.parse().ok()?))
}
