//! Live control (issue 4, SPEC §3 and §4): hot reload by file change, SIGHUP and the API;
//! the admin API's auth, split, swap, drain and write-back. Real upstreams, a real veer.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// A two-pool config body (listeners are added by `with_listeners`).
fn two_pools(blue: &[SocketAddr], green: &[SocketAddr], wb: u32, wg: u32) -> String {
    let list = |v: &[SocketAddr]| {
        v.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[pools.blue]\nbackends = [{}]\n\n[pools.green]\nbackends = [{}]\n\n[[routes]]\nname = \"web\"\nsplit = {{ blue = {wb}, green = {wg} }}\n",
        list(blue),
        list(green)
    )
}

/// Write a file the way `mv` into place does: a temp file beside it, then rename.
fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Poll an async condition until true or `timeout`; returns how long it took.
async fn until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Does the proxy answer `body` now?
async fn answers<U: AsRef<str>>(url: U, body: &str) -> bool {
    let g = get(url.as_ref()).await;
    g.status == 200 && g.body == body
}

/// An admin API call with an optional bearer token.
async fn api(admin: SocketAddr, method: &str, path: &str, body: &str, token: Option<&str>) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

fn reloads(v: &Veer, result: &str) -> u64 {
    v.rt().metrics.reloads.with_label_values(&[result]).get()
}

/// A unique environment variable name for one test's admin token (tests share the process).
fn token_env(test: &str) -> String {
    format!(
        "VEER_LIVE_TEST_TOKEN_{}_{}",
        test.to_uppercase(),
        std::process::id()
    )
}

#[tokio::test]
async fn reload_by_in_place_edit_applies_within_2s() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = start_veer(&two_pools(&[blue.addr], &[green.addr], 1, 0)).await;
    assert!(answers(v.url("/"), "blue").await);
    // Truncate and rewrite the same inode, as `echo > file` or an editor saving in place.
    std::fs::write(
        &v.config_path,
        with_listeners(&two_pools(&[blue.addr], &[green.addr], 0, 1)),
    )
    .unwrap();
    let took = until("green after in-place edit", Duration::from_secs(2), || {
        answers(v.url("/"), "green")
    })
    .await;
    assert!(took < Duration::from_secs(2));
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 0), ("green".into(), 1)]
    );
    assert!(reloads(&v, "success") >= 1);
    v.shutdown().await;
}

#[tokio::test]
async fn reload_by_rename_applies_within_2s() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = start_veer(&two_pools(&[blue.addr], &[green.addr], 1, 0)).await;
    assert!(answers(v.url("/"), "blue").await);
    write_by_rename(
        &v.config_path,
        &with_listeners(&two_pools(&[blue.addr], &[green.addr], 0, 1)),
    );
    until("green after rename", Duration::from_secs(2), || {
        answers(v.url("/"), "green")
    })
    .await;
    // And again: the new inode is seen as well as the first one.
    write_by_rename(
        &v.config_path,
        &with_listeners(&two_pools(&[blue.addr], &[green.addr], 1, 0)),
    );
    until("blue after second rename", Duration::from_secs(2), || {
        answers(v.url("/"), "blue")
    })
    .await;
    v.shutdown().await;
}

