//! The status page at admin `GET /`, in a real headless Chromium driven over the DevTools
//! protocol: it renders every route's split and every backend, follows a weight change within
//! 2 s, shows in-flight requests live, and asks for the admin token when the API wants one.
//!
//! Needs Debian's `chromium` (or `VEER_CHROMIUM=/path/to/chrome`). Without it these tests fail
//! with a message saying so. `VEER_SCREENSHOT=FILE.png` saves a screenshot of the page.

mod browser;
mod support;

use browser::Browser;
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// The pool weights of a route's bar, as the page shows them.
const WEB_WEIGHTS: &str = r#"JSON.stringify([...document.querySelectorAll('[data-route="web"] .bar [data-pool]')]
    .map(e => e.dataset.pool + "=" + e.dataset.weight))"#;

async fn two_pools(slow_release: Arc<tokio::sync::Notify>) -> (Veer, Vec<Upstream>) {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let slow = upstream_with(move |_req| {
        let r = slow_release.clone();
        async move {
            r.notified().await;
            respond(200, "slow")
        }
    })
    .await;
    let config = format!(
        r#"
[pools.blue]
backends = ["{}"]
[pools.green]
backends = ["{}"]
[pools.batch]
backends = ["{}"]

[[routes]]
name = "web"
hosts = ["*"]
path_prefix = "/"
split = {{ blue = 90, green = 10 }}

[[routes]]
name = "reports"
hosts = ["*"]
path_prefix = "/reports"
split = {{ batch = 1 }}
"#,
        blue.addr, green.addr, slow.addr
    );
    (start_veer(&config).await, vec![blue, green, slow])
}

#[tokio::test]
async fn page_renders_routes_and_follows_a_weight_change() {
    let release = Arc::new(tokio::sync::Notify::new());
    let (veer, ups) = two_pools(release.clone()).await;
    let page = get(&veer.admin_url("/")).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    // Self-contained: nothing loaded from anywhere else.
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(
            !page.body.contains(external),
            "page loads an external asset: {external}"
        );
    }

    let mut b = Browser::open(&veer.admin_url("/")).await;
    let (weights, _) = b
        .wait_for(
            "the web route's bar",
            Duration::from_secs(15),
            WEB_WEIGHTS,
            |v| v != "[]",
        )
        .await;
    assert_eq!(weights, "[\"blue=90\",\"green=10\"]");
    let text = b.eval("document.body.innerText").await;
    let text = text.as_str().unwrap();
    for needle in [
        "web",
        "reports",
        "blue",
        "green",
        "batch",
        "90%",
        "10%",
        "unchecked",
        "closed",
    ] {
        assert!(text.contains(needle), "page lacks {needle:?}:\n{text}");
    }
    for u in &ups {
        assert!(
            text.contains(&u.addr.to_string()),
            "page lacks backend {}:\n{text}",
            u.addr
        );
    }
    b.maybe_screenshot("").await;

    // A weight change shows within 2 s.
    let rt = veer.rt().clone();
    let mut c = (*rt.config()).clone();
    c.route_mut("web").unwrap().split = vec![("blue".into(), 25), ("green".into(), 75)];
    rt.apply(c).expect("apply");
    let (_, took) = b
        .wait_for("the new split", Duration::from_secs(2), WEB_WEIGHTS, |v| {
            v == "[\"blue=25\",\"green=75\"]"
        })
        .await;
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    eprintln!("status page showed the weight change after {took:?}");

    // In-flight requests show live.
    let url = veer.url("/reports/q3");
    let pending = tokio::spawn(async move { get(&url).await });
    let slow = ups[2].addr.to_string();
    let in_flight = format!(
        r#"(document.querySelector('[data-pool-card="batch"] [data-backend="{slow}"] td:nth-child(5)') || {{}}).textContent"#
    );
    b.wait_for("in-flight 1", Duration::from_secs(3), &in_flight, |v| {
        v == "1"
    })
    .await;
    release.notify_one();
    assert_eq!(pending.await.unwrap().status, 200);
    b.wait_for("in-flight 0", Duration::from_secs(3), &in_flight, |v| {
        v == "0"
    })
    .await;
    b.close().await;
    veer.shutdown().await;
}

