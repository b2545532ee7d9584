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

pub mod document;
pub mod etcd;
pub mod store;

use crate::config::writeback::WritebackError;
use crate::config::{ClusterConfig, Config, ConfigErrors};
use crate::metrics::step::StepStats;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{Compare, Op, Store, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

    /// The document as the store holds it now (`None`: not seeded).
    pub async fn read_document(&self) -> Result<Option<Revision>, FleetError> {
        let r = self.store.get(&self.config_key(), false).await?;
        Ok(r.kvs.into_iter().next().map(|kv| Revision {
            revision: kv.mod_revision,
            text: String::from_utf8_lossy(&kv.value).into_owned(),
        }))
    }

    /// Seed the document with `text` if the store has none (create-if-absent); the document
    /// the store holds afterwards, either way.
    pub async fn seed(&self, text: &str) -> Result<Revision, FleetError> {
        let key = self.config_key();
        let r = self
            .store
            .txn(
                vec![Compare::CreateRevision(key.clone(), 0)],
                vec![Op::Put {
                    key,
                    value: text.as_bytes().to_vec(),
                    lease: 0,
                }],
            )
            .await?;
        if r.succeeded {
            tracing::info!(prefix = %self.prefix, revision = r.revision, "fleet document seeded from this replica's file");
        }
        self.read_document().await?.ok_or(FleetError::NoDocument)
    }

    /// Replace the document with `text` (`veer cluster push`), validated first.
    pub async fn push(&self, text: &str) -> Result<i64, FleetError> {
        document::parse(&self.doc_name(), text).map_err(FleetError::Invalid)?;
        let key = self.config_key();
        let r = self
            .store
            .txn(
                vec![],
                vec![Op::Put {
                    key,
                    value: text.as_bytes().to_vec(),
                    lease: 0,
                }],
            )
            .await?;
        Ok(r.revision)
    }

    /// Edit the document with `edit` (toml_edit, comments kept) as a compare-and-swap on its
    /// mod revision; a conflict retries on the fresh revision. With `fenced`, the write also
    /// requires this replica to still hold the leader key it took, so a deposed leader that
    /// wakes up late writes nothing. The new revision, its text and its config.
    pub async fn edit_document(
        &self,
        edit: &(dyn Fn(&mut toml_edit::DocumentMut) -> Result<(), WritebackError> + Send + Sync),
        fenced: bool,
    ) -> Result<(Revision, Config), FleetError> {
        let key = self.config_key();
        for _ in 0..CAS_TRIES {
            let fence = if fenced { Some(self.fence()?) } else { None };
            let cur = self.read_document().await?.ok_or(FleetError::NoDocument)?;
            let mut doc: toml_edit::DocumentMut = match cur.text.parse() {
                Ok(d) => d,
                Err(_) => {
                    let e = document::parse(&self.doc_name(), &cur.text)
                        .err()
                        .unwrap_or_else(|| ConfigErrors(Vec::new()));
                    return Err(FleetError::DocumentInvalid(e));
                }
            };
            match edit(&mut doc) {
                Ok(()) => {}
                Err(WritebackError::Invalid(e)) => return Err(FleetError::Invalid(e)),
                Err(e) => return Err(FleetError::Edit(e.to_string())),
            }
            let text = doc.to_string();
            let config = match document::parse(&self.doc_name(), &text) {
                Ok(c) => c,
                Err(e) => {
                    return Err(match document::parse(&self.doc_name(), &cur.text) {
                        Ok(_) => FleetError::Invalid(e),
                        Err(old) => FleetError::DocumentInvalid(old),
                    })
                }
            };
            if text == cur.text {
                return Ok((cur, config));
            }
            let mut compares = vec![Compare::ModRevision(key.clone(), cur.revision)];
            if let Some((leader_key, rev)) = fence {
                compares.push(Compare::CreateRevision(leader_key.clone(), rev));
                compares.push(Compare::Value(leader_key, self.node.as_bytes().to_vec()));
            }
            let r = self
                .store
                .txn(
                    compares,
                    vec![Op::Put {
                        key: key.clone(),
                        value: text.as_bytes().to_vec(),
                        lease: 0,
                    }],
                )
                .await?;
            if r.succeeded {
                return Ok((
                    Revision {
                        revision: r.revision,
                        text,
                    },
                    config,
                ));
            }
            if fenced && !self.still_leader().await? {
                return Err(FleetError::NotLeader);
            }
            // Someone else wrote first: edit their revision.
        }
        Err(FleetError::Busy)
    }

    fn fence(&self) -> Result<(String, i64), FleetError> {
        let rev = self.leader_rev.load(Ordering::Acquire);
        if !self.is_leader() || rev == 0 {
            return Err(FleetError::NotLeader);
        }
        Ok((self.leader_key(), rev))
    }

    async fn still_leader(&self) -> Result<bool, FleetError> {
        let r = self.store.get(&self.leader_key(), false).await?;
        let rev = self.leader_rev.load(Ordering::Acquire);
        let ok = r
            .kvs
            .first()
            .is_some_and(|kv| kv.create_revision == rev && kv.value == self.node.as_bytes());
        if !ok {
            self.step_down("the leader key is no longer this replica's");
        }
        Ok(ok)
    }

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

    fn step_down(&self, why: &str) {
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
