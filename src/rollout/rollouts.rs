//! [`Rollouts`]: the controllers of a runtime by route, started, kept and stopped as configs
//! are made live, and the way an operator action reaches one.

use super::{
    controller, ActOptions, Action, ActionError, Command, Committer, Handle, Start, Status,
};
use crate::config::{Config, RolloutConfig, RolloutState};
use crate::runtime::Live;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio::sync::{oneshot, watch};

/// The rollout controllers of a runtime, by route name.
#[derive(Default)]
pub struct Rollouts {
    bound: OnceLock<(Weak<Live>, Weak<dyn Committer>)>,
    /// Shared with the controllers (weakly): rollout order reads the rollouts a controller
    /// waits for and rolls back the ones that depend on it.
    handles: Arc<Peers>,
}

/// The controllers by route name.
pub(crate) type Peers = Mutex<HashMap<String, Handle>>;

/// The status of `route`'s rollout, from the controllers' shared map.
pub(crate) fn peer_status(peers: &Peers, route: &str) -> Option<Status> {
    let handles = peers.lock().unwrap_or_else(|e| e.into_inner());
    handles.get(route).map(|h| h.status.borrow().clone())
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rollouts")
    }
}

impl Rollouts {
    /// Tie to the runtime the controllers read and the committer they change it through
    /// (before the first config is synced).
    pub fn bind(&self, rt: &Arc<Live>, committer: Weak<dyn Committer>) {
        let _ = self.bound.set((Arc::downgrade(rt), committer));
    }

    /// Called after `new` went live (`old` was live before; `None` at startup): start,
    /// restart or stop controllers as the `[routes.rollout]` definitions changed.
    pub fn sync(&self, old: Option<&Config>, new: &Config) {
        self.sync_moved(old, new, &[]);
    }

