//! The status page as a release console (issue 20), in a real headless Chromium: its charts
//! draw from the sampler's series after a few seconds of traffic, a button changes a route's
//! split through the admin API (token asked for once, the action confirmed, the API's answer
//! shown), and the page recovers by itself when veer restarts on the same port.
//!
//! Needs Debian's `chromium` (or `VEER_CHROMIUM=/path/to/chrome`); see tests/browser.

mod browser;
mod support;

use browser::Browser;
use std::time::Duration;
use support::*;

/// blue (two backends) and green (one) behind route `web`, and `extra` config lines.
async fn blue_green(extra_admin: &str) -> (Veer, Vec<Upstream>) {
    let ups = vec![
        upstream("blue").await,
        upstream("blue").await,
        upstream("green").await,
    ];
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
{extra_admin}
[pools.blue]
backends = ["{}", "{}"]
[pools.green]
backends = ["{}"]

[[routes]]
name = "web"
split = {{ blue = 80, green = 20 }}
"#,
        ups[0].addr, ups[1].addr, ups[2].addr
    );
    (start_veer(&config).await, ups)
}

/// Points drawn by a chart's lines (`sel` picks the chart).
fn points(sel: &str) -> String {
    format!(
        r#"[...document.querySelectorAll('{sel} polyline')].map(l => Number(l.dataset.points)).reduce((a, b) => a + b, 0)"#
    )
}

