//! Fleet mode's control side (SPEC §7): the store is one more source of changes. Before the
//! runtime starts, [`prepare`] finds the fleet's document (seeding it create-if-absent from
//! this replica's file, or, with the store down, reading `<config>.fleet-cache`); then
//! [`spawn`] watches the document and the drains and applies every revision through the
//! same validation, stage and commit as a file reload (a bad revision changes nothing and is
//! reported), and [`change`] turns an API change into a compare-and-swap of the document.

use super::apply::{commit, stage, unchanged, ApplyError, ReloadReport};
use super::audit::{describe_apply, describe_change, Origin, Source};
use super::change::ChangeError;
use super::Control;
use crate::cluster::store::{Event, WatchItem};
use crate::cluster::{self, document, Fleet, FleetError, Revision};
use crate::config::state::Change;
use crate::config::writeback::WritebackError;
use crate::config::{Config, RolloutState};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::MutexGuard;
use tokio_util::task::TaskTracker;

/// How long a starting replica waits for the store before it serves its cache.
const START_WAIT: Duration = Duration::from_secs(5);

/// Why fleet mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetStartError {
    #[error("[cluster]: {0}")]
    Setup(String),
    #[error("[cluster]: the store has no fleet document and this file has no [pools.*] and [[routes]] to seed it with")]
    NothingToSeed,
    #[error("[cluster]: the store is unreachable ({0}) and there is no usable {1} to start from")]
    NoCache(String, String),
    #[error(
        "[cluster]: the fleet document in the store is invalid and there is no usable cache:\n{0}"
    )]
    Invalid(crate::config::ConfigErrors),
}

/// What a replica starts with in fleet mode.
pub struct Prepared {
    /// The local file's sections with the fleet's pools and routes.
    pub config: Config,
    pub fleet: Arc<Fleet>,
}

/// Connect, and find the config to start with: the store's document (seeded from `local`'s
/// pools and routes when the store has none), or, when the store cannot be reached, the
/// last document this replica applied (`<config>.fleet-cache`).
pub async fn prepare(
    local: Config,
    local_text: &str,
    path: Option<&Path>,
) -> Result<Prepared, FleetStartError> {
    let cfg = local
        .cluster
        .clone()
        .ok_or_else(|| FleetStartError::Setup("no [cluster] section".into()))?;
    let etcd = cluster::connect(&cfg).map_err(FleetStartError::Setup)?;
    let fleet = Fleet::new(
        Arc::new(etcd),
        &cfg.prefix,
        cfg.node_name(local.admin.listen),
        cfg.lease_ttl,
    );
    let has_own = !local.pools.is_empty() && !local.routes.is_empty();
    let found = tokio::time::timeout(START_WAIT, async {
        match fleet.read_document().await? {
            Some(r) => Ok(r),
            None if has_own => {
                let seed = document::seed_text(local_text).map_err(FleetError::Edit)?;
                fleet.seed(&seed).await
            }
            None => Err(FleetError::NoDocument),
        }
    })
    .await
    .unwrap_or_else(|_| Err(FleetError::Unreachable("timed out".into())));
    let cache = path.map(document::cache_path);
    let from_cache = || -> Option<(i64, Config)> {
        let text = std::fs::read_to_string(cache.as_ref()?).ok()?;
        let (rev, doc) = document::parse_cache(&text)?;
        match document::parse(&fleet.doc_name(), doc) {
            Ok(c) => Some((rev, c)),
            Err(e) => {
                tracing::error!("the fleet cache is invalid; not used:\n{e}");
                None
            }
        }
    };
    let (rev, doc) = match found {
        Ok(r) => {
            fleet.set_store_up(true);
            match document::parse(&fleet.doc_name(), &r.text) {
                Ok(doc) => {
                    write_cache(path, &r);
                    (r.revision, doc)
                }
                Err(e) => {
                    tracing::error!(
                        "the fleet document in the store is invalid; starting from the cache:\n{e}"
                    );
                    fleet.set_document_error(r.revision, &e);
                    from_cache().ok_or(FleetStartError::Invalid(e))?
                }
            }
        }
        Err(FleetError::NoDocument) => return Err(FleetStartError::NothingToSeed),
        Err(e) => {
            let name = cache
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_else(|| "fleet cache".into());
            let (rev, doc) = from_cache().ok_or(FleetStartError::NoCache(e.to_string(), name))?;
            tracing::warn!(
                revision = rev,
                "cluster store unreachable ({e}); serving the fleet's config from the cache"
            );
            (rev, doc)
        }
    };
    let config = document::overlay(&local, &doc);
    fleet.set_applied(rev, Arc::new(doc));
    Ok(Prepared { config, fleet })
}

