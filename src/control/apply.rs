//! Making a validated config live, whatever asked for it: [`stage`] prepares everything that
//! can fail (clients build, new listeners bind, certificates load) without changing anything,
//! [`commit`] swaps the snapshot and starts and stops listeners. Both need the change lock
//! ([`Control::change_lock`]), so changes are applied one at a time.

use super::Control;
use crate::config::state::Prepared;
use crate::config::Config;
use crate::proxy::listeners::{ListenerChanges, Listeners, StagedListeners, StartError};
use crate::runtime::ApplyReport;
use crate::upstream::registry::RegistryError;
use std::sync::Arc;
use tokio::sync::MutexGuard;

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

/// A config checked against what must happen before it goes live (clients build, new
/// listeners bind, certificates load), holding what was prepared.
pub struct Staged {
    config: Config,
    listeners: Option<(Arc<Listeners>, StagedListeners)>,
}

/// Prepare `config` without changing anything live. Needs the change lock.
pub fn stage(
    rt: &Control,
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
    rt: &Control,
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

pub(super) fn unchanged(rt: &Control) -> ReloadReport {
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

/// Make a reload's state current and apply the drains it keeps.
pub(super) fn install(rt: &Control, p: Prepared) {
    rt.state.install(p);
    rt.apply_drains();
}
