//! Fleet mode (SPEC §7): the running step judged on the whole fleet's counts, and which
//! replicas' counts left with them.

use super::Controller;
use crate::metrics::step::MirrorFigures;
use crate::rollout::persist;
use crate::rollout::stats::Figures;

#[derive(Default)]
pub(super) struct FleetNodes {
    pub(super) step: crate::rollout::fleet::StepId,
    pub(super) seen: std::collections::BTreeSet<String>,
    pub(super) gone: std::collections::BTreeSet<String>,
}

impl Controller {
    /// The running step's start as written with it (unix ms): with the step, it names the
    /// step whose counts the fleet's replicas publish and sum.
    pub(super) fn step_started_ms(&self) -> u64 {
        persist::wall_ms(self.step_started)
    }

    /// Fleet mode: this replica's figures of the running step plus the other replicas'
    /// published counts of the same step (SPEC §7); a single replica's own figures.
    pub(super) fn fleet_figures(&self, own: Figures) -> Figures {
        let Some(fleet) = self.rt.upgrade().and_then(|rt| rt.cluster.get().cloned()) else {
            return own;
        };
        let id = (self.step, self.step_started_ms());
        let (sum, from) =
            crate::rollout::fleet::sum(own, &fleet.remote_counters(), &self.route, id);
        let mut n = self.fleet_nodes.lock().unwrap_or_else(|p| p.into_inner());
        if n.step != id {
            *n = FleetNodes {
                step: id,
                ..FleetNodes::default()
            };
        }
        let from: std::collections::BTreeSet<String> = from.into_iter().collect();
        let gone: Vec<String> = n.seen.difference(&from).cloned().collect();
        n.gone.extend(gone);
        n.gone.retain(|g| !from.contains(g));
        n.seen.extend(from);
        sum
    }

    /// Fleet mode: this replica's compared mirror copies of the running step plus the other
    /// replicas' (SPEC §7, §11); a single replica's own.
    pub(super) fn fleet_mirror(&self) -> MirrorFigures {
        let own = self
            .stats
            .as_ref()
            .map(|s| s.mirror_figures())
            .unwrap_or_default();
        match self.rt.upgrade().and_then(|rt| rt.cluster.get().cloned()) {
            Some(fleet) => crate::rollout::fleet::sum_mirror(
                own,
                &fleet.remote_counters(),
                &self.route,
                (self.step, self.step_started_ms()),
            ),
            None => own,
        }
    }

    /// Fleet mode: a new leader judges nothing before it has read the other replicas'
    /// counts once (a step it resumes past its end would be judged on its own share alone).
    pub(super) fn fleet_counts_ready(&self) -> bool {
        self.rt
            .upgrade()
            .and_then(|rt| rt.cluster.get().map(|f| f.counters_read()))
            .unwrap_or(true)
    }

    /// A gate reason, with the replicas whose counts of this step left with them.
    pub(super) fn with_fleet_note(&self, reason: String) -> String {
        let n = self.fleet_nodes.lock().unwrap_or_else(|p| p.into_inner());
        if n.gone.is_empty() || n.step != (self.step, self.step_started_ms()) {
            return reason;
        }
        let names: Vec<&str> = n.gone.iter().map(String::as_str).collect();
        format!(
            "{reason} (replica {} left the fleet; its counts of this step are gone)",
            names.join(", ")
        )
    }
}