/// The layout kubelet gives a ConfigMap volume: `veer.toml -> ..data/veer.toml`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped folder, flips `..data` by
/// renaming a new symlink over it, and deletes the old folder.
#[tokio::test]
async fn reload_by_kubernetes_symlink_swap_applies_within_2s() {
    use std::os::unix::fs::symlink;
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let publish = |name: &str, text: &str| {
        let version = d.join(name);
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("veer.toml"), text).unwrap();
        symlink(name, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    };
    publish(
        "..2024_01_01",
        &with_listeners(&two_pools(&[blue.addr], &[green.addr], 1, 0)),
    );
    symlink("..data/veer.toml", d.join("veer.toml")).unwrap();
    let v = start_veer_file(dir, d.join("veer.toml")).await;
    assert!(answers(v.url("/"), "blue").await);

    let started = Instant::now();
    publish(
        "..2024_01_02",
        &with_listeners(&two_pools(&[blue.addr], &[green.addr], 0, 1)),
    );
    std::fs::remove_dir_all(d.join("..2024_01_01")).unwrap();
    until("green after symlink swap", Duration::from_secs(2), || {
        answers(v.url("/"), "green")
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));

    // A second flip works too (the watch follows the new target folder).
    publish(
        "..2024_01_03",
        &with_listeners(&two_pools(&[blue.addr], &[green.addr], 1, 0)),
    );
    std::fs::remove_dir_all(d.join("..2024_01_02")).unwrap();
    until("blue after second swap", Duration::from_secs(2), || {
        answers(v.url("/"), "blue")
    })
    .await;
    assert_eq!(
        reloads(&v, "failure"),
        0,
        "a swap must never be seen half done"
    );
    v.shutdown().await;
}

#[tokio::test]
async fn bad_file_changes_nothing_and_is_counted() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = start_veer(&two_pools(&[blue.addr], &[green.addr], 1, 0)).await;
    let before = v.rt().snapshot().version;
    // Valid TOML, invalid config: the split moves traffic to a pool that does not exist.
    let bad = with_listeners(&two_pools(&[blue.addr], &[green.addr], 1, 0))
        .replace("green = 0", "red = 5");
    write_by_rename(&v.config_path, &bad);
    eventually("failure counted", Duration::from_secs(2), || {
        reloads(&v, "failure") == 1
    })
    .await;
    assert_eq!(v.rt().snapshot().version, before, "nothing applied");
    for _ in 0..10 {
        assert!(answers(v.url("/"), "blue").await);
    }
    // The API reports the same errors, located.
    let g = api(v.admin, "POST", "/api/reload", "", None).await;
    assert_eq!(g.status, 400, "{}", g.body);
    let j = json_of(&g);
    let errors = j["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    let first = errors[0].as_str().unwrap();
    assert!(
        first.contains("veer.toml:") && first.contains("red"),
        "{first}"
    );
    assert!(j["error"]
        .as_str()
        .unwrap()
        .contains("old config stays live"));
    assert_eq!(reloads(&v, "failure"), 2);
    // Broken TOML too.
    write_by_rename(&v.config_path, "[[routes]\nname = ");
    eventually("failure counted", Duration::from_secs(2), || {
        reloads(&v, "failure") == 3
    })
    .await;
    assert!(answers(v.url("/"), "blue").await);
    assert_eq!(v.rt().snapshot().version, before);
    v.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veer.toml");
    std::fs::write(
        &path,
        with_listeners(&two_pools(&[blue.addr], &[green.addr], 1, 0)),
    )
    .unwrap();
    let p = spawn_veer(&path).await;
    let url = format!("http://{}/", p.addr);
    assert!(answers(&url, "blue").await);
    let metrics = format!("http://{}/metrics", p.admin);
    // The watcher ignores an unchanged file; only SIGHUP counts a reload of it.
    assert!(!get(&metrics)
        .await
        .body
        .contains("veer_config_reloads_total{result=\"success\"} 1"));
    p.signal("HUP");
    until("SIGHUP reload counted", Duration::from_secs(5), || async {
        get(&metrics)
            .await
            .body
            .contains("veer_config_reloads_total{result=\"success\"} 1")
    })
    .await;
    assert!(p.stderr.lock().unwrap().contains("SIGHUP"));
    // A changed file applies on SIGHUP (the watcher may well be first; either way it applies).
    std::fs::write(
        &path,
        with_listeners(&two_pools(&[blue.addr], &[green.addr], 0, 1)),
    )
    .unwrap();
    p.signal("HUP");
    until("green after SIGHUP", Duration::from_secs(2), || {
        answers(&url, "green")
    })
    .await;
    // The process survived both signals.
    let got = get(&format!("http://{}/healthz", p.admin)).await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn reload_removing_a_backend_lets_its_slow_request_finish() {
    let slow = upstream_with(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        respond(200, "old")
    })
    .await;
    let new = upstream("new").await;
    let green = upstream("green").await;
    let v = start_veer(&two_pools(&[slow.addr], &[green.addr], 1, 0)).await;
    let url = v.url("/slow");
    let inflight = tokio::spawn(async move { get(&url).await });
    eventually(
        "slow request reached the backend",
        Duration::from_secs(2),
        || slow.hits() == 1,
    )
    .await;
    let removed = slow.addr.to_string();
    write_by_rename(
        &v.config_path,
        &with_listeners(&two_pools(&[new.addr], &[green.addr], 1, 0)),
    );
    until("new backend serves", Duration::from_secs(2), || {
        answers(v.url("/"), "new")
    })
    .await;
    // The removed backend shows as draining with its request still in flight.
    let status = json_of(&api(v.admin, "GET", "/api/status", "", None).await);
    let b = status["pools"]["blue"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == removed.as_str())
        .cloned()
        .expect("removed backend listed while draining");
    assert_eq!(b["draining"], true);
    assert_eq!(b["in_flight"], 1);
    let got = inflight.await.unwrap();
    assert_eq!((got.status, got.body.as_str()), (200, "old"));
    v.shutdown().await;
}

