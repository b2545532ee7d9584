//! A config veer cannot write (issue 12 item 11, SPEC §3): `[server] state_file` keeps API
//! changes and rollout progress, laid over the config at start and at every reload, the
//! config winning per key; `?force=true` applies a change in memory only (`"persisted":
//! false`); without a state file a rollout runs in memory instead of waiting forever, and
//! `veer check`/`veer run` say so at start.
//!
//! The config is made unwritable with `chattr +i` (which stops root too; tests run as root,
//! where mode 0444 alone stops nothing but veer's own check), falling back to mode 0444.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use veer::config::RolloutState;
use veer::control::Control;
use veer::control::{self as reload, Trigger};

/// Two pools (blue with two backends) and route `web` at `split`, with `state_file` when
/// given, and `extra` appended to the route.
fn config_text(
    blue: &[SocketAddr],
    green: SocketAddr,
    split: &str,
    state_file: Option<&Path>,
    extra: &str,
) -> String {
    let state = state_file
        .map(|p| format!("state_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{state}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n# the blue slot\n[pools.blue]\nbackends = [{}]\n\n[pools.green]\nbackends = [\"{green}\"]\n\n[[routes]]\nname = \"web\"\nsplit = {split}  # set by the release pipeline\n{extra}",
        quoted(blue)
    )
}

/// A path for a state file in a fresh folder (not created).
fn state_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.toml");
    (dir, path)
}

/// veer started from `text` written to a config file made unwritable first; the file's path.
async fn start_unwritable(text: &str) -> (Veer, PathBuf, Unwritable) {
    let (dir, path) = write_config(text);
    let ro = make_unwritable(&path);
    let v = start_veer_file(dir, path.clone()).await;
    (v, path, ro)
}

/// Who answers `url` (the upstream's name), over a real socket.
async fn who(url: &str) -> String {
    get(url).await.body
}

fn persisted(rt: &Control) -> bool {
    veer::admin::status::status_json(rt)["persisted"]
        .as_bool()
        .expect("persisted is a boolean at the top of /api/status")
}

