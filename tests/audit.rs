//! The audit trail (issue 20 item 2, SPEC §3): named admin tokens say who made a change;
//! every change made live (API call, file reload, SIGHUP, rollout step) is logged once
//! (target `veer::audit`) and kept in a ring of the last 100 (`GET /api/changes`, newest
//! first), the newest as `last_change` in `/api/status`.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

/// Env vars are process-wide: each test names its own.
fn set_tokens(prefix: &str) -> String {
    std::env::set_var(format!("{prefix}_ADMIN"), format!("{prefix}-admin-secret"));
    std::env::set_var(format!("{prefix}_ALICE"), format!("{prefix}-alice-secret"));
    std::env::set_var(format!("{prefix}_BOT"), format!("{prefix}-bot-secret"));
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{prefix}_ADMIN\"\n\
         tokens = {{ alice = \"env:{prefix}_ALICE\", deploy-bot = \"env:{prefix}_BOT\" }}\n"
    )
}

async fn call(admin: SocketAddr, token: Option<&str>, method: &str, path: &str, body: &str) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    send(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

fn changes(v: &Value) -> Vec<(String, String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["who"].as_str().unwrap().to_string(),
                c["source"].as_str().unwrap().to_string(),
                c["what"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn named_tokens_say_who_in_last_change_and_the_changes_list() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let admin = set_tokens("AUDIT_NAMED");
    let config = format!(
        "{admin}{}",
        blue_green(blue.addr, green.addr, "{ blue = 90, green = 10 }", "")
    );
    let veer = start_veer(&config).await;
    let a = veer.admin;
    let (alice, bot, root) = (
        "AUDIT_NAMED-alice-secret",
        "AUDIT_NAMED-bot-secret",
        "AUDIT_NAMED-admin-secret",
    );

    // Before any change: null; wrong or missing tokens change nothing.
    let s = json_of(&call(a, Some(root), "GET", "/api/status", "").await);
    assert_eq!(s["last_change"], Value::Null, "{s}");
    assert_eq!(call(a, None, "GET", "/api/changes", "").await.status, 401);
    let wrong = call(
        a,
        Some("AUDIT_NAMED-alice-secreT"),
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 0, "green": 1}"#,
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    let r = call(
        a,
        Some(alice),
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 30, "green": 70}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = json_of(&call(a, Some(bot), "GET", "/api/status", "").await);
    let last = &s["last_change"];
    assert_eq!(last["who"], "alice", "{last}");
    assert_eq!(last["source"], "api", "{last}");
    let what = last["what"].as_str().unwrap();
    assert!(
        what.contains("\"web\"") && what.contains("blue=90 green=10 -> blue=30 green=70"),
        "{what}"
    );
    // RFC 3339 with its zone, and the same instant in unix ms.
    let when = last["when"].as_str().unwrap();
    assert!(when.ends_with('Z') && when.contains('T'), "{when}");
    let ms = last["when_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(ms <= now && now - ms < 60_000, "{ms} vs {now}");

    let r = call(
        a,
        Some(bot),
        "POST",
        &format!("/api/pools/blue/backends/{}/drain", blue.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // A swap by the token_env token is who = "admin".
    let r = call(a, Some(root), "POST", "/api/routes/web/swap?force=true", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A split to the same weights changes nothing and is no change.
    let r = call(
        a,
        Some(alice),
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 70, "green": 30}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["changed"], false, "{}", r.body);

    // An edit of the file, reloaded through the API: who asked, source api.
    let text = std::fs::read_to_string(&veer.config_path).unwrap();
    let green2 = upstream("green2").await;
    let text = text.replace(
        &format!("backends = [\"{}\"]", green.addr),
        &format!("backends = [\"{}\", \"{}\"]", green.addr, green2.addr),
    );
    std::fs::write(&veer.config_path, text).unwrap();
    let r = call(a, Some(bot), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);

    let list = json_of(&call(a, Some(alice), "GET", "/api/changes", "").await);
    let got = changes(&list);
    // The watcher may see the edit before the API reload does: then it is the file's.
    let reload = &got[0];
    assert!(
        (reload.0 == "deploy-bot" && reload.1 == "api")
            || (reload.0 == "file" && reload.1 == "file"),
        "{got:?}"
    );
    assert!(reload.2.contains(&green2.addr.to_string()), "{got:?}");
    assert_eq!(got.len(), 4, "one entry per change, newest first: {got:?}");
    assert_eq!((got[1].0.as_str(), got[1].1.as_str()), ("admin", "api"));
    assert!(
        got[1].2.contains("blue=30 green=70 -> blue=70 green=30"),
        "{got:?}"
    );
    assert_eq!(got[2].0, "deploy-bot");
    assert!(
        got[2]
            .2
            .contains(&format!("backend {} of pool \"blue\" drained", blue.addr)),
        "{got:?}"
    );
    assert_eq!(got[3].0, "alice");
    for c in list.as_array().unwrap() {
        assert!(c["time"].as_str().unwrap().ends_with('Z'), "{c}");
        assert!(c["time_ms"].as_u64().is_some(), "{c}");
    }
    veer.shutdown().await;
}

#[tokio::test]
async fn the_changes_ring_keeps_the_last_hundred() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 1, green = 1 }",
        "",
    ))
    .await;
    for i in 0..105u32 {
        let r = admin_call(
            veer.admin,
            "PUT",
            "/api/routes/web/split",
            &format!(r#"{{"blue": {}, "green": 1}}"#, i + 2),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let list = json_of(&admin_call(veer.admin, "GET", "/api/changes", "").await);
    let got = changes(&list);
    assert_eq!(got.len(), 100);
    // Newest first: the last split set blue to 106; the oldest kept set it to 7.
    assert!(got[0].2.ends_with("blue=106 green=1"), "{:?}", got[0]);
    assert!(got[99].2.ends_with("blue=7 green=1"), "{:?}", got[99]);
    // Without a token on loopback, who is "admin".
    assert!(got.iter().all(|c| c.0 == "admin" && c.1 == "api"));
    veer.shutdown().await;
}

#[tokio::test]
async fn a_reload_by_signal_is_the_signals() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let text = with_listeners(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 90, green = 10 }",
        "",
    ));
    let (dir, path) = write_config(&text);
    let veer = start_veer_file_unwatched(dir, path.clone()).await;
    // SIGHUP with nothing changed: no change recorded.
    veer::app::reload_from_signal(veer.rt()).await;
    assert!(veer.rt().audit.last().is_none());
    std::fs::write(
        &path,
        text.replace("blue = 90, green = 10", "blue = 70, green = 30"),
    )
    .unwrap();
    veer::app::reload_from_signal(veer.rt()).await;
    let last = veer.rt().audit.last().unwrap();
    assert_eq!(
        (last.who.as_str(), last.source.as_str()),
        ("signal", "signal")
    );
    assert!(
        last.what
            .contains("route \"web\" split blue=90 green=10 -> blue=70 green=30"),
        "{}",
        last.what
    );
    assert_eq!(veer.rt().audit.recent().len(), 1);
    veer.shutdown().await;
}

/// The lines of target `veer::audit` in a JSON log.
fn audit_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "veer::audit")
        .collect()
}

