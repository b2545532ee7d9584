//! Fleet mode's store side (SPEC §7): the store interface ([`store`]) and its etcd v3 client
//! ([`etcd`]), the fleet's config document ([`document`]), and [`Fleet`]: this replica's
//! membership (a lease, its node key), leadership (a leader key taken in a transaction,
//! bound to the lease), and the compare-and-swap writes of the document, fenced by the
//! leader key when the leader writes rollout progress.
//!
//! This layer knows the store and the config, nothing that runs: applying a revision of the
//! document (the same validation and apply as a file reload) is `control::fleet`'s part.
//!
//! Keys under the fleet's `prefix`:
//!
//! ```text
//!  {prefix}/doc/config       the document: [pools.*] and [[routes]], TOML, comments kept
//!  {prefix}/doc/drains       the fleet's drained backends, JSON ["pool/addr", …]
//!  {prefix}/leader           the leader's node name, bound to its lease
//!  {prefix}/nodes/{node}     each replica's liveness, bound to its lease
//!  {prefix}/counters/{node}  each replica's rollout step counters, bound to its lease
//! ```
//!
//! [`Fleet`]'s parts: the document's reads and writes in `edit`, the drains key in `drains`,
//! the rollout step counters in `counters`, the lease and the leader key in `membership`.

mod counters;
pub mod document;
mod drains;
mod edit;
pub mod etcd;
mod membership;
pub mod store;

use crate::config::{ClusterConfig, Config, ConfigErrors};
use crate::metrics::step::StepStats;
pub use drains::{drain_entry, parse_drains, split_drain_entry};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{Store, StoreError};

/// Which step of a rollout counts belong to: its index and its start (Unix ms), as written.
pub type StepId = (usize, u64);

/// How many times a compare-and-swap is tried on a fresh revision before giving up.
const CAS_TRIES: usize = 50;

/// Why a fleet write changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cluster store unreachable")]
    Unreachable(String),
    #[error("{0}")]
    Store(String),
    /// The edit would make the document invalid.
    #[error("the change would make the fleet's config invalid")]
    Invalid(#[source] ConfigErrors),
    /// The document in the store is invalid even without the edit.
    #[error("the fleet's config document in the store is invalid; fix it with `veer cluster push` first")]
    DocumentInvalid(#[source] ConfigErrors),
    #[error("{0}")]
    Edit(String),
    #[error("the store has no fleet document yet")]
    NoDocument,
    /// A leader's write refused: this replica is not (or no longer) the leader.
    #[error("this replica is not the fleet's leader")]
    NotLeader,
    #[error("the document kept changing; {CAS_TRIES} tries did not land")]
    Busy,
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unreachable(m) => FleetError::Unreachable(m),
            other => FleetError::Store(other.to_string()),
        }
    }
}

/// What a replica knows about the fleet, for `/api/status`.
#[derive(Debug, Default, Clone)]
struct Info {
    leader: Option<String>,
    /// Node name and when it last said it was alive (Unix ms).
    nodes: Vec<(String, u64)>,
    /// Why the last revision of the document was refused, if it was.
    document_error: Option<String>,
}

/// A document revision read from the store.
#[derive(Debug, Clone)]
pub struct Revision {
    pub revision: i64,
    pub text: String,
}

