//! Taking config changes live: the file watcher, SIGHUP and `POST /api/reload` all end in
//! [`reload`]; API edits and rollout steps go through [`change`] (write, then apply). Every
//! path validates fully first and holds [`Runtime::change_lock`], so a bad file or a failed
//! write changes nothing, and changes are applied one at a time.
//!
//! A change is written where the config says (SPEC §3): into the config file itself (comments
//! and layout kept), or, with `[server] state_file`, into the state file, which every reload
//! lays over the config again ([`super::state`]). When the write fails, [`Unwritable`] says
//! what happens: the API answers 409, or with `?force=true` the change lives in memory until
//! a reload, and a rollout's own progress is kept in memory (never stuck) and written as soon
//! as a write succeeds.
//!
//! The watcher watches the file's *folder*, not the file: an editor that saves by rename, a
//! `mv` into place, and a Kubernetes ConfigMap update (the `..data` symlink flipped to a new
//! folder) all replace the file's inode, which a watch on the file itself would miss. Events
//! are debounced and the content is hashed, so a burst of events or a rewrite with the same
//! text does nothing.

use super::state::{self, Change, Prepared, StateError};
use super::writeback::{self, WritebackError};
use super::{Config, ConfigErrors};
use crate::app::{ListenerChanges, Listeners, StagedListeners, StartError};
use crate::runtime::{ApplyReport, Runtime};
use crate::upstream::registry::RegistryError;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::MutexGuard;

/// Quiet time after the last file event before the file is read: editors and `kubectl`
/// produce bursts of events for one logical change.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// What asked for a reload (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    File,
    Signal,
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file change",
            Trigger::Signal => "SIGHUP",
            Trigger::Api => "admin API",
        }
    }
}

/// What a reload or an API change did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// False when the new config equals the live one (nothing was swapped).
    pub changed: bool,
    #[serde(flatten)]
    pub applied: ApplyReport,
    #[serde(flatten)]
    pub listeners: ListenerChanges,
    /// False while something live is not written anywhere (`"persisted"` of `/api/status`).
    pub persisted: bool,
}

/// Why a validated config could not be made live (the old one stays).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Listeners(#[from] StartError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("veer was started without a config file; there is nothing to reload")]
    NoFile,
    #[error("the config file is invalid; the old config stays live")]
    Invalid(#[source] ConfigErrors),
    #[error("the state file is invalid; the old config stays live")]
    State(#[source] ConfigErrors),
    #[error("cannot apply the new config; the old config stays live: {0}")]
    Apply(#[from] ApplyError),
}

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
}

/// A config checked against what must happen before it goes live (clients build, new
/// listeners bind, certificates load), holding what was prepared.
pub struct Staged {
    config: Config,
    listeners: Option<(Arc<Listeners>, StagedListeners)>,
}

/// Prepare `config` without changing anything live. Needs the change lock.
pub fn stage(
    rt: &Runtime,
    config: Config,
    _lock: &MutexGuard<'_, ()>,
) -> Result<Staged, ApplyError> {
    rt.registry.check_clients(&config)?;
    let listeners = match rt.listeners.get().and_then(|w| w.upgrade()) {
        Some(l) => {
            let staged = l.stage(&config, rt.config_path.as_deref())?;
            Some((l, staged))
        }
        None => None,
    };
    Ok(Staged { config, listeners })
}

/// Make a staged config live: one snapshot swap (requests in flight keep the snapshot they
/// started with), then listeners start and stop. Needs the change lock.
pub fn commit(
    rt: &Runtime,
    staged: Staged,
    _lock: &MutexGuard<'_, ()>,
) -> Result<ReloadReport, ApplyError> {
    let old = rt.config();
    if old.admin.listen != staged.config.admin.listen {
        tracing::warn!(old = %old.admin.listen, new = %staged.config.admin.listen, "admin.listen changes take effect at the next restart");
    }
    if old.server.workers != staged.config.server.workers {
        tracing::warn!("server.workers changes take effect at the next restart");
    }
    let applied = rt.apply(staged.config)?;
    let listeners = match staged.listeners {
        Some((l, s)) => l.commit(s),
        None => ListenerChanges::default(),
    };
    Ok(ReloadReport {
        changed: true,
        applied,
        listeners,
        persisted: rt.state.persisted(),
    })
}

fn unchanged(rt: &Runtime) -> ReloadReport {
    ReloadReport {
        changed: false,
        applied: ApplyReport {
            version: rt.snapshot().version,
            ..ApplyReport::default()
        },
        listeners: ListenerChanges::default(),
        persisted: rt.state.persisted(),
    }
}

/// Reload the config file now (SIGHUP, `POST /api/reload`). A config equal to the live one
/// is not swapped in, but certificates are re-read (so SIGHUP rotates them).
pub async fn reload(rt: &Arc<Runtime>, trigger: Trigger) -> Result<ReloadReport, ReloadError> {
    let Some(path) = rt.config_path.clone() else {
        tracing::warn!(
            trigger = trigger.as_str(),
            "reload asked for, but veer runs without a config file"
        );
        return Err(ReloadError::NoFile);
    };
    let lock = rt.change_lock.lock().await;
    let text = read(&path);
    reload_locked(rt, &path, text, trigger, false, &lock)
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(path, format!("cannot read config file: {e}")))
}

