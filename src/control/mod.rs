//! The control layer: the one way a change happens — stage, validate, apply, commit —
//! whatever its source (the config file watcher, SIGHUP, `POST /api/reload`, an admin API
//! edit, a rollout step, the certificate watcher). Every path validates fully first and holds
//! [`Control::change_lock`], so a bad file or a failed
//! write changes nothing, and changes are applied one at a time.
//!
//! - [`apply`](mod@apply): stage a validated config (clients, listeners, certificates) and commit it.
//! - [`reload`](mod@reload): reload the config file (file change, SIGHUP, API).
//! - [`change`](mod@change): API edits and rollout progress, written back (SPEC §3) then applied.
//! - [`dns`](mod@dns): keeping backends by name resolved (SPEC §9).
//! - [`watch`](mod@watch): the config file watcher and the certificate watcher.
//! - [`fleet`](mod@fleet): fleet mode: the store's document as one more source of changes.

pub mod apply;
pub mod audit;
pub mod change;
pub mod dns;
pub mod fleet;
pub mod reload;
pub mod watch;

pub use crate::config::state::Unwritable;
pub use apply::{commit, stage, ApplyError, ReloadReport, Staged};
pub use audit::{Audit, Origin, Source};
pub use change::{change, change_locked, ChangeError};
pub use reload::{reload, reload_as, ReloadError, Trigger};
pub use watch::{watch, DEBOUNCE};

use crate::config::state::Store;
use crate::config::Config;
use crate::proxy::listeners::Listeners;
use crate::rollout::controller::{CommitError, Refused};
use crate::rollout::{Committer, Committing, Edit, Note, Rollouts};
use crate::runtime::{ApplyReport, Live};
use crate::upstream::registry::RegistryError;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};

/// What the control layer owns beside the data plane's [`Live`]: the change lock, the
/// state laid over the config file, the proxy listeners and the rollout controllers. Every
/// change goes through here; it dereferences to the runtime for reading.
pub struct Control {
    pub runtime: Arc<Live>,
    /// Serialises config changes (file reloads, API writes, rollout steps).
    pub change_lock: tokio::sync::Mutex<()>,
    /// API changes and rollout progress laid over the config file (`[server] state_file`).
    pub state: Store,
    /// The proxy listeners (set once they are bound), so a reload from any trigger can apply
    /// `server.listen`. Weak: the listeners outlive nothing; `app` owns them.
    pub listeners: OnceLock<Weak<Listeners>>,
    /// Rollout controllers, started and stopped as configs go live.
    pub rollouts: Rollouts,
    /// The audit trail: every change made live, once (`GET /api/changes`).
    pub audit: Audit,
    /// Fleet mode, on a replica that does not lead: the rollout steps it counts for the
    /// leader's gate. Synced as each revision is applied (so a step's first requests count
    /// in it) and published by the counters task.
    pub(crate) counting: std::sync::Mutex<crate::rollout::fleet::Counting>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Control {
    type Target = Live;
    fn deref(&self) -> &Live {
        &self.runtime
    }
}

impl Control {
    /// Build the runtime with its first config (the state file laid over it), start its
    /// rollouts and apply the drains the state keeps. Must be called inside a tokio runtime.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Arc<Self>, RegistryError> {
        let (state, config) = Store::open(config, config_path.as_deref());
        let runtime = Live::new(config, config_path)?;
        let ctl = Arc::new_cyclic(|me: &Weak<Control>| {
            let rollouts = Rollouts::default();
            let committer: Weak<dyn Committer> = me.clone();
            rollouts.bind(&runtime, committer);
            Control {
                runtime,
                change_lock: tokio::sync::Mutex::new(()),
                state,
                listeners: OnceLock::new(),
                rollouts,
                audit: Audit::default(),
                counting: Default::default(),
            }
        });
        ctl.rollouts.sync(None, &ctl.config());
        ctl.apply_drains();
        Ok(ctl)
    }

    /// Make `config` live atomically (backends that stay keep their state; removed ones
    /// drain), then start, restart or stop rollout controllers to match it. Callers that also
    /// write the file hold [`Control::change_lock`].
    pub fn apply(&self, config: Config) -> Result<ApplyReport, RegistryError> {
        let old = self.config();
        let report = self.runtime.apply(config)?;
        self.rollouts.sync(Some(&old), &self.config());
        Ok(report)
    }

    /// Drain the backends the state keeps drained (at start and after every reload).
    pub fn apply_drains(&self) {
        let timeout = self.config().server.drain_timeout;
        for (pool, addr, on) in self.state.drains() {
            self.registry.set_draining(&pool, addr, on, timeout);
        }
    }
}

/// A rollout step: built from the live config under the change lock, then written and
/// applied like an API change.
impl Committer for Control {
    fn commit<'a>(
        &'a self,
        edit: Edit<'a>,
        how: crate::config::state::Unwritable,
        note: Note,
    ) -> Committing<'a> {
        Box::pin(async move {
            let lock = self.change_lock.lock().await;
            let live = self.config();
            let change = edit(&live)?;
            // An operator's action is theirs, through the API; the rest is the rollout's.
            let origin = match note.who {
                Some(who) => Origin::api(&who),
                None => Origin::of(Source::Rollout),
            }
            .because(note.why);
            if let Some(fleet) = self.cluster.get().cloned() {
                // Fleet mode: a fenced compare-and-swap of the fleet's document (only the
                // leader's write lands, and only on the standing it was decided on),
                // applied here once written.
                return match fleet::commit_progress(
                    self, &fleet, &change, &live, how, &lock, &origin,
                )
                .await
                {
                    Ok(_) => Ok(()),
                    Err(ChangeError::Cluster(crate::cluster::FleetError::Edit(m)))
                        if m.starts_with(fleet::MOVED) =>
                    {
                        Err(CommitError::Superseded)
                    }
                    Err(e) => Err(CommitError::Change(Refused(Box::new(e)))),
                };
            }
            change_locked(self, &lock, &change, how, &origin)
                .map_err(|e| CommitError::Change(Refused(Box::new(e))))?;
            Ok(())
        })
    }
}