/// 32 connections kept busy for 10 s while the file is rewritten every 200 ms (splits and a
/// backend swapped in and out) and the slots are swapped through the API every 500 ms: every
/// single request must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_load_reloads_and_swaps_fail_no_request() {
    let b1 = upstream("blue").await;
    let b2 = upstream("blue").await;
    let b3 = upstream("blue").await;
    let g1 = upstream("green").await;
    let g2 = upstream("green").await;
    let g3 = upstream("green").await;
    let configs = [
        with_listeners(&two_pools(&[b1.addr, b2.addr], &[g1.addr, g2.addr], 70, 30)),
        with_listeners(&two_pools(&[b1.addr, b3.addr], &[g1.addr, g3.addr], 30, 70)),
        // Whole pools replaced (a deploy to new addresses).
        with_listeners(&two_pools(&[b2.addr], &[g2.addr], 50, 50)),
        with_listeners(&two_pools(&[b1.addr, b2.addr, b3.addr], &[g3.addr], 60, 40)),
    ];
    let v = start_veer(&configs[0]).await;
    let url: http::Uri = v.url("/load").parse().unwrap();
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    let mut workers = Vec::new();
    for _ in 0..32 {
        let (client, url, ok, failures) =
            (client.clone(), url.clone(), ok.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let req = Request::get(url.clone())
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        match resp.into_body().collect().await {
                            Ok(_) if status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(b) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{status}: {:?}", b.to_bytes())),
                            Err(e) => failures.lock().unwrap().push(format!("body error: {e}")),
                        }
                    }
                    Ok(Err(e)) => failures
                        .lock()
                        .unwrap()
                        .push(format!("request error: {e:?}")),
                    Err(_) => failures.lock().unwrap().push("timed out".into()),
                }
            }
        }));
    }

    let path = v.config_path.clone();
    let writer = tokio::spawn(async move {
        let mut i = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            i += 1;
            write_by_rename(&path, &configs[i % configs.len()]);
        }
        i
    });
    let admin = v.admin;
    let swapper = tokio::spawn(async move {
        let mut statuses = Vec::new();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            statuses.push(
                api(admin, "POST", "/api/routes/web/swap", "", None)
                    .await
                    .status,
            );
        }
        statuses
    });

    for w in workers {
        w.await.unwrap();
    }
    let writes = writer.await.unwrap();
    let swaps = swapper.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 1000, "only {ok} requests in 10 s");
    assert!(writes >= 40, "only {writes} rewrites");
    assert!(
        swaps.len() >= 15 && swaps.iter().all(|s| *s == 200),
        "swaps: {swaps:?}"
    );
    assert!(
        reloads(&v, "success") >= 20,
        "reloads: {}",
        reloads(&v, "success")
    );
    assert_eq!(reloads(&v, "failure"), 0);
    eprintln!(
        "under load: {ok} requests ok, {writes} rewrites, {} swaps, {} reloads",
        swaps.len(),
        reloads(&v, "success")
    );
    v.shutdown().await;
}

