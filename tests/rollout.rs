//! Progressive rollouts (issue 6): the controller's steps, gates, fail fast, approvals,
//! operator actions, durability, sticky users, notifications and metrics.
//!
//! Tests where the clock matters run with paused tokio time against a real veer and real
//! upstreams, and feed the step statistics directly (the same object the request path feeds),
//! so they are exact and fast. A few end-to-end tests drive the gate with real traffic and
//! short real intervals.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::rollout_config as config;
use support::*;
use veer::config::{Config, RolloutState};
use veer::control::Control;
use veer::rollout::Status;

const MS: Duration = Duration::from_millis(1);

/// What the config file says: (green weight, state, step).
fn file_progress(v: &Veer) -> (u32, Option<RolloutState>, Option<usize>) {
    let c = Config::load(&v.config_path).expect("the written file is valid");
    let r = c.route("web").unwrap();
    let ro = r.rollout.as_ref().unwrap();
    (r.weight_of("green").unwrap(), ro.state, ro.step)
}

async fn act(rt: &Arc<Control>, action: &str) -> Result<Status, veer::rollout::ActionError> {
    rt.rollouts.act(rt, "web", action).await
}

async fn post(url: &str) -> Got {
    send(Request::post(url).body(Full::new(Bytes::new())).unwrap()).await
}

// ---------------------------------------------------------------------------------------
// Paused time: exact steps, the statistics fed directly.
// ---------------------------------------------------------------------------------------

const GATE: &str = r#"steps = [5, 25, 50, 100]
step_interval = "1m"
min_requests = 100
max_error_rate = 0.01
max_p99 = "500ms"
"#;