/// Validate and apply `text` (the file's content, or why it could not be read), with the
/// state laid over it. Counts the result in `veer_config_reloads_total` and logs it, except
/// that with `quiet_if_same` a config equal to the live one is neither counted nor logged
/// (the watcher seeing a write-back, a comment edit, or a rewrite with the same settings).
fn reload_locked(
    rt: &Runtime,
    path: &Path,
    text: Result<String, ConfigErrors>,
    trigger: Trigger,
    quiet_if_same: bool,
    lock: &MutexGuard<'_, ()>,
) -> Result<ReloadReport, ReloadError> {
    let prepared = text
        .and_then(|t| Config::parse(path, &t))
        .map_err(ReloadError::Invalid)
        .and_then(|base| rt.state.prepare_reload(base).map_err(ReloadError::State));
    let same = matches!(&prepared, Ok(p) if p.config == *rt.config());
    if same && quiet_if_same {
        tracing::debug!(file = %path.display(), "config file changed; same config, nothing to do");
        if let Ok(p) = prepared {
            install(rt, p);
        }
        return Ok(unchanged(rt));
    }
    let result = prepared.and_then(|p| {
        if same {
            // Same config: swap nothing, but re-read what lives outside the file
            // (certificates), so SIGHUP rotates them.
            if let Some(l) = rt.listeners.get().and_then(|w| w.upgrade()) {
                let staged = l.stage(&p.config, Some(path)).map_err(ApplyError::from)?;
                l.commit(staged);
            }
            install(rt, p);
            return Ok(unchanged(rt));
        }
        let staged = stage(rt, p.config.clone(), lock)?;
        let mut r = commit(rt, staged, lock)?;
        install(rt, p);
        r.persisted = rt.state.persisted();
        Ok(r)
    });
    record(rt, trigger, &result);
    result
}

/// Make a reload's state current and apply the drains it keeps.
fn install(rt: &Runtime, p: Prepared) {
    rt.state.install(p);
    apply_drains(rt);
}

/// Drain the backends the state keeps drained (at start and after every reload).
pub fn apply_drains(rt: &Runtime) {
    let timeout = rt.config().server.drain_timeout;
    for (pool, addr, on) in rt.state.drains() {
        rt.registry.set_draining(&pool, addr, on, timeout);
    }
}

/// Count and log a reload's outcome.
fn record(rt: &Runtime, trigger: Trigger, result: &Result<ReloadReport, ReloadError>) {
    let how = trigger.as_str();
    match result {
        Ok(r) => {
            rt.metrics.reloads.with_label_values(&["success"]).inc();
            if r.changed {
                tracing::info!(
                    trigger = how,
                    version = r.applied.version,
                    routes_added = ?r.applied.routes_added,
                    routes_removed = ?r.applied.routes_removed,
                    weights_changed = ?r.applied.weights_changed,
                    backends_added = ?r.applied.backends.added,
                    backends_removed = ?r.applied.backends.removed,
                    listeners_added = ?r.listeners.listeners_added,
                    listeners_removed = ?r.listeners.listeners_removed,
                    "config reloaded"
                );
            } else {
                tracing::info!(trigger = how, "config reloaded; nothing changed");
            }
        }
        Err(e) => {
            rt.metrics.reloads.with_label_values(&["failure"]).inc();
            if let ReloadError::Invalid(errors) | ReloadError::State(errors) = e {
                for err in &errors.0 {
                    tracing::error!("{err}");
                }
            }
            tracing::error!(trigger = how, "config reload failed: {e}");
        }
    }
}

