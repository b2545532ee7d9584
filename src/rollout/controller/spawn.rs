//! Starting a rollout's controller: its definition for this run, its first state, its task.

use super::{gates, Controller, FleetNodes};
use crate::config::{RolloutConfig, RolloutState, RouteConfig};
use crate::rollout::external;
use crate::rollout::notify::Notifier;
use crate::rollout::persist;
use crate::rollout::{Committer, Handle, Peers, Start, Status};
use crate::runtime::Live;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Start the controller task for `route`.
pub(in crate::rollout) fn spawn(
    rt: &Arc<Live>,
    committer: Weak<dyn Committer>,
    peers: Weak<Peers>,
    route: &RouteConfig,
    def: &RolloutConfig,
    start: Start,
) -> Handle {
    let orig = Arc::new(def.clone());
    let hotfix = matches!(start, Start::Resume { state: Some(_), .. }) && def.progress.hotfix;
    let def = Arc::new(gates::run_def(def, hotfix));
    let baseline = route
        .split
        .iter()
        .map(|(p, _)| p.as_str())
        .find(|p| *p != def.to)
        .unwrap_or_default()
        .to_string();
    let cancel = CancellationToken::new();
    let (state, step) = match start {
        Start::Fresh => (RolloutState::Pending, 0),
        Start::Resume { state, step, .. } => {
            (state.unwrap_or(RolloutState::Pending), step.unwrap_or(0))
        }
    };
    let status = Status {
        def: def.clone(),
        baseline: baseline.clone(),
        state,
        step,
        step_started: None,
        step_started_ms: 0,
        approval_deadline: None,
        stats: None,
        figures: None,
        verdict: None,
        reason: None,
        hotfix,
        external: Vec::new(),
        gates_pending: Vec::new(),
        paused_by: None,
    };
    let (status_tx, status_rx) = watch::channel(status);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let tick = (def.step_interval / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let c = Controller {
        rt: Arc::downgrade(rt),
        committer,
        shutdown: rt.shutdown.clone(),
        notifier: Notifier::start(def.notify_url.as_deref(), rt.shutdown.clone()),
        route: route.name.clone(),
        def: def.clone(),
        baseline,
        cancel: cancel.clone(),
        status: status_tx,
        state,
        step,
        paused_from: None,
        step_started: Instant::now(),
        approval_deadline: None,
        stats: None,
        figures: None,
        verdict: None,
        reason: None,
        next_check: None,
        pending_start: false,
        passed_logged: false,
        tick,
        fleet_nodes: std::sync::Mutex::new(FleetNodes::default()),
        orig: orig.clone(),
        peers,
        hotfix,
        gate_client: (!orig.gates.is_empty())
            .then(|| external::Client::new(&orig.gates))
            .flatten(),
        phase: None,
        checks: gates::GateChecks::new(),
        answers: Vec::new(),
        paused_by: None,
        resume_clock: matches!(start, Start::Resume { .. })
            .then(|| persist::resume_clock(&orig.progress)),
        before_passed: false,
        step_gates_done: false,
        after_gates_done: false,
        no_cascade: false,
        acting: None,
        why: None,
    };
    tokio::spawn(c.run(start, cmd_rx));
    Handle {
        def: (*orig).clone(),
        cancel,
        cmd: cmd_tx,
        status: status_rx,
    }
}