fn write_cache(path: Option<&Path>, r: &Revision) {
    let Some(path) = path else { return };
    let cache = document::cache_path(path);
    let text = document::cache_text(r.revision, &r.text);
    if let Err(e) = crate::config::writeback::write_atomic_create(&cache, text.as_bytes()) {
        tracing::warn!(file = %cache.display(), "cannot write the fleet cache: {e}");
    }
}

/// The drained set applied here (so only changes are applied).
#[derive(Default)]
struct Drained(Mutex<BTreeSet<String>>);

/// Start fleet mode on a running runtime: membership and leadership, the watch on the
/// document and drains, the `veer_cluster_*` metrics.
pub fn spawn(rt: &Arc<Control>, fleet: Arc<Fleet>, tasks: &TaskTracker) {
    let _ = rt.cluster.set(fleet.clone());
    tasks.spawn(fleet.clone().run_membership(rt.shutdown.clone()));
    tasks.spawn(follow(rt.clone(), fleet.clone()));
    tasks.spawn(lead(rt.clone(), fleet.clone()));
    tasks.spawn(counters(rt.clone(), fleet.clone()));
    tasks.spawn(gauges(rt.clone(), fleet));
}

/// Start and stop the rollout controllers as leadership here starts and ends.
async fn lead(rt: Arc<Control>, fleet: Arc<Fleet>) {
    let mut rx = fleet.leadership.subscribe();
    loop {
        tokio::select! {
            _ = rt.shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let leading = *rx.borrow_and_update();
        // Under the change lock, so no revision is applied halfway through.
        let _lock = rt.change_lock.lock().await;
        tracing::info!(
            leading,
            "fleet leadership changed; rollout controllers follow"
        );
        rt.rollouts.leadership_changed(&rt.config());
    }
}

/// The fleet-wide gate's counts (SPEC §7): a replica that does not lead counts the running
/// step of every rollout and publishes the counts under its lease twice a second; the leader
/// reads everyone's for its controllers to judge on.
async fn counters(rt: Arc<Control>, fleet: Arc<Fleet>) {
    let mut counting = crate::rollout::fleet::Counting::default();
    // Counting follows a new step within 100 ms; the counts go out every 500 ms.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut published_empty = false;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = rt.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        if !fleet.is_leader() {
            counting.sync(&rt, &rt.config());
        }
        if n % 5 != 0 || !fleet.store_up() {
            continue;
        }
        write_pending(&rt, &fleet).await;
        if fleet.is_leader() {
            counting.clear(&rt);
            let read = tokio::time::timeout(Duration::from_secs(1), fleet.read_counters()).await;
            if let Ok(Ok(all)) = read {
                let others = all.into_iter().filter(|(n, _)| *n != fleet.node).collect();
                fleet.set_remote_counters(others);
            }
            published_empty = false;
            continue;
        }
        let value = counting.counters_json();
        // Nothing running: say so once, not twice a second.
        let empty = value == b"{}";
        if empty && published_empty {
            continue;
        }
        let sent =
            tokio::time::timeout(Duration::from_secs(1), fleet.publish_counters(value)).await;
        published_empty = empty && matches!(sent, Ok(Ok(())));
    }
}

