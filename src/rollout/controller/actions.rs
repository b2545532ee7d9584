//! Operator actions (`POST /api/routes/{route}/rollout/{action}`) on a running controller.

use super::{Controller, AUTO};
use crate::config::state::Unwritable;
use crate::config::RolloutState;
use crate::rollout::notify::EventKind;
use crate::rollout::{Action, ActionError, Status};

impl Controller {
    pub(super) fn conflict(&self, what: &str) -> ActionError {
        ActionError::Conflict(format!(
            "cannot {what}: the rollout of route {:?} is {}",
            self.route,
            self.state.as_str()
        ))
    }

    /// An operator action. `force` (`?force=true`): go on in memory when the progress cannot
    /// be written, as automatic steps do; otherwise such an action changes nothing (409).
    pub(super) async fn act(&mut self, action: Action, force: bool) -> Result<Status, ActionError> {
        use RolloutState::*;
        let how = if force { AUTO } else { Unwritable::Refuse };
        let running = matches!(self.state, Progressing | Paused | AwaitingApproval);
        match action {
            Action::Start => {
                if running {
                    return Err(self.conflict("start (abort it first)"));
                }
                self.pending_start = false;
                self.enter_step(0, EventKind::Started, false, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
            Action::Pause => {
                if !matches!(self.state, Progressing | AwaitingApproval) {
                    return Err(self.conflict("pause"));
                }
                self.commit(self.weight_of_step(self.step), Paused, self.step, how)
                    .await
                    .map_err(ActionError::Commit)?;
                self.paused_from = Some(self.state);
                self.state = Paused;
                self.figures = self.stats.as_ref().map(|s| s.figures()).or(self.figures);
                self.install_stats(None);
                self.reason = Some("paused by operator".into());
                self.next_check = None;
                self.publish();
                self.emit(EventKind::Paused, None, None);
            }
            Action::Resume => {
                if self.state != Paused {
                    return Err(self.conflict("resume"));
                }
                if self.paused_from == Some(AwaitingApproval) {
                    self.commit(
                        self.weight_of_step(self.step),
                        AwaitingApproval,
                        self.step,
                        how,
                    )
                    .await
                    .map_err(ActionError::Commit)?;
                    self.await_approval(false);
                    self.emit(EventKind::Resumed, None, None);
                } else {
                    // The step starts over: a full interval of fresh statistics.
                    self.enter_step(self.step, EventKind::Resumed, false, how)
                        .await
                        .map_err(ActionError::Commit)?;
                }
            }
            Action::Approve => {
                if self.state != AwaitingApproval {
                    return Err(self.conflict("approve"));
                }
                let next = (self.step + 1).min(self.last_step());
                self.commit(self.weight_of_step(next), Progressing, next, how)
                    .await
                    .map_err(ActionError::Commit)?;
                self.emit(EventKind::Approved, None, None);
                self.enter_step(next, EventKind::Step, true, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
            Action::Promote => {
                if !(running || self.state == Pending) {
                    return Err(self.conflict("promote (start it again first)"));
                }
                let f = self.stats.as_ref().map(|s| s.figures());
                self.succeed("promoted by operator".into(), f, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
            Action::Abort => {
                if !(running || self.state == Pending) {
                    return Err(self.conflict("abort"));
                }
                let f = self.stats.as_ref().map(|s| s.figures()).or(self.figures);
                self.roll_back("aborted by operator".into(), f, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
        }
        Ok(self.status.borrow().clone())
    }
}
