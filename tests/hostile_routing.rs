//! Issue 12, the routing part: a breaker that trips on the failure that reaches its threshold
//! (not one request later), fallback to the idle slot and where traffic really goes, and
//! overrides that cannot be forged. Real upstreams and a real veer on 127.0.0.1:0; every
//! assertion is on what the upstreams received or what veer answered over a socket.

mod support;

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

/// Route `web` at `split` with retries off, and `extra` keys.
fn one_try_route(split: &str, extra: &str) -> String {
    route(split, &format!("retry = {{ attempts = 1 }}\n{extra}"))
}

const BREAKER: &str = "[pools.p.circuit_breaker]\nconsecutive_failures = 3\nopen_for = \"1m\"\n";

// ---------------------------------------------------------------- item 9: breaker on time

// Worker threads as the binary has them, so the background task could race the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_answers_503_from_the_fourth_request_and_the_backend_sees_three() {
    // Several rounds: with the trip left to the background task, the 4th request raced it.
    for round in 0..8 {
        let bad = upstream_with(|_req| async { respond(500, "bad") }).await;
        let veer =
            start_veer(&(pool("p", &[bad.addr], BREAKER) + &one_try_route("{ p = 1 }", ""))).await;
        let url = veer.url("/");
        for i in 1..=3 {
            let got = get(&url).await;
            assert_eq!(
                (got.status, got.body.as_str()),
                (500, "bad"),
                "round {round}, request {i}"
            );
        }
        for i in 4..=8 {
            let got = get(&url).await;
            assert_eq!(got.status, 503, "round {round}, request {i}: {}", got.body);
            assert_eq!(got.body, "no backend available\n");
            assert!(got.header("retry-after").is_some());
        }
        assert_eq!(
            bad.hits(),
            3,
            "round {round}: exactly consecutive_failures requests"
        );
        let m = get(&veer.admin_url("/metrics")).await.body;
        let addr = format!("backend=\"{}\"", bad.addr);
        assert_eq!(
            metric_sample(&m, "veer_circuit_breaker_trips_total", &[&addr]),
            Some(1.0),
            "one trip, counted once"
        );
        veer.shutdown().await;
    }
}

#[tokio::test]
async fn pipelined_requests_cannot_slip_past_the_trip() {
    // Six requests in one write: veer reads the 4th right after answering the 3rd, with no
    // chance for a background task to run in between. Only the request path can stop it.
    let bad = upstream_with(|_req| async { respond(500, "bad") }).await;
    let veer =
        start_veer(&(pool("p", &[bad.addr], BREAKER) + &one_try_route("{ p = 1 }", ""))).await;
    let one = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let last = "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let bytes = one.repeat(5) + last;
    let answer = raw(veer.addr, bytes.as_bytes(), Duration::from_secs(10)).await;
    let statuses: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
    assert_eq!(
        statuses,
        ["500", "500", "500", "503", "503", "503"],
        "{answer}"
    );
    assert_eq!(bad.hits(), 3);
    veer.shutdown().await;
}

// Worker threads as the binary has them, so the background task could race the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_pool_of_two_the_fourth_request_goes_to_the_other_backend() {
    for round in 0..5 {
        let bad = upstream_with(|_req| async { respond(500, "bad") }).await;
        let good = upstream("good").await;
        let veer = start_veer(
            &(pool("p", &[bad.addr, good.addr], BREAKER) + &one_try_route("{ p = 1 }", "")),
        )
        .await;
        let url = veer.url("/");
        let mut failed = 0;
        for _ in 0..30 {
            let got = get(&url).await;
            match got.status {
                500 => failed += 1,
                200 => assert_eq!(got.body, "good"),
                s => panic!("round {round}: unexpected {s}: {}", got.body),
            }
        }
        assert_eq!(
            bad.hits(),
            3,
            "round {round}: the bad backend sees exactly three"
        );
        assert_eq!(failed, 3);
        assert_eq!(good.hits(), 27);
        veer.shutdown().await;
    }
}

// ---------------------------------------------------------------- item 10: fallback and effective split