    /// [`Rollouts::sync`]; `moved`: routes whose rollout another replica moved, from which
    /// state (their controllers were stopped by [`Rollouts::adopt`]).
    fn sync_moved(&self, old: Option<&Config>, new: &Config, moved: &[(&str, RolloutState)]) {
        let Some((rt, committer)) = self
            .bound
            .get()
            .and_then(|(rt, c)| Some((rt.upgrade()?, c.clone())))
        else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!("rollouts need a tokio runtime; not started");
            return;
        }
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        // Fleet mode: only the leader runs rollout controllers; the others serve the steps
        // it writes into the document.
        if new.cluster.is_some() && !rt.cluster.get().is_some_and(|f| f.is_leader()) {
            for (name, h) in handles.drain() {
                h.cancel.cancel();
                tracing::debug!(route = %name, "rollout controller stopped: not the fleet's leader");
            }
            return;
        }
        for rc in &new.routes {
            let Some(def) = &rc.rollout else { continue };
            let start = match handles.get(&rc.name) {
                Some(h) if h.def.definition_eq(def) => continue,
                Some(_) => Start::Fresh,
                None => match old {
                    Some(o)
                        if !o
                            .route(&rc.name)
                            .and_then(|r| r.rollout.as_ref())
                            .is_some_and(|d| d.definition_eq(def)) =>
                    {
                        Start::Fresh
                    }
                    // Progress saved for another definition (edited while veer was down)
                    // belongs to another rollout: start anew.
                    _ if !def.progress_matches() => {
                        tracing::info!(route = %rc.name, "the rollout definition changed since its progress was saved; starting it anew");
                        Start::Fresh
                    }
                    _ => Start::Resume {
                        state: def.state,
                        step: def.step,
                        moved_from: moved.iter().find(|(n, _)| *n == rc.name).map(|(_, s)| *s),
                    },
                },
            };
            if let Some(h) = handles.remove(&rc.name) {
                tracing::info!(route = %rc.name, "rollout definition changed; starting it anew");
                h.cancel.cancel();
            }
            handles.insert(
                rc.name.clone(),
                controller::spawn(
                    &rt,
                    committer.clone(),
                    Arc::downgrade(&self.handles),
                    rc,
                    def,
                    start,
                ),
            );
        }
        handles.retain(|name, h| {
            let keep = new.route(name).is_some_and(|r| r.rollout.is_some());
            if !keep {
                tracing::info!(route = %name, "rollout removed from the config; controller stopped");
                h.cancel.cancel();
                let _ = rt.metrics.rollout_step.remove_label_values(&[name]);
            }
            keep
        });
    }

    /// Fleet mode: leadership here started or ended. The leader resumes every rollout where
    /// the document says it stands (with its step clock); a replica that lost it stops its
    /// controllers at once.
    pub fn leadership_changed(&self, live: &Config) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .for_each(|(_, h)| h.cancel.cancel());
        self.sync(None, live);
    }

    /// Fleet mode, on the leader: a revision another replica wrote (a rollout action taken
    /// there, or a document pushed by hand) moved a rollout from `old`'s standing. Its
    /// controller starts again from where the document now says it stands, with the step
    /// clock written there, as a new leader's does; nothing else is touched.
    pub fn adopt(&self, old: &Config, new: &Config) {
        let standing = |d: &RolloutConfig| (d.state, d.step, d.progress.clone());
        let moved: Vec<(&str, RolloutState)> = new
            .routes
            .iter()
            .filter_map(|rc| {
                let def = rc.rollout.as_ref()?;
                let was = old.route(&rc.name)?.rollout.as_ref()?;
                (was.definition_eq(def) && standing(was) != standing(def))
                    .then(|| (rc.name.as_str(), was.state.unwrap_or(RolloutState::Pending)))
            })
            .collect();
        if moved.is_empty() {
            return;
        }
        {
            let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            for (name, _) in &moved {
                if let Some(h) = handles.remove(*name) {
                    tracing::info!(route = %name, "rollout moved by another replica; the leader goes on from the document");
                    h.cancel.cancel();
                }
            }
        }
        self.sync_moved(None, new, &moved);
    }

    /// The published status of a route's rollout.
    pub fn status(&self, route: &str) -> Option<Status> {
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.get(route).map(|h| h.status.borrow().clone())
    }

    /// Follow a route's rollout status (changes on every transition).
    pub fn watch(&self, route: &str) -> Option<watch::Receiver<Status>> {
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.get(route).map(|h| h.status.clone())
    }

    /// Run an operator action and return the status after it.
    pub async fn act(&self, rt: &Live, route: &str, action: &str) -> Result<Status, ActionError> {
        self.act_with(rt, route, action, false).await
    }

    /// [`Rollouts::act`]; with `force` the action goes on in memory when its progress cannot
    /// be written (`?force=true`), instead of changing nothing.
    pub async fn act_with(
        &self,
        rt: &Live,
        route: &str,
        action: &str,
        force: bool,
    ) -> Result<Status, ActionError> {
        let opts = ActOptions {
            force,
            ..Default::default()
        };
        self.act_opts(rt, route, action, opts).await
    }

    /// [`Rollouts::act`] with every option ([`ActOptions`]).
    pub async fn act_opts(
        &self,
        rt: &Live,
        route: &str,
        action: &str,
        opts: ActOptions,
    ) -> Result<Status, ActionError> {
        let config = rt.config();
        let rc = config
            .route(route)
            .ok_or_else(|| ActionError::UnknownRoute(route.to_string()))?;
        if rc.rollout.is_none() {
            return Err(ActionError::NoRollout(route.to_string()));
        }
        let action =
            Action::parse(action).ok_or_else(|| ActionError::UnknownAction(action.to_string()))?;
        if let Some(f) = rt.cluster.get().filter(|f| !f.is_leader()) {
            return Err(ActionError::Conflict(format!(
                "this replica is not the fleet's leader; rollout actions go to the leader ({})",
                f.leader().unwrap_or_else(|| "none yet".into())
            )));
        }
        let cmd = {
            let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            handles
                .get(route)
                .map(|h| h.cmd.clone())
                .ok_or_else(|| ActionError::Stopped(route.to_string()))?
        };
        let (tx, rx) = oneshot::channel();
        cmd.send(Command {
            action,
            opts,
            reply: tx,
        })
        .await
        .map_err(|_| ActionError::Stopped(route.to_string()))?;
        rx.await
            .map_err(|_| ActionError::Stopped(route.to_string()))?
    }
}
