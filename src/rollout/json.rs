//! A route's `rollout` in `/api/status`: state, step, weight and the gate's figures, or,
//! on a fleet replica that does not lead, where the document says the rollout stands.

use super::stats::{Figures, SideFigures};
use super::{can_serve, fleet, gate, notify, persist, Rollouts, Status};
use crate::config::{RolloutConfig, RolloutState};
use crate::runtime::Live;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn side_json(f: &SideFigures) -> Value {
    json!({
        "requests": f.requests,
        "errors": f.failures,
        "error_rate": f.error_rate(),
        "p99_ms": f.p99.map(ms),
        "slow": f.slow,
    })
}

/// The gate figures of a step as JSON (for the status and events).
pub fn figures_json(def: &RolloutConfig, f: &Figures) -> Value {
    let mut c = f.canary;
    // Keep the estimated p99 on the side of the exact verdict (the estimate is within 12.5%).
    if let Some(p) = c.p99 {
        c.p99 = Some(if c.slow > gate::slow_allowed(c.requests) {
            p.max(def.max_p99 + Duration::from_micros(1))
        } else {
            p.min(def.max_p99)
        });
    }
    let mut v = side_json(&c);
    v["baseline"] = side_json(&f.baseline);
    v
}

/// The steps as configured: SPEC §11's mirror step shows as "mirror" (it is judged on
/// compared copies, at weight 0).
fn steps_json(def: &RolloutConfig) -> Vec<Value> {
    def.steps
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 && def.mirror_step {
                json!("mirror")
            } else {
                json!(w)
            }
        })
        .collect()
}

/// Fleet mode, on a replica that does not lead: the rollout as the document says it stands
/// (the leader's controller walks it). `null` otherwise.
fn follower_json(rt: &Live, route: &str) -> Value {
    if rt.cluster.get().is_none() {
        return Value::Null;
    }
    let snap = rt.snapshot();
    let Some(rc) = snap.config.route(route) else {
        return Value::Null;
    };
    let Some(def) = &rc.rollout else {
        return Value::Null;
    };
    let total: u64 = rc.split.iter().map(|(_, w)| *w as u64).sum();
    let weight = rc
        .weight_of(&def.to)
        .map(|w| (w as u64 * 100 + total / 2).checked_div(total).unwrap_or(0));
    json!({
        "state": def.state.unwrap_or(RolloutState::Pending).as_str(),
        "step": def.step.unwrap_or(0),
        "steps": steps_json(def),
        "mirror_step": def.mirror_step && def.step.unwrap_or(0) == 0,
        "weight": weight,
        "to": def.to,
        "approval": def.approval,
        "step_interval_ms": ms(def.step_interval),
        "step_started_ms": def.progress.step_started_ms,
        "approval_deadline_ms": def.progress.approval_deadline_ms,
        "led_by": rt.cluster.get().and_then(|f| f.leader()),
    })
}

/// The `rollout` object of a route in `/api/status`: `null` without a rollout.
pub fn status_json(rollouts: &Rollouts, rt: &Live, route: &str) -> Value {
    let Some(s) = rollouts.status(route) else {
        return follower_json(rt, route);
    };
    status_value(rt, route, &s)
}

/// [`status_json`] of a status in hand (a controller's own, for its webhooks).
pub fn status_value(rt: &Live, route: &str, s: &Status) -> Value {
    let snap = rt.snapshot();
    let weight = snap.config.route(route).and_then(|rc| {
        let total: u64 = rc.split.iter().map(|(_, w)| *w as u64).sum();
        let w = rc.weight_of(&s.def.to)? as u64;
        Some((w * 100 + total / 2).checked_div(total).unwrap_or(0))
    });
    let now = Instant::now();
    let def = &s.def;
    let healthy = snap.pools.get(def.to.as_str()).map(|p| can_serve(p));
    let figures = s
        .stats
        .as_ref()
        .map(|st| st.figures())
        .map(|f| match rt.cluster.get() {
            // Fleet mode: the figures the leader judges on, the whole fleet's.
            Some(fleet) => {
                fleet::sum(
                    f,
                    &fleet.remote_counters(),
                    route,
                    (s.step, s.step_started_ms),
                )
                .0
            }
            None => f,
        });
    let figures = figures.or(s.figures);
    let mut gate = figures
        .map(|f| figures_json(def, &f))
        .unwrap_or_else(|| json!({}));
    gate["min_requests"] = json!(def.min_requests);
    gate["max_error_rate"] = json!(def.max_error_rate);
    gate["max_error_rate_vs_baseline"] = json!(def.max_error_rate_vs_baseline);
    gate["max_p99_ms"] = json!(ms(def.max_p99));
    gate["healthy"] = json!(healthy);
    gate["verdict"] = json!(s.verdict.map_or(
        if s.stats.is_some() { "pending" } else { "none" },
        notify::GateResult::as_str
    ));
    gate["reason"] = json!(s.reason);
    gate["external"] = json!(s.external);
    gate["external_pending"] = json!(s.gates_pending);
    let steps = steps_json(def);
    if def.mirror_step {
        // Fleet mode: the copies the leader judges on, the whole fleet's.
        let m = s.stats.as_ref().map(|st| match rt.cluster.get() {
            Some(fleet) => fleet::sum_mirror(
                st.mirror_figures(),
                &fleet.remote_counters(),
                route,
                (s.step, s.step_started_ms),
            ),
            None => st.mirror_figures(),
        });
        gate["max_diff_rate"] = json!(def.max_diff_rate);
        if let (Some(m), 0) = (m, s.step) {
            gate["mirror"] = json!({
                "compared": m.compared,
                "differ": m.differ,
                "diff_rate": m.diff_rate(),
            });
        }
    }
    json!({
        "state": s.state.as_str(),
        "step": s.step,
        "mirror_step": def.mirror_step && s.step == 0,
        "steps": steps,
        "weight": weight,
        "to": def.to,
        "baseline": s.baseline,
        "approval": def.approval,
        "hotfix": s.hotfix,
        "after": def.after,
        "paused_by": s.paused_by,
        "step_interval_ms": ms(def.step_interval),
        "step_started_ms": s.step_started.map(persist::wall_ms),
        "step_elapsed_ms": s.step_started.map(|t| ms(now.saturating_duration_since(t))),
        "approval_deadline_ms": s.approval_deadline.map(persist::wall_ms),
        "approval_remaining_ms": s.approval_deadline.map(|t| ms(t.saturating_duration_since(now))),
        "gate": gate,
    })
}
