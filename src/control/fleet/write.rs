//! Writing to the fleet document: an API change or a rollout step as a compare-and-swap,
//! applied here at once, and the rollbacks held back while the store was down.

use super::revision::{apply_revision_locked, RevisionError};
use crate::cluster::{Fleet, FleetError};
use crate::config::state::Change;
use crate::config::writeback::WritebackError;
use crate::config::{Config, RolloutState};
use crate::control::apply::{commit, stage, unchanged, ReloadReport};
use crate::control::audit::Origin;
use crate::control::change::ChangeError;
use crate::control::Control;
use std::sync::Arc;
use tokio::sync::MutexGuard;

/// A rollout step in fleet mode (the leader's, fenced), under the change lock the controller's
/// edit was built under (`live`: the config it was built from). The write lands only while
/// the document's rollout still stands where `live` shows it: a rollout action another
/// replica wrote meanwhile is never overwritten by a step decided before it (the leader's
/// controller goes on from the new standing instead, see [`apply_revision_locked`]).
///
/// A rollback the store cannot take now is applied here at once (safety first) and written
/// as soon as the store answers ([`write_pending`]); any other step waits for the store.
pub async fn commit_progress(
    rt: &Control,
    fleet: &Arc<Fleet>,
    change: &Change,
    live: &Config,
    how: crate::config::state::Unwritable,
    lock: &MutexGuard<'_, ()>,
    origin: &Origin,
) -> Result<ReloadReport, ChangeError> {
    let route = match change {
        Change::Progress { route, .. } => route.as_str(),
        _ => "",
    };
    let was = live_standing(live, route);
    let edit = |d: &mut toml_edit::DocumentMut| {
        if doc_standing(d, route) != was {
            return Err(WritebackError::Edit(format!(
                "{MOVED}: route {route:?}'s rollout was moved on another replica"
            )));
        }
        change.edit_doc(d)
    };
    let written = if fleet.store_up() {
        write_locked(rt, fleet, &change.subject(), &edit, true, lock).await
    } else {
        Err(unreachable())
    };
    match written {
        // (An operator's abort, like any API change, changes nothing then, unless forced.)
        Err(ChangeError::Cluster(FleetError::Unreachable(why)))
            if how != crate::config::state::Unwritable::Refuse
                && matches!(
                    change,
                    Change::Progress {
                        state: RolloutState::RolledBack,
                        ..
                    }
                ) =>
        {
            let old = rt.config();
            let mut next = (*old).clone();
            change.edit_config(&mut next);
            let staged = stage(rt, next, lock)?;
            let r = commit(rt, staged, lock)?;
            crate::control::change::record(rt, &old, change, &r, origin);
            fleet.remember_rollback(change.clone());
            tracing::warn!("{}: rolled back here at once; the store is unreachable ({why}), the rollback is written when it answers", change.subject());
            Ok(r)
        }
        Ok(r) => {
            crate::control::change::record(rt, live, change, &r, origin);
            Ok(r)
        }
        other => other,
    }
}

/// How a leader's refused step names the reason (the rollout moved on another replica).
pub const MOVED: &str = "superseded";

/// Where a route's rollout stands: `state`, `step` and the step's start, as written.
type Standing = (Option<String>, Option<i64>, Option<i64>);

fn live_standing(c: &Config, route: &str) -> Option<Standing> {
    let ro = c.route(route)?.rollout.as_ref()?;
    Some((
        ro.state.map(|s| s.as_str().to_string()),
        ro.step.map(|s| s as i64),
        ro.progress.step_started_ms.map(|s| s as i64),
    ))
}

/// The `[routes.rollout]` table of `route` in a document.
fn doc_rollout<'a>(d: &'a toml_edit::DocumentMut, route: &str) -> Option<&'a toml_edit::Item> {
    d.get("routes")?
        .as_array_of_tables()?
        .iter()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(route))?
        .get("rollout")
}

fn doc_standing(d: &toml_edit::DocumentMut, route: &str) -> Option<Standing> {
    let r = doc_rollout(d, route)?;
    Some((
        r.get("state").and_then(|s| s.as_str()).map(str::to_string),
        r.get("step").and_then(|s| s.as_integer()),
        r.get("step_started_ms").and_then(|s| s.as_integer()),
    ))
}

fn unreachable() -> ChangeError {
    ChangeError::Cluster(FleetError::Unreachable(
        "the store did not answer the last beat".into(),
    ))
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
            let still = doc_rollout(d, &route).is_some_and(|r| {
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
    crate::control::change::record(rt, &old, change, &r, origin);
    Ok(r)
}

async fn change_unrecorded(
    rt: &Control,
    fleet: &Arc<Fleet>,
    change: &Change,
) -> Result<ReloadReport, ChangeError> {
    if !fleet.store_up() {
        return Err(unreachable());
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
        return Err(unreachable());
    }
    let lock = rt.change_lock.lock().await;
    write_locked(rt, fleet, subject, edit, fenced, &lock).await
}

/// [`write`] under the change lock, held from the read to the apply: this replica's own
/// revision is live before its watch can deliver it, so the watch sees only other writers'.
async fn write_locked(
    rt: &Control,
    fleet: &Arc<Fleet>,
    subject: &str,
    edit: &(dyn Fn(&mut toml_edit::DocumentMut) -> Result<(), WritebackError> + Send + Sync),
    fenced: bool,
    lock: &MutexGuard<'_, ()>,
) -> Result<ReloadReport, ChangeError> {
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
    match apply_revision_locked(rt, fleet, rev, Some(doc), lock, false) {
        Ok(r) => Ok(r),
        Err(RevisionError::Apply(e)) => Err(ChangeError::Apply(e)),
        Err(RevisionError::Invalid(errors)) => Err(ChangeError::Invalid(errors)),
    }
}