#[tokio::test]
async fn api_needs_the_bearer_token() {
    let blue = upstream("blue").await;
    let env = token_env("auth");
    std::env::set_var(&env, "s3cret-token");
    let v = start_veer(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{env}\"\n{}",
        two_pools(&[blue.addr], &[blue.addr], 1, 0)
    ))
    .await;
    for (method, path) in [
        ("GET", "/api/status"),
        ("POST", "/api/reload"),
        ("PUT", "/api/routes/web/split"),
        ("GET", "/api/nope"),
    ] {
        let none = api(v.admin, method, path, "{}", None).await;
        assert_eq!(
            none.status, 401,
            "{method} {path} without a token: {}",
            none.body
        );
        assert!(json_of(&none)["error"]
            .as_str()
            .unwrap()
            .contains("missing"));
        assert!(none
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"));
        let wrong = api(v.admin, method, path, "{}", Some("s3cret-tokeN")).await;
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
        let prefix = api(v.admin, method, path, "{}", Some("s3cret")).await;
        assert_eq!(
            prefix.status, 401,
            "{method} {path} with a prefix of the token"
        );
    }
    let right = api(v.admin, "GET", "/api/status", "", Some("s3cret-token")).await;
    assert_eq!(right.status, 200);
    assert_eq!(json_of(&right)["routes"][0]["name"], "web");
    // Wrong scheme.
    let basic = get_with(
        &v.admin_url("/api/status"),
        &[("authorization", "Basic czNjcmV0LXRva2Vu")],
    )
    .await;
    assert_eq!(basic.status, 401);
    // Outside /api the admin listener stays open (probes and scrapers carry no token).
    assert_eq!(get(&v.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(&v.admin_url("/metrics")).await.status, 200);
    v.shutdown().await;
    std::env::remove_var(&env);
}

#[tokio::test]
async fn api_is_open_on_loopback_without_a_token() {
    let blue = upstream("blue").await;
    let env = token_env("open");
    let v = start_veer(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{env}\"\n{}",
        two_pools(&[blue.addr], &[blue.addr], 1, 0)
    ))
    .await;
    assert_eq!(
        api(v.admin, "GET", "/api/status", "", None).await.status,
        200
    );
    v.shutdown().await;
}

#[tokio::test]
async fn non_loopback_admin_without_token_does_not_start() {
    let blue = upstream("blue").await;
    let env = token_env("nonloop");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"0.0.0.0:0\"\ntoken_env = \"{env}\"\n{}",
        two_pools(&[blue.addr], &[blue.addr], 1, 0)
    );
    let config = veer::config::Config::parse(Path::new("veer.toml"), &text).unwrap();
    let err = veer::app::start(config, None).await.err().expect("refused");
    assert!(err.to_string().contains(&env), "{err}");
}

const COMMENTED: &str = r#"# Production front door.
[pools.blue]   # current release
backends = ["BLUE"]

[pools.green]  # next release
backends = ["GREEN"]

# The one route.
[[routes]]
name = "web"
split = { blue = 100, green = 0 }   # shifted by the release pipeline
"#;