/// The real binary's log: each change (API split, file edit, rollout start, drain) is one
/// `veer::audit` line naming who and the source; a SIGHUP that changes nothing logs none.
#[tokio::test]
async fn each_change_is_logged_once_by_the_binary() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let admin = set_tokens("AUDIT_BIN");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[log]\nformat = \"json\"\n{admin}{}",
        blue_green(blue.addr, green.addr, "{ blue = 90, green = 10 }", "")
    );
    let (_dir, path) = write_config(&text);
    let veer = spawn_veer(&path).await;
    let log = veer.stderr.clone();
    let audit = || audit_lines(&log.lock().unwrap());

    let r = call(
        veer.admin,
        Some("AUDIT_BIN-alice-secret"),
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 60, "green": 40}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("the split's audit line", Duration::from_secs(5), || {
        audit().len() == 1
    })
    .await;
    let l = &audit()[0];
    assert_eq!(
        (l["who"].as_str(), l["source"].as_str()),
        (Some("alice"), Some("api")),
        "{l}"
    );
    assert!(
        l["message"]
            .as_str()
            .unwrap()
            .contains("blue=90 green=10 -> blue=60 green=40"),
        "{l}"
    );

    // SIGHUP with the file as written back: nothing changed, nothing recorded.
    veer.signal("HUP");
    // A file edit: the watcher's (or, if it ran first, the signal's: still one line).
    let now = std::fs::read_to_string(&path).unwrap();
    let edited = now.replace("{ blue = 60, green = 40 }", "{ blue = 20, green = 80 }");
    assert_ne!(now, edited, "{now}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, &edited).unwrap();
    eventually("the edit's audit line", Duration::from_secs(10), || {
        audit().len() == 2
    })
    .await;
    let l = &audit()[1];
    assert_eq!(l["source"], "file", "{l}");
    assert_eq!(l["who"], "file", "{l}");
    assert!(
        l["message"]
            .as_str()
            .unwrap()
            .contains("blue=60 green=40 -> blue=20 green=80"),
        "{l}"
    );

    // A drain by the bot.
    let r = call(
        veer.admin,
        Some("AUDIT_BIN-bot-secret"),
        "POST",
        &format!("/api/pools/green/backends/{}/drain", green.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    eventually("the drain's audit line", Duration::from_secs(5), || {
        audit().len() == 3
    })
    .await;
    assert_eq!(audit()[2]["who"], "deploy-bot");

    // A rollout added by an edit: the reload is one change (the file's), its first step
    // another (the rollout's).
    let now = std::fs::read_to_string(&path).unwrap();
    let with_rollout = format!(
        "{now}\n[routes.rollout]\nto = \"green\"\nsteps = [10, 100]\nstep_interval = \"1h\"\n"
    );
    std::fs::write(&path, with_rollout).unwrap();
    eventually("the rollout's audit lines", Duration::from_secs(10), || {
        audit().len() == 5
    })
    .await;
    let lines = audit();
    let sources: Vec<&str> = lines[3..]
        .iter()
        .map(|l| l["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["file", "rollout"], "{lines:?}");
    let step = &lines[4];
    assert_eq!(step["who"], "rollout");
    assert!(
        step["message"]
            .as_str()
            .unwrap()
            .contains("rollout progressing at step 0"),
        "{step}"
    );
    // Nothing more comes: each change was logged once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(audit().len(), 5, "{:?}", audit());
    let list = json_of(
        &call(
            veer.admin,
            Some("AUDIT_BIN-admin-secret"),
            "GET",
            "/api/changes",
            "",
        )
        .await,
    );
    assert_eq!(list.as_array().unwrap().len(), 5, "{list}");
}

/// Fleet mode on a real etcd: the replica an API change was made on records it once as the
/// API's; every other replica records the revision it applied as the fleet's, and a drain
/// made elsewhere as a fleet drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_revisions_are_the_fleets_on_the_other_replicas() {
    use support::etcd::*;
    let bed = Bed::new().await;
    let a = bed.replica("a", "3s", "").await;
    let b = bed.replica("b", "3s", "").await;
    let r = put_split(a.admin, 10, 90).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin_call(
        a.admin,
        "POST",
        &format!("/api/pools/blue/backends/{}/drain", bed.blue.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let list = |admin| async move {
        changes(&json_of(
            &admin_call(admin, "GET", "/api/changes", "").await,
        ))
    };
    until("B applied both", Duration::from_secs(5), || async {
        list(b.admin).await.len() == 2
    })
    .await;
    let on_b = list(b.admin).await;
    assert_eq!(
        (on_b[1].0.as_str(), on_b[1].1.as_str()),
        ("fleet", "fleet"),
        "{on_b:?}"
    );
    assert!(
        on_b[1].2.starts_with("fleet revision ")
            && on_b[1]
                .2
                .contains("route \"web\" split blue=100 green=0 -> blue=10 green=90"),
        "{on_b:?}"
    );
    assert_eq!(on_b[0].1, "fleet", "{on_b:?}");
    assert!(on_b[0].2.contains("drained"), "{on_b:?}");
    // A saw its own writes come back through the watch: still one entry each.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_a = list(a.admin).await;
    assert_eq!(on_a.len(), 2, "{on_a:?}");
    assert!(
        on_a.iter().all(|c| c.0 == "admin" && c.1 == "api"),
        "{on_a:?}"
    );
}

/// Approvals say who (issue 20 item 2): the audit trail, `last_change`, the rollout's
/// notify events and the log line of an approval by a named token carry its name; the steps
/// the rollout takes on its own are the rollout's.
#[tokio::test]
async fn an_approval_by_a_named_token_says_who() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let ev = events.clone();
    let hook = upstream_with(move |req| {
        let events = ev.clone();
        async move {
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
    let admin = set_tokens("AUDIT_APPROVE");
    let config = format!(
        "{admin}{}",
        blue_green(
            blue.addr,
            green.addr,
            "{ blue = 100, green = 0 }",
            &format!(
                "[routes.rollout]\nto = \"green\"\nsteps = [10, 100]\nstep_interval = \"100ms\"\nmin_requests = 0\napproval = true\nnotify_url = \"http://{}/hook\"\n",
                hook.addr
            )
        )
    );
    let veer = start_veer(&config).await;
    let a = veer.admin;
    let root = "AUDIT_APPROVE-admin-secret";
    let state = |v: &Value| {
        v["routes"][0]["rollout"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state(&json_of(
        &call(a, Some(root), "GET", "/api/status", "").await,
    )) != "awaiting_approval"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "never awaited approval"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = call(
        a,
        Some("AUDIT_APPROVE-alice-secret"),
        "POST",
        "/api/routes/web/rollout/approve",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got = changes(&json_of(
        &call(a, Some(root), "GET", "/api/changes", "").await,
    ));
    // Newest first: alice's approval (step 1 at 100%), the rollout's wait for it, its start.
    let approve = &got[0];
    assert_eq!(
        (approve.0.as_str(), approve.1.as_str()),
        ("alice", "api"),
        "{got:?}"
    );
    assert!(
        approve.2.contains("rollout progressing at step 1")
            && approve.2.contains("blue=90 green=10 -> blue=0 green=100")
            && approve.2.contains("approved at step 0"),
        "{got:?}"
    );
    assert_eq!(
        (got[1].0.as_str(), got[1].1.as_str()),
        ("rollout", "rollout"),
        "{got:?}"
    );
    assert!(
        got[1].2.contains("rollout awaiting_approval at step 0"),
        "{got:?}"
    );
    assert!(got[1].2.contains("waiting for approval"), "{got:?}");
    assert!(got[2].2.contains("rollout started"), "{got:?}");
    let s = json_of(&call(a, Some(root), "GET", "/api/status", "").await);
    assert_eq!(s["last_change"]["who"], "alice", "{s}");
    eventually("the approved event", Duration::from_secs(5), || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "approved")
    })
    .await;
    let events = events.lock().unwrap().clone();
    let approved = events.iter().find(|e| e["event"] == "approved").unwrap();
    assert_eq!(approved["who"], "alice", "{approved}");
    let started = events.iter().find(|e| e["event"] == "started").unwrap();
    assert!(started.get("who").is_none(), "{started}");
    veer.shutdown().await;
}
