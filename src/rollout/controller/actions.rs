//! Operator actions (`POST /api/routes/{route}/rollout/{action}`) on a running controller.

use super::{Controller, AUTO};
use crate::config::state::Unwritable;
use crate::config::RolloutState;
use crate::rollout::notify::EventKind;
use crate::rollout::{ActOptions, Action, ActionError, Status};
use tokio::time::Instant;

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
    pub(super) async fn act(
        &mut self,
        action: Action,
        opts: ActOptions,
    ) -> Result<Status, ActionError> {
        use RolloutState::*;
        let force = opts.force;
        let how = if force { AUTO } else { Unwritable::Refuse };
        let running = matches!(self.state, Progressing | Paused | AwaitingApproval);
        match action {
            Action::Start => {
                if running || self.state == Waiting {
                    return Err(self.conflict("start (abort it first)"));
                }
                if opts.hotfix && self.orig.hotfix.is_none() {
                    return Err(ActionError::Conflict(format!(
                        "route {:?} has no [routes.rollout.hotfix] to start",
                        self.route
                    )));
                }
                self.set_run(opts.hotfix);
                self.pending_start = false;
                self.before_passed = false;
                self.after_gates_done = false;
                self.paused_by = None;
                if !self.hold_before_start() {
                    self.enter_step(0, EventKind::Started, false, how)
                        .await
                        .map_err(ActionError::Commit)?;
                }
            }
            Action::Pause => {
                if !matches!(self.state, Progressing | AwaitingApproval) {
                    return Err(self.conflict("pause"));
                }
                self.why = Some(match &opts.why {
                    Some(why) => format!("paused {why}"),
                    None => "paused".into(),
                });
                self.commit(
                    self.weight_of_step(self.step),
                    Paused,
                    self.step,
                    (None, None),
                    how,
                )
                .await
                .map_err(ActionError::Commit)?;
                // Gates being judged are asked again from the start on resume.
                self.phase = None;
                self.checks.reset();
                self.paused_by = Some(opts.who.clone().unwrap_or_else(|| "operator".into()));
                self.paused_from = Some(self.state);
                self.state = Paused;
                self.figures = self.stats.as_ref().map(|s| s.figures()).or(self.figures);
                self.install_stats(None);
                let who = opts.who.as_deref().unwrap_or("operator");
                self.reason = Some(match &opts.why {
                    Some(why) => format!("paused by {who} {why}"),
                    None => format!("paused by {who}"),
                });
                self.next_check = None;
                self.publish();
                self.emit(EventKind::Paused, None, None);
            }
            Action::Resume => {
                if self.state != Paused {
                    return Err(self.conflict("resume"));
                }
                self.paused_by = None;
                if self.paused_from == Some(AwaitingApproval) {
                    self.why = Some("resumed".into());
                    self.commit(
                        self.weight_of_step(self.step),
                        AwaitingApproval,
                        self.step,
                        (None, Some(Instant::now() + self.def.approval_timeout)),
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
                self.why = Some(format!("approved at step {}", self.step));
                self.commit(
                    self.weight_of_step(next),
                    Progressing,
                    next,
                    (Some(Instant::now()), None),
                    how,
                )
                .await
                .map_err(ActionError::Commit)?;
                self.emit(EventKind::Approved, None, None);
                self.enter_step(next, EventKind::Step, true, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
            Action::Promote => {
                if !(running || matches!(self.state, Pending | Waiting)) {
                    return Err(self.conflict("promote (start it again first)"));
                }
                let f = self.stats.as_ref().map(|s| s.figures());
                let who = opts.who.as_deref().unwrap_or("operator");
                self.succeed(format!("promoted by {who}"), f, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
            Action::Rollback if self.state == Succeeded => {
                // Undo a finished rollout: the baseline takes all traffic again, as a change
                // of its own (written, recorded, notified).
                let who = opts.who.as_deref().unwrap_or("operator");
                let reason = format!("rolled back by {who} after it succeeded");
                let f = self.figures;
                self.no_cascade = opts.cascaded;
                self.roll_back(reason, f, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
            Action::Abort | Action::Rollback => {
                if !(running || matches!(self.state, Pending | Waiting)) {
                    return Err(match (action, self.state) {
                        (Action::Abort, Succeeded) => ActionError::Conflict(format!(
                            "cannot abort: the rollout of route {:?} succeeded; `rollback` moves all traffic back to {}",
                            self.route, self.baseline
                        )),
                        _ => self.conflict(action.as_str()),
                    });
                }
                let f = self.stats.as_ref().map(|s| s.figures()).or(self.figures);
                self.no_cascade = opts.cascaded;
                let reason = match (&opts.why, &opts.who) {
                    (Some(why), _) => why.clone(),
                    (None, Some(who)) => format!("aborted by {who}"),
                    (None, None) => "aborted by operator".into(),
                };
                self.roll_back(reason, f, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
        }
        Ok(self.status.borrow().clone())
    }
}
