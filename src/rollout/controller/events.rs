//! A controller's events: logged, and queued for `notify_url`.

use super::Controller;
use crate::config::{format_duration, RolloutState};
use crate::rollout::figures_json;
use crate::rollout::gate;
use crate::rollout::notify::{Event, EventKind, GateResult};
use crate::rollout::stats::Figures;

impl Controller {
    /// Log and notify one event.
    pub(super) fn emit(
        &self,
        event: EventKind,
        verdict: Option<GateResult>,
        figures: Option<&Figures>,
    ) {
        let weight = match self.state {
            RolloutState::Succeeded => 100,
            RolloutState::RolledBack | RolloutState::Pending | RolloutState::Waiting => 0,
            _ => self.weight_of_step(self.step),
        };
        let gate = figures.map(|f| figures_json(&self.def, f));
        let run = if self.hotfix {
            "hotfix rollout"
        } else {
            "rollout"
        };
        let reason = self.reason.clone();
        let (step, to) = (
            crate::rollout::step_text(self.step, self.def.steps.len()),
            &self.def.to,
        );
        let mirror = self.at_mirror_step();
        let figs = figures
            .map(|f| {
                if mirror {
                    let m = self.fleet_mirror();
                    return format!(
                        "{} mirrored copies to {to} compared, {} differed ({})",
                        m.compared,
                        m.differ,
                        gate::pct(m.diff_rate())
                    );
                }
                let c = &f.canary;
                let p99 = c.p99.map(format_duration).unwrap_or_else(|| "-".into());
                format!(
                    "{} requests to {to}, {} failed ({}), p99 {p99}",
                    c.requests,
                    c.failures,
                    gate::pct(c.error_rate())
                )
            })
            .unwrap_or_default();
        let why = reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let name = event.as_str();
        let msg = match event {
            EventKind::Started | EventKind::Step | EventKind::Resumed if mirror => {
                format!(
                    "{run} {name}: {step} (mirror), {to} at {weight}%, answering mirrored copies"
                )
            }
            EventKind::Started | EventKind::Step | EventKind::Resumed => {
                format!("{run} {name}: {step}, {to} at {weight}%")
            }
            EventKind::Gate => format!(
                "{run} gate {} at {step} ({figs}){why}",
                verdict.map_or("", GateResult::as_str)
            ),
            EventKind::Succeeded => format!("{run} succeeded, {to} at 100%{why}"),
            EventKind::Waiting => format!("{run} waiting, {to} at 0%{why}"),
            EventKind::RolledBack => format!(
                "{run} rolled back at {step}, all traffic to {}{why} ({figs})",
                self.baseline
            ),
            EventKind::AwaitingApproval | EventKind::Approved | EventKind::Paused => {
                format!("{run} {name} at {step}, {to} at {weight}%{why}")
            }
        };
        // An operator's action says whose it was.
        let msg = match &self.acting {
            Some(who) => format!("{msg} (by {who})"),
            None => msg,
        };
        if event == EventKind::RolledBack || verdict == Some(GateResult::Failed) {
            tracing::warn!(route = %self.route, event = name, step = self.step, weight, "{msg}");
        } else {
            tracing::info!(route = %self.route, event = name, step = self.step, weight, "{msg}");
        }
        self.notifier.send(Event {
            route: self.route.clone(),
            event,
            state: self.state.as_str(),
            step: self.step,
            weight,
            to: self.def.to.clone(),
            baseline: self.baseline.clone(),
            verdict,
            reason,
            gate,
            hotfix: self.hotfix,
            who: self.acting.clone(),
            time_ms: Event::now_ms(),
        });
    }
}
