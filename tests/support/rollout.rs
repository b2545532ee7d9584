//! Route `web`'s live split, and driving its canary rollout in tests (tokio time, so paused
//! tests jump).

use super::{upstream, Upstream};
use std::net::SocketAddr;
use std::time::Duration;
use veer::config::RolloutState;
use veer::control::Control;
use veer::rollout::Status;

/// Wait (tokio time) until route web's rollout status satisfies `pred`.
pub async fn wait_rollout(rt: &Control, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
    let mut rx = rt.rollouts.watch("web").expect("route web has a rollout");
    let got = tokio::time::timeout(Duration::from_secs(3600), rx.wait_for(|s| pred(s)))
        .await
        .ok()
        .and_then(|r| r.ok().map(|s| s.clone()));
    got.unwrap_or_else(|| {
        panic!(
            "timed out waiting for: {what}; status: {:?}",
            rt.rollouts
                .status("web")
                .map(|s| (s.state, s.step, s.reason))
        )
    })
}

/// Wait until the rollout is progressing at `step` with its statistics running.
pub async fn wait_step(rt: &Control, step: usize) -> Status {
    wait_rollout(rt, &format!("progressing at step {step}"), |s| {
        s.state == RolloutState::Progressing && s.step == step && s.stats.is_some()
    })
    .await
}

/// Wait until the rollout is in `state`.
pub async fn wait_state(rt: &Control, state: RolloutState) -> Status {
    wait_rollout(rt, state.as_str(), |s| s.state == state).await
}

/// The live split of route web.
pub fn web_split(rt: &Control) -> Vec<(String, u32)> {
    rt.config().route("web").unwrap().split.clone()
}

/// The live weight of green in route web.
pub fn green_weight(rt: &Control) -> u32 {
    rt.config()
        .route("web")
        .unwrap()
        .weight_of("green")
        .unwrap()
}

/// Feed `n` attempts to `pool` into the running step: every `fail_every`-th fails.
pub fn feed(rt: &Control, pool: &str, n: u64, fail_every: u64, latency: Duration) {
    let s = veer::rollout::stats(rt, "web").expect("a step is running");
    for i in 1..=n {
        s.record(pool, fail_every > 0 && i % fail_every == 0, latency);
    }
}

/// Pools blue and green and a route `web` splitting them 100/0, with `[routes.rollout]` of
/// green (`extra` appended to that table).
pub fn rollout_config(blue: SocketAddr, green: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[pools.blue]
backends = ["{blue}"]

[pools.green]
backends = ["{green}"]

[[routes]]
name = "web"
split = {{ blue = 100, green = 0 }}

[routes.rollout]
to = "green"
{extra}
"#
    )
}

/// The blue and green upstreams [`rollout_config`] points at.
pub async fn two_upstreams() -> (Upstream, Upstream) {
    (upstream("blue").await, upstream("green").await)
}
