//! The background side of fleet mode: leadership, the fleet-wide gate's counters, the
//! `veer_cluster_*` gauges, and the watch that applies every revision and drain.

use super::revision::apply_revision;
use super::write::write_pending;
use crate::cluster::store::{Event, WatchItem};
use crate::cluster::{self, Fleet, FleetError, Revision};
use crate::config::state::Change;
use crate::control::audit::{describe_change, Origin, Source};
use crate::control::Control;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::task::TaskTracker;

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
    // Counting follows a new step as its revision is applied (`apply_revision`) and checks
    // every 100 ms; the counts go out every 500 ms.
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
        let counting = || rt.counting.lock().unwrap_or_else(|p| p.into_inner());
        if !fleet.is_leader() {
            counting().sync(&rt, &rt.config());
        }
        if n % 5 != 0 || !fleet.store_up() {
            continue;
        }
        write_pending(&rt, &fleet).await;
        if fleet.is_leader() {
            counting().clear();
            let read = tokio::time::timeout(Duration::from_secs(1), fleet.read_counters()).await;
            if let Ok(Ok(all)) = read {
                let others = all.into_iter().filter(|(n, _)| *n != fleet.node).collect();
                fleet.set_remote_counters(others);
            }
            published_empty = false;
            continue;
        }
        let value = counting().counters_json();
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