#[tokio::test]
async fn api_split_is_written_back_keeping_comments_and_survives_restart() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let text = COMMENTED
        .replace("BLUE", &blue.addr.to_string())
        .replace("GREEN", &green.addr.to_string());
    let v = start_veer(&text).await;
    let g = api(
        v.admin,
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 0, "green": 100}"#,
        None,
    )
    .await;
    assert_eq!(g.status, 200, "{}", g.body);
    let j = json_of(&g);
    assert_eq!(j["split"], serde_json::json!({"blue": 0, "green": 100}));
    assert_eq!(j["route"], "web");
    // Live at once (the API applies; it does not wait for the watcher).
    assert!(answers(v.url("/"), "green").await);
    let file = std::fs::read_to_string(&v.config_path).unwrap();
    for comment in [
        "# Production front door.",
        "# current release",
        "# next release",
        "# The one route.",
        "# shifted by the release pipeline",
    ] {
        assert!(file.contains(comment), "lost {comment:?}:\n{file}");
    }
    assert!(file.contains("split = { blue = 0, green = 100 }"), "{file}");
    // The write-back is not reloaded again as a change.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(reloads(&v, "success"), 0);
    assert_eq!(reloads(&v, "failure"), 0);

    // Swap writes back too.
    let g = api(v.admin, "POST", "/api/routes/web/swap", "", None).await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(
        json_of(&g)["split"],
        serde_json::json!({"blue": 100, "green": 0})
    );
    assert!(std::fs::read_to_string(&v.config_path)
        .unwrap()
        .contains("split = { blue = 100, green = 0 }   # shifted"));
    let g = api(v.admin, "POST", "/api/routes/web/swap", "", None).await;
    assert_eq!(
        json_of(&g)["split"],
        serde_json::json!({"blue": 0, "green": 100})
    );

    // Restart from the file: the changed split is what comes up.
    let v = v.restart().await;
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 0), ("green".into(), 100)]
    );
    assert!(answers(v.url("/"), "green").await);
    v.shutdown().await;
}

#[tokio::test]
async fn read_only_config_file_gives_409_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = start_veer(&two_pools(&[blue.addr], &[green.addr], 1, 0)).await;
    std::fs::set_permissions(&v.config_path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::read(&v.config_path).unwrap();
    let version = v.rt().snapshot().version;
    let g = api(
        v.admin,
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 0, "green": 1}"#,
        None,
    )
    .await;
    assert_eq!(g.status, 409, "{}", g.body);
    assert!(
        json_of(&g)["error"].as_str().unwrap().contains("read-only"),
        "{}",
        g.body
    );
    let g = api(v.admin, "POST", "/api/routes/web/swap", "", None).await;
    assert_eq!(g.status, 409, "{}", g.body);
    assert_eq!(std::fs::read(&v.config_path).unwrap(), before);
    assert_eq!(v.rt().snapshot().version, version);
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 1), ("green".into(), 0)]
    );
    assert!(answers(v.url("/"), "blue").await);
    // No temp file left behind.
    let leftovers: Vec<_> = std::fs::read_dir(v.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("veer-tmp"))
        .collect();
    assert!(leftovers.is_empty());
    v.shutdown().await;
}

