//! The admin-API client commands (SPEC §1): the real `veer` binary against a running veer.
//! `veer status`, `split`, `swap`, `drain`, `undrain`, `reload`, `rollout`; human output by
//! default, `--json` for scripts, a non-zero exit with the API's error message.

mod support;

use serde_json::Value;
use support::*;

/// What a `veer` command printed and how it exited.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }
    fn failed(&self) -> &Self {
        assert_ne!(self.code, 0, "command should have failed: {self:#?}");
        assert!(
            !self.stderr.trim().is_empty(),
            "a failure says why: {self:#?}"
        );
        self
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Run `veer ARGS` with `env` and nothing inherited that would change its target or token.
async fn veer_env(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = tokio::process::Command::new(veer_bin());
    cmd.args(args)
        .env_remove("VEER_ADMIN")
        .env_remove("VEER_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output())
        .await
        .expect("veer command timed out")
        .expect("veer runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run `veer ARGS --admin URL` against `veer`.
async fn cli(veer: &Veer, args: &[&str]) -> Out {
    let admin = veer.admin_url("");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--admin", &admin]);
    veer_env(&all, &[]).await
}

/// blue (two backends) and green (one) behind route `web` at 90/10.
async fn blue_green(extra: &str) -> (Veer, Vec<Upstream>) {
    let ups = vec![
        upstream("blue-1").await,
        upstream("blue-2").await,
        upstream("green-1").await,
    ];
    let config = format!(
        r#"# the web service
[pools.blue]
backends = ["{}", "{}"]

[pools.green]
backends = ["{}"]

[[routes]]
name = "web"
hosts = ["*"]
path_prefix = "/"
split = {{ blue = 90, green = 10 }}
{extra}"#,
        ups[0].addr, ups[1].addr, ups[2].addr
    );
    (start_veer(&config).await, ups)
}

fn split_of(veer: &Veer, route: &str) -> Vec<(String, u32)> {
    veer.rt()
        .config()
        .route(route)
        .expect("route")
        .split
        .clone()
}

fn pair(p: &str, w: u32) -> (String, u32) {
    (p.to_string(), w)
}

#[tokio::test]
async fn status_prints_routes_splits_and_backends() {
    let (veer, ups) = blue_green("").await;
    let out = cli(&veer, &["status"]).await;
    out.ok();
    let s = &out.stdout;
    for needle in [
        "ROUTES",
        "BACKENDS",
        "web",
        "blue=90 (90%)",
        "green=10 (10%)",
        "HEALTH",
        "BREAKER",
        "IN-FLIGHT",
        "DRAINING",
    ] {
        assert!(s.contains(needle), "status lacks {needle:?}:\n{s}");
    }
    for u in &ups {
        let line = s
            .lines()
            .find(|l| l.contains(&u.addr.to_string()))
            .unwrap_or_else(|| panic!("no line for {}:\n{s}", u.addr));
        for cell in ["healthy", "closed", " 0 ", "no"] {
            assert!(line.contains(cell), "{cell:?} missing in {line:?}");
        }
    }
    // No rollout, no rollout table.
    assert!(!s.contains("ROLLOUTS"), "{s}");

    // The admin URL can come from VEER_ADMIN, and a bare host:port is fine.
    let out = veer_env(&["status"], &[("VEER_ADMIN", &veer.admin.to_string())]).await;
    out.ok();
    assert!(out.stdout.contains("blue=90 (90%)"), "{}", out.stdout);
    veer.shutdown().await;
}

#[tokio::test]
async fn status_json_is_the_api_document() {
    let (veer, ups) = blue_green("").await;
    let out = cli(&veer, &["status", "--json"]).await;
    let v = out.ok().json();
    assert_eq!(v["routes"][0]["name"], "web");
    assert_eq!(v["routes"][0]["split"]["blue"], 90);
    assert_eq!(v["pools"]["blue"]["backends"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["pools"]["green"]["backends"][0]["addr"],
        ups[2].addr.to_string()
    );
    assert!(v["config"]["version"].is_u64());
    veer.shutdown().await;
}

#[tokio::test]
async fn unreachable_admin_api_fails_with_a_message() {
    let dead = dead_addr().await;
    let out = veer_env(&["status", "--admin", &format!("http://{dead}")], &[]).await;
    out.failed();
    assert!(
        out.stderr.contains("cannot reach the admin API"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    let out = veer_env(&["status", "--admin", "https://127.0.0.1:1"], &[]).await;
    out.failed();
    assert!(out.stderr.contains("plain HTTP"), "{}", out.stderr);
    // Bad arguments are usage errors.
    let out = veer_env(&["split", "web", "blue:1"], &[]).await;
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("POOL=WEIGHT"), "{}", out.stderr);
}

#[tokio::test]
async fn split_sets_the_weights() {
    let (veer, _ups) = blue_green("").await;
    let out = cli(&veer, &["split", "web", "blue=25", "green=75"]).await;
    out.ok();
    assert!(
        out.stdout.contains("web: blue=25 (25%)  green=75 (75%)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 25), pair("green", 75)]
    );
    // Written back into the file, comments kept.
    let file = std::fs::read_to_string(&veer.config_path).unwrap();
    assert!(file.contains("# the web service"), "{file}");
    let reread = veer::config::Config::load(&veer.config_path).unwrap();
    assert_eq!(
        reread.route("web").unwrap().split,
        vec![pair("blue", 25), pair("green", 75)]
    );

    // --json prints the API's answer.
    let v = cli(&veer, &["split", "web", "blue=1", "green=0", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["split"]["blue"], 1);
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 1), pair("green", 0)]
    );

    // Errors come back with the API's message and a non-zero exit; nothing changes.
    let out = cli(&veer, &["split", "nope", "blue=1"]).await;
    out.failed();
    assert!(out.stderr.contains("404"), "{}", out.stderr);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
    let out = cli(&veer, &["split", "web", "purple=1"]).await;
    out.failed();
    assert!(out.stderr.contains("purple"), "{}", out.stderr);
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 1), pair("green", 0)]
    );
    // With --json the error document is on stdout too.
    let out = cli(&veer, &["split", "nope", "blue=1", "--json"]).await;
    out.failed();
    assert!(
        out.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope")),
        "{out:#?}"
    );
    // `veer status` says what changed last, who and when (issue 20).
    let s = cli(&veer, &["status"]).await.ok().stdout.clone();
    let line = s
        .lines()
        .find(|l| l.starts_with("last change: "))
        .unwrap_or_else(|| panic!("{s}"));
    assert!(
        line.contains("route \"web\" split blue=25 green=75 -> blue=1 green=0 (by admin, ")
            && line.ends_with("Z)"),
        "{line}"
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn swap_exchanges_the_slots_and_refuses_an_unhealthy_target() {
    // `green` never passes its health check.
    let sick = upstream_with(|req| async move {
        if req.uri().path() == "/health" {
            respond(503, "down")
        } else {
            respond(200, "sick")
        }
    })
    .await;
    let blue = upstream("blue").await;
    let config = format!(
        r#"
[pools.blue]
backends = ["{}"]
[pools.green]
backends = ["{}"]
[pools.green.health_check]
path = "/health"
interval = "1s"
[[routes]]
name = "web"
split = {{ blue = 90, green = 10 }}
"#,
        blue.addr, sick.addr
    );
    let veer = start_veer(&config).await;
    let out = cli(&veer, &["swap", "web"]).await;
    out.failed();
    assert!(out.stderr.contains("409"), "{}", out.stderr);
    assert!(out.stderr.contains("green"), "{}", out.stderr);
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 90), pair("green", 10)]
    );

    let out = cli(&veer, &["swap", "web", "--force"]).await;
    out.ok();
    assert!(
        out.stdout.contains("web: blue=10 (10%)  green=90 (90%)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 10), pair("green", 90)]
    );

    // Back to blue, which is healthy: no force needed.
    cli(&veer, &["swap", "web"]).await.ok();
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 90), pair("green", 10)]
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn drain_and_undrain_one_backend() {
    let (veer, ups) = blue_green("").await;
    let addr = ups[0].addr.to_string();
    let draining = |v: &Value| {
        v["pools"]["blue"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == addr.as_str())
            .map(|b| b["draining"].as_bool().unwrap())
            .unwrap()
    };
    let out = cli(&veer, &["drain", "blue", &addr]).await;
    out.ok();
    assert!(out.stdout.contains("draining"), "{}", out.stdout);
    assert!(draining(
        &cli(&veer, &["status", "--json"]).await.ok().json()
    ));
    let status = cli(&veer, &["status"]).await;
    let line = status
        .stdout
        .lines()
        .find(|l| l.contains(&addr) && !l.starts_with("last change: "))
        .unwrap()
        .to_string();
    assert!(line.trim_end().ends_with("yes"), "{line}");

    // A drained backend gets no new requests.
    let before = ups[0].hits();
    for _ in 0..20 {
        get(&veer.url("/")).await;
    }
    assert_eq!(ups[0].hits(), before, "a drained backend took requests");

    cli(&veer, &["undrain", "blue", &addr]).await.ok();
    assert!(!draining(
        &cli(&veer, &["status", "--json"]).await.ok().json()
    ));

    let out = cli(&veer, &["drain", "blue", "127.0.0.1:1"]).await;
    out.failed();
    assert!(out.stderr.contains("404"), "{}", out.stderr);
    veer.shutdown().await;
}

#[tokio::test]
async fn reload_reports_changes_and_errors() {
    let (veer, _ups) = blue_green("").await;
    let text = std::fs::read_to_string(&veer.config_path).unwrap();
    std::fs::write(
        &veer.config_path,
        text.replace("blue = 90, green = 10", "blue = 60, green = 40"),
    )
    .unwrap();
    let out = cli(&veer, &["reload"]).await;
    out.ok();
    // The file watcher may have applied the edit first; then the reload finds nothing new.
    let s = &out.stdout;
    assert!(
        s.contains("split of web: blue=60 (60%)  green=40 (40%)")
            || s.starts_with("reloaded: no changes"),
        "{s}"
    );
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 60), pair("green", 40)]
    );

    // A broken file: exit 1, the located errors printed, the old config still live.
    let good = std::fs::read_to_string(&veer.config_path).unwrap();
    std::fs::write(&veer.config_path, good.replace("path_prefix", "path_prefx")).unwrap();
    let out = cli(&veer, &["reload"]).await;
    out.failed();
    assert!(out.stderr.contains("400"), "{}", out.stderr);
    assert!(
        out.stderr.contains("veer.toml:"),
        "errors are located: {}",
        out.stderr
    );
    assert!(out.stderr.contains("path_prefx"), "{}", out.stderr);
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 60), pair("green", 40)]
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn token_from_the_environment() {
    let env = "VEER_CLI_TEST_TOKEN";
    // Only this test reads this variable.
    std::env::set_var(env, "cli-secret");
    let up = upstream("blue").await;
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{env}\"\n[pools.blue]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 1 }}\n",
        up.addr
    );
    let veer = start_veer(&config).await;
    let admin = veer.admin_url("");
    let out = veer_env(&["status", "--admin", &admin], &[]).await;
    out.failed();
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert!(
        out.stderr.contains("set VEER_ADMIN_TOKEN"),
        "{}",
        out.stderr
    );

    let out = veer_env(
        &["status", "--admin", &admin],
        &[("VEER_ADMIN_TOKEN", "wrong")],
    )
    .await;
    out.failed();
    assert!(out.stderr.contains("refused"), "{}", out.stderr);

    let out = veer_env(
        &["status", "--admin", &admin],
        &[("VEER_ADMIN_TOKEN", "cli-secret")],
    )
    .await;
    out.ok();
    assert!(out.stdout.contains("web"), "{}", out.stdout);
    veer.shutdown().await;
}