/// What to do with a change that cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritable {
    /// Change nothing: the API answers 409.
    Refuse,
    /// `?force=true`: apply it in memory only, until the next reload (or the next change
    /// written into the config file, which rereads it); `"persisted": false` until then.
    Force,
    /// A rollout's progress: apply it in memory and keep it over reloads, so a rollout never
    /// waits on a file; written with the next write that succeeds.
    Remember,
}

/// Make `change` live: written first (into the config file, or the state file when the
/// config names one), then applied. Without a config file (the demo) the live config is
/// edited in memory. If anything fails, nothing changes, except as `unwritable` allows.
pub async fn change(
    rt: &Arc<Runtime>,
    change: &Change,
    unwritable: Unwritable,
) -> Result<ReloadReport, ChangeError> {
    let lock = rt.change_lock.lock().await;
    change_locked(rt, &lock, change, unwritable)
}

/// [`change`] for a caller that already holds the change lock (to decide on the live state
/// and change it in one step).
pub fn change_locked(
    rt: &Runtime,
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
    rt: &Runtime,
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
    rt: &Runtime,
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
    rt: &Runtime,
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

/// Watch the config file and reload it when its content changes, until shutdown.
pub async fn watch(rt: Arc<Runtime>, path: PathBuf) {
    let path = std::path::absolute(&path).unwrap_or(path);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    // The folders watched may hold other busy files (logs, say): only events on the paths
    // that lead to the config wake the reloader.
    let wanted = Arc::new(std::sync::Mutex::new(Vec::<PathBuf>::new()));
    let seen = wanted.clone();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if relevant(&ev.kind) && concerns(&ev, &seen) => {
            // Full means a wake-up is already pending: that one will read the file.
            let _ = tx.try_send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "config file watch error"),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; polling it every second instead");
            None
        }
    };
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(w) = watcher.as_mut() {
        rewatch(w, &path, &mut watched, &wanted);
    }
    // Check once at start: the file may have changed since it was loaded.
    let mut last: Option<u64> = None;
    check(&rt, &path, &mut last).await;
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = rt.shutdown.cancelled() => return,
            ev = rx.recv(), if watcher.is_some() => if ev.is_none() { return },
            _ = poll.tick(), if watcher.is_none() => {}
        }
        // Debounce: wait for a quiet spell.
        loop {
            tokio::select! {
                _ = rt.shutdown.cancelled() => return,
                r = tokio::time::timeout(DEBOUNCE, rx.recv()) => match r {
                    Ok(Some(())) => continue,
                    Ok(None) | Err(_) => break,
                },
            }
        }
        check(&rt, &path, &mut last).await;
        if let Some(w) = watcher.as_mut() {
            rewatch(w, &path, &mut watched, &wanted);
        }
    }
}

/// Reading a file produces open/close events; only changes matter (and reacting to our own
/// reads would loop).
fn relevant(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Does the event touch a path that leads to the config (see [`leads_to`])?
fn concerns(ev: &notify::Event, wanted: &std::sync::Mutex<Vec<PathBuf>>) -> bool {
    let wanted = wanted.lock().unwrap_or_else(|p| p.into_inner());
    // Nothing known yet, or an event without paths (an overflow): better read once too often.
    wanted.is_empty() || ev.paths.is_empty() || ev.paths.iter().any(|p| wanted.contains(p))
}

/// The paths whose change can change what `path` reads: the path itself, each link on the
/// way to the file (a ConfigMap's `..data`, swapped on every update, is one), and the file.
fn leads_to(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut at = path.to_path_buf();
    // A link, and a link inside its target, and so on (a short, finite chain).
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(&at) else {
            break;
        };
        let dir = at.parent().map(Path::to_path_buf).unwrap_or_default();
        let next = dir.join(&target);
        // The first step of a relative target (`..data` of `..data/veer.toml`) is itself
        // a link that tools swap.
        if let Some(first) = target.components().next() {
            out.push(dir.join(first));
        }
        out.push(next.clone());
        at = next;
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        out.push(real);
    }
    out
}