/// `veer_cluster_leader`, `veer_cluster_store_up`, `veer_cluster_config_revision`.
async fn gauges(rt: Arc<Control>, fleet: Arc<Fleet>) {
    let reg = &rt.metrics.registry;
    let make = |name: &str, help: &str| {
        let g = prometheus::IntGauge::new(name, help).expect("a valid metric");
        let _ = reg.register(Box::new(g.clone()));
        g
    };
    let leader = make(
        "veer_cluster_leader",
        "1 while this replica leads the fleet",
    );
    let up = make("veer_cluster_store_up", "1 while the cluster store answers");
    let rev = make(
        "veer_cluster_config_revision",
        "Store revision of the fleet document live on this replica",
    );
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        leader.set(fleet.is_leader() as i64);
        up.set(fleet.store_up() as i64);
        rev.set(fleet.revision());
        tokio::select! {
            _ = rt.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

/// Follow the document and the drains until shutdown: read them, then watch from the
/// revision after the read; when the watch ends (a member died, the store went away, the
/// revision was compacted), read again and watch from there, so no revision is missed.
async fn follow(rt: Arc<Control>, fleet: Arc<Fleet>) {
    let drained = Drained::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        if rt.shutdown.is_cancelled() {
            return;
        }
        let next = match converge(&rt, &fleet, &drained).await {
            Ok(next) => next,
            Err(e) => {
                tracing::debug!("fleet document read failed: {e}");
                if sleep_or_stop(&rt, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let mut stream = match fleet.store.watch(&fleet.doc_prefix(), next).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("fleet watch failed: {e}");
                if sleep_or_stop(&rt, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let item = tokio::select! {
                _ = rt.shutdown.cancelled() => return,
                i = stream.recv() => i,
            };
            match item {
                Some(Ok(WatchItem::Events(events))) => {
                    for ev in events {
                        on_event(&rt, &fleet, &drained, ev).await;
                    }
                }
                Some(Ok(WatchItem::Compacted { compact_revision })) => {
                    tracing::info!(
                        compact_revision,
                        "fleet watch compacted; reading the document again"
                    );
                    break;
                }
                Some(Err(e)) => {
                    tracing::info!(
                        "fleet watch ended ({e}); watching again from the last revision applied"
                    );
                    break;
                }
                None => break,
            }
        }
    }
}

async fn sleep_or_stop(rt: &Control, d: Duration) -> bool {
    tokio::select! {
        _ = rt.shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Read the document and drains and apply what differs; the revision to watch from.
async fn converge(rt: &Control, fleet: &Arc<Fleet>, drained: &Drained) -> Result<i64, FleetError> {
    let r = fleet.store.get(&fleet.doc_prefix(), true).await?;
    let mut saw_drains = false;
    for kv in r.kvs {
        if kv.key == fleet.config_key() {
            if kv.mod_revision != fleet.revision() {
                let rev = Revision {
                    revision: kv.mod_revision,
                    text: String::from_utf8_lossy(&kv.value).into_owned(),
                };
                let _ = apply_revision(rt, fleet, rev, None, true).await;
            }
        } else if kv.key == fleet.drains_key() {
            saw_drains = true;
            let _lock = rt.change_lock.lock().await;
            apply_drains(rt, drained, cluster::parse_drains(&kv.value));
        }
    }
    if !saw_drains {
        let _lock = rt.change_lock.lock().await;
        apply_drains(rt, drained, BTreeSet::new());
    }
    Ok(r.revision + 1)
}

async fn on_event(rt: &Control, fleet: &Arc<Fleet>, drained: &Drained, ev: Event) {
    match ev {
        Event::Put(kv) if kv.key == fleet.config_key() => {
            let rev = Revision {
                revision: kv.mod_revision,
                text: String::from_utf8_lossy(&kv.value).into_owned(),
            };
            let _ = apply_revision(rt, fleet, rev, None, true).await;
        }
        Event::Put(kv) if kv.key == fleet.drains_key() => {
            let _lock = rt.change_lock.lock().await;
            apply_drains(rt, drained, cluster::parse_drains(&kv.value));
        }
        Event::Delete { key, .. } if key == fleet.drains_key() => {
            let _lock = rt.change_lock.lock().await;
            apply_drains(rt, drained, BTreeSet::new());
        }
        Event::Delete { key, .. } if key == fleet.config_key() => {
            tracing::error!(key = %key, "the fleet document was deleted from the store; the last one applied stays live (veer cluster push puts one back)");
        }
        _ => {}
    }
}

/// Drain what the fleet drains, restore what it no longer does.
fn apply_drains(rt: &Control, drained: &Drained, next: BTreeSet<String>) {
    let mut cur = drained.0.lock().unwrap_or_else(|p| p.into_inner());
    let timeout = rt.config().server.drain_timeout;
    // A drain this replica made through its API is live (and recorded) already.
    let audit = |pool: String, addr, on| {
        let already = rt
            .registry
            .get(&pool, addr)
            .is_some_and(|b| b.is_draining() == on);
        if !already {
            let change = Change::Drain { pool, addr, on };
            let what = describe_change(&rt.config(), &change, None);
            rt.audit.record(&Origin::of(Source::Fleet), what);
        }
    };
    for e in cur.difference(&next) {
        if let Some((pool, addr)) = cluster::split_drain_entry(e) {
            audit(pool.clone(), addr, false);
            rt.registry.set_draining(&pool, addr, false, timeout);
            tracing::info!(pool = %pool, backend = %addr, "backend restored (fleet-wide)");
        }
    }
    for e in next.difference(&cur) {
        if let Some((pool, addr)) = cluster::split_drain_entry(e) {
            audit(pool.clone(), addr, true);
            rt.registry.set_draining(&pool, addr, true, timeout);
            tracing::info!(pool = %pool, backend = %addr, "backend draining (fleet-wide)");
        }
    }
    *cur = next;
}

/// Why a revision was not applied.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("the fleet document is invalid")]
    Invalid(#[source] crate::config::ConfigErrors),
    #[error("cannot apply the fleet document: {0}")]
    Apply(#[from] ApplyError),
}

/// Apply one revision of the document (validated as a file reload is) unless a newer one is
/// live already. `doc`: its config when the caller validated it. `audit`: record it as a
/// fleet change (false when this replica wrote it and records the change itself).
async fn apply_revision(
    rt: &Control,
    fleet: &Fleet,
    rev: Revision,
    doc: Option<Config>,
    audit: bool,
) -> Result<ReloadReport, RevisionError> {
    let lock = rt.change_lock.lock().await;
    apply_revision_locked(rt, fleet, rev, doc, &lock, audit)
}

fn apply_revision_locked(
    rt: &Control,
    fleet: &Fleet,
    rev: Revision,
    doc: Option<Config>,
    lock: &MutexGuard<'_, ()>,
    audit: bool,
) -> Result<ReloadReport, RevisionError> {
    if rev.revision <= fleet.revision() {
        return Ok(unchanged(rt));
    }
    let doc = match doc
        .map(Ok)
        .unwrap_or_else(|| document::parse(&fleet.doc_name(), &rev.text))
    {
        Ok(d) => d,
        Err(errors) => {
            rt.metrics.reloads.with_label_values(&["failure"]).inc();
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            tracing::error!(
                revision = rev.revision,
                "fleet document refused; the old config stays live"
            );
            fleet.set_document_error(rev.revision, &errors);
            return Err(RevisionError::Invalid(errors));
        }
    };
    let live = rt.config();
    let next = document::overlay(&live, &doc);
    let report = if next == *live {
        unchanged(rt)
    } else {
        let result = stage(rt, next, lock).and_then(|s| commit(rt, s, lock));
        match result {
            Ok(r) => r,
            Err(e) => {
                rt.metrics.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(
                    revision = rev.revision,
                    "cannot apply the fleet document: {e}"
                );
                return Err(e.into());
            }
        }
    };
    rt.metrics.reloads.with_label_values(&["success"]).inc();
    if audit && report.changed {
        let what = describe_apply(&live, &rt.config(), &report.applied);
        rt.audit.record(
            &Origin::of(Source::Fleet),
            format!("fleet revision {}: {what}", rev.revision),
        );
    }
    tracing::info!(
        revision = rev.revision,
        version = report.applied.version,
        changed = report.changed,
        "fleet document applied"
    );
    fleet.set_applied(rev.revision, Arc::new(doc));
    write_cache(rt.config_path.as_deref(), &rev);
    Ok(report)
}

/// A rollout step in fleet mode (the leader's, fenced). A rollback the store cannot take now
/// is applied here at once (safety first) and written as soon as the store answers
/// ([`write_pending`]); any other step waits for the store.
pub async fn commit_progress(
    rt: &Control,
    fleet: &Arc<Fleet>,
    change: &Change,
    origin: &Origin,
) -> Result<ReloadReport, ChangeError> {
    match change_on(rt, fleet, change, origin).await {
        Err(ChangeError::Cluster(FleetError::Unreachable(why)))
            if matches!(
                change,
                Change::Progress {
                    state: RolloutState::RolledBack,
                    ..
                }
            ) =>
        {
            let lock = rt.change_lock.lock().await;
            let old = rt.config();
            let mut next = (*old).clone();
            change.edit_config(&mut next);
            let staged = stage(rt, next, &lock)?;
            let r = commit(rt, staged, &lock)?;
            super::change::record(rt, &old, change, &r, origin);
            fleet.remember_rollback(change.clone());
            tracing::warn!("{}: rolled back here at once; the store is unreachable ({why}), the rollback is written when it answers", change.subject());
            Ok(r)
        }
        other => other,
    }
}

/// Write the rollbacks the store could not take, now that it answers: each only if the
/// document's rollout still stands where it was rolled back from.
pub async fn write_pending(rt: &Control, fleet: &Arc<Fleet>) {
    for change in fleet.take_rollbacks() {
        let Change::Progress { route, step, .. } = &change else {
            continue;
        };
        let (route, step) = (route.clone(), *step);
        let edit = |d: &mut toml_edit::DocumentMut| {
            let still = d
                .get("routes")
                .and_then(|r| r.as_array_of_tables())
                .and_then(|rs| {
                    rs.iter()
                        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(route.as_str()))
                })
                .and_then(|t| t.get("rollout"))
                .is_some_and(|r| {
                    let state = r.get("state").and_then(|s| s.as_str());
                    let at = r.get("step").and_then(|s| s.as_integer());
                    !matches!(state, Some("succeeded" | "rolled_back"))
                        && at.is_none_or(|a| a == step as i64)
                });
            if still {
                change.edit_doc(d)
            } else {
                Ok(())
            }
        };
        match write(rt, fleet, &change.subject(), &edit, false).await {
            Ok(_) => tracing::info!(
                "{}: the rollback made during the store outage is written",
                change.subject()
            ),
            Err(ChangeError::Cluster(FleetError::Unreachable(_))) => {
                fleet.remember_rollback(change)
            }
            Err(e) => tracing::error!(
                "{}: the rollback made during the store outage cannot be written: {e}",
                change.subject()
            ),
        }
    }
}

/// An API change in fleet mode: a compare-and-swap of the document (or of the drains), then
/// applied here at once; the other replicas apply it from their watch.
pub async fn change(
    rt: &Control,
    fleet: &Arc<Fleet>,
    change: &Change,
    origin: &Origin,
) -> Result<ReloadReport, ChangeError> {
    change_on(rt, fleet, change, origin).await
}

async fn change_on(
    rt: &Control,
    fleet: &Arc<Fleet>,
    change: &Change,
    origin: &Origin,
) -> Result<ReloadReport, ChangeError> {
    let old = rt.config();
    let r = change_unrecorded(rt, fleet, change).await?;
    super::change::record(rt, &old, change, &r, origin);
    Ok(r)
}

async fn change_unrecorded(
    rt: &Control,
    fleet: &Arc<Fleet>,
    change: &Change,
) -> Result<ReloadReport, ChangeError> {
    if !fleet.store_up() {
        return Err(ChangeError::Cluster(FleetError::Unreachable(
            "the store did not answer the last beat".into(),
        )));
    }
    if let Change::Drain { pool, addr, on } = change {
        // Under the change lock, which the watch takes to apply drains too: it sees this
        // replica's own drain live already when the write comes back (recorded once, here).
        let _lock = rt.change_lock.lock().await;
        fleet
            .write_drain(pool, *addr, *on)
            .await
            .map_err(ChangeError::Cluster)?;
        let timeout = rt.config().server.drain_timeout;
        rt.registry.set_draining(pool, *addr, *on, timeout);
        return Ok(unchanged(rt));
    }
    let fenced = matches!(change, Change::Progress { .. });
    write(
        rt,
        fleet,
        &change.subject(),
        &|d| change.edit_doc(d),
        fenced,
    )
    .await
}

/// Edit the fleet's document with `edit` (a compare-and-swap; with `fenced`, only while this
/// replica leads), then apply the new revision here at once.
pub async fn write(
    rt: &Control,
    fleet: &Arc<Fleet>,
    subject: &str,
    edit: &(dyn Fn(&mut toml_edit::DocumentMut) -> Result<(), WritebackError> + Send + Sync),
    fenced: bool,
) -> Result<ReloadReport, ChangeError> {
    if !fleet.store_up() {
        return Err(ChangeError::Cluster(FleetError::Unreachable(
            "the store did not answer the last beat".into(),
        )));
    }
    // Under the change lock until applied, so the watch, which takes it too, finds this
    // revision live already (and the change is recorded once, as this replica's).
    let lock = rt.change_lock.lock().await;
    let (rev, doc) = fleet
        .edit_document(edit, fenced)
        .await
        .map_err(|e| match e {
            FleetError::Invalid(errors) => ChangeError::Invalid(errors),
            e => ChangeError::Cluster(e),
        })?;
    tracing::info!(
        revision = rev.revision,
        "{subject} changed in the fleet document"
    );
    match apply_revision_locked(rt, fleet, rev, Some(doc), &lock, false) {
        Ok(r) => Ok(r),
        Err(RevisionError::Apply(e)) => Err(ChangeError::Apply(e)),
        Err(RevisionError::Invalid(errors)) => Err(ChangeError::Invalid(errors)),
    }
}