#[tokio::test]
async fn unknown_things_are_404() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = start_veer(&two_pools(&[blue.addr], &[green.addr], 1, 0)).await;
    let cases = [
        (
            "PUT",
            "/api/routes/nope/split".to_string(),
            r#"{"blue": 1}"#,
        ),
        ("POST", "/api/routes/nope/swap".to_string(), ""),
        (
            "POST",
            format!("/api/pools/red/backends/{}/drain", blue.addr),
            "",
        ),
        (
            "POST",
            "/api/pools/blue/backends/127.0.0.1:1/drain".to_string(),
            "",
        ),
        (
            "POST",
            "/api/pools/blue/backends/127.0.0.1:1/undrain".to_string(),
            "",
        ),
        ("GET", "/api/nothing/here".to_string(), ""),
    ];
    for (method, path, body) in cases {
        let g = api(v.admin, method, &path, body, None).await;
        assert_eq!(g.status, 404, "{method} {path}: {}", g.body);
        assert!(json_of(&g)["error"].is_string());
    }
    // A known path with the wrong method.
    let g = api(v.admin, "GET", "/api/routes/web/split", "", None).await;
    assert_eq!(g.status, 405);
    assert_eq!(g.header("allow"), Some("PUT"));
    v.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_400_and_change_nothing() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = start_veer(&two_pools(&[blue.addr], &[green.addr], 1, 0)).await;
    let before = std::fs::read(&v.config_path).unwrap();
    let cases = [
        ("{not json", "invalid JSON"),
        ("", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        (r#"{"blue": -1}"#, "non-negative integer"),
        (r#"{"blue": 1.5}"#, "non-negative integer"),
        (r#"{"blue": "10"}"#, "non-negative integer"),
        (r#"{"blue": 2000000}"#, "up to"),
        (r#"{"red": 1}"#, "does not exist"),
        (r#"{"blue": 0, "green": 0}"#, "zero"),
        ("{}", "no pool"),
    ];
    for (body, why) in cases {
        let g = api(v.admin, "PUT", "/api/routes/web/split", body, None).await;
        assert_eq!(g.status, 400, "{body}: {}", g.body);
        let msg = json_of(&g)["error"].as_str().unwrap().to_string();
        assert!(msg.contains(why), "{body}: {msg}");
    }
    let g = api(
        v.admin,
        "POST",
        "/api/pools/blue/backends/not-an-addr/drain",
        "",
        None,
    )
    .await;
    assert_eq!(g.status, 400);
    assert_eq!(std::fs::read(&v.config_path).unwrap(), before);
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 1), ("green".into(), 0)]
    );
    v.shutdown().await;
}

#[tokio::test]
async fn swap_refuses_an_unhealthy_target_unless_forced() {
    let blue = upstream("blue").await;
    // Green fails its health checks, so it never becomes healthy.
    let green = upstream_with(|req| async move {
        if req.uri().path() == "/health" {
            respond(500, "sick")
        } else {
            respond(200, "green")
        }
    })
    .await;
    let text = format!(
        "{}\n[pools.green.health_check]\npath = \"/health\"\ninterval = \"100ms\"\n",
        two_pools(&[blue.addr], &[green.addr], 100, 0)
    );
    let v = start_veer(&text).await;
    let g = api(v.admin, "POST", "/api/routes/web/swap", "", None).await;
    assert_eq!(g.status, 409, "{}", g.body);
    assert!(json_of(&g)["error"].as_str().unwrap().contains("green"));
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 100), ("green".into(), 0)]
    );
    let g = api(v.admin, "POST", "/api/routes/web/swap?force=true", "", None).await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 0), ("green".into(), 100)]
    );
    // Swapping back moves traffic to healthy blue: no force needed.
    let g = api(v.admin, "POST", "/api/routes/web/swap", "", None).await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 100), ("green".into(), 0)]
    );
    v.shutdown().await;
}

#[tokio::test]
async fn swap_needs_exactly_two_pools() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let v = start_veer(&format!(
        "[pools.a]\nbackends = [\"{}\"]\n[pools.b]\nbackends = [\"{}\"]\n[pools.c]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ a = 1, b = 1, c = 1 }}\n",
        a.addr, b.addr, c.addr
    ))
    .await;
    let g = api(v.admin, "POST", "/api/routes/web/swap", "", None).await;
    assert_eq!(g.status, 409, "{}", g.body);
    assert!(json_of(&g)["error"]
        .as_str()
        .unwrap()
        .contains("exactly two"));
    v.shutdown().await;
}