#[tokio::test(start_paused = true)]
async fn healthy_canary_walks_every_step_writes_each_one_and_succeeds() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    for (k, w) in [5u32, 25, 50, 100].into_iter().enumerate() {
        let s = wait_step(&rt, k).await;
        assert_eq!(green_weight(&rt), w, "live split at step {k}");
        assert_eq!(
            file_progress(&v),
            (w, Some(RolloutState::Progressing), Some(k)),
            "file at step {k}"
        );
        assert_eq!(s.target_weight(), Some(w));
        // Enough healthy, fast traffic; the baseline's figures are kept beside.
        feed(&rt, "green", 150, 0, 10 * MS);
        feed(&rt, "blue", 50, 0, 10 * MS);
        let st = veer::rollout::status_json(&rt.rollouts, &rt, "web");
        assert_eq!(st["gate"]["requests"], 150);
        assert_eq!(st["gate"]["baseline"]["requests"], 50);
        assert_eq!(st["weight"], w);
        // Not judged before the interval ends.
        tokio::time::sleep(Duration::from_secs(58)).await;
        assert_eq!(rt.rollouts.status("web").unwrap().step, k);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let s = wait_state(&rt, RolloutState::Succeeded).await;
    assert_eq!(s.step, 3);
    assert_eq!(green_weight(&rt), 100);
    assert_eq!(rt.config().route("web").unwrap().weight_of("blue"), Some(0));
    assert_eq!(
        file_progress(&v),
        (100, Some(RolloutState::Succeeded), Some(3))
    );
    // The request path no longer feeds anything.
    assert!(veer::rollout::stats(&rt, "web").is_none());
    let m = rt.metrics.render(&rt.registry.gauges());
    assert_eq!(
        metric_sample(
            &m,
            "veer_rollouts_total",
            &["route=\"web\"", "result=\"succeeded\""]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_sample(&m, "veer_rollout_step", &["route=\"web\""]),
        Some(-1.0)
    );
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn failing_canary_rolls_back_at_the_first_step_and_stays_rolled_back() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    // 10% of green's requests answer 500: certain well before the minute is over.
    let before = tokio::time::Instant::now();
    feed(&rt, "green", 100, 10, 10 * MS);
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    assert!(
        before.elapsed() <= Duration::from_secs(1),
        "fail fast took {:?}",
        before.elapsed()
    );
    assert_eq!(s.step, 0);
    let reason = s.reason.clone().unwrap();
    assert!(
        reason.contains("error rate 10%") && reason.contains("fail fast"),
        "{reason}"
    );
    assert_eq!(green_weight(&rt), 0);
    assert_eq!(
        file_progress(&v),
        (0, Some(RolloutState::RolledBack), Some(0))
    );
    // The failing figures stay in the status.
    let st = veer::rollout::status_json(&rt.rollouts, &rt, "web");
    assert_eq!(st["state"], "rolled_back");
    assert_eq!(st["weight"], 0);
    assert_eq!(st["gate"]["requests"], 100);
    assert_eq!(st["gate"]["errors"], 10);
    assert_eq!(st["gate"]["verdict"], "failed");
    assert!(st["gate"]["reason"].as_str().unwrap().contains("10 of 100"));

    // Stays rolled back: time passes, and reloading the (unchanged) file does not restart it.
    tokio::time::sleep(Duration::from_secs(600)).await;
    veer::control::reload(&rt, veer::control::Trigger::Api)
        .await
        .ok();
    let c = Config::load(&v.config_path).unwrap();
    rt.apply(c).unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::RolledBack
    );
    assert_eq!(green_weight(&rt), 0);
    let m = rt.metrics.render(&rt.registry.gauges());
    assert_eq!(
        metric_sample(
            &m,
            "veer_rollouts_total",
            &["route=\"web\"", "result=\"rolled_back\""]
        ),
        Some(1.0)
    );
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn errors_within_the_limit_pass_and_just_over_it_fail_at_the_step_end() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed(&rt, "green", 200, 100, 10 * MS); // 1%: allowed
    tokio::time::sleep(Duration::from_secs(61)).await;
    wait_step(&rt, 1).await;
    feed(&rt, "green", 200, 50, 10 * MS); // 2%: over, but not certain before the end
    tokio::time::sleep(Duration::from_secs(58)).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::Progressing
    );
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    assert_eq!(s.step, 1);
    assert!(
        s.reason
            .as_deref()
            .unwrap()
            .starts_with("error rate 2% over 1%"),
        "{:?}",
        s.reason
    );
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn slow_canary_rolls_back_on_p99() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    // 3 of 200 slower than 500ms: p99 is over (2 allowed), though not certain early.
    feed(&rt, "green", 197, 0, 20 * MS);
    feed(&rt, "green", 3, 0, 800 * MS);
    tokio::time::sleep(Duration::from_secs(58)).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::Progressing
    );
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    assert!(
        s.reason.as_deref().unwrap().contains("p99 over 500ms"),
        "{:?}",
        s.reason
    );
    let st = veer::rollout::status_json(&rt.rollouts, &rt, "web");
    assert_eq!(st["gate"]["slow"], 3);
    assert!(st["gate"]["p99_ms"].as_f64().unwrap() > 500.0, "{st}");
    assert_eq!(green_weight(&rt), 0);
    v.shutdown().await;

    // Plainly slow (10% of requests): rolled back without waiting for the step to end.
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    let before = tokio::time::Instant::now();
    feed(&rt, "green", 180, 0, 20 * MS);
    feed(&rt, "green", 20, 0, 2000 * MS);
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    assert!(before.elapsed() <= Duration::from_secs(1));
    assert!(
        s.reason.as_deref().unwrap().contains("fail fast"),
        "{:?}",
        s.reason
    );
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn low_traffic_waits_instead_of_passing() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed(&rt, "green", 50, 0, 10 * MS);
    tokio::time::sleep(Duration::from_secs(180)).await;
    let s = rt.rollouts.status("web").unwrap();
    assert_eq!((s.state, s.step), (RolloutState::Progressing, 0));
    assert_eq!(green_weight(&rt), 5);
    let st = veer::rollout::status_json(&rt.rollouts, &rt, "web");
    assert_eq!(st["gate"]["verdict"], "waiting");
    let reason = st["gate"]["reason"].as_str().unwrap();
    assert!(reason.contains("50 of 100 requests to green"), "{reason}");
    // The rest arrives: judged at once, without another full interval.
    let before = tokio::time::Instant::now();
    feed(&rt, "green", 50, 0, 10 * MS);
    wait_step(&rt, 1).await;
    assert!(
        before.elapsed() <= Duration::from_secs(2),
        "{:?}",
        before.elapsed()
    );
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn approval_is_awaited_and_given() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, &format!("{GATE}approval = true\n"))).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    // Nothing to approve yet.
    let e = act(&rt, "approve").await.unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    feed(&rt, "green", 100, 0, 10 * MS);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let s = wait_state(&rt, RolloutState::AwaitingApproval).await;
    assert_eq!(s.step, 0);
    assert_eq!(green_weight(&rt), 5, "the weight stays until approved");
    assert_eq!(
        file_progress(&v),
        (5, Some(RolloutState::AwaitingApproval), Some(0))
    );
    // Waiting a long time (within approval_timeout) changes nothing.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::AwaitingApproval
    );
    assert!(
        veer::rollout::status_json(&rt.rollouts, &rt, "web")["approval_remaining_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let s = act(&rt, "approve").await.unwrap();
    assert_eq!((s.state, s.step), (RolloutState::Progressing, 1));
    assert_eq!(green_weight(&rt), 25);
    assert_eq!(
        file_progress(&v),
        (25, Some(RolloutState::Progressing), Some(1))
    );
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn approval_not_given_in_time_rolls_back() {
    let (b, g) = two_upstreams().await;
    let extra = format!("{GATE}approval = true\napproval_timeout = \"10m\"\n");
    let v = start_veer(&config(b.addr, g.addr, &extra)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed(&rt, "green", 100, 0, 10 * MS);
    tokio::time::sleep(Duration::from_secs(61)).await;
    wait_state(&rt, RolloutState::AwaitingApproval).await;
    tokio::time::sleep(Duration::from_secs(9 * 60)).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::AwaitingApproval
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    let s = wait_state(&rt, RolloutState::RolledBack).await;
    assert_eq!(s.reason.as_deref(), Some("approval not given within 10m"));
    assert_eq!(green_weight(&rt), 0);
    assert_eq!(file_progress(&v).1, Some(RolloutState::RolledBack));
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn pause_holds_the_step_and_resume_runs_it_again() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    let s = act(&rt, "pause").await.unwrap();
    assert_eq!(s.state, RolloutState::Paused);
    assert_eq!(file_progress(&v), (5, Some(RolloutState::Paused), Some(0)));
    assert!(
        veer::rollout::stats(&rt, "web").is_none(),
        "nothing is judged while paused"
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let s = rt.rollouts.status("web").unwrap();
    assert_eq!((s.state, s.step), (RolloutState::Paused, 0));
    assert_eq!(green_weight(&rt), 5);
    assert_eq!(act(&rt, "pause").await.unwrap_err().status(), 409);
    assert_eq!(act(&rt, "approve").await.unwrap_err().status(), 409);
    let s = act(&rt, "resume").await.unwrap();
    assert_eq!((s.state, s.step), (RolloutState::Progressing, 0));
    assert_eq!(act(&rt, "resume").await.unwrap_err().status(), 409);
    // The step starts over: a full interval with fresh statistics.
    feed(&rt, "green", 100, 0, 10 * MS);
    tokio::time::sleep(Duration::from_secs(58)).await;
    assert_eq!(rt.rollouts.status("web").unwrap().step, 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_step(&rt, 1).await;
    assert_eq!(green_weight(&rt), 25);
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn promote_goes_straight_to_100() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    let s = act(&rt, "promote").await.unwrap();
    assert_eq!(s.state, RolloutState::Succeeded);
    assert_eq!(s.reason.as_deref(), Some("promoted by operator"));
    assert_eq!(green_weight(&rt), 100);
    assert_eq!(
        file_progress(&v),
        (100, Some(RolloutState::Succeeded), Some(3))
    );
    assert_eq!(act(&rt, "promote").await.unwrap_err().status(), 409);
    assert_eq!(act(&rt, "pause").await.unwrap_err().status(), 409);
    let m = rt.metrics.render(&rt.registry.gauges());
    assert_eq!(
        metric_sample(
            &m,
            "veer_rollouts_total",
            &["route=\"web\"", "result=\"succeeded\""]
        ),
        Some(1.0)
    );
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn abort_rolls_back_and_start_runs_it_again() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed(&rt, "green", 100, 0, 10 * MS);
    tokio::time::sleep(Duration::from_secs(61)).await;
    wait_step(&rt, 1).await;
    assert_eq!(
        act(&rt, "start").await.unwrap_err().status(),
        409,
        "already running"
    );
    let s = act(&rt, "abort").await.unwrap();
    assert_eq!((s.state, s.step), (RolloutState::RolledBack, 1));
    assert_eq!(s.reason.as_deref(), Some("aborted by operator"));
    assert_eq!(green_weight(&rt), 0);
    assert_eq!(
        file_progress(&v),
        (0, Some(RolloutState::RolledBack), Some(1))
    );
    assert_eq!(act(&rt, "abort").await.unwrap_err().status(), 409);
    assert_eq!(act(&rt, "resume").await.unwrap_err().status(), 409);
    // A new attempt starts from the first step.
    let s = act(&rt, "start").await.unwrap();
    assert_eq!((s.state, s.step), (RolloutState::Progressing, 0));
    assert_eq!(green_weight(&rt), 5);
    let m = rt.metrics.render(&rt.registry.gauges());
    assert_eq!(
        metric_sample(
            &m,
            "veer_rollouts_total",
            &["route=\"web\"", "result=\"rolled_back\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_sample(&m, "veer_rollout_step", &["route=\"web\""]),
        Some(0.0)
    );
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_mid_rollout_resumes_at_the_same_step() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    for k in 0..2 {
        wait_step(&rt, k).await;
        feed(&rt, "green", 100, 0, 10 * MS);
        tokio::time::sleep(Duration::from_secs(61)).await;
    }
    wait_step(&rt, 2).await;
    assert_eq!(
        file_progress(&v),
        (50, Some(RolloutState::Progressing), Some(2))
    );
    drop(rt);
    let v = v.restart().await;
    let rt = v.rt().clone();
    let s = rt.rollouts.status("web").unwrap();
    assert_eq!(
        (s.state, s.step),
        (RolloutState::Progressing, 2),
        "resumed, never earlier or later"
    );
    wait_step(&rt, 2).await;
    assert_eq!(green_weight(&rt), 50);
    feed(&rt, "green", 100, 0, 10 * MS);
    tokio::time::sleep(Duration::from_secs(61)).await;
    wait_step(&rt, 3).await;
    assert_eq!(green_weight(&rt), 100);
    feed(&rt, "green", 100, 0, 10 * MS);
    tokio::time::sleep(Duration::from_secs(61)).await;
    wait_state(&rt, RolloutState::Succeeded).await;
    drop(rt);

    // A finished rollout stays finished across a restart.
    let v = v.restart().await;
    let rt = v.rt().clone();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::Succeeded
    );
    assert_eq!(green_weight(&rt), 100);
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_while_awaiting_approval_keeps_waiting() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, &format!("{GATE}approval = true\n"))).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    feed(&rt, "green", 100, 0, 10 * MS);
    tokio::time::sleep(Duration::from_secs(61)).await;
    wait_state(&rt, RolloutState::AwaitingApproval).await;
    drop(rt);
    let v = v.restart().await;
    let rt = v.rt().clone();
    let s = wait_state(&rt, RolloutState::AwaitingApproval).await;
    assert_eq!(s.step, 0);
    assert_eq!(green_weight(&rt), 5);
    let s = act(&rt, "approve").await.unwrap();
    assert_eq!(s.step, 1);
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_a_finished_rollout_and_a_changed_definition_starts_anew() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(b.addr, g.addr, GATE)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    act(&rt, "promote").await.unwrap();
    // Unchanged definition: nothing restarts (the persisted progress is not a change).
    rt.apply(Config::load(&v.config_path).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::Succeeded
    );
    assert_eq!(green_weight(&rt), 100);

    // A changed definition (new steps) starts from its first step, whatever the file's
    // persisted progress says.
    let text = std::fs::read_to_string(&v.config_path).unwrap();
    let text = text.replace("steps = [5, 25, 50, 100]", "steps = [10, 100]");
    std::fs::write(&v.config_path, text).unwrap();
    rt.apply(Config::load(&v.config_path).unwrap()).unwrap();
    let s = wait_step(&rt, 0).await;
    assert_eq!(s.def.steps, vec![10, 100]);
    assert_eq!(green_weight(&rt), 10);
    assert_eq!(
        file_progress(&v),
        (10, Some(RolloutState::Progressing), Some(0))
    );

    // Removing the rollout stops the controller and leaves the split as it is.
    let text = std::fs::read_to_string(&v.config_path).unwrap();
    let cut = text.find("[routes.rollout]").unwrap();
    std::fs::write(&v.config_path, &text[..cut]).unwrap();
    rt.apply(Config::load(&v.config_path).unwrap()).unwrap();
    assert!(rt.rollouts.status("web").is_none());
    assert_eq!(
        veer::rollout::status_json(&rt.rollouts, &rt, "web"),
        Value::Null
    );
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(green_weight(&rt), 10);
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_pending_rollout_waits_for_start() {
    let (b, g) = two_upstreams().await;
    let v = start_veer(&config(
        b.addr,
        g.addr,
        &format!("{GATE}state = \"pending\"\n"),
    ))
    .await;
    let rt = v.rt().clone();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::Pending
    );
    assert_eq!(green_weight(&rt), 0);
    assert_eq!(act(&rt, "pause").await.unwrap_err().status(), 409);
    act(&rt, "start").await.unwrap();
    wait_step(&rt, 0).await;
    assert_eq!(green_weight(&rt), 5);
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_config_file_the_rollout_lives_in_memory() {
    let (b, g) = two_upstreams().await;
    let text = with_listeners(&config(b.addr, g.addr, GATE));
    let c = Config::parse(std::path::Path::new("<mem>"), &text).unwrap();
    let running = veer::app::start(c, None).await.unwrap();
    let rt = running.rt.clone();
    wait_step(&rt, 0).await;
    assert_eq!(green_weight(&rt), 5);
    feed(&rt, "green", 100, 0, 10 * MS);
    tokio::time::sleep(Duration::from_secs(61)).await;
    wait_step(&rt, 1).await;
    assert_eq!(green_weight(&rt), 25);
    let ro = rt.config().route("web").unwrap().rollout.clone().unwrap();
    assert_eq!(
        (ro.state, ro.step),
        (Some(RolloutState::Progressing), Some(1))
    );
    drop(rt);
    running.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Real time, real traffic.
// ---------------------------------------------------------------------------------------

/// Send requests from `n` concurrent clients until `stop`; counts answers by status.
fn traffic(
    url: String,
    n: usize,
    stop: tokio_util::sync::CancellationToken,
) -> Arc<Mutex<std::collections::HashMap<u16, usize>>> {
    let seen = Arc::new(Mutex::new(std::collections::HashMap::new()));
    for _ in 0..n {
        let (url, stop, seen) = (url.clone(), stop.clone(), seen.clone());
        tokio::spawn(async move {
            let c = client();
            while !stop.is_cancelled() {
                let req = Request::get(url.as_str())
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(5), c.request(req)).await
                {
                    let status = r.status().as_u16();
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                    *seen.lock().unwrap().entry(status).or_default() += 1;
                }
            }
        });
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_healthy_canary_walks_to_100_with_real_traffic() {
    let (b, g) = two_upstreams().await;
    let extra = r#"steps = [5, 25, 50, 100]
step_interval = "200ms"
min_requests = 10
max_error_rate = 0.01
max_p99 = "1s"
"#;
    let v = start_veer(&config(b.addr, g.addr, extra)).await;
    let rt = v.rt().clone();
    let mut rx = rt.rollouts.watch("web").unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let seen = traffic(v.url("/"), 4, stop.clone());
    let mut weights = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = rx.borrow_and_update().clone();
            if s.state == RolloutState::Progressing && weights.last() != Some(&green_weight(&rt)) {
                weights.push(green_weight(&rt));
            }
            if s.state.is_final() {
                return s;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the rollout finishes");
    assert_eq!(
        outcome.state,
        RolloutState::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(weights, vec![5, 25, 50, 100]);
    // Now everything goes to green.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let blue_before = b.hits();
    let green_before = g.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    assert_eq!(
        b.hits(),
        blue_before,
        "blue still gets traffic after success"
    );
    assert!(g.hits() > green_before);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{seen:?}"
    );
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_canary_answering_500_to_a_tenth_rolls_back_at_once() {
    let blue = upstream("blue").await;
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let green = upstream_with(move |_req| {
        let i = n2.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if i % 10 == 0 {
                respond(500, "green broke")
            } else {
                respond(200, "green")
            }
        }
    })
    .await;
    // A long step: only fail fast can end it within the test.
    let extra = r#"steps = [5, 25, 50, 100]
step_interval = "10m"
min_requests = 20
max_error_rate = 0.01
"#;
    let v = start_veer(&config(blue.addr, green.addr, extra)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let _seen = traffic(v.url("/"), 4, stop.clone());
    let s = tokio::time::timeout(
        Duration::from_secs(20),
        wait_state(&rt, RolloutState::RolledBack),
    )
    .await
    .expect("rolled back by fail fast");
    assert_eq!(s.step, 0);
    assert!(
        s.reason.as_deref().unwrap().contains("fail fast"),
        "{:?}",
        s.reason
    );
    // Everyone is back on blue at once, and stays there.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let green_hits = green.hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    assert_eq!(
        green.hits(),
        green_hits,
        "green still gets traffic after the rollback"
    );
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::RolledBack
    );
    assert_eq!(
        file_progress(&v),
        (0, Some(RolloutState::RolledBack), Some(0))
    );
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_only_move_forward_and_all_return_on_rollback() {
    let (b, g) = two_upstreams().await;
    let extra = r#"steps = [5, 25, 50, 100]
step_interval = "50ms"
min_requests = 0
approval = true
"#;
    let text = config(b.addr, g.addr, extra).replace(
        "split = { blue = 100, green = 0 }",
        "split = { blue = 100, green = 0 }\nsticky = { cookie = \"veer_id\" }",
    );
    let v = start_veer(&text).await;
    let rt = v.rt().clone();
    let users: Vec<String> = (0..400).map(|i| format!("veer_id=user-{i}")).collect();
    let on_green = |v: &Veer| {
        let url = v.url("/");
        let users = users.clone();
        async move {
            let mut set = std::collections::BTreeSet::new();
            for (i, u) in users.iter().enumerate() {
                let got = get_with(&url, &[("cookie", u)]).await;
                assert_eq!(got.status, 200);
                if got.body == "green" {
                    set.insert(i);
                }
            }
            set
        }
    };
    let mut prev = std::collections::BTreeSet::new();
    for (k, w) in [5usize, 25, 50].into_iter().enumerate() {
        // Each step passes, then waits for approval: the weight holds while we look.
        let s = tokio::time::timeout(
            Duration::from_secs(10),
            wait_rollout(&rt, "awaiting approval", |s| {
                s.state == RolloutState::AwaitingApproval && s.step == k
            }),
        )
        .await
        .expect("step passes");
        assert_eq!(s.step, k);
        let now = on_green(&v).await;
        assert!(
            now.is_superset(&prev),
            "step {k}: a user left green: {:?}",
            prev.difference(&now).collect::<Vec<_>>()
        );
        let share = now.len() * 100 / users.len();
        assert!(
            share.abs_diff(w) <= 6,
            "step {k}: {share}% of users on green, expected about {w}%"
        );
        prev = now;
        // The same user twice: the same answer.
        let u = &users[*prev.iter().next().unwrap()];
        assert_eq!(get_with(&v.url("/"), &[("cookie", u)]).await.body, "green");
        act(&rt, "approve").await.unwrap();
    }
    wait_step(&rt, 3).await;
    act(&rt, "abort").await.unwrap();
    let now = on_green(&v).await;
    assert!(
        now.is_empty(),
        "after rollback {} users still on green",
        now.len()
    );
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_hook_receives_the_events_and_is_retried() {
    let (b, g) = two_upstreams().await;
    let events: Arc<Mutex<Vec<Value>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (ev2, calls2) = (events.clone(), calls.clone());
    let hook = upstream_with(move |req| {
        let (events, calls) = (ev2.clone(), calls2.clone());
        async move {
            // The first delivery fails: veer must retry it.
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return respond(503, "not yet");
            }
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            events
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            respond(204, "")
        }
    })
    .await;
    let extra = format!(
        r#"steps = [50, 100]
step_interval = "100ms"
min_requests = 0
notify_url = "http://{}/hook"
"#,
        hook.addr
    );
    let v = start_veer(&config(b.addr, g.addr, &extra)).await;
    let rt = v.rt().clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        wait_state(&rt, RolloutState::Succeeded),
    )
    .await
    .unwrap();
    eventually("all events delivered", Duration::from_secs(10), || {
        events.lock().unwrap().len() >= 5
    })
    .await;
    let events = events.lock().unwrap().clone();
    let kinds: Vec<(String, u64, Option<String>)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["step"].as_u64().unwrap(),
                e["verdict"].as_str().map(str::to_string),
            )
        })
        .collect();
    let want = vec![
        ("started".to_string(), 0, None),
        ("gate".to_string(), 0, Some("passed".to_string())),
        ("step".to_string(), 1, None),
        ("gate".to_string(), 1, Some("passed".to_string())),
        ("succeeded".to_string(), 1, None),
    ];
    assert_eq!(kinds, want, "{events:#?}");
    assert!(
        calls.load(Ordering::SeqCst) >= 6,
        "the failed delivery was retried"
    );
    for e in &events {
        assert_eq!(e["route"], "web");
        assert_eq!(e["to"], "green");
        assert_eq!(e["baseline"], "blue");
        assert!(e["time_ms"].as_u64().unwrap() > 0);
    }
    assert_eq!(events[0]["weight"], 50);
    assert_eq!(events[4]["weight"], 100);
    assert_eq!(events[4]["state"], "succeeded");
    assert!(events[1]["gate"]["requests"].is_u64());
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_notify_hook_never_blocks_the_rollout() {
    let (b, g) = two_upstreams().await;
    let dead = dead_addr().await;
    let extra = format!(
        "steps = [50, 100]\nstep_interval = \"50ms\"\nmin_requests = 0\nnotify_url = \"http://{dead}/hook\"\n"
    );
    let v = start_veer(&config(b.addr, g.addr, &extra)).await;
    let rt = v.rt().clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        wait_state(&rt, RolloutState::Succeeded),
    )
    .await
    .expect("the rollout does not wait for its notifications");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_and_status_over_the_admin_api() {
    let (b, g) = two_upstreams().await;
    let text = config(b.addr, g.addr, GATE)
        .replace("step_interval = \"1m\"", "step_interval = \"1h\"")
        + "\n[[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nsplit = { blue = 1 }\n";
    let v = start_veer(&text).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;

    let r = post(&v.admin_url("/api/routes/nope/rollout/pause")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(json_of(&r)["error"].as_str().unwrap().contains("nope"));
    let r = post(&v.admin_url("/api/routes/plain/rollout/pause")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = post(&v.admin_url("/api/routes/web/rollout/dance")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post(&v.admin_url("/api/routes/web/rollout/approve")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(json_of(&r)["error"]
        .as_str()
        .unwrap()
        .contains("progressing"));

    let st = json_of(&get(&v.admin_url("/api/status")).await);
    let web = st["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .unwrap();
    let ro = &web["rollout"];
    assert_eq!(ro["state"], "progressing");
    assert_eq!(ro["step"], 0);
    assert_eq!(ro["weight"], 5);
    assert_eq!(ro["to"], "green");
    assert_eq!(ro["gate"]["min_requests"], 100);
    assert_eq!(ro["gate"]["max_error_rate"], 0.01);
    assert_eq!(ro["gate"]["max_p99_ms"], 500.0);
    assert_eq!(ro["gate"]["verdict"], "pending");
    assert_eq!(web["split"]["green"], 5);
    let plain = st["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "plain")
        .unwrap();
    assert_eq!(plain["rollout"], Value::Null);

    // Real traffic shows up in the gate figures.
    for _ in 0..40 {
        assert_eq!(get(&v.url("/")).await.status, 200);
    }
    let st = veer::rollout::status_json(&rt.rollouts, &rt, "web");
    let (canary, base) = (
        st["gate"]["requests"].as_u64().unwrap(),
        st["gate"]["baseline"]["requests"].as_u64().unwrap(),
    );
    assert_eq!(canary + base, 40, "{st}");
    assert!((1..=4).contains(&canary), "about 5% of 40 requests: {st}");
    assert!(st["gate"]["p99_ms"].as_f64().unwrap() > 0.0);

    let r = post(&v.admin_url("/api/routes/web/rollout/pause")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = json_of(&r);
    assert_eq!(body["rollout"]["state"], "paused");
    assert_eq!(body["action"], "pause");
    assert_eq!(
        post(&v.admin_url("/api/routes/web/rollout/pause"))
            .await
            .status,
        409
    );
    assert_eq!(
        post(&v.admin_url("/api/routes/web/rollout/resume"))
            .await
            .status,
        200
    );
    let r = post(&v.admin_url("/api/routes/web/rollout/promote")).await;
    assert_eq!(json_of(&r)["rollout"]["state"], "succeeded");
    assert_eq!(json_of(&r)["rollout"]["weight"], 100);
    let r = post(&v.admin_url("/api/routes/web/rollout/abort")).await;
    assert_eq!(r.status, 409, "{}", r.body);

    let m = get(&v.admin_url("/metrics")).await.body;
    assert_eq!(
        metric_sample(
            &m,
            "veer_rollouts_total",
            &["route=\"web\"", "result=\"succeeded\""]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_sample(&m, "veer_rollout_step", &["route=\"web\""]),
        Some(-1.0)
    );
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_config_file_refuses_actions_but_never_a_rollback() {
    let (b, g) = two_upstreams().await;
    let text =
        config(b.addr, g.addr, GATE).replace("step_interval = \"1m\"", "step_interval = \"1h\"");
    let v = start_veer(&text).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    let mut perms = std::fs::metadata(&v.config_path).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&v.config_path, perms.clone()).unwrap();
    // An operator action that cannot be written changes nothing.
    let r = post(&v.admin_url("/api/routes/web/rollout/pause")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::Progressing
    );
    // A failing canary is still rolled back (in memory), for safety.
    feed(&rt, "green", 100, 1, MS);
    tokio::time::timeout(
        Duration::from_secs(5),
        wait_state(&rt, RolloutState::RolledBack),
    )
    .await
    .unwrap();
    assert_eq!(green_weight(&rt), 0);
    assert_eq!(file_progress(&v).0, 5, "the file could not be written");
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&v.config_path, perms).unwrap();
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_rollout_starts_a_canary_of_green() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(veer_bin())
        .args([
            "demo",
            "--rollout",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .env("VEER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut status_url = None;
    let mut proxy_url = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await
    {
        if let Some(u) = line.trim().strip_prefix("proxy:") {
            proxy_url = Some(u.trim().to_string());
        }
        if let Some(u) = line.trim().strip_prefix("status API:") {
            status_url = Some(u.trim().to_string());
            break;
        }
    }
    let (status_url, proxy_url) = (
        status_url.expect("demo prints its status URL"),
        proxy_url.unwrap(),
    );
    // Route api rolls out first (SPEC §10 order); web waits for it.
    let route = |st: &Value, name: &str| {
        st["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == name))
            .map(|r| r["rollout"].clone())
            .unwrap_or(Value::Null)
    };
    let (mut ro, mut web) = (Value::Null, Value::Null);
    for _ in 0..100 {
        let st = json_of(&get(&status_url).await);
        ro = route(&st, "api");
        web = route(&st, "web");
        // web's controller may not have looked yet ("pending"): wait for its first verdict.
        if ro["state"] == "progressing" && web["state"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ro["state"], "progressing", "{ro}");
    assert_eq!(ro["weight"], 50);
    assert_eq!(ro["to"], "green");
    assert_eq!(web["state"], "waiting", "{web}");
    assert_eq!(web["hotfix"], false);
    // Once green's health checks pass, it can be told to fail, through the proxy, for the
    // whole pool.
    for _ in 0..200 {
        let st = json_of(&get(&status_url).await);
        let green = st["pools"]["green"]["backends"].as_array().unwrap().clone();
        if green.iter().all(|b| b["health"] == "healthy") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = send(
        Request::post(format!("{proxy_url}fail?rate=1"))
            .header("x-veer-pool", "green")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..4 {
        let r = get_with(&proxy_url, &[("x-veer-pool", "green")]).await;
        assert_eq!(r.status, 500, "both green backends fail: {}", r.body);
    }
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_canary_is_rolled_back_and_clients_never_notice() {
    let blue = upstream("blue").await;
    let dead = dead_addr().await;
    let extra = r#"steps = [50, 100]
step_interval = "300ms"
min_requests = 20
"#;
    let v = start_veer(&config(blue.addr, dead, extra)).await;
    let rt = v.rt().clone();
    wait_step(&rt, 0).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let seen = traffic(v.url("/"), 2, stop.clone());
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        wait_state(&rt, RolloutState::RolledBack),
    )
    .await
    .expect("rolled back");
    stop.cancel();
    // Connect failures to green were retried on blue: every client got an answer.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{seen:?}"
    );
    let st = veer::rollout::status_json(&rt.rollouts, &rt, "web");
    assert!(st["gate"]["errors"].as_u64().unwrap() >= 5, "{st}");
    assert!(s.reason.is_some());
    v.shutdown().await;
}
