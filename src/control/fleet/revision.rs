//! Applying one revision of the fleet document: validated, staged and committed as a file
//! reload is, the cache written, the leader's rollouts adopting a foreign move.

use super::start::write_cache;
use crate::cluster::{document, Fleet, Revision};
use crate::config::Config;
use crate::control::apply::{commit, stage, unchanged, ApplyError, ReloadReport};
use crate::control::audit::{describe_apply, Origin, Source};
use crate::control::Control;
use std::sync::Arc;
use tokio::sync::MutexGuard;

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
pub(super) async fn apply_revision(
    rt: &Control,
    fleet: &Fleet,
    rev: Revision,
    doc: Option<Config>,
    audit: bool,
) -> Result<ReloadReport, RevisionError> {
    let lock = rt.change_lock.lock().await;
    apply_revision_locked(rt, fleet, rev, doc, &lock, audit)
}

/// `doc: None`: a revision seen by the watch (or a read after one ended); `Some`: this
/// replica's own write, which it applies under the lock it wrote under, so the watch's copy
/// of it arrives as already applied and only other writers' revisions count as foreign.
pub(super) fn apply_revision_locked(
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
    let from_watch = doc.is_none();
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
    // Written by another replica (or by hand) and not by this one's own write, which is
    // applied under the same lock it was written under.
    let foreign = from_watch;
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
    if report.changed && !fleet.is_leader() {
        // A new step's weights are live: count its requests from now, not from the counters
        // task's next tick (they would land in the step before).
        rt.counting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync(rt, &rt.config());
    }
    write_cache(rt.config_path.as_deref(), &rev);
    if foreign && fleet.is_leader() {
        // A rollout action taken on another replica (or a document pushed by hand) moved a
        // rollout: the leader's controllers go on from where the document says it stands.
        rt.rollouts.adopt(&live, &rt.config());
    }
    Ok(report)
}