#[tokio::test]
async fn charts_draw_from_a_few_seconds_of_traffic() {
    let (veer, ups) = blue_green("").await;
    // Traffic over three seconds, so the series have several samples with requests in them.
    let url = veer.url("/");
    let traffic = tokio::spawn(async move {
        for _ in 0..30 {
            assert_eq!(get(&url).await.status, 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut b = Browser::open(&veer.admin_url("/")).await;
    traffic.await.unwrap();

    // The request-rate chart of blue: a line of several points, some above zero.
    let rps = r#"(() => { const l = document.querySelector('[data-charts-pool="blue"] svg[data-chart="rps"] polyline');
        if (!l) return 0; return l.getAttribute('points').split(' ').filter(p => Number(p.split(',')[1]) < 50).length; })()"#;
    b.wait_for(
        "blue's request rate drawn above zero",
        Duration::from_secs(15),
        rps,
        |v| v.as_u64().is_some_and(|n| n >= 2),
    )
    .await;
    // The split chart draws both pools, traffic share and configured weight.
    let (n, _) = b
        .wait_for(
            "the split chart",
            Duration::from_secs(5),
            &points(r#"[data-charts-route="web"] svg[data-chart="split"]"#),
            |v| v.as_u64().is_some_and(|n| n >= 8),
        )
        .await;
    eprintln!("split chart: {n} points");
    let lines = b
        .eval(r#"[...document.querySelectorAll('[data-charts-route="web"] polyline')].map(l => l.dataset.series).join(',')"#)
        .await;
    assert_eq!(lines, "blue now,blue split,green now,green split");
    assert!(
        b.eval(&points(
            r#"[data-charts-pool="green"] svg[data-chart="errors"]"#
        ))
        .await
        .as_u64()
        .unwrap()
            >= 2,
        "green's error chart"
    );

    // Per pool and per backend: requests/s, error rate and p99 over the last minute.
    let blue_rps = r#"(document.querySelector('[data-minute-pool="blue"] [data-fig="req/s"] b') || {}).textContent"#;
    let (v, _) = b
        .wait_for("blue's req/s", Duration::from_secs(5), blue_rps, |v| {
            v.as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|x| x > 0.0)
        })
        .await;
    eprintln!("blue: {v} req/s");
    let row = |addr: std::net::SocketAddr, fig: &str| {
        format!(
            r#"(document.querySelector('[data-backend="{addr}"] [data-fig="{fig}"]') || {{}}).textContent"#
        )
    };
    let p99 = b.eval(&row(ups[0].addr, "p99_ms")).await;
    assert!(
        p99.as_str().is_some_and(|s| s.ends_with("ms")),
        "a backend's p99: {p99}"
    );
    assert_eq!(b.eval(&row(ups[2].addr, "error_rate")).await, "0%");
    // No health check: the page says so; the API keeps SPEC's value.
    let text = b.eval("document.body.innerText").await;
    assert!(text.as_str().unwrap().contains("unchecked"), "{text}");
    let status = json_of(&get(&veer.admin_url("/api/status")).await);
    assert_eq!(status["pools"]["blue"]["backends"][0]["health"], "healthy");
    b.maybe_screenshot("console").await;

    // The bar shows where traffic goes now: green's only backend drained, the fallback sends
    // its share to blue, and the split stays 80/20.
    let drained = admin_call(
        veer.admin,
        "POST",
        &format!("/api/pools/green/backends/{}/drain", ups[2].addr),
        "",
    )
    .await;
    assert_eq!(drained.status, 202, "{}", drained.body);
    let bar = r#"JSON.stringify([...document.querySelectorAll('[data-route="web"] .bar [data-pool]')].map(e => e.dataset.pool + "=" + e.dataset.effective + "/" + e.dataset.weight))"#;
    b.wait_for(
        "the fallback in the bar",
        Duration::from_secs(5),
        bar,
        |v| v == "[\"blue=100/80\",\"green=0/20\"]",
    )
    .await;
    let legend = b
        .eval(r#"document.querySelector('[data-route="web"] [data-legend="green"]').innerText"#)
        .await;
    assert!(legend.as_str().unwrap().contains("split 20%"), "{legend}");
    b.close().await;
    veer.shutdown().await;
}

#[tokio::test]
async fn the_split_button_changes_the_split() {
    let env = "VEER_CONSOLE_TEST_TOKEN";
    // Only this test reads this variable.
    std::env::set_var(env, "console-s3cret");
    let (veer, _ups) = blue_green(&format!("token_env = \"{env}\"")).await;
    // The series are behind the token, as all of /api/* is.
    assert_eq!(get(&veer.admin_url("/api/series")).await.status, 401);
    let mut b = Browser::open(&veer.admin_url("/")).await;
    // The token is asked for once and kept in the tab.
    b.wait_for(
        "the token prompt",
        Duration::from_secs(15),
        "!document.getElementById('login').hidden",
        |v| v == true,
    )
    .await;
    b.eval(
        "document.getElementById('token').value = 'console-s3cret'; \
         document.getElementById('login-form').requestSubmit(); true",
    )
    .await;
    let button = r#"document.querySelector('[data-route="web"] button[data-action="split"]')"#;
    b.wait_for(
        "the split button",
        Duration::from_secs(5),
        &format!("!!{button}"),
        |v| v == true,
    )
    .await;

    // The button asks first; cancelling changes nothing.
    b.eval(&format!("{button}.click(); true")).await;
    let dialog = "!document.getElementById('action').hidden";
    assert_eq!(b.eval(dialog).await, true);
    assert_eq!(
        b.eval("document.getElementById('action-input').value")
            .await,
        "blue=80 green=20"
    );
    b.eval("document.getElementById('action-cancel').click(); true")
        .await;
    assert_eq!(b.eval(dialog).await, false);

    // Confirmed, it calls the API and shows the answer.
    b.eval(&format!(
        "{button}.click(); document.getElementById('action-input').value = 'blue=30 green=70'; \
         document.getElementById('action-confirm').click(); true"
    ))
    .await;
    let (answer, _) = b
        .wait_for(
            "the API's answer",
            Duration::from_secs(5),
            "document.getElementById('action-answer').hidden ? null : document.getElementById('action-answer').textContent",
            |v| v.is_string(),
        )
        .await;
    let answer = answer.as_str().unwrap();
    assert!(answer.starts_with("200"), "{answer}");
    assert!(answer.contains("\"green\": 70"), "{answer}");

    // The split really changed, and the page follows.
    let status = send(
        http::Request::get(veer.admin_url("/api/status"))
            .header("authorization", "Bearer console-s3cret")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    let status = json_of(&status);
    assert_eq!(
        status["routes"][0]["split"],
        serde_json::json!({"blue": 30, "green": 70})
    );
    let weights = r#"JSON.stringify([...document.querySelectorAll('[data-route="web"] .bar [data-pool]')].map(e => e.dataset.pool + "=" + e.dataset.weight))"#;
    b.wait_for("the new split", Duration::from_secs(3), weights, |v| {
        v == "[\"blue=30\",\"green=70\"]"
    })
    .await;
    // Bad input is answered on the page and sent nowhere.
    b.eval(&format!(
        "document.getElementById('action-cancel').click(); {button}.click(); \
         document.getElementById('action-input').value = 'blue=lots'; \
         document.getElementById('action-confirm').click(); true"
    ))
    .await;
    let (bad, _) = b
        .wait_for(
            "the refusal",
            Duration::from_secs(3),
            "document.getElementById('action-answer').hidden ? null : document.getElementById('action-answer').textContent",
            |v| v.is_string(),
        )
        .await;
    assert!(bad.as_str().unwrap().contains("not POOL=WEIGHT"), "{bad}");
    assert_eq!(
        b.eval("sessionStorage.getItem('veer-admin-token')").await,
        "console-s3cret"
    );
    b.close().await;
    veer.shutdown().await;
}

#[tokio::test]
async fn the_page_recovers_when_veer_restarts_on_the_same_port() {
    let (veer, _ups) = blue_green("").await;
    // Pin the ports the first start got, so the restart listens where the page polls.
    let text = std::fs::read_to_string(&veer.config_path).unwrap();
    let text = text
        .replacen(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"{}\"]", veer.addr),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", veer.admin),
            1,
        );
    std::fs::write(&veer.config_path, text).unwrap();
    let admin = veer.admin;

    let mut b = Browser::open(&veer.admin_url("/")).await;
    let live = "document.getElementById('live-text').textContent";
    b.wait_for("live", Duration::from_secs(15), live, |v| v == "live")
        .await;
    // A mark that a reload of the page would lose.
    b.eval("window.__noReload = 1; true").await;

    let running = {
        let mut veer = veer;
        let r = veer.running.take().unwrap();
        r.shutdown().await;
        (veer.dir, veer.config_path)
    };
    b.wait_for("the page to notice", Duration::from_secs(10), live, |v| {
        v == "disconnected"
    })
    .await;
    let veer = start_veer_file(running.0, running.1).await;
    assert_eq!(veer.admin, admin, "restarted on the same port");
    // A change after the restart shows: the page polls the new process.
    let put = admin_call(
        admin,
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 5, "green": 95}"#,
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let weights = r#"JSON.stringify([...document.querySelectorAll('[data-route="web"] .bar [data-pool]')].map(e => e.dataset.pool + "=" + e.dataset.weight))"#;
    b.wait_for(
        "the split after the restart",
        Duration::from_secs(10),
        weights,
        |v| v == "[\"blue=5\",\"green=95\"]",
    )
    .await;
    b.wait_for("live again", Duration::from_secs(5), live, |v| v == "live")
        .await;
    assert_eq!(
        b.eval("window.__noReload").await,
        1,
        "the page was reloaded"
    );
    assert_eq!(
        b.eval("document.getElementById('notice').hidden").await,
        true
    );
    // The charts come back from the new sampler.
    b.wait_for(
        "the split chart after the restart",
        Duration::from_secs(5),
        &points(r#"[data-charts-route="web"] svg[data-chart="split"]"#),
        |v| v.as_u64().is_some_and(|n| n >= 4),
    )
    .await;
    b.close().await;
    veer.shutdown().await;
}

#[tokio::test]
async fn the_rollout_timeline_and_the_approve_button() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let config = format!(
        r#"
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
step_interval = "1s"
min_requests = 0
approval = true
"#,
        blue.addr, green.addr
    );
    let veer = start_veer(&config).await;
    let mut b = Browser::open(&veer.admin_url("/")).await;
    let state = r#"(document.querySelector('[data-route="web"] [data-rollout]') || {dataset: {}}).dataset.rollout"#;
    let approve = r#"document.querySelector('[data-route="web"] button[data-action="approve"]')"#;
    let answer = "document.getElementById('action-answer').hidden ? null : document.getElementById('action-answer').textContent";
    // The state shown and the step it is at.
    let at = format!(
        r#"{state} + "@" + (document.querySelector('[data-route="web"] .step.now') || {{dataset: {{}}}}).dataset.step"#
    );
    // A step waits for approval; the button gives it. The page shows a step awaiting approval
    // until its next poll after the approval, so each step is approved once.
    let mut approved: Vec<String> = Vec::new();
    loop {
        let (now, _) = b
            .wait_for(
                "a step awaiting approval",
                Duration::from_secs(15),
                &at,
                |v| {
                    v.as_str().is_some_and(|s| {
                        s.starts_with("succeeded")
                            || (s.starts_with("awaiting_approval")
                                && !approved.iter().any(|a| a == s))
                    })
                },
            )
            .await;
        let now = now.as_str().unwrap().to_string();
        if now.starts_with("succeeded") {
            break;
        }
        approved.push(now);
        b.eval(&format!(
            "{approve}.click(); document.getElementById('action-confirm').click(); true"
        ))
        .await;
        let (a, _) = b
            .wait_for("the answer", Duration::from_secs(5), answer, |v| {
                v.is_string()
            })
            .await;
        assert!(a.as_str().unwrap().starts_with("200"), "{a}");
        b.eval("document.getElementById('action-cancel').click(); true")
            .await;
    }
    assert!(!approved.is_empty(), "no step waited for approval");
    // The steps seen, with their start times (time zone included) and verdicts.
    let rows = r#"JSON.stringify([...document.querySelectorAll('[data-route="web"] [data-timeline-step]')].map(r => r.innerText))"#;
    let (rows, _) = b
        .wait_for("the timeline", Duration::from_secs(5), rows, |v| {
            v.as_str().is_some_and(|s| s.matches("passed").count() == 2)
        })
        .await;
    let rows: Vec<String> = serde_json::from_str(rows.as_str().unwrap()).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].starts_with("1/2 · 50%"), "{rows:?}");
    assert!(rows[1].starts_with("2/2 · 100%"), "{rows:?}");
    assert!(
        rows[0].contains("UTC") || rows[0].contains("GMT"),
        "{rows:?}"
    );
    let finished = r#"[...document.querySelectorAll('[data-route="web"] [data-finished]')].map(f => f.dataset.finished).join(',')"#;
    b.wait_for(
        "the finished rollout",
        Duration::from_secs(5),
        finished,
        |v| v == "succeeded",
    )
    .await;
    b.maybe_screenshot("rollout").await;
    b.close().await;
    veer.shutdown().await;
}
