//! Changes through the admin API and rollout steps: [`change`] writes first (into the config
//! file, comments and layout kept, or into the state file when `[server] state_file` names
//! one), then applies. When the write fails, [`Unwritable`] says what happens: the API
//! answers 409, or with `?force=true` the change lives in memory until a reload, and a
//! rollout's own progress is kept in memory (never stuck) and written as soon as a write
//! succeeds.

use super::apply::{commit, stage, unchanged, ApplyError, ReloadReport};
use super::audit::{describe_change, Origin};
use super::Control;
use crate::config::state::{self, Change, StateError, Unwritable};
use crate::config::writeback::{self, WritebackError};
use crate::config::{Config, ConfigErrors};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::MutexGuard;

/// Why a change through the API changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The edit itself would make the config invalid (the request is at fault).
    #[error("the change would make the config invalid")]
    Invalid(#[source] ConfigErrors),
    /// The file on disk does not validate even without the edit: fix or reload it first.
    #[error("the config file on disk is invalid; fix it before changing it through the API")]
    FileInvalid(#[source] ConfigErrors),
    /// Reading, parsing or writing the file failed.
    #[error(transparent)]
    File(WritebackError),
    /// Writing the state file failed.
    #[error(transparent)]
    State(StateError),
    #[error("cannot apply the change: {0}")]
    Apply(#[from] ApplyError),
    /// Fleet mode: the store refused or could not be reached.
    #[error(transparent)]
    Cluster(crate::cluster::FleetError),
}

/// Make `change` live: written first (into the config file, or the state file when the
/// config names one), then applied. Without a config file (the demo) the live config is
/// edited in memory. If anything fails, nothing changes, except as `unwritable` allows.
/// `origin` says who asked (recorded in the audit trail once the change is live).
pub async fn change(
    rt: &Arc<Control>,
    change: &Change,
    unwritable: Unwritable,
    origin: &Origin,
) -> Result<ReloadReport, ChangeError> {
    // Fleet mode: the store is the truth; the change is a compare-and-swap of its document.
    if let Some(fleet) = rt.cluster.get() {
        return super::fleet::change(rt, fleet, change, origin).await;
    }
    let lock = rt.change_lock.lock().await;
    change_locked(rt, &lock, change, unwritable, origin)
}

/// [`change`] for a caller that already holds the change lock (to decide on the live state
/// and change it in one step).
pub fn change_locked(
    rt: &Control,
    lock: &MutexGuard<'_, ()>,
    change: &Change,
    unwritable: Unwritable,
    origin: &Origin,
) -> Result<ReloadReport, ChangeError> {
    let old = rt.config();
    let r = apply_change(rt, lock, change, unwritable)?;
    record(rt, &old, change, &r, origin);
    Ok(r)
}

/// Record a change that went live in the audit trail (a drain is one even though the config
/// stays the same; an edit that changed nothing is none).
pub(super) fn record(
    rt: &Control,
    old: &Config,
    change: &Change,
    r: &ReloadReport,
    origin: &Origin,
) {
    if r.changed || matches!(change, Change::Drain { .. }) {
        rt.audit
            .record(origin, describe_change(old, change, origin.why.as_deref()));
    }
}

fn apply_change(
    rt: &Control,
    lock: &MutexGuard<'_, ()>,
    change: &Change,
    unwritable: Unwritable,
) -> Result<ReloadReport, ChangeError> {
    if let Change::Drain { pool, addr, on } = change {
        // Drain state is not config: only a state file keeps it over a restart.
        if rt.state.path().is_some() {
            if let Err(e) = rt.state.write_change(change) {
                not_written(rt, change, unwritable, ChangeError::State(e))?;
            }
        }
        let timeout = rt.config().server.drain_timeout;
        rt.registry.set_draining(pool, *addr, *on, timeout);
        return Ok(unchanged(rt));
    }
    let Some(path) = rt.config_path.clone() else {
        let mut config = (*rt.config()).clone();
        change.edit_config(&mut config);
        check_change(&config, change, Path::new("config"))?;
        let staged = stage(rt, config, lock)?;
        return Ok(commit(rt, staged, lock)?);
    };
    if rt.state.path().is_some() {
        return change_state_file(rt, lock, &path, change, unwritable);
    }
    let edit = match writeback::prepare_edit(&path, |doc| change.edit_doc(doc)) {
        Ok(e) => e,
        Err(WritebackError::Invalid(errors)) => {
            // Blame the request only when the file was fine without it.
            return match Config::load(&path) {
                Ok(_) => Err(ChangeError::Invalid(errors)),
                Err(file_errors) => in_memory(
                    rt,
                    lock,
                    change,
                    unwritable,
                    ChangeError::FileInvalid(file_errors),
                ),
            };
        }
        Err(e @ WritebackError::Edit(_)) => return Err(ChangeError::File(e)),
        Err(e) => return in_memory(rt, lock, change, unwritable, ChangeError::File(e)),
    };
    // What went into memory only before (rollout progress) stays laid over the file.
    let next = rt.state.lay_over(&edit.config, Some(change));
    if next == *rt.config() && edit.text == edit.original {
        return Ok(unchanged(rt));
    }
    let staged = stage(rt, next, lock)?;
    // The write is the commit point: if it fails, the staged listeners are dropped unused.
    if let Err(e) = edit.write() {
        drop(staged);
        return in_memory(rt, lock, change, unwritable, ChangeError::File(e));
    }
    match commit(rt, staged, lock) {
        Ok(mut r) => {
            rt.state.written_to_config(change, edit.config.clone());
            r.persisted = rt.state.persisted();
            tracing::info!(file = %path.display(), version = r.applied.version, "{} changed and written back to the config file", change.subject());
            Ok(r)
        }
        Err(e) => {
            if let Err(re) = edit.restore() {
                tracing::error!(
                    "cannot restore {} after a failed apply: {re}",
                    path.display()
                );
            }
            Err(e.into())
        }
    }
}

/// With a state file: the change is checked on the live config, written into the state
/// file, then applied.
fn change_state_file(
    rt: &Control,
    lock: &MutexGuard<'_, ()>,
    path: &Path,
    change: &Change,
    unwritable: Unwritable,
) -> Result<ReloadReport, ChangeError> {
    let live = rt.config();
    let mut config = (*live).clone();
    change.edit_config(&mut config);
    check_change(&config, change, path)?;
    let same = config == *live;
    let staged = if same {
        None
    } else {
        Some(stage(rt, config, lock)?)
    };
    let undo = match rt.state.write_change(change) {
        Ok(u) => Some(u),
        Err(e) => {
            not_written(rt, change, unwritable, ChangeError::State(e))?;
            None
        }
    };
    let Some(staged) = staged else {
        return Ok(unchanged(rt));
    };
    match commit(rt, staged, lock) {
        Ok(r) => {
            if undo.is_some() {
                tracing::info!(state_file = ?rt.state.path(), version = r.applied.version, "{} changed and written to the state file", change.subject());
            }
            Ok(r)
        }
        Err(e) => {
            if let Some(u) = undo {
                rt.state.restore(u);
            }
            Err(e.into())
        }
    }
}

/// The change could not be written (`why`): refuse it, or go on in memory as `unwritable`
/// says (logged, and recorded so `/api/status` shows `"persisted": false`).
fn not_written(
    rt: &Control,
    change: &Change,
    unwritable: Unwritable,
    why: ChangeError,
) -> Result<(), ChangeError> {
    let what = change.subject();
    match unwritable {
        Unwritable::Refuse => return Err(why),
        // A drain outlives reloads anyway (it is runtime state): keep it to write later.
        Unwritable::Force if matches!(change, Change::Drain { .. }) => {
            tracing::warn!("{what} changed in memory only (?force=true); it is not persisted until a later write succeeds: {why}");
            rt.state.remember(change);
        }
        Unwritable::Force => {
            tracing::warn!("{what} changed in memory only (?force=true); it is not persisted and lasts until the next reload: {why}");
            rt.state.mark_forced();
        }
        Unwritable::Remember => {
            tracing::warn!("rollout progress of {what} is not persisted ({why}); the rollout goes on in memory, and a restart starts it over; set [server] state_file to keep it");
            rt.state.remember(change);
        }
    }
    Ok(())
}

/// Apply a change that could not be written, in memory, if `unwritable` allows it.
fn in_memory(
    rt: &Control,
    lock: &MutexGuard<'_, ()>,
    change: &Change,
    unwritable: Unwritable,
    why: ChangeError,
) -> Result<ReloadReport, ChangeError> {
    if unwritable == Unwritable::Refuse {
        return Err(why);
    }
    let mut config = (*rt.config()).clone();
    change.edit_config(&mut config);
    check_change(
        &config,
        change,
        rt.config_path.as_deref().unwrap_or(Path::new("config")),
    )?;
    let staged = stage(rt, config, lock)?;
    not_written(rt, change, unwritable, why)?;
    Ok(commit(rt, staged, lock)?)
}

/// The rules a split in a file must follow, for a change that is not text.
fn check_change(config: &Config, change: &Change, path: &Path) -> Result<(), ChangeError> {
    match change {
        Change::Split { route, .. } | Change::Progress { route, .. } => {
            state::check_split(config, route)
                .map_err(|why| ChangeError::Invalid(ConfigErrors::single(path, why)))
        }
        Change::Drain { .. } => Ok(()),
    }
}