/// This replica's view of its fleet and its handle on the store.
pub struct Fleet {
    pub store: Arc<dyn Store>,
    pub prefix: String,
    pub node: String,
    pub ttl: Duration,
    store_up: AtomicBool,
    is_leader: AtomicBool,
    lease: AtomicI64,
    /// The create revision of the leader key this replica holds (0: none): the fence.
    leader_rev: AtomicI64,
    /// The revision of the document live here.
    revision: AtomicI64,
    info: Mutex<Info>,
    /// The pools and routes live here, laid over a reloaded local file.
    doc: Mutex<Option<Arc<Config>>>,
    /// Rollbacks applied here during a store outage, to write when it answers.
    rollbacks: Mutex<Vec<crate::config::state::Change>>,
    /// The other replicas' published rollout counters, as the leader last read them.
    remote_counters: Mutex<Vec<(String, Vec<u8>)>>,
    /// Whether the leader read them since it took leadership (its gate waits until then).
    counters_read: AtomicBool,
    /// This replica's own counts of each running rollout step, by route: one set per step
    /// (its index and written start), the same whether this replica follows (and publishes
    /// them) or leads (and judges on them), so a replica that takes leadership mid-step goes
    /// on counting its share from the step's start instead of afresh.
    own_counts: Mutex<HashMap<String, (StepId, Arc<StepStats>)>>,
    /// Flips whenever leadership here starts or ends.
    pub leadership: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The etcd client `[cluster]` describes (credentials read from the env vars it names).
pub fn connect(cfg: &ClusterConfig) -> Result<etcd::Etcd, String> {
    let credentials = match (&cfg.username_env, &cfg.password_env) {
        (Some(u), Some(p)) => {
            let user =
                std::env::var(u).map_err(|_| format!("cluster.username_env: {u} is not set"))?;
            let pass =
                std::env::var(p).map_err(|_| format!("cluster.password_env: {p} is not set"))?;
            Some((user, pass))
        }
        _ => None,
    };
    etcd::Etcd::new(etcd::EtcdOptions {
        endpoints: cfg.etcd.clone(),
        credentials,
        ca: cfg.ca.clone(),
        cert: cfg.cert.clone().zip(cfg.key.clone()),
        timeout: Duration::from_millis(1500),
    })
    .map_err(|e| e.to_string())
}

impl Fleet {
    pub fn new(store: Arc<dyn Store>, prefix: &str, node: String, ttl: Duration) -> Arc<Fleet> {
        Arc::new(Fleet {
            store,
            prefix: prefix.trim_end_matches('/').to_string(),
            node,
            ttl,
            store_up: AtomicBool::new(false),
            is_leader: AtomicBool::new(false),
            lease: AtomicI64::new(0),
            leader_rev: AtomicI64::new(0),
            revision: AtomicI64::new(0),
            info: Mutex::new(Info::default()),
            doc: Mutex::new(None),
            remote_counters: Mutex::new(Vec::new()),
            counters_read: AtomicBool::new(false),
            own_counts: Mutex::new(HashMap::new()),
            rollbacks: Mutex::new(Vec::new()),
            leadership: tokio::sync::watch::channel(false).0,
        })
    }

    pub fn config_key(&self) -> String {
        format!("{}/doc/config", self.prefix)
    }
    pub fn drains_key(&self) -> String {
        format!("{}/doc/drains", self.prefix)
    }
    /// What every replica watches: the document and the drains.
    pub fn doc_prefix(&self) -> String {
        format!("{}/doc/", self.prefix)
    }
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
    pub fn counters_prefix(&self) -> String {
        format!("{}/counters/", self.prefix)
    }
    /// How the document is named in errors: `etcd:{prefix}/config`.
    pub fn doc_name(&self) -> PathBuf {
        PathBuf::from(format!("etcd:{}", self.config_key()))
    }

    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Acquire)
    }
    pub fn set_store_up(&self, up: bool) {
        self.store_up.store(up, Ordering::Release);
    }
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }
    /// A rollback applied here that the store could not take yet.
    pub fn remember_rollback(&self, c: crate::config::state::Change) {
        self.rollbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
    }

    /// The rollbacks still to write (taken).
    pub fn take_rollbacks(&self) -> Vec<crate::config::state::Change> {
        std::mem::take(&mut *self.rollbacks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The leader's node name, as last read from the store.
    pub fn leader(&self) -> Option<String> {
        self.info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leader
            .clone()
    }

    /// This replica's lease (0: none now).
    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Acquire)
    }

    /// The document revision now live here, and its pools and routes.
    pub fn set_applied(&self, revision: i64, doc: Arc<Config>) {
        self.revision.store(revision, Ordering::Release);
        *self.doc.lock().unwrap_or_else(|p| p.into_inner()) = Some(doc);
        self.info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .document_error = None;
    }

    /// A revision that failed validation (live config unchanged).
    pub fn set_document_error(&self, revision: i64, why: &ConfigErrors) {
        self.info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .document_error = Some(format!("revision {revision}: {why}"));
    }

    /// A reloaded local file with the fleet's pools and routes in place of its own.
    pub fn overlay(&self, local: Config) -> Config {
        match &*self.doc.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(doc) => document::overlay(&local, doc),
            None => local,
        }
    }

    /// The `cluster` object of `/api/status` (SPEC §7).
    pub fn status_json(&self) -> Value {
        let info = self.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = now_ms();
        json!({
            "node": self.node,
            "leader": info.leader,
            "is_leader": self.is_leader(),
            "store": if self.store_up() { "up" } else { "down" },
            "revision": self.revision(),
            "nodes": info.nodes.iter().map(|(n, seen)| json!({
                "node": n,
                "last_seen_ms": now.saturating_sub(*seen),
            })).collect::<Vec<_>>(),
            "document_error": info.document_error,
        })
    }
}
