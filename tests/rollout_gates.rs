//! Rollout gates and rollout order (SPEC §10, issue 18): external gates (webhook and
//! Prometheus, against real HTTP servers), `steady_for`, rollout order across routes, the
//! baseline comparison, the hotfix path, the persisted step clock and fingerprint, and
//! manual splits on a moving rollout.
//!
//! Timing runs on paused tokio time against a real veer; the step statistics are fed
//! directly (the object the request path feeds). The test against a real Prometheus server
//! runs on real time, as Prometheus scrapes on its own clock.

mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use veer::config::{Config, RolloutState};
use veer::control::Control;
use veer::rollout::Status;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// Pools blue and green, and route `web` (all paths) rolling out green with `extra`.
fn config(blue: SocketAddr, green: SocketAddr, extra: &str) -> String {
    let extra =
        format!("step_interval = \"1m\"\nmin_requests = 100\nmax_error_rate = 0.01\n{extra}");
    rollout_config(blue, green, &extra)
}

async fn wait_route(
    rt: &Control,
    route: &str,
    what: &str,
    pred: impl Fn(&Status) -> bool,
) -> Status {
    let mut rx = rt.rollouts.watch(route).expect("the route has a rollout");
    let got = tokio::time::timeout(Duration::from_secs(7200), rx.wait_for(|s| pred(s)))
        .await
        .ok()
        .and_then(|r| r.ok().map(|s| s.clone()));
    got.unwrap_or_else(|| {
        panic!(
            "timed out waiting for {route}: {what}; status: {:?}",
            rt.rollouts
                .status(route)
                .map(|s| (s.state, s.step, s.reason))
        )
    })
}

fn feed_route(rt: &Control, route: &str, pool: &str, n: u64, fail_every: u64) {
    let s = veer::rollout::stats(rt, route).expect("a step is running");
    for i in 1..=n {
        s.record(pool, fail_every > 0 && i % fail_every == 0, 10 * MS);
    }
}

/// A webhook that answers the statuses of `plan` in turn (the last one from then on), and
/// keeps every body it was POSTed.
struct Hook {
    up: Upstream,
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn hook(plan: &'static [u16]) -> Hook {
    let calls = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (c, b) = (calls.clone(), bodies.clone());
    let up = upstream_with(move |req| {
        let (c, b) = (c.clone(), b.clone());
        async move {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("").to_string());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            v["_authorization"] = serde_json::json!(auth);
            b.lock().unwrap().push(v);
            let n = c.fetch_add(1, Ordering::SeqCst);
            respond(plan[n.min(plan.len() - 1)], "")
        }
    })
    .await;
    Hook { up, calls, bodies }
}