#[tokio::test]
async fn drain_and_undrain_through_the_api() {
    let (b1, b2) = (upstream("b1").await, upstream("b2").await);
    let v = start_veer(&format!(
        "[pools.blue]\nbackends = [\"{}\", \"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 1 }}\n",
        b1.addr, b2.addr
    ))
    .await;
    let g = api(
        v.admin,
        "POST",
        &format!("/api/pools/blue/backends/{}/drain", b1.addr),
        "",
        None,
    )
    .await;
    assert_eq!(g.status, 202, "{}", g.body);
    assert_eq!(json_of(&g)["draining"], true);
    for _ in 0..10 {
        assert!(answers(v.url("/"), "b2").await);
    }
    let status = json_of(&api(v.admin, "GET", "/api/status", "", None).await);
    let backends = status["pools"]["blue"]["backends"].as_array().unwrap();
    let b = backends
        .iter()
        .find(|b| b["addr"] == b1.addr.to_string().as_str())
        .unwrap();
    assert_eq!(b["draining"], true);
    // Draining is runtime state: it survives a reload for a backend that stays.
    let text = std::fs::read_to_string(&v.config_path)
        .unwrap()
        .replace("name = \"web\"", "name = \"web\"\nfallback = false");
    write_by_rename(&v.config_path, &text);
    eventually("reloaded", Duration::from_secs(2), || {
        reloads(&v, "success") == 1
    })
    .await;
    for _ in 0..4 {
        assert!(answers(v.url("/"), "b2").await);
    }
    // Percent-encoded address works as well.
    let enc = b1.addr.to_string().replace(':', "%3A");
    let g = api(
        v.admin,
        "POST",
        &format!("/api/pools/blue/backends/{enc}/undrain"),
        "",
        None,
    )
    .await;
    assert_eq!(g.status, 202, "{}", g.body);
    until("b1 takes traffic again", Duration::from_secs(2), || {
        answers(v.url("/"), "b1")
    })
    .await;
    v.shutdown().await;
}

/// The API reload answers with what changed. The watcher is off, so only the API applies.
#[tokio::test]
async fn api_reload_reports_what_changed() {
    let (b1, b2, g1) = (
        upstream("b1").await,
        upstream("b2").await,
        upstream("g1").await,
    );
    let (dir, path) = write_config(&with_listeners(&two_pools(&[b1.addr], &[g1.addr], 1, 0)));
    let v = start_veer_file_unwatched(dir, path.clone()).await;
    let admin = v.admin;
    let mut next = two_pools(&[b2.addr], &[g1.addr], 1, 3);
    next.push_str("\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nsplit = { green = 1 }\n");
    std::fs::write(&path, with_listeners(&next)).unwrap();
    // Without the watcher nothing happens until asked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(v.rt().config().routes.len(), 1);
    let g = api(admin, "POST", "/api/reload", "", None).await;
    assert_eq!(g.status, 200, "{}", g.body);
    let j = json_of(&g);
    assert_eq!(j["changed"], true);
    assert_eq!(j["routes_added"], serde_json::json!(["api"]));
    assert_eq!(
        j["weights_changed"]["web"],
        serde_json::json!({"blue": 1, "green": 3})
    );
    assert_eq!(
        j["added"],
        serde_json::json!([format!("blue/{}", b2.addr)]),
        "{j}"
    );
    assert_eq!(
        j["removed"],
        serde_json::json!([format!("blue/{}", b1.addr)]),
        "{j}"
    );
    assert!(j["version"].as_u64().unwrap() >= 2);
    // Again with no change: 200, nothing changed, still counted as a reload.
    let g = api(admin, "POST", "/api/reload", "", None).await;
    assert_eq!(json_of(&g)["changed"], false);
    assert_eq!(
        v.rt().metrics.reloads.with_label_values(&["success"]).get(),
        2
    );
    v.shutdown().await;
}

