//! The store veer's fleet mode needs, as a small interface of its own: a read with its
//! revision, a watch from a revision, a compare-and-swap transaction, and leases. etcd v3
//! ([`super::etcd`]) is the one built; a Kubernetes backend (a ConfigMap and a Lease through
//! the API server) fits the same four calls.

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

/// One key and its value, with the revisions the store keeps for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (0: absent).
    pub create_revision: i64,
    /// The revision of its last write.
    pub mod_revision: i64,
    /// The lease it is bound to (0: none).
    pub lease: i64,
}

/// A read: the keys found and the store's revision at the time.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub kvs: Vec<Kv>,
    pub revision: i64,
}

/// A condition of a transaction (all are "equal").
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's last write was at this revision (0: the key is absent).
    ModRevision(String, i64),
    /// The key was created at this revision (0: the key is absent).
    CreateRevision(String, i64),
    /// The key holds this value.
    Value(String, Vec<u8>),
}

/// A write of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put `value`, bound to `lease` when not 0.
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
    },
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// The conditions held and the writes were made.
    pub succeeded: bool,
    /// The store's revision after it (the writes' revision when they were made).
    pub revision: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
    pub fn revision(&self) -> i64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// What a watch stream delivers.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// Events in revision order (one store revision may hold several).
    Events(Vec<Event>),
    /// The revision asked for was compacted away: read the keys again from the store.
    Compacted { compact_revision: i64 },
}

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No endpoint answered (down, unreachable, no quorum, timed out).
    #[error("cluster store unreachable: {0}")]
    Unreachable(String),
    /// The store answered with an error.
    #[error("cluster store error: {0}")]
    Store(String),
    /// The lease is gone (expired or revoked).
    #[error("lease expired")]
    LeaseExpired,
}

/// Events from one watch until the stream ends: an `Err` or a closed channel means the watch
/// is over, and the caller watches again from the revision after the last one it applied
/// (see [`super::watch_from`]).
pub type WatchStream = mpsc::Receiver<Result<WatchItem, StoreError>>;

/// The store.
pub trait Store: Send + Sync + 'static {
    /// Read `key`, or every key starting with it when `prefix`.
    fn get(&self, key: &str, prefix: bool) -> BoxFuture<'_, Result<Range, StoreError>>;
    /// If every compare holds, make the writes, in one transaction.
    fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> BoxFuture<'_, Result<TxnResult, StoreError>>;
    /// Watch every key under `prefix` from revision `from` (inclusive).
    fn watch(&self, prefix: &str, from: i64) -> BoxFuture<'_, Result<WatchStream, StoreError>>;
    /// A new lease of `ttl_secs`; its id.
    fn lease_grant(&self, ttl_secs: i64) -> BoxFuture<'_, Result<i64, StoreError>>;
    /// Renew a lease; [`StoreError::LeaseExpired`] when it is gone.
    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// End a lease now (its keys go with it).
    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The key after every key that starts with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/veer/"), b"/veer0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