#[tokio::test]
async fn api_changes_and_drains_go_to_the_state_file_and_a_restart_keeps_them() {
    let (b1, b2, g) = (
        upstream("blue-1").await,
        upstream("blue-2").await,
        upstream("green").await,
    );
    let (_state_dir, state) = state_file();
    let text = config_text(
        &[b1.addr, b2.addr],
        g.addr,
        "{ blue = 100, green = 0 }",
        Some(&state),
        "",
    );
    let (v, path, ro) = start_unwritable(&text).await;
    assert!(persisted(v.rt()));

    let r = admin_call(
        v.admin,
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 0, "green": 100}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["persisted"], true);
    assert_eq!(who(&v.url("/")).await, "green");
    let r = admin_call(
        v.admin,
        "POST",
        &format!("/api/pools/blue/backends/{}/drain", b2.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(json_of(&r)["persisted"], true);

    // The config is as it was; the state file holds both changes, with what the config said.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("[routes.web.split]"), "{saved}");
    assert!(saved.contains("set = { blue = 0, green = 100 }"), "{saved}");
    assert!(saved.contains("was = { blue = 100, green = 0 }"), "{saved}");
    assert!(
        saved.contains(&format!("draining = [\"{}\"]", b2.addr)),
        "{saved}"
    );
    let status = admin_call(v.admin, "GET", "/api/status", "").await;
    assert_eq!(json_of(&status)["persisted"], true);

    // A new veer on the same config and state file starts where this one stood.
    let v = v.restart().await;
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 0), ("green".into(), 100)]
    );
    assert_eq!(who(&v.url("/")).await, "green");
    let blue2 = v.rt().registry.get("blue", b2.addr).unwrap();
    assert!(blue2.is_draining(), "the drain survived the restart");
    assert!(!v.rt().registry.get("blue", b1.addr).unwrap().is_draining());

    // Back to what the config says: the entries go (an undrain, a split equal to the config's).
    let r = admin_call(v.admin, "POST", "/api/routes/web/swap", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin_call(
        v.admin,
        "POST",
        &format!("/api/pools/blue/backends/{}/undrain", b2.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(!saved.contains("[routes.web.split]"), "{saved}");
    assert!(!saved.contains("draining"), "{saved}");
    // Traffic reaches both blue backends again.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(who(&v.url("/")).await);
    }
    assert_eq!(
        seen,
        ["blue-1", "blue-2"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    drop(ro);
    v.shutdown().await;
}

#[tokio::test]
async fn a_config_edit_to_the_same_key_wins_and_clears_the_entry() {
    let (b, g) = (upstream("blue").await, upstream("green").await);
    let (_state_dir, state) = state_file();
    let text =
        |split: &str, extra: &str| config_text(&[b.addr], g.addr, split, Some(&state), extra);
    let (dir, path) = write_config(&text("{ blue = 100, green = 0 }", ""));
    let v = start_veer_file_unwatched(dir, path.clone()).await;
    let (rt, admin) = (v.rt().clone(), v.admin);
    let url = v.url("/");

    let r = admin_call(
        admin,
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 0, "green": 1}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin_call(
        admin,
        "POST",
        &format!("/api/pools/blue/backends/{}/drain", b.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);

    // Editing another key keeps the entry: the split is still the API's.
    std::fs::write(
        &path,
        text("{ blue = 100, green = 0 }", "retry = { attempts = 3 }\n"),
    )
    .unwrap();
    let r = admin_call(admin, "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(rt.config().route("web").unwrap().retry.attempts, 3);
    assert_eq!(
        web_split(&rt),
        vec![("blue".into(), 0), ("green".into(), 1)]
    );
    assert_eq!(who(&url).await, "green");

    // Editing the split itself: the config wins and the entry is cleared from the file.
    std::fs::write(
        &path,
        text("{ blue = 1, green = 1 }", "retry = { attempts = 3 }\n"),
    )
    .unwrap();
    let r = admin_call(admin, "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        web_split(&rt),
        vec![("blue".into(), 1), ("green".into(), 1)]
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(!saved.contains("[routes.web.split]"), "{saved}");
    // The drain, another key, stays.
    assert!(saved.contains("draining"), "{saved}");
    assert!(rt.registry.get("blue", b.addr).unwrap().is_draining());
    // A later API change is recorded against what the config says now.
    let r = admin_call(admin, "POST", "/api/routes/web/swap", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin_call(
        admin,
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 3, "green": 1}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("was = { blue = 1, green = 1 }"), "{saved}");
    drop(rt);
    v.shutdown().await;
}

#[tokio::test]
async fn force_without_a_state_file_lives_in_memory_until_a_reload() {
    let (b, g) = (upstream("blue").await, upstream("green").await);
    let text = config_text(&[b.addr], g.addr, "{ blue = 1, green = 0 }", None, "");
    let (v, path, ro) = start_unwritable(&text).await;

    let body = r#"{"blue": 0, "green": 1}"#;
    let r = admin_call(v.admin, "PUT", "/api/routes/web/split", body).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        json_of(&r)["error"]
            .as_str()
            .unwrap()
            .contains("?force=true"),
        "{}",
        r.body
    );
    assert_eq!(who(&v.url("/")).await, "blue");
    assert!(persisted(v.rt()));

    let r = admin_call(v.admin, "PUT", "/api/routes/web/split?force=true", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["persisted"], false);
    assert_eq!(who(&v.url("/")).await, "green");
    let status = json_of(&admin_call(v.admin, "GET", "/api/status", "").await);
    assert_eq!(status["persisted"], false, "{status}");
    // A forced swap too; the file never changes.
    let r = admin_call(v.admin, "POST", "/api/routes/web/swap?force=true", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(who(&v.url("/")).await, "blue");
    let r = admin_call(v.admin, "POST", "/api/routes/web/swap?force=true", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("veer-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A reload takes the file's word again.
    let r = admin_call(v.admin, "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 1), ("green".into(), 0)]
    );
    assert_eq!(who(&v.url("/")).await, "blue");
    assert!(persisted(v.rt()));
    drop(ro);
    v.shutdown().await;
}

/// A healthy step: enough fast traffic to green, then the interval passes.
async fn pass_step(rt: &Control) {
    feed(rt, "green", 100, 0, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(61)).await;
}

const ROLLOUT: &str = "\n[routes.rollout]\nto = \"green\"\nsteps = [5, 25, 100]\nstep_interval = \"1m\"\nmin_requests = 100\n";

#[tokio::test(start_paused = true)]
async fn rollout_steps_go_to_the_state_file_and_a_restart_resumes_there() {
    let (b, g) = (upstream("blue").await, upstream("green").await);
    let (_state_dir, state) = state_file();
    let text = config_text(
        &[b.addr],
        g.addr,
        "{ blue = 100, green = 0 }",
        Some(&state),
        ROLLOUT,
    );
    let (v, path, ro) = start_unwritable(&text).await;
    let rt: Arc<Control> = v.rt().clone();
    wait_step(&rt, 0).await;
    assert_eq!(green_weight(&rt), 5);
    pass_step(&rt).await;
    wait_step(&rt, 1).await;
    assert_eq!(green_weight(&rt), 25);
    assert!(persisted(&rt));
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("set = { blue = 75, green = 25 }"), "{saved}");
    assert!(saved.contains("state = \"progressing\""), "{saved}");
    assert!(saved.contains("step = 1"), "{saved}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    drop(rt);

    // Restarted: the same step, never earlier or later.
    let v = v.restart().await;
    let rt = v.rt().clone();
    let s = rt.rollouts.status("web").unwrap();
    assert_eq!((s.state, s.step), (RolloutState::Progressing, 1));
    wait_step(&rt, 1).await;
    assert_eq!(green_weight(&rt), 25);
    pass_step(&rt).await;
    wait_step(&rt, 2).await;
    pass_step(&rt).await;
    wait_rollout(&rt, "succeeded", |s| s.state == RolloutState::Succeeded).await;
    assert_eq!(green_weight(&rt), 100);
    drop(rt);

    // Finished stays finished across a restart and a reload.
    let v = v.restart().await;
    let rt = v.rt().clone();
    reload::reload(&rt, Trigger::Api).await.unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        rt.rollouts.status("web").unwrap().state,
        RolloutState::Succeeded
    );
    assert_eq!(green_weight(&rt), 100);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    drop(rt);
    drop(ro);
    v.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_state_file_an_unwritable_config_still_runs_the_rollout_in_memory() {
    let (b, g) = (upstream("blue").await, upstream("green").await);
    let text = config_text(
        &[b.addr],
        g.addr,
        "{ blue = 100, green = 0 }",
        None,
        ROLLOUT,
    );
    let (v, path, ro) = start_unwritable(&text).await;
    let rt = v.rt().clone();
    // Not stuck pending: the first step runs at once, in memory.
    wait_step(&rt, 0).await;
    assert_eq!(green_weight(&rt), 5);
    assert!(!persisted(&rt), "the progress lives in memory only");
    pass_step(&rt).await;
    wait_step(&rt, 1).await;
    assert_eq!(green_weight(&rt), 25);
    // A reload of the (unchanged) file keeps the rollout's weight.
    reload::reload(&rt, Trigger::Api).await.unwrap();
    assert_eq!(green_weight(&rt), 25);
    assert_eq!(rt.rollouts.status("web").unwrap().step, 1);
    // An operator action that cannot be written changes nothing, unless forced.
    let e = rt.rollouts.act(&rt, "web", "pause").await.unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    let s = rt
        .rollouts
        .act_with(&rt, "web", "pause", true)
        .await
        .unwrap();
    assert_eq!(s.state, RolloutState::Paused);
    let s = rt
        .rollouts
        .act_with(&rt, "web", "resume", true)
        .await
        .unwrap();
    assert_eq!(s.state, RolloutState::Progressing);
    wait_step(&rt, 1).await;
    pass_step(&rt).await;
    wait_step(&rt, 2).await;
    pass_step(&rt).await;
    wait_rollout(&rt, "succeeded", |s| s.state == RolloutState::Succeeded).await;
    assert_eq!(green_weight(&rt), 100);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert!(!persisted(&rt));
    drop(rt);
    drop(ro);
    v.shutdown().await;
}

#[tokio::test]
async fn rollout_actions_over_the_api_take_force_when_nothing_can_be_written() {
    let (b, g) = (upstream("blue").await, upstream("green").await);
    let rollout = ROLLOUT.replace("\"1m\"", "\"1h\"");
    let text = config_text(
        &[b.addr],
        g.addr,
        "{ blue = 100, green = 0 }",
        None,
        &rollout,
    );
    let (v, path, ro) = start_unwritable(&text).await;
    wait_step(v.rt(), 0).await;
    let r = admin_call(v.admin, "POST", "/api/routes/web/rollout/pause", "").await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin_call(
        v.admin,
        "POST",
        "/api/routes/web/rollout/pause?force=true",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["rollout"]["state"], "paused");
    let status = json_of(&admin_call(v.admin, "GET", "/api/status", "").await);
    assert_eq!(status["persisted"], false);
    assert_eq!(status["routes"][0]["rollout"]["state"], "paused");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    drop(ro);
    v.shutdown().await;
}

#[tokio::test]
async fn a_state_file_that_does_not_read_is_left_alone_and_named() {
    let (b, g) = (upstream("blue").await, upstream("green").await);
    let (_state_dir, state) = state_file();
    let broken = "[routes.web.split]\nset = { blue = 0, green = 1 }\nwas = \"oops\"\n";
    std::fs::write(&state, broken).unwrap();
    let text = config_text(
        &[b.addr],
        g.addr,
        "{ blue = 1, green = 0 }",
        Some(&state),
        "",
    );
    let (dir, path) = write_config(&text);
    let v = start_veer_file(dir, path.clone()).await;
    // Started on the config alone.
    assert_eq!(who(&v.url("/")).await, "blue");
    let body = r#"{"blue": 0, "green": 1}"#;
    let r = admin_call(v.admin, "PUT", "/api/routes/web/split", body).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("could not be read"), "{}", r.body);
    assert_eq!(std::fs::read_to_string(&state).unwrap(), broken);
    // A reload names the file, line and column, and changes nothing.
    let r = admin_call(v.admin, "POST", "/api/reload", "").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let errors = json_of(&r)["errors"].to_string();
    assert!(
        errors.contains(&format!("{}:3:", state.display())),
        "{errors}"
    );
    // Fixed (here: removed), the next reload reads it and changes are written again.
    std::fs::remove_file(&state).unwrap();
    let r = admin_call(v.admin, "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin_call(v.admin, "PUT", "/api/routes/web/split", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(who(&v.url("/")).await, "green");
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("green = 1"));
    v.shutdown().await;
}

#[tokio::test]
async fn veer_check_and_veer_run_warn_about_an_unwritable_config() {
    let (b, g) = (upstream("blue").await, upstream("green").await);
    let text = config_text(&[b.addr], g.addr, "{ blue = 1, green = 0 }", None, "");
    let (_dir, path) = write_config(&text);
    // Writable: no warning.
    let out = std::process::Command::new(veer_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("cannot write"));

    let ro = make_unwritable(&path);
    let out = std::process::Command::new(veer_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "still a valid config: {stderr}");
    let warning = format!("warning: cannot write the config file {}", path.display());
    assert!(stderr.contains(&warning), "{stderr}");
    assert!(stderr.contains("state_file"), "{stderr}");

    let p = spawn_veer(&path).await;
    let log = p.stderr.lock().unwrap().clone();
    assert!(
        log.contains(&format!("cannot write the config file {}", path.display())),
        "{log}"
    );
    assert!(log.contains("state_file"), "{log}");
    drop(p);
    drop(ro);

    // A state file whose folder does not exist is named too.
    let text = config_text(
        &[b.addr],
        g.addr,
        "{ blue = 1, green = 0 }",
        Some(Path::new("/nonexistent-veer-dir/state.toml")),
        "",
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(veer_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot write the state file /nonexistent-veer-dir/state.toml"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_state_file_that_cannot_be_written_refuses_changes_unless_forced() {
    let (b1, b2, g) = (
        upstream("blue-1").await,
        upstream("blue-2").await,
        upstream("green").await,
    );
    let (_state_dir, state) = state_file();
    std::fs::write(&state, "").unwrap();
    let text = config_text(
        &[b1.addr, b2.addr],
        g.addr,
        "{ blue = 1, green = 0 }",
        Some(&state),
        "",
    );
    let (dir, path) = write_config(&text);
    let v = start_veer_file(dir, path.clone()).await;
    let ro = make_unwritable(&state);

    let body = r#"{"blue": 0, "green": 1}"#;
    let r = admin_call(v.admin, "PUT", "/api/routes/web/split", body).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains(&state.display().to_string()), "{}", r.body);
    // Refused: traffic still goes to blue (either backend: round robin starts at random).
    let first = who(&v.url("/")).await;
    assert!(first == "blue-1" || first == "blue-2", "{first}");
    let r = admin_call(v.admin, "PUT", "/api/routes/web/split?force=true", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["persisted"], false);
    assert_eq!(who(&v.url("/")).await, "green");
    let drain = format!("/api/pools/blue/backends/{}/drain", b2.addr);
    let r = admin_call(v.admin, "POST", &drain, "").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(!v.rt().registry.get("blue", b2.addr).unwrap().is_draining());
    let r = admin_call(v.admin, "POST", &format!("{drain}?force=true"), "").await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(v.rt().registry.get("blue", b2.addr).unwrap().is_draining());
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "");

    // A reload drops the forced split; the forced drain (runtime state) stays, still unwritten.
    let r = admin_call(v.admin, "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(who(&v.url("/")).await, "blue-1");
    assert!(v.rt().registry.get("blue", b2.addr).unwrap().is_draining());
    assert!(!persisted(v.rt()));

    // Writable again: the next change writes what was waiting too.
    drop(ro);
    let r = admin_call(v.admin, "POST", "/api/routes/web/swap", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["persisted"], true);
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains(&format!("draining = [\"{}\"]", b2.addr)),
        "{saved}"
    );
    assert!(saved.contains("set = { blue = 0, green = 1 }"), "{saved}");
    v.shutdown().await;
}