/// A reload that adds a listener serves on it at once; connections on the listener that
/// stays are not touched; a removed listener stops accepting.
#[tokio::test]
async fn listen_changes_apply_without_dropping_connections() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let keep = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let body = two_pools(&[blue.addr], &[green.addr], 1, 0);
    let v = start_veer(&format!("[server]\nlisten = [\"{keep}\"]\n{body}")).await;
    assert_eq!(v.addr, keep);

    // One keep-alive connection, used before and after the reload.
    let stream = tokio::net::TcpStream::connect(keep).await.unwrap();
    let mut conn = BufReader::new(stream);
    async fn exchange(conn: &mut BufReader<tokio::net::TcpStream>) -> String {
        conn.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut len = 0;
        let mut status = String::new();
        conn.read_line(&mut status).await.unwrap();
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut b = vec![0; len];
        conn.read_exact(&mut b).await.unwrap();
        format!("{} {}", status.trim(), String::from_utf8(b).unwrap())
    }
    assert_eq!(exchange(&mut conn).await, "HTTP/1.1 200 OK blue");

    write_by_rename(&v.config_path, &format!("[server]\nlisten = [\"{keep}\", \"{extra}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{body}"));
    until("extra listener serves", Duration::from_secs(2), || async {
        tokio::net::TcpStream::connect(extra).await.is_ok()
            && answers(format!("http://{extra}/"), "blue").await
    })
    .await;
    assert_eq!(
        exchange(&mut conn).await,
        "HTTP/1.1 200 OK blue",
        "kept connection still served"
    );
    let (plain, _) = v.running.as_ref().unwrap().listeners.bound();
    assert_eq!(plain, vec![keep, extra]);

    write_by_rename(
        &v.config_path,
        &format!("[server]\nlisten = [\"{keep}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{body}"),
    );
    until("extra listener closed", Duration::from_secs(2), || async {
        tokio::net::TcpStream::connect(extra).await.is_err()
    })
    .await;
    assert_eq!(
        exchange(&mut conn).await,
        "HTTP/1.1 200 OK blue",
        "kept connection still served"
    );
    v.shutdown().await;
}

/// A reload whose new listener cannot bind changes nothing.
#[tokio::test]
async fn reload_with_an_unbindable_listener_changes_nothing() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let v = start_veer(&two_pools(&[blue.addr], &[green.addr], 1, 0)).await;
    let version = v.rt().snapshot().version;
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\", \"{taken_addr}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        two_pools(&[blue.addr], &[green.addr], 0, 1)
    );
    std::fs::write(&v.config_path, text).unwrap();
    let g = api(v.admin, "POST", "/api/reload", "", None).await;
    assert_eq!(g.status, 400, "{}", g.body);
    assert!(g.body.contains(&taken_addr.to_string()), "{}", g.body);
    assert_eq!(v.rt().snapshot().version, version);
    assert!(answers(v.url("/"), "blue").await);
    drop(taken);
    v.shutdown().await;
}

/// Without a config file (as in `veer demo`) API changes apply in memory; reload has nothing
/// to read.
#[tokio::test]
async fn without_a_file_changes_apply_in_memory() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let text = with_listeners(&two_pools(&[blue.addr], &[green.addr], 1, 0));
    let config = veer::config::Config::parse(Path::new("demo.toml"), &text).unwrap();
    let running = veer::app::start(config, None).await.unwrap();
    let (admin, url) = (running.admin, format!("http://{}/", running.listen[0]));
    assert!(answers(&url, "blue").await);
    let g = api(
        admin,
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 0, "green": 5}"#,
        None,
    )
    .await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert!(answers(&url, "green").await);
    let g = api(admin, "POST", "/api/routes/web/swap", "", None).await;
    assert_eq!(
        json_of(&g)["split"],
        serde_json::json!({"blue": 5, "green": 0})
    );
    assert!(answers(&url, "blue").await);
    let g = api(admin, "POST", "/api/reload", "", None).await;
    assert_eq!(g.status, 409, "{}", g.body);
    assert!(json_of(&g)["error"]
        .as_str()
        .unwrap()
        .contains("without a config file"));
    running.shutdown().await;
}
