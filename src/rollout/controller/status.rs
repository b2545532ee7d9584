//! What a controller publishes (its status and the step gauge) and the step's statistics in
//! the route's slot.

use super::Controller;
use crate::config::RolloutState;
use crate::rollout::stats::StepStats;
use crate::rollout::Status;
use std::sync::Arc;

impl Controller {
    /// Publish the status and the step gauge.
    pub(super) fn publish(&self) {
        let active = matches!(
            self.state,
            RolloutState::Progressing | RolloutState::Paused | RolloutState::AwaitingApproval
        );
        if let Some(rt) = self.rt.upgrade() {
            rt.metrics
                .rollout_step
                .with_label_values(&[&self.route])
                .set(if active { self.step as i64 } else { -1 });
        }
        self.status.send_replace(Status {
            def: self.def.clone(),
            baseline: self.baseline.clone(),
            state: self.state,
            step: self.step,
            step_started: (self.state == RolloutState::Progressing).then_some(self.step_started),
            step_started_ms: self.step_started_ms(),
            approval_deadline: self
                .approval_deadline
                .filter(|_| self.state == RolloutState::AwaitingApproval),
            stats: self.stats.clone(),
            figures: self.figures,
            verdict: self.verdict,
            reason: self.reason.clone(),
            hotfix: self.hotfix,
            external: self.answers.clone(),
            gates_pending: self
                .phase
                .as_ref()
                .map(|p| p.pending_names().into_iter().map(String::from).collect())
                .unwrap_or_default(),
            paused_by: self.paused_by.clone(),
        });
    }

    /// Put `stats` in the route's slot (or clear it when it still holds ours).
    pub(super) fn install_stats(&mut self, stats: Option<Arc<StepStats>>) {
        let Some(rt) = self.rt.upgrade() else { return };
        let snap = rt.snapshot();
        let Some(route) = snap.router.get(&self.route) else {
            return;
        };
        match &stats {
            Some(s) => route.state.rollout.store(Some(s.clone())),
            None => {
                if let Some(ours) = &self.stats {
                    let ours = Some(ours.clone());
                    route.state.rollout.compare_and_swap(&ours, None);
                }
            }
        }
        self.stats = stats;
    }

    /// Empty statistics for a new step (or an approval wait) of this rollout.
    pub(super) fn fresh_stats(&self) -> Arc<StepStats> {
        Arc::new(StepStats::new(
            &self.def.to,
            &self.baseline,
            self.def.max_p99,
        ))
    }

    /// The running step's statistics: fleet mode, this replica's counters of the step (the
    /// same ones it counted into while it followed, when it resumes a step it counted);
    /// otherwise fresh ones.
    pub(super) fn step_stats(&self) -> Arc<StepStats> {
        match self.rt.upgrade().and_then(|rt| rt.cluster.get().cloned()) {
            Some(fleet) => {
                fleet.step_counts(&self.route, (self.step, self.step_started_ms()), || {
                    self.fresh_stats()
                })
            }
            None => self.fresh_stats(),
        }
    }
}
