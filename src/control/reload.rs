//! Reloading the config file: the file watcher, SIGHUP and `POST /api/reload` all end in
//! [`reload`] (or, for the watcher, `reload_locked`). The file is validated fully first, with
//! the state file laid over it, so a bad file changes nothing.

use super::apply::{commit, install, stage, unchanged, ApplyError, ReloadReport};
use super::audit::{describe_apply, Origin, Source};
use super::Control;
use crate::config::{Config, ConfigErrors};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::MutexGuard;

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

    /// The audit trail's source of a reload this trigger asked for.
    pub fn source(self) -> Source {
        match self {
            Trigger::File => Source::File,
            Trigger::Signal => Source::Signal,
            Trigger::Api => Source::Api,
        }
    }
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

/// Reload the config file now (SIGHUP, `POST /api/reload`). A config equal to the live one
/// is not swapped in, but certificates are re-read (so SIGHUP rotates them).
pub async fn reload(rt: &Arc<Control>, trigger: Trigger) -> Result<ReloadReport, ReloadError> {
    reload_as(rt, trigger, &Origin::of(trigger.source())).await
}

/// [`reload`] asked for by `origin` (the API token's name for `POST /api/reload`).
pub async fn reload_as(
    rt: &Arc<Control>,
    trigger: Trigger,
    origin: &Origin,
) -> Result<ReloadReport, ReloadError> {
    let Some(path) = rt.config_path.clone() else {
        tracing::warn!(
            trigger = trigger.as_str(),
            "reload asked for, but veer runs without a config file"
        );
        return Err(ReloadError::NoFile);
    };
    let lock = rt.change_lock.lock().await;
    let text = read(&path);
    reload_locked(rt, &path, text, trigger, false, &lock, origin)
}

pub(super) fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(path, format!("cannot read config file: {e}")))
}

/// Validate and apply `text` (the file's content, or why it could not be read), with the
/// state laid over it. Counts the result in `veer_config_reloads_total` and logs it, except
/// that with `quiet_if_same` a config equal to the live one is neither counted nor logged
/// (the watcher seeing a write-back, a comment edit, or a rewrite with the same settings).
pub(super) fn reload_locked(
    rt: &Control,
    path: &Path,
    text: Result<String, ConfigErrors>,
    trigger: Trigger,
    quiet_if_same: bool,
    lock: &MutexGuard<'_, ()>,
    origin: &Origin,
) -> Result<ReloadReport, ReloadError> {
    let old = rt.config();
    let prepared = text
        .and_then(|t| Config::parse_checked(path, &t, &crate::tls::CertificateFiles))
        // Fleet mode: the file gives this replica's own sections, the store the rest.
        .map(|c| match rt.cluster.get() {
            Some(fleet) => fleet.overlay(c),
            None => c,
        })
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
        if p.config.log != rt.config().log {
            // The access log's writer and the log subscriber are set up once per process.
            tracing::warn!(
                file = %path.display(),
                "[log] changed: it takes effect at the next start or upgrade (SIGUSR2)"
            );
        }
        let staged = stage(rt, p.config.clone(), lock)?;
        let mut r = commit(rt, staged, lock)?;
        install(rt, p);
        r.persisted = rt.state.persisted();
        Ok(r)
    });
    record(rt, trigger, &result);
    if let Ok(r) = &result {
        if r.changed {
            rt.audit
                .record(origin, describe_apply(&old, &rt.config(), &r.applied));
        }
    }
    result
}

/// Count and log a reload's outcome.
fn record(rt: &Control, trigger: Trigger, result: &Result<ReloadReport, ReloadError>) {
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