#[tokio::test]
async fn page_asks_for_the_token_and_then_shows_the_status() {
    let env = "VEER_STATUS_PAGE_TEST_TOKEN";
    // Only this test reads this variable.
    std::env::set_var(env, "s3cret-token");
    let up = upstream("blue").await;
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{env}\"\n[pools.blue]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 1 }}\n",
        up.addr
    );
    let veer = start_veer(&config).await;
    assert_eq!(
        get(&veer.admin_url("/api/status")).await.status,
        401,
        "the admin API should want the token"
    );
    // The page itself is public; only its data needs the token.
    assert_eq!(get(&veer.admin_url("/")).await.status, 200);

    let mut b = Browser::open(&veer.admin_url("/")).await;
    let login_shown = "!document.getElementById('login').hidden";
    b.wait_for(
        "the token prompt",
        Duration::from_secs(15),
        login_shown,
        |v| v == true,
    )
    .await;
    assert_eq!(
        b.eval("document.querySelectorAll('[data-route]').length")
            .await,
        0
    );
    b.maybe_screenshot("login").await;

    // A wrong token is refused and asked for again.
    let submit = |t: &str| {
        format!(
            "document.getElementById('token').value = {t:?}; \
             document.getElementById('login-form').requestSubmit(); true"
        )
    };
    b.eval(&submit("wrong")).await;
    b.wait_for(
        "the refusal",
        Duration::from_secs(5),
        "document.getElementById('login-err').textContent",
        |v| v.as_str().is_some_and(|s| s.contains("refused")),
    )
    .await;

    b.eval(&submit("s3cret-token")).await;
    b.wait_for("the routes", Duration::from_secs(5), WEB_WEIGHTS, |v| {
        v == "[\"blue=1\"]"
    })
    .await;
    assert_eq!(b.eval(login_shown).await, false);
    assert_eq!(
        b.eval("sessionStorage.getItem('veer-admin-token')").await,
        "s3cret-token"
    );
    b.close().await;
    veer.shutdown().await;
}

#[tokio::test]
async fn page_shows_rollout_progress_and_backend_trouble() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let spare = upstream("spare").await;
    let dead = dead_addr().await;
    let config = format!(
        r#"
[pools.blue]
backends = ["{}", "{}"]
[pools.green]
backends = ["{}", "{dead}"]
[pools.green.health_check]
path = "/"
interval = "100ms"
timeout = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1

[[routes]]
name = "web"
split = {{ blue = 95, green = 5 }}
[routes.rollout]
to = "green"
steps = [5, 25, 50, 100]
step_interval = "1h"
min_requests = 1000
"#,
        blue.addr, spare.addr, green.addr
    );
    let veer = start_veer(&config).await;
    let drained = send(
        http::Request::post(
            veer.admin_url(&format!("/api/pools/blue/backends/{}/drain", spare.addr)),
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap(),
    )
    .await;
    assert_eq!(drained.status, 202, "{}", drained.body);

    let mut b = Browser::open(&veer.admin_url("/")).await;
    let rollout = r#"(document.querySelector('[data-route="web"] [data-rollout]') || {dataset: {}}).dataset.rollout"#;
    b.wait_for("the rollout", Duration::from_secs(15), rollout, |v| {
        v == "progressing"
    })
    .await;
    // The first of four steps is the current one.
    let current =
        "(document.querySelector('[data-route=\"web\"] .step.now') || {dataset: {}}).dataset.step";
    b.wait_for("the current step", Duration::from_secs(5), current, |v| {
        v == "0"
    })
    .await;
    let dead_row =
        format!(r#"(document.querySelector('[data-backend="{dead}"]') || {{}}).innerText"#);
    b.wait_for(
        "the dead backend marked unhealthy",
        Duration::from_secs(5),
        &dead_row,
        |v| v.as_str().is_some_and(|t| t.contains("unhealthy")),
    )
    .await;
    let text = b.eval("document.body.innerText").await;
    let text = text.as_str().unwrap();
    for needle in [
        "Rollout",
        "progressing",
        "green at 5%",
        "requests",
        "1 of 2 taking traffic",
        "draining",
    ] {
        assert!(text.contains(needle), "page lacks {needle:?}:\n{text}");
    }
    b.maybe_screenshot("rollout").await;
    b.close().await;
    veer.shutdown().await;
}