fn external(rt: &Control, route: &str) -> Vec<Value> {
    veer::rollout::status_json(&rt.rollouts, rt, route)["gate"]["external"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn checks(rt: &Control, gate: &str, result: &str) -> f64 {
    let m = rt.metrics.render(&rt.registry.gauges());
    metric_sum(
        &m,
        "veer_rollout_gate_checks_total",
        &[&format!("gate=\"{gate}\""), &format!("result=\"{result}\"")],
    )
}

// ---------------------------------------------------------------------------------------
// Webhook gates
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_webhook_failing_three_times_then_passing_holds_the_step_then_advances() {
    let (b, g) = two_upstreams().await;
    let h = hook(&[500, 503, 500, 200]).await;
    std::env::set_var("GATE_TOKEN_T1", "Bearer s3cret");
    let extra = format!(
        "steps = [10, 100]\n[[routes.rollout.gates]]\nname = \"smoke\"\nwebhook = \"http://{}/gate\"\ninterval = \"10s\"\ntimeout = \"5m\"\nheaders = {{ Authorization = \"env:GATE_TOKEN_T1\" }}\n",
        h.up.addr
    );
    let v = start_veer(&config(b.addr, g.addr, &extra)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed_route(&rt, "web", "green", 100, 0);
    tokio::time::sleep(61 * S).await;
    // The built-in gate passed at 60 s; the webhook is asked at 60, 70, 80 and passes at 90.
    let st = wait_route(&rt, "web", "gate asked", |_| {
        h.calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(st.step, 0, "held at the step while the gate has not passed");
    tokio::time::sleep(25 * S).await;
    assert_eq!(rt.rollouts.status("web").unwrap().step, 0);
    assert_eq!(h.calls.load(Ordering::SeqCst), 3);
    let ext = external(&rt, "web");
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!(ext[0]["name"], "smoke");
    assert_eq!(ext[0]["result"], "fail");
    assert_eq!(ext[0]["status"], 500);
    assert!(ext[0]["time_ms"].as_u64().unwrap() > 0);
    let s = wait_step(&rt, 1).await;
    assert_eq!(h.calls.load(Ordering::SeqCst), 4);
    assert_eq!(green_weight(&rt), 100);
    assert_eq!(s.step, 1);
    // The webhook got the rollout's status as JSON, with the token from the env var.
    let bodies = h.bodies.lock().unwrap().clone();
    assert_eq!(bodies[0]["route"], "web");
    assert_eq!(bodies[0]["rollout"]["state"], "progressing");
    assert_eq!(bodies[0]["rollout"]["step"], 0);
    assert_eq!(bodies[0]["_authorization"], "Bearer s3cret");
    assert_eq!(checks(&rt, "smoke", "fail"), 3.0);
    assert_eq!(checks(&rt, "smoke", "pass"), 1.0);
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_webhook_that_never_passes_within_timeout_rolls_back_naming_the_gate() {
    let (b, g) = two_upstreams().await;
    let h = hook(&[403]).await;
    let extra = format!(
        "steps = [10, 100]\n[[routes.rollout.gates]]\nname = \"load-test\"\nwebhook = \"http://{}/\"\ninterval = \"10s\"\ntimeout = \"1m\"\n",
        h.up.addr
    );
    let v = start_veer(&config(b.addr, g.addr, &extra)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed_route(&rt, "web", "green", 100, 0);
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    let reason = s.reason.unwrap();
    assert!(
        reason.contains("gate \"load-test\"")
            && reason.contains("within 1m")
            && reason.contains("HTTP 403"),
        "{reason}"
    );
    assert_eq!(green_weight(&rt), 0);
    // Asked at 60 s, 70 s, … 110 s, then the timeout at 120 s.
    assert_eq!(h.calls.load(Ordering::SeqCst), 6);
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_webhook_is_an_error_never_a_pass_and_rolls_back() {
    let (b, g) = two_upstreams().await;
    let dead = dead_addr().await;
    let extra = format!(
        "steps = [10, 100]\n[[routes.rollout.gates]]\nname = \"smoke\"\nwebhook = \"http://{dead}/\"\ninterval = \"10s\"\ntimeout = \"30s\"\n"
    );
    let v = start_veer(&config(b.addr, g.addr, &extra)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed_route(&rt, "web", "green", 100, 0);
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    let reason = s.reason.unwrap();
    assert!(
        reason.contains("gate \"smoke\"") && reason.contains("error"),
        "{reason}"
    );
    let ext = external(&rt, "web");
    assert_eq!(ext[0]["result"], "error", "{ext:?}");
    assert!(ext[0]["error"].as_str().unwrap().len() > 3, "{ext:?}");
    assert!(checks(&rt, "smoke", "error") >= 3.0);
    assert_eq!(checks(&rt, "smoke", "pass"), 0.0);
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn steady_for_a_gate_that_passes_once_then_fails_does_not_advance() {
    let (b, g) = two_upstreams().await;
    let h = hook(&[200, 500]).await;
    let extra = format!(
        "steps = [10, 100]\n[[routes.rollout.gates]]\nname = \"soak\"\nwebhook = \"http://{}/\"\ninterval = \"10s\"\ntimeout = \"2m\"\nsteady_for = \"30s\"\n",
        h.up.addr
    );
    let v = start_veer(&config(b.addr, g.addr, &extra)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed_route(&rt, "web", "green", 100, 0);
    tokio::time::sleep(100 * S).await;
    let s = rt.rollouts.status("web").unwrap();
    assert_eq!(
        (s.state, s.step),
        (RolloutState::Progressing, 0),
        "one pass is not steady"
    );
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    assert!(s.reason.unwrap().contains("gate \"soak\""));
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn before_gates_hold_the_first_step_and_after_gates_failing_at_100_roll_back() {
    let (b, g) = two_upstreams().await;
    let before = hook(&[500, 200]).await;
    let after = hook(&[500]).await;
    let extra = format!(
        "steps = [100]\n[[routes.rollout.gates]]\nname = \"pre\"\nwhen = \"before\"\nwebhook = \"http://{}/\"\ninterval = \"10s\"\n[[routes.rollout.gates]]\nname = \"post\"\nwhen = \"after\"\nwebhook = \"http://{}/\"\ninterval = \"10s\"\ntimeout = \"1m\"\n",
        before.up.addr, after.up.addr
    );
    let v = start_veer(&config(b.addr, g.addr, &extra)).await;
    let rt = v.rt().clone();
    let s = wait_route(&rt, "web", "before gate asked", |_| {
        before.calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(
        s.state,
        RolloutState::Waiting,
        "before gates run before any traffic moves"
    );
    assert_eq!(green_weight(&rt), 0);
    wait_step(&rt, 0).await;
    assert_eq!(before.calls.load(Ordering::SeqCst), 2);
    assert_eq!(green_weight(&rt), 100);
    feed_route(&rt, "web", "green", 100, 0);
    // The last step passed: still progressing at 100% while the after gate is judged.
    wait_route(&rt, "web", "after gate asked", |_| {
        after.calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    let s = rt.rollouts.status("web").unwrap();
    assert_eq!(s.state, RolloutState::Progressing);
    assert_eq!(green_weight(&rt), 100);
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    assert!(s.reason.unwrap().contains("gate \"post\" (after)"));
    assert_eq!(green_weight(&rt), 0, "post-promotion analysis rolled back");
    v.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Prometheus gates against an in-test server speaking the query API
// ---------------------------------------------------------------------------------------

/// A server answering `/api/v1/query` with the bodies of `plan` in turn (the last one from
/// then on), recording the queries it was asked.
async fn fake_prometheus(plan: Vec<(u16, String)>) -> (Upstream, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let n = Arc::new(AtomicUsize::new(0));
    let plan = Arc::new(plan);
    let a = asked.clone();
    let up = upstream_with(move |req| {
        let (a, n, plan) = (a.clone(), n.clone(), plan.clone());
        async move {
            assert_eq!(req.uri().path(), "/api/v1/query");
            a.lock()
                .unwrap()
                .push(req.uri().query().unwrap_or("").to_string());
            let i = n.fetch_add(1, Ordering::SeqCst).min(plan.len() - 1);
            let (code, body) = &plan[i];
            respond(*code, body.clone())
        }
    })
    .await;
    (up, asked)
}

fn vector(v: &str) -> (u16, String) {
    (
        200,
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000.5,"{v}"]}}]}}}}"#
        ),
    )
}
fn scalar(v: &str) -> (u16, String) {
    (
        200,
        format!(
            r#"{{"status":"success","data":{{"resultType":"scalar","result":[1700000000.5,"{v}"]}}}}"#
        ),
    )
}
fn empty() -> (u16, String) {
    (
        200,
        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.into(),
    )
}
fn prom_error() -> (u16, String) {
    (
        400,
        r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.into(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_prometheus_gate_passes_fails_and_errors_as_its_answers_say() {
    let (b, g) = two_upstreams().await;
    // error status, empty result, over the bound, then a scalar within it.
    let (p, asked) =
        fake_prometheus(vec![prom_error(), empty(), vector("0.9"), scalar("0.2")]).await;
    let extra = format!(
        "steps = [10, 100]\n[[routes.rollout.gates]]\nname = \"errors\"\nprometheus = \"http://{}\"\nquery = 'sum(rate(app_errors_total{{pool=\"green\"}}[1m]))'\nmax = 0.5\nmin = 0\ninterval = \"10s\"\ntimeout = \"5m\"\n",
        p.addr
    );
    let v = start_veer(&config(b.addr, g.addr, &extra)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed_route(&rt, "web", "green", 100, 0);
    tokio::time::sleep(61 * S).await;
    wait_route(&rt, "web", "asked", |_| !asked.lock().unwrap().is_empty()).await;
    let ext = external(&rt, "web");
    assert_eq!(ext[0]["result"], "error");
    assert!(
        ext[0]["error"].as_str().unwrap().contains("bad_data"),
        "{ext:?}"
    );
    tokio::time::sleep(10 * S).await;
    let ext = external(&rt, "web");
    assert_eq!(ext[0]["result"], "error");
    assert!(
        ext[0]["error"].as_str().unwrap().contains("empty"),
        "{ext:?}"
    );
    tokio::time::sleep(10 * S).await;
    let ext = external(&rt, "web");
    assert_eq!(
        (ext[0]["result"].as_str(), ext[0]["value"].as_f64()),
        (Some("fail"), Some(0.9))
    );
    assert_eq!(rt.rollouts.status("web").unwrap().step, 0);
    wait_step(&rt, 1).await;
    let ext = external(&rt, "web");
    assert_eq!(
        (ext[0]["result"].as_str(), ext[0]["value"].as_f64()),
        (Some("pass"), Some(0.2))
    );
    let q = asked.lock().unwrap()[0].clone();
    assert!(
        q.starts_with("query=sum%28rate%28app_errors_total%7Bpool%3D%22green%22%7D"),
        "{q}"
    );
    assert_eq!(checks(&rt, "errors", "error"), 2.0);
    assert_eq!(checks(&rt, "errors", "fail"), 1.0);
    assert_eq!(checks(&rt, "errors", "pass"), 1.0);
    v.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Rollout order
// ---------------------------------------------------------------------------------------

fn two_tier(blue: SocketAddr, green: SocketAddr) -> String {
    format!(
        r#"
[pools.blue]
backends = ["{blue}"]
[pools.green]
backends = ["{green}"]

[[routes]]
name = "api"
path_prefix = "/api"
split = {{ blue = 100, green = 0 }}
[routes.rollout]
to = "green"
steps = [10, 50, 100]
step_interval = "1m"
min_requests = 10

[[routes]]
name = "web"
split = {{ blue = 100, green = 0 }}
[routes.rollout]
to = "green"
after = ["api"]
steps = [50, 100]
step_interval = "1m"
min_requests = 10
"#
    )
}

#[tokio::test(start_paused = true)]
async fn web_waits_for_api_then_runs_and_a_rolled_back_api_rolls_web_back_first() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&two_tier(b.addr, g.addr)).await;
    let rt = v.rt().clone();
    wait_route(&rt, "api", "api at step 0", |s| {
        s.state == RolloutState::Progressing && s.stats.is_some()
    })
    .await;
    let w = rt.rollouts.status("web").unwrap();
    assert_eq!(w.state, RolloutState::Waiting);
    assert!(
        w.reason.as_deref().unwrap().contains("\"api\""),
        "{:?}",
        w.reason
    );
    assert_eq!(
        veer::rollout::status_json(&rt.rollouts, &rt, "web")["state"],
        "waiting"
    );
    for k in 0..3 {
        wait_route(&rt, "api", "api step", |s| {
            s.step == k && s.stats.is_some() || s.state.is_final()
        })
        .await;
        feed_route(&rt, "api", "green", 10, 0);
        tokio::time::sleep(61 * S).await;
        if k == 2 {
            break;
        }
        assert_eq!(
            rt.rollouts.status("web").unwrap().state,
            RolloutState::Waiting
        );
    }
    wait_route(&rt, "api", "api succeeded", |s| {
        s.state == RolloutState::Succeeded
    })
    .await;
    let web = wait_route(&rt, "web", "web started", |s| {
        s.state == RolloutState::Progressing && s.stats.is_some()
    })
    .await;
    assert_eq!(web.step, 0);
    drop(v);

    // Again, now aborting api while web waits on a chain: db ← api ← web.
    let (b, g) = two_upstreams().await;
    let text = two_tier(b.addr, g.addr).replace(
        "[[routes]]\nname = \"api\"",
        "[[routes]]\nname = \"db\"\npath_prefix = \"/db\"\nsplit = { blue = 100, green = 0 }\n[routes.rollout]\nto = \"green\"\nsteps = [100]\nstep_interval = \"1m\"\nmin_requests = 10\n\n[[routes]]\nname = \"api\"",
    );
    let text = text.replace(
        "steps = [10, 50, 100]",
        "after = [\"db\"]\nsteps = [10, 50, 100]",
    );
    let v = start_veer(&text).await;
    let rt = v.rt().clone();
    wait_route(&rt, "db", "db at step 0", |s| s.stats.is_some()).await;
    let mut api_rx = rt.rollouts.watch("api").unwrap();
    let web_rx = rt.rollouts.watch("web").unwrap();
    let api_at = rt.rollouts.status("api").unwrap();
    assert_eq!(api_at.state, RolloutState::Waiting);
    rt.rollouts.act(&rt, "db", "abort").await.unwrap();
    // Dependents first: by the time api is rolled back, web already is.
    api_rx
        .wait_for(|s| s.state == RolloutState::RolledBack)
        .await
        .unwrap();
    let web = web_rx.borrow().clone();
    assert_eq!(web.state, RolloutState::RolledBack, "web before api");
    let db = rt.rollouts.status("db").unwrap();
    assert_eq!(db.state, RolloutState::RolledBack);
    let api = rt.rollouts.status("api").unwrap();
    assert!(
        api.reason
            .as_deref()
            .unwrap()
            .contains("rollout of route \"db\" rolled back"),
        "{:?}",
        api.reason
    );
    assert!(
        web.reason.as_deref().unwrap().contains("\"db\""),
        "{:?}",
        web.reason
    );
    assert!(
        db.reason.as_deref().unwrap().contains("aborted"),
        "{:?}",
        db.reason
    );
    v.shutdown().await;
}

#[tokio::test]
async fn veer_check_rejects_an_order_cycle_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veer.toml");
    let text = two_tier(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    )
    .replace(
        "steps = [10, 50, 100]",
        "after = [\"web\"]\nsteps = [10, 50, 100]",
    );
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(veer_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let line = text.lines().position(|l| l == "after = [\"web\"]").unwrap() + 1;
    assert!(
        err.contains(&format!("veer.toml:{line}:10: routes.api.rollout.after: rollout order has a cycle: api waits for web waits for api")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Baseline comparison
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn baseline_comparison_passes_alike_pools_and_fails_to_at_three_times() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(
        b.addr,
        g.addr,
        "steps = [10, 100]\nmax_error_rate_vs_baseline = 2.0\n",
    ))
    .await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    // Both pools at 10% (a shared dependency failing): the release is not to blame.
    feed_route(&rt, "web", "green", 200, 10);
    feed_route(&rt, "web", "blue", 2000, 10);
    tokio::time::sleep(61 * S).await;
    wait_step(&rt, 1).await;
    // `to` at 30% against the baseline's 10%: over 2 × 10% + 1%.
    feed_route(&rt, "web", "blue", 2000, 10);
    feed_route(&rt, "web", "green", 210, 0);
    feed_route(&rt, "web", "green", 90, 1);
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    assert!(
        s.reason.as_deref().unwrap().contains("the baseline's 10%"),
        "{:?}",
        s.reason
    );
    v.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Hotfix
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_hotfix_takes_fewer_shorter_steps_still_judged_and_still_rolls_back() {
    let (b, g) = two_upstreams().await;
    let hot = hook(&[200]).await;
    let slow = hook(&[500]).await;
    let extra = format!(
        "steps = [5, 25, 50, 100]\n[routes.rollout.hotfix]\nsteps = [50, 100]\nstep_interval = \"10s\"\nmin_requests = 20\n[[routes.rollout.gates]]\nname = \"smoke\"\nwebhook = \"http://{}/\"\nhotfix = true\n[[routes.rollout.gates]]\nname = \"soak\"\nwebhook = \"http://{}/\"\n",
        hot.up.addr, slow.up.addr
    );
    // The normal run is aborted, then a hotfix is started through the API.
    let text = config(b.addr, g.addr, &extra);
    let v = start_veer(&text).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    rt.rollouts.act(&rt, "web", "abort").await.unwrap();
    let got = admin_call(
        v.admin,
        "POST",
        "/api/routes/web/rollout/start?hotfix=true",
        "",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    let j = json_of(&got);
    assert_eq!(j["rollout"]["hotfix"], true);
    assert_eq!(j["rollout"]["steps"], serde_json::json!([50, 100]));
    let s = wait_step(&rt, 0).await;
    assert!(s.hotfix);
    assert_eq!(green_weight(&rt), 50);
    feed_route(&rt, "web", "green", 20, 0);
    tokio::time::sleep(11 * S).await;
    wait_step(&rt, 1).await;
    assert_eq!(green_weight(&rt), 100);
    assert!(
        hot.calls.load(Ordering::SeqCst) >= 1,
        "hotfix gates still judge"
    );
    assert_eq!(
        slow.calls.load(Ordering::SeqCst),
        0,
        "other gates do not on a hotfix"
    );
    // Still judged by the built-in gate: a failing last step rolls back.
    feed_route(&rt, "web", "green", 20, 1);
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    assert!(s.hotfix);
    assert_eq!(green_weight(&rt), 0);
    let c = Config::load(&v.config_path).unwrap();
    assert!(
        c.route("web")
            .unwrap()
            .rollout
            .as_ref()
            .unwrap()
            .progress
            .hotfix,
        "written as a hotfix run"
    );
    // `?hotfix=true` goes with start only.
    let got = admin_call(
        v.admin,
        "POST",
        "/api/routes/web/rollout/pause?hotfix=true",
        "",
    )
    .await;
    assert_eq!(got.status, 400);
    v.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The step clock and the fingerprint
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_restart_mid_step_resumes_the_same_clock_and_an_edited_definition_starts_anew() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, "steps = [10, 50, 100]\n")).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed_route(&rt, "web", "green", 100, 0);
    tokio::time::sleep(61 * S).await;
    wait_step(&rt, 1).await;
    let started = veer::rollout::status_json(&rt.rollouts, &rt, "web")["step_started_ms"]
        .as_u64()
        .unwrap();
    let c = Config::load(&v.config_path).unwrap();
    let ro = c.route("web").unwrap().rollout.clone().unwrap();
    assert_eq!(
        ro.progress.step_started_ms,
        Some(started),
        "written with the step"
    );
    assert_eq!(ro.progress.fingerprint, Some(ro.fingerprint()));
    tokio::time::sleep(40 * S).await;
    drop(rt);
    let v = v.restart().await;
    let rt = v.rt().clone();
    let s = wait_step(&rt, 1).await;
    let j = veer::rollout::status_json(&rt.rollouts, &rt, "web");
    assert_eq!(
        j["step_started_ms"].as_u64(),
        Some(started),
        "the same clock"
    );
    assert_eq!(s.step, 1);
    // 20 s of the step remain, not a full minute.
    feed_route(&rt, "web", "green", 100, 0);
    tokio::time::sleep(22 * S).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().step,
        2,
        "judged on the old clock"
    );
    wait_step(&rt, 2).await;
    drop(rt);

    // Edit the definition while veer is down: the rollout starts anew, not at step 2.
    let Veer {
        running,
        dir,
        config_path: path,
        ..
    } = v;
    running.unwrap().shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("step = 2"), "{text}");
    std::fs::write(
        &path,
        text.replace("steps = [10, 50, 100]", "steps = [20, 100]"),
    )
    .unwrap();
    let v = start_veer_file(dir, path).await;
    let rt = v.rt().clone();
    let s = wait_step(&rt, 0).await;
    assert_eq!(green_weight(&rt), 20, "{:?}", s.reason);
    v.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Manual splits on a moving rollout
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_manual_split_on_a_progressing_rollout_is_refused_unless_forced_which_pauses_it() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, "steps = [10, 100]\n")).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    let got = admin_call(
        v.admin,
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 50, "green": 50}"#,
    )
    .await;
    assert_eq!(got.status, 409, "{}", got.body);
    assert!(got.body.contains("?force=true"), "{}", got.body);
    let got = admin_call(v.admin, "POST", "/api/routes/web/swap", "").await;
    assert_eq!(got.status, 409, "{}", got.body);
    assert_eq!(green_weight(&rt), 10, "nothing changed");
    let got = admin_call(
        v.admin,
        "PUT",
        "/api/routes/web/split?force=true",
        r#"{"blue": 50, "green": 50}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(green_weight(&rt), 50);
    let s = rt.rollouts.status("web").unwrap();
    assert_eq!(s.state, RolloutState::Paused);
    let j = veer::rollout::status_json(&rt.rollouts, &rt, "web");
    assert_eq!(j["paused_by"], "admin");
    assert!(
        j["gate"]["reason"]
            .as_str()
            .unwrap()
            .contains("paused by admin for a manual split"),
        "{j}"
    );
    // Paused: a manual change is the operator's own business now.
    let got = admin_call(v.admin, "POST", "/api/routes/web/swap", "").await;
    assert_eq!(got.status, 200, "{}", got.body);
    v.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// A real Prometheus server
// ---------------------------------------------------------------------------------------

struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's `prometheus` on loopback in a temp folder, scraping `target`'s /metrics every
/// second.
async fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: veer\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus is installed (scripts/test installs Debian's package)");
    let p = Prometheus {
        child,
        addr,
        _dir: dir,
    };
    let url = format!("http://{addr}/-/ready");
    for _ in 0..300 {
        if let Ok(Ok(r)) = tokio::time::timeout(S, client().get(url.parse().unwrap())).await {
            if r.status() == 200 {
                return p;
            }
        }
        tokio::time::sleep(100 * MS).await;
    }
    panic!("prometheus did not become ready at {addr}");
}

#[tokio::test]
async fn a_real_prometheus_scraping_veer_gates_the_rollout() {
    let (b, g) = two_upstreams().await;
    // The admin listener must be known before Prometheus starts: pick its port.
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let prom = start_prometheus(admin).await;
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "{admin}"
[pools.blue]
backends = ["{}"]
[pools.green]
backends = ["{}"]

[[routes]]
name = "web"
split = {{ blue = 100, green = 0 }}
[routes.rollout]
to = "green"
steps = [50, 100]
step_interval = "200ms"
min_requests = 0
[[routes.rollout.gates]]
name = "traffic-seen"
prometheus = "http://{}"
query = 'sum(veer_requests_total{{route="web"}})'
min = 20
interval = "500ms"
timeout = "60s"

[[routes]]
name = "other"
path_prefix = "/other"
split = {{ blue = 100, green = 0 }}
[routes.rollout]
to = "green"
steps = [100]
step_interval = "200ms"
min_requests = 0
[[routes.rollout.gates]]
name = "never"
prometheus = "http://{}"
query = 'sum(veer_requests_total{{route="web"}})'
max = -1
interval = "500ms"
timeout = "8s"
"#,
        b.addr, g.addr, prom.addr, prom.addr
    );
    let v = start_veer(&text).await;
    let rt = v.rt().clone();
    for _ in 0..30 {
        get(&v.url("/")).await;
    }
    let s = wait_route(&rt, "web", "succeeded", |s| s.state.is_final()).await;
    assert_eq!(s.state, RolloutState::Succeeded, "{:?}", s.reason);
    let ext = external(&rt, "web");
    assert_eq!(ext[0]["result"], "pass", "{ext:?}");
    assert!(ext[0]["value"].as_f64().unwrap() >= 20.0, "{ext:?}");
    let s = wait_route(&rt, "other", "rolled back", |s| s.state.is_final()).await;
    assert_eq!(s.state, RolloutState::RolledBack);
    assert!(
        s.reason.as_deref().unwrap().contains("gate \"never\""),
        "{:?}",
        s.reason
    );
    assert!(checks(&rt, "never", "fail") >= 1.0);
    let _ = Bytes::new();
    v.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The status page
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_status_page_shows_each_gates_last_answer() {
    let (b, g) = two_upstreams().await;
    let h = hook(&[503]).await;
    let extra = format!(
        "steps = [10, 100]\nstep_interval = \"100ms\"\nmin_requests = 0\n[[routes.rollout.gates]]\nname = \"smoke\"\nwebhook = \"http://{}/\"\ninterval = \"1s\"\ntimeout = \"10m\"\n",
        h.up.addr
    );
    let text =
        config(b.addr, g.addr, &extra).replace("step_interval = \"1m\"\nmin_requests = 100\n", "");
    let v = start_veer(&text).await;
    let rt = v.rt().clone();
    wait_route(&rt, "web", "gate answered", |s| !s.external.is_empty()).await;
    let dom = rendered_dom(&v.admin_url("/"), 3000).await;
    assert!(dom.contains("data-gate=\"smoke\""), "{dom}");
    assert!(dom.contains("data-result=\"fail\""), "{dom}");
    assert!(dom.contains("HTTP 503"), "{dom}");
    assert!(dom.contains("awaited"), "{dom}");
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_while_awaiting_approval_keeps_the_same_deadline() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(
        b.addr,
        g.addr,
        "steps = [10, 100]\napproval = true\napproval_timeout = \"30m\"\n",
    ))
    .await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed_route(&rt, "web", "green", 100, 0);
    tokio::time::sleep(61 * S).await;
    wait_state(&rt, RolloutState::AwaitingApproval).await;
    let deadline = veer::rollout::status_json(&rt.rollouts, &rt, "web")["approval_deadline_ms"]
        .as_u64()
        .unwrap();
    let c = Config::load(&v.config_path).unwrap();
    assert_eq!(
        c.route("web")
            .unwrap()
            .rollout
            .as_ref()
            .unwrap()
            .progress
            .approval_deadline_ms,
        Some(deadline)
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(rt);
    let v = v.restart().await;
    let rt = v.rt().clone();
    let s = wait_route(&rt, "web", "awaiting approval again", |s| {
        s.state == RolloutState::AwaitingApproval && s.approval_deadline.is_some()
    })
    .await;
    let j = veer::rollout::status_json(&rt.rollouts, &rt, "web");
    assert_eq!(
        j["approval_deadline_ms"].as_u64(),
        Some(deadline),
        "the same deadline"
    );
    assert!(s.approval_deadline.is_some());
    // 20 minutes are left, not 30.
    tokio::time::sleep(Duration::from_secs(20 * 60 + 2)).await;
    let s = rt.rollouts.status("web").unwrap();
    assert_eq!(s.state, RolloutState::RolledBack, "{:?}", s.reason);
    v.shutdown().await;
}
