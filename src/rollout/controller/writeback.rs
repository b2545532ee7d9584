//! Writing a controller's progress: built from the live config under the change lock and
//! handed to the control layer through [`Committer`](crate::rollout::Committer).

use super::{CommitError, Controller};
use crate::config::state::Unwritable;
use crate::config::RolloutState;
use crate::rollout::persist::Progress;
use crate::rollout::Note;

impl Controller {
    /// Write the progress (the config file, the state file, or memory without either) and
    /// make it live. `how`: what to do when it cannot be written (see [`Unwritable`]).
    pub(super) async fn commit(
        &self,
        weight: u32,
        state: RolloutState,
        step: usize,
        clock: super::gates::Clock,
        how: Unwritable,
    ) -> Result<(), CommitError> {
        let committer = self.committer.upgrade().ok_or(CommitError::Gone)?;
        let (cancel, route, def) = (&self.cancel, self.route.as_str(), &*self.orig);
        let hotfix = self.hotfix;
        let note = Note {
            who: self.acting.clone(),
            why: self.why.clone(),
        };
        let edit = Box::new(move |live: &crate::config::Config| {
            if cancel.is_cancelled() {
                return Err(CommitError::Superseded);
            }
            let rc = live.route(route).ok_or(CommitError::Superseded)?;
            if !rc.rollout.as_ref().is_some_and(|d| d.definition_eq(def)) {
                return Err(CommitError::Superseded);
            }
            let split: Vec<(String, u32)> = rc
                .split
                .iter()
                .map(|(p, _)| (p.clone(), if *p == def.to { weight } else { 100 - weight }))
                .collect();
            Ok(Progress::record(def, split, state, step, clock.0, clock.1, hotfix).change(route))
        });
        committer.commit(edit, how, note).await
    }

    /// Does the live config already show this progress?
    pub(super) fn split_matches(&self, weight: u32, state: RolloutState, step: usize) -> bool {
        let Some(rt) = self.rt.upgrade() else {
            return false;
        };
        let live = rt.config();
        live.route(&self.route).is_some_and(|rc| {
            let total: u32 = rc.split.iter().map(|(_, w)| *w).sum();
            rc.weight_of(&self.def.to)
                .is_some_and(|w| w * 100 == weight * total.max(1))
                && rc
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.state == Some(state) && r.step == Some(step))
        })
    }
}