/// veer over pools blue and green, route web at `split` with `extra` keys.
async fn start_blue_green(blue: &Upstream, green: &Upstream, split: &str, extra: &str) -> Veer {
    let pools = pool("blue", &[blue.addr], "") + &pool("green", &[green.addr], "");
    start_veer(&(pools + &one_try_route(split, extra))).await
}

/// Drain `addr` in `pool` (at once: a 1 s drain with nothing in flight).
fn drain(veer: &Veer, pool: &str, addr: SocketAddr) {
    assert!(
        veer.rt()
            .registry
            .set_draining(pool, addr, true, Duration::from_secs(1)),
        "{pool} has {addr}"
    );
}

/// The `effective` shares of the web route in /api/status.
async fn effective(veer: &Veer) -> Value {
    let status = json_of(&get(&veer.admin_url("/api/status")).await);
    let web = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .unwrap()
        .clone();
    assert!(web["split"].is_object(), "the split is still there: {web}");
    web["effective"].clone()
}

#[tokio::test]
async fn after_a_swap_the_idle_slot_takes_the_traffic_production_cannot() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    // A completed swap: green is production, blue idle at 0.
    let veer = start_blue_green(&blue, &green, "{ blue = 0, green = 100 }", "").await;
    let url = veer.url("/");
    assert_eq!(get(&url).await.body, "green");
    assert_eq!(
        effective(&veer).await,
        serde_json::json!({ "blue": 0.0, "green": 100.0 })
    );
    drain(&veer, "green", green.addr);
    let before = blue.hits();
    for _ in 0..20 {
        let got = get(&url).await;
        assert_eq!((got.status, got.body.as_str()), (200, "blue"));
    }
    assert_eq!(blue.hits() - before, 20, "blue received them all");
    assert_eq!(
        effective(&veer).await,
        serde_json::json!({ "blue": 100.0, "green": 0.0 })
    );
    // Nothing anywhere: 503, and the shares say so.
    drain(&veer, "blue", blue.addr);
    assert_eq!(get(&url).await.status, 503);
    assert_eq!(
        effective(&veer).await,
        serde_json::json!({ "blue": 0.0, "green": 0.0 })
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn fallback_weighted_keeps_the_old_rule_and_false_none() {
    for extra in ["fallback = \"weighted\"", "fallback = false"] {
        let (blue, green) = (upstream("blue").await, upstream("green").await);
        let veer = start_blue_green(&blue, &green, "{ blue = 0, green = 100 }", extra).await;
        drain(&veer, "green", green.addr);
        for _ in 0..5 {
            let got = get(&veer.url("/")).await;
            assert_eq!(got.status, 503, "{extra}: {}", got.body);
        }
        assert_eq!(blue.hits(), 0, "{extra}: the idle slot gets nothing");
        assert_eq!(
            effective(&veer).await,
            serde_json::json!({ "blue": 0.0, "green": 0.0 }),
            "{extra}"
        );
        veer.shutdown().await;
    }
    // With weighted pools only, "weighted" still moves a share between them.
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_blue_green(
        &blue,
        &green,
        "{ blue = 75, green = 25 }",
        "fallback = \"weighted\"",
    )
    .await;
    assert_eq!(
        effective(&veer).await,
        serde_json::json!({ "blue": 75.0, "green": 25.0 })
    );
    drain(&veer, "blue", blue.addr);
    assert_eq!(
        effective(&veer).await,
        serde_json::json!({ "blue": 0.0, "green": 100.0 })
    );
    for _ in 0..10 {
        assert_eq!(get(&veer.url("/")).await.body, "green");
    }
    veer.shutdown().await;
}

#[tokio::test]
async fn the_status_page_bar_shows_where_traffic_goes() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_blue_green(&blue, &green, "{ blue = 0, green = 100 }", "").await;
    drain(&veer, "green", green.addr);
    let dom = rendered_dom(&veer.admin_url("/"), 3000).await;
    // The configured weights stay on the segments; the bar's size is the effective share.
    assert!(
        dom.contains(r#"data-pool="blue" data-weight="0" data-effective="100""#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"data-pool="green" data-weight="100" data-effective="0""#),
        "{dom}"
    );
    assert!(
        dom.contains("flex-grow:100;background:var(--blue)"),
        "{dom}"
    );
    assert!(
        dom.contains("(split 0%)"),
        "the legend says the split differs: {dom}"
    );
    veer.shutdown().await;
}

// ---------------------------------------------------------------- item 12: overrides that cannot be forged

async fn rejected(veer: &Veer) -> f64 {
    let m = get(&veer.admin_url("/metrics")).await.body;
    metric_sample(&m, "veer_override_rejected_total", &["route=\"web\""])
        .unwrap_or_else(|| panic!("no veer_override_rejected_total for web:\n{m}"))
}

/// veer with route web at blue 100, green 0, and an override by header `x-veer-pool` and
/// cookie `veer_pool` with `keys` (like `allow_from = [...]`).
async fn start_override(blue: &Upstream, green: &Upstream, keys: &str) -> Veer {
    let o = format!("override = {{ header = \"x-veer-pool\", cookie = \"veer_pool\", {keys} }}");
    start_blue_green(blue, green, "{ blue = 100, green = 0 }", &o).await
}

#[tokio::test]
async fn allow_from_is_matched_on_the_peer_address() {
    // The test client connects from 127.0.0.1.
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_override(
        &blue,
        &green,
        "allow_from = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
    )
    .await;
    let url = veer.url("/");
    assert_eq!(rejected(&veer).await, 0.0, "the counter exists at zero");
    for h in [("x-veer-pool", "green"), ("cookie", "veer_pool=green")] {
        let got = get_with(&url, &[h]).await;
        assert_eq!(got.body, "blue", "{h:?}: ignored from outside allow_from");
    }
    assert_eq!(green.hits(), 0, "green never saw a request");
    assert_eq!(rejected(&veer).await, 2.0);
    // No override asked for: nothing counted.
    assert_eq!(get(&url).await.body, "blue");
    assert_eq!(rejected(&veer).await, 2.0);
    veer.shutdown().await;

    let veer = start_override(
        &blue,
        &green,
        "allow_from = [\"10.0.0.0/8\", \"127.0.0.0/8\"]",
    )
    .await;
    let got = get_with(&veer.url("/"), &[("x-veer-pool", "green")]).await;
    assert_eq!(got.body, "green");
    assert_eq!(green.hits(), 1);
    assert_eq!(rejected(&veer).await, 0.0);
    veer.shutdown().await;
}

/// Set an env var only this test file's tests read (each test its own name).
fn secret_env(name: &str, value: &str) {
    std::env::set_var(name, value);
}

#[tokio::test]
async fn secret_tokens_force_only_their_pool() {
    let env = "VEER_HOSTILE_ROUTING_SECRET_A";
    secret_env(env, "correct horse battery staple");
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_override(&blue, &green, &format!("secret_env = \"{env}\"")).await;
    let url = veer.url("/");
    let secret = b"correct horse battery staple";
    let green_token = veer::routing::pool_override::token(secret, "green");
    let blue_token = veer::routing::pool_override::token(secret, "blue");

    let good = get_with(&url, &[("x-veer-pool", &green_token)]).await;
    assert_eq!(good.body, "green");
    let by_cookie = get_with(
        &url,
        &[("cookie", &format!("a=1; veer_pool={green_token}"))],
    )
    .await;
    assert_eq!(by_cookie.body, "green");
    assert_eq!(green.hits(), 2);
    assert_eq!(rejected(&veer).await, 0.0);

    let forged = [
        "green".to_string(),                                             // the bare name
        format!("green.{}", "0".repeat(64)),                             // a made-up tag
        veer::routing::pool_override::token(b"another secret", "green"), // another secret
        format!("green{}", &blue_token[4..]),                            // blue's tag on green
        format!("green.{}", green_token[6..].to_uppercase()),            // not lowercase hex
        format!("{green_token}00"),                                      // too long
        green_token[..green_token.len() - 1].to_string(),                // too short
    ];
    for v in &forged {
        let got = get_with(&url, &[("x-veer-pool", v)]).await;
        assert_eq!(got.body, "blue", "{v}: ignored, the split applies");
    }
    assert_eq!(green.hits(), 2, "no forged value reached green");
    assert_eq!(rejected(&veer).await, forged.len() as f64);
    // Blue's token forces blue (the other pool's value is valid for its own pool).
    let got = get_with(&url, &[("x-veer-pool", &blue_token)]).await;
    assert_eq!(got.body, "blue");
    assert_eq!(rejected(&veer).await, forged.len() as f64);
    veer.shutdown().await;
}

#[tokio::test]
async fn allow_from_and_secret_together_need_both() {
    let env = "VEER_HOSTILE_ROUTING_SECRET_B";
    secret_env(env, "s3cret");
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let token = veer::routing::pool_override::token(b"s3cret", "green");
    let veer = start_override(
        &blue,
        &green,
        &format!("allow_from = [\"10.0.0.0/8\"], secret_env = \"{env}\""),
    )
    .await;
    let got = get_with(&veer.url("/"), &[("x-veer-pool", &token)]).await;
    assert_eq!(
        got.body, "blue",
        "a good token from outside allow_from is ignored"
    );
    assert_eq!(rejected(&veer).await, 1.0);
    veer.shutdown().await;
    let veer = start_override(
        &blue,
        &green,
        &format!("allow_from = [\"127.0.0.0/8\"], secret_env = \"{env}\""),
    )
    .await;
    assert_eq!(
        get_with(&veer.url("/"), &[("x-veer-pool", &token)])
            .await
            .body,
        "green"
    );
    assert_eq!(
        get_with(&veer.url("/"), &[("x-veer-pool", "green")])
            .await
            .body,
        "blue"
    );
    assert_eq!(rejected(&veer).await, 1.0);
    assert_eq!(green.hits(), 1);
    veer.shutdown().await;
}

#[tokio::test]
async fn the_cli_prints_the_token_veer_accepts() {
    let env = "VEER_HOSTILE_ROUTING_SECRET_C";
    secret_env(env, "from the cli");
    let out = std::process::Command::new(veer_bin())
        .args(["override-token", "green", "--secret-env", env])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let token = printed.strip_suffix('\n').expect("one line");
    assert!(token.starts_with("green."), "{token}");
    assert_eq!(token.len(), "green.".len() + 64);
    assert!(token[6..]
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_override(&blue, &green, &format!("secret_env = \"{env}\"")).await;
    let got = get_with(&veer.url("/"), &[("x-veer-pool", token)]).await;
    assert_eq!(got.body, "green");
    assert_eq!(green.hits(), 1);
    veer.shutdown().await;

    // The default env var, and errors on stderr with exit 1.
    let out = std::process::Command::new(veer_bin())
        .args(["override-token", "green"])
        .env("VEER_OVERRIDE_SECRET", "from the cli")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), printed);
    let out = std::process::Command::new(veer_bin())
        .args([
            "override-token",
            "green",
            "--secret-env",
            "VEER_HOSTILE_ROUTING_UNSET",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("\"VEER_HOSTILE_ROUTING_UNSET\" is not set"),
        "{err}"
    );
}

#[tokio::test]
async fn veer_check_names_the_line_of_a_missing_secret() {
    let text = "[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"web\"\n\
                split = { blue = 1 }\n\
                override = { header = \"x-veer-pool\", secret_env = \"VEER_HOSTILE_ROUTING_NEVER_SET\" }\n";
    let (_dir, path) = write_config(text);
    let out = std::process::Command::new(veer_bin())
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("VEER_HOSTILE_ROUTING_NEVER_SET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        format!(
            "{}:6:51: routes.web.override.secret_env: environment variable \"VEER_HOSTILE_ROUTING_NEVER_SET\" is not set\n",
            path.display()
        )
    );
    let out = std::process::Command::new(veer_bin())
        .args(["check", "--config"])
        .arg(&path)
        .env("VEER_HOSTILE_ROUTING_NEVER_SET", "x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