#[tokio::test]
async fn rollout_actions_and_progress_in_status() {
    // Long steps: nothing moves on its own during the test.
    let (veer, _ups) = blue_green(
        r#"
[routes.rollout]
to = "green"
steps = [5, 25, 50, 100]
step_interval = "1h"
min_requests = 1000
"#,
    )
    .await;
    let rollout_state = |v: &Value| {
        v["routes"][0]["rollout"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = cli(&veer, &["status", "--json"]).await.ok().json();
        if rollout_state(&v) == "progressing" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout never started: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let s = cli(&veer, &["status"]).await.ok().stdout.clone();
    assert!(s.contains("ROLLOUTS"), "{s}");
    let line = s
        .lines()
        .skip_while(|l| !l.starts_with("ROLLOUTS"))
        .nth(2)
        .unwrap_or_default();
    // Steps count from 0, as the API's `step` does (issue 20).
    for cell in [
        "web",
        "progressing",
        "0 of 0-3",
        "green 5%",
        "requests 0/1000",
    ] {
        assert!(line.contains(cell), "{cell:?} missing from {line:?}\n{s}");
    }

    let out = cli(&veer, &["rollout", "web", "pause"]).await;
    out.ok();
    assert!(out.stdout.contains("web: rollout paused"), "{}", out.stdout);
    cli(&veer, &["rollout", "web", "resume"]).await.ok();
    let out = cli(&veer, &["rollout", "web", "promote"]).await;
    out.ok();
    assert!(out.stdout.contains("succeeded"), "{}", out.stdout);
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 0), pair("green", 100)]
    );

    // A finished rollout cannot be paused: 409, the API's reason, non-zero exit.
    let out = cli(&veer, &["rollout", "web", "pause"]).await;
    out.failed();
    assert!(out.stderr.contains("409"), "{}", out.stderr);
    let out = veer_env(&["rollout", "web", "launch"], &[]).await;
    assert_eq!(out.code, 2, "unknown actions are usage errors: {out:#?}");

    // After success, abort points at rollback, which moves everything back to the baseline
    // as a change of its own (issue 20 item 4).
    let out = cli(&veer, &["rollout", "web", "abort"]).await;
    out.failed();
    assert!(
        out.stderr
            .contains("`rollback` moves all traffic back to blue"),
        "{}",
        out.stderr
    );
    let out = cli(&veer, &["rollout", "web", "rollback"]).await;
    out.ok();
    assert!(
        out.stdout.contains("web: rollout rolled_back"),
        "{}",
        out.stdout
    );
    assert_eq!(
        split_of(&veer, "web"),
        vec![pair("blue", 100), pair("green", 0)]
    );
    let last = veer.rt().audit.last().unwrap();
    assert_eq!((last.who.as_str(), last.source.as_str()), ("admin", "api"));
    assert!(
        last.what.contains("rollout rolled_back")
            && last.what.contains("blue=0 green=100 -> blue=100 green=0")
            && last
                .what
                .contains("rolled back by admin after it succeeded"),
        "{}",
        last.what
    );
    // Written back: a restart keeps the baseline.
    let text = std::fs::read_to_string(&veer.config_path).unwrap();
    assert!(text.contains("state = \"rolled_back\""), "{text}");
    veer.shutdown().await;
}

/// A wrong route name lists the routes, as a wrong pool name lists the pools (issue 20
/// item 4), for split, swap and rollout actions alike.
#[tokio::test]
async fn a_wrong_route_or_pool_name_lists_the_names() {
    let (veer, _ups) = blue_green("").await;
    for args in [
        &["split", "wbe", "blue=1"][..],
        &["swap", "wbe"][..],
        &["rollout", "wbe", "pause"][..],
    ] {
        let out = cli(&veer, args).await;
        out.failed();
        assert!(
            out.stderr.contains("no route named \"wbe\" (routes: web)"),
            "{args:?}: {out:#?}"
        );
    }
    let out = cli(&veer, &["drain", "bleu", "127.0.0.1:1"]).await;
    out.failed();
    assert!(
        out.stderr
            .contains("no pool named \"bleu\" (pools: blue, green)"),
        "{out:#?}"
    );
    veer.shutdown().await;
}