/// Watch the folder of the path and, when it is a symlink, the folder of its target too (the
/// target of a ConfigMap's `..data` link moves on every update, so this is redone each time).
fn rewatch(
    w: &mut notify::RecommendedWatcher,
    path: &Path,
    watched: &mut Vec<PathBuf>,
    wanted: &std::sync::Mutex<Vec<PathBuf>>,
) {
    use notify::Watcher;
    *wanted.lock().unwrap_or_else(|p| p.into_inner()) = leads_to(path);
    let mut want: Vec<PathBuf> = Vec::new();
    if let Some(d) = path.parent() {
        want.push(d.to_path_buf());
    }
    if let Some(d) = std::fs::canonicalize(path)
        .ok()
        .and_then(|r| r.parent().map(Path::to_path_buf))
    {
        if !want.contains(&d) {
            want.push(d);
        }
    }
    watched.retain(|d| {
        let keep = want.contains(d);
        if !keep {
            // Fails harmlessly when the folder is already gone (its watch went with it).
            let _ = w.unwatch(d);
        }
        keep
    });
    for d in want {
        if watched.contains(&d) {
            continue;
        }
        match w.watch(&d, notify::RecursiveMode::NonRecursive) {
            Ok(()) => watched.push(d),
            Err(e) => tracing::warn!(dir = %d.display(), error = %e, "cannot watch config folder"),
        }
    }
}

fn hash(text: &Result<String, ConfigErrors>) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    match text {
        Ok(t) => t.hash(&mut h),
        // Unreadable counts as one content, so a missing file is reported once.
        Err(_) => u64::MAX.hash(&mut h),
    }
    h.finish()
}

/// Reload when the content differs from what this watcher saw last and the config it
/// describes differs from the live one (a write-back by the API changes the text but not
/// the config, and is not reloaded again).
async fn check(rt: &Arc<Runtime>, path: &Path, last: &mut Option<u64>) {
    let lock = rt.change_lock.lock().await;
    let text = read(path);
    let h = hash(&text);
    if *last == Some(h) {
        return;
    }
    *last = Some(h);
    if text.is_err() && !path.exists() {
        // Deleted, or mid-replacement by a tool that unlinks first: not a config to judge.
        // The event that brings the file back reloads it.
        tracing::warn!(file = %path.display(), "config file is gone; the live config stays");
        return;
    }
    let _ = reload_locked(rt, path, text, Trigger::File, true, &lock);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(paths: &[PathBuf]) -> notify::Event {
        let mut ev = notify::Event::new(notify::EventKind::Modify(notify::event::ModifyKind::Any));
        ev.paths = paths.to_vec();
        ev
    }

    #[test]
    fn only_events_on_the_way_to_the_config_wake_the_reloader() {
        // A Kubernetes ConfigMap: veer.toml -> ..data/veer.toml, ..data -> ..2026_11_28.
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(d.join("..2026_11_28")).unwrap();
        std::fs::write(d.join("..2026_11_28/veer.toml"), "").unwrap();
        std::os::unix::fs::symlink("..2026_11_28", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/veer.toml", d.join("veer.toml")).unwrap();
        let path = d.join("veer.toml");
        let wanted = std::sync::Mutex::new(leads_to(&path));
        for p in [
            path.clone(),
            d.join("..data"),
            d.join("..2026_11_28/veer.toml"),
        ] {
            assert!(
                concerns(&event(std::slice::from_ref(&p)), &wanted),
                "{}",
                p.display()
            );
        }
        // The swap renames a new link over ..data: the event names both.
        assert!(concerns(
            &event(&[d.join("..data_tmp"), d.join("..data")]),
            &wanted
        ));
        // A busy neighbour (a log file, an editor's swap file) does not.
        for other in ["access.log", ".veer.toml.swp", "4913"] {
            assert!(!concerns(&event(&[d.join(other)]), &wanted), "{other}");
        }
        // Overflow events carry no path: read the file to be safe.
        assert!(concerns(&event(&[]), &wanted));
    }
}
