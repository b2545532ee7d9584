//! Backends by name (SPEC §9, issue 17): a real DNS server on loopback (hickory-server with an
//! in-memory zone, tests/support/dns.rs) that veer asks through `[server] dns_servers`;
//! re-resolution on TTL, draining and health-checking as addresses come and go, the last good
//! addresses kept while DNS fails; `localhost` through the system resolver; IPv6 end to end.

mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A veer over pool `web` = `backends` (with `extra` pool lines), asking `dns` for names.
async fn veer_over(dns: &DnsServer, backends: &str, extra: &str) -> Veer {
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ndns_servers = [\"{}\"]\n\
         [pools.web]\nbackends = [{backends}]\n{extra}\n{}",
        dns.addr,
        route("{ web = 100 }", "")
    );
    start_veer_tweaked(&config, no_jitter).await
}

fn no_jitter(c: &mut veer::config::Config) {
    for p in c.pools.values_mut().map(std::sync::Arc::make_mut) {
        if let Some(h) = p.health_check.as_mut() {
            h.jitter = 0.0;
        }
    }
}

/// The backends of pool `pool` in `/api/status`.
async fn status_backends(veer: &Veer, pool: &str) -> Vec<Value> {
    let s = json_of(&get(&veer.admin_url("/api/status")).await);
    s["pools"][pool]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Those of them whose addr is `addr`.
fn find(bs: &[Value], addr: SocketAddr) -> Option<&Value> {
    bs.iter().find(|b| b["addr"] == addr.to_string())
}

/// Bodies of `n` GETs of `path`.
async fn bodies(veer: &Veer, path: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let g = get(&veer.url(path)).await;
        *seen.entry(format!("{} {}", g.status, g.body)).or_insert(0) += 1;
    }
    seen
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const HEALTH: &str = "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", healthy_threshold = 1, unhealthy_threshold = 1 }";

#[tokio::test]
async fn a_name_with_two_a_records_is_two_backends_each_with_its_own_health() {
    let port = common_port(&[v4(1), v4(2)]);
    let one = named_upstream(SocketAddr::new(v4(1), port), "one").await;
    let two = named_upstream(SocketAddr::new(v4(2), port), "two").await;
    let dns = DnsServer::start("test.").await;
    dns.set("api", &[v4(1), v4(2)], 60).await;
    let name = format!("{}:{port}", dns.name("api"));
    let veer = veer_over(&dns, &format!("\"{name}\""), HEALTH).await;

    wait_for("both addresses healthy", async || {
        let bs = status_backends(&veer, "web").await;
        bs.len() == 2 && bs.iter().all(|b| b["health"] == "healthy")
    })
    .await;
    let bs = status_backends(&veer, "web").await;
    for (b, addr) in [(one.up.addr, "one"), (two.up.addr, "two")] {
        let entry = find(&bs, b).unwrap_or_else(|| panic!("{addr} missing: {bs:?}"));
        assert_eq!(entry["name"], name.as_str(), "{entry}");
        // The name's weight (1) split evenly over its two addresses; no slow start.
        assert_eq!(entry["weight"], 0.5, "{entry}");
        assert_eq!(entry["weight_now"], 0.5, "{entry}");
    }
    let seen = bodies(&veer, "/", 40).await;
    assert_eq!(seen.get("200 one"), Some(&20), "{seen:?}");
    assert_eq!(seen.get("200 two"), Some(&20), "{seen:?}");

    // Each address has its own health: the second failing its checks leaves the first serving.
    two.healthy.store(false, Ordering::SeqCst);
    wait_for("the second address unhealthy", async || {
        let bs = status_backends(&veer, "web").await;
        find(&bs, two.up.addr).is_some_and(|b| b["health"] == "unhealthy")
            && find(&bs, one.up.addr).is_some_and(|b| b["health"] == "healthy")
    })
    .await;
    let seen = bodies(&veer, "/", 20).await;
    assert_eq!(seen.get("200 one"), Some(&20), "{seen:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn changed_records_drain_the_removed_address_and_check_the_new_one_first() {
    let port = common_port(&[v4(1), v4(2), v4(3)]);
    let one = named_upstream(SocketAddr::new(v4(1), port), "one").await;
    let two = named_upstream(SocketAddr::new(v4(2), port), "two").await;
    let three = named_upstream(SocketAddr::new(v4(3), port), "three").await;
    three.healthy.store(false, Ordering::SeqCst);
    let dns = DnsServer::start("test.").await;
    dns.set("api", &[v4(1), v4(2)], 1).await;
    let name = format!("{}:{port}", dns.name("api"));
    let veer = veer_over(&dns, &format!("\"{name}\""), HEALTH).await;
    wait_for("both addresses healthy", async || {
        let bs = status_backends(&veer, "web").await;
        bs.len() == 2 && bs.iter().all(|b| b["health"] == "healthy")
    })
    .await;

    // A request in flight on the second address.
    let slow_url = veer.url("/slow");
    let mut slow = Vec::new();
    for _ in 0..2 {
        let u = slow_url.clone();
        slow.push(tokio::spawn(async move { get(&u).await }));
    }
    wait_for("a slow request on each address", async || {
        one.served() >= 1 && two.served() >= 1
    })
    .await;

    let asked = std::time::Instant::now();
    dns.set("api", &[v4(1), v4(3)], 1).await;
    wait_for(
        "the second address removed and the third added",
        async || {
            let bs = status_backends(&veer, "web").await;
            find(&bs, two.up.addr).is_some_and(|b| b["removed"] == true && b["draining"] == true)
                && find(&bs, three.up.addr).is_some()
        },
    )
    .await;
    // Within the TTL (1 s) and a lookup's time, not dns_refresh (30 s).
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let bs = status_backends(&veer, "web").await;
    let t = find(&bs, three.up.addr).unwrap();
    assert_eq!(t["name"], name.as_str());
    assert_eq!(t["health"], "unhealthy", "{t}");
    // The new address failing its checks gets nothing.
    let before = three.served();
    let seen = bodies(&veer, "/", 10).await;
    assert_eq!(seen.get("200 one"), Some(&10), "{seen:?}");
    assert_eq!(three.served(), before);

    // The removed address finishes what it had in flight.
    one.release.add_permits(1);
    two.release.add_permits(1);
    for s in slow {
        let g = s.await.unwrap();
        assert_eq!(g.status, 200, "{}", g.body);
    }
    wait_for("the removed address gone after its drain", async || {
        find(&status_backends(&veer, "web").await, two.up.addr).is_none()
    })
    .await;

    // After its first passing check, the new address takes traffic.
    three.healthy.store(true, Ordering::SeqCst);
    wait_for("the new address serving", async || {
        bodies(&veer, "/", 4).await.contains_key("200 three")
    })
    .await;
    veer.shutdown().await;
}

#[tokio::test]
async fn a_stopped_dns_server_keeps_the_last_addresses_and_counts_failures() {
    let port = common_port(&[v4(1), v4(2)]);
    let _one = named_upstream(SocketAddr::new(v4(1), port), "one").await;
    let _two = named_upstream(SocketAddr::new(v4(2), port), "two").await;
    let dns = DnsServer::start("test.").await;
    dns.set("api", &[v4(1), v4(2)], 1).await;
    let name = format!("{}:{port}", dns.name("api"));
    let veer = veer_over(&dns, &format!("\"{name}\""), "dns_refresh = \"1s\"").await;
    let metrics = || async { get(&veer.admin_url("/metrics")).await.body };
    let m = metrics().await;
    assert!(
        metric_sum(
            &m,
            "veer_dns_resolutions_total",
            &["pool=\"web\"", "result=\"success\""]
        ) >= 1.0,
        "{m}"
    );

    dns.stop();
    wait_for("failed lookups counted", async || {
        let m = metrics().await;
        metric_sum(
            &m,
            "veer_dns_resolutions_total",
            &["pool=\"web\"", "result=\"failure\""],
        ) >= 2.0
    })
    .await;
    let bs = status_backends(&veer, "web").await;
    assert_eq!(bs.len(), 2, "{bs:?}");
    assert!(bs.iter().all(|b| b["removed"] == false), "{bs:?}");
    let seen = bodies(&veer, "/", 20).await;
    assert_eq!(seen.get("200 one"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("200 two"), Some(&10), "{seen:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn a_name_never_resolved_leaves_the_pool_empty_and_its_share_falls_back() {
    let dns = DnsServer::start("test.").await;
    let green = upstream("green").await;
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ndns_servers = [\"{}\"]\n\
         [pools.blue]\nbackends = [\"{}:8080\"]\n\
         [pools.green]\nbackends = [\"{}\"]\n{}",
        dns.addr,
        dns.name("missing"),
        green.addr,
        route("{ blue = 50, green = 50 }", "fallback = true")
    );
    let veer = start_veer(&config).await;
    assert!(status_backends(&veer, "blue").await.is_empty());
    let seen = bodies(&veer, "/", 10).await;
    assert_eq!(seen.get("200 green"), Some(&10), "{seen:?}");
    let m = get(&veer.admin_url("/metrics")).await.body;
    assert!(
        metric_sum(
            &m,
            "veer_dns_resolutions_total",
            &["pool=\"blue\"", "result=\"failure\""]
        ) >= 1.0,
        "{m}"
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn localhost_resolves_through_the_system_resolver() {
    let v6 = have_ipv6_loopback();
    let mut ips = vec![v4(1)];
    if v6 {
        ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
    let port = common_port(&ips);
    let mut ups = Vec::new();
    for ip in &ips {
        ups.push(named_upstream(SocketAddr::new(*ip, port), "local").await);
    }
    let config = format!(
        "[pools.web]\nbackends = [\"localhost:{port}\"]\n{}",
        route("{ web = 100 }", "")
    );
    let veer = start_veer(&config).await;
    let bs = status_backends(&veer, "web").await;
    assert!(!bs.is_empty(), "localhost resolved to nothing");
    assert!(
        bs.iter().all(|b| b["name"] == format!("localhost:{port}")),
        "{bs:?}"
    );
    assert!(find(&bs, SocketAddr::new(v4(1), port)).is_some(), "{bs:?}");
    let seen = bodies(&veer, "/", 10).await;
    assert_eq!(seen.get("200 local"), Some(&10), "{seen:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn check_warns_but_does_not_fail_on_a_name_it_cannot_resolve() {
    let dns = DnsServer::start("test.").await;
    let text = format!(
        "[server]\ndns_servers = [\"{}\"]\n[pools.web]\nbackends = [\"{}:8080\"]\n{}",
        dns.addr,
        dns.name("nowhere"),
        route("{ web = 100 }", "")
    );
    let (_dir, path) = write_config(&text);
    let out = tokio::process::Command::new(veer_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(": ok: "), "{stdout}");
    assert!(
        stderr.contains("warning: pools.web.backends: cannot resolve nowhere.test:8080"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_undrained_backend_ramps_and_status_shows_weight_now() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let config = format!(
        "[pools.web]\nbackends = [{{ addr = \"{}\", weight = 4 }}, {{ addr = \"{}\", weight = 4 }}]\nslow_start = \"60s\"\n{}",
        a.addr,
        b.addr,
        route("{ web = 100 }", "")
    );
    let veer = start_veer(&config).await;
    let now_of = |bs: &[Value]| find(bs, b.addr).unwrap()["weight_now"].as_f64().unwrap();
    // Present from the start: full weight.
    assert_eq!(now_of(&status_backends(&veer, "web").await), 4.0);
    let drain = format!("/api/pools/web/backends/{}/drain?force=true", b.addr);
    let r = admin_call(veer.admin, "POST", &drain, "").await;
    assert!((200..300).contains(&r.status), "{} {}", r.status, r.body);
    assert_eq!(now_of(&status_backends(&veer, "web").await), 0.0);
    // Let the slow-start task see it drained, then undrain: it comes back at 10%.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let undrain = format!("/api/pools/web/backends/{}/undrain", b.addr);
    let r = admin_call(veer.admin, "POST", &undrain, "").await;
    assert!((200..300).contains(&r.status), "{} {}", r.status, r.body);
    let w = now_of(&status_backends(&veer, "web").await);
    assert!(
        (0.4..=0.5).contains(&w),
        "weight_now {w}, want about 10% of 4"
    );
    // And it grows (0.9 × 4 / 60 per second).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let w2 = now_of(&status_backends(&veer, "web").await);
    assert!(w2 > w && w2 < 1.0, "weight_now {w} then {w2}");
    veer.shutdown().await;
}

#[tokio::test]
async fn the_status_page_lists_a_names_addresses_under_it() {
    let port = common_port(&[v4(1), v4(2)]);
    let _one = named_upstream(SocketAddr::new(v4(1), port), "one").await;
    let _two = named_upstream(SocketAddr::new(v4(2), port), "two").await;
    let lit = upstream("lit").await;
    let dns = DnsServer::start("test.").await;
    dns.set("api", &[v4(1), v4(2)], 60).await;
    let name = format!("{}:{port}", dns.name("api"));
    let veer = veer_over(&dns, &format!("\"{}\", \"{name}\"", lit.addr), "").await;
    let dom = rendered_dom(&veer.admin_url("/"), 3000).await;
    let group = dom
        .find(&format!(r#"data-name="{name}""#))
        .unwrap_or_else(|| panic!("no row for the name: {dom}"));
    assert!(dom[group..].contains("2 addresses"), "{dom}");
    // Its two addresses follow its row, indented; the literal is a row of its own.
    let a1 = dom
        .find(&format!(r#"data-backend="127.0.0.1:{port}""#))
        .unwrap();
    let a2 = dom
        .find(&format!(r#"data-backend="127.0.0.2:{port}""#))
        .unwrap();
    assert!(group < a1 && group < a2, "{dom}");
    assert!(dom.contains(r#"class="addr member""#), "{dom}");
    assert!(
        dom.contains(&format!(r#"data-backend="{}""#, lit.addr)),
        "{dom}"
    );
    veer.shutdown().await;
}

// ---------- IPv6 ----------

/// The request head an IPv6 upstream saw, through a veer listening on [::1].
#[tokio::test]
async fn ipv6_backends_by_aaaa_and_literal_listeners_xff_stickiness_and_health() {
    if !have_ipv6_loopback() {
        eprintln!("skipped: this machine has no IPv6 loopback ([::1] cannot be bound)");
        return;
    }
    let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let port = common_port(&[lo6]);
    let _named = named_upstream(SocketAddr::new(lo6, port), "by-name").await;
    let literal = echo_head_at(SocketAddr::new(lo6, 0)).await;
    let dns = DnsServer::start("test.").await;
    dns.set("six", &[lo6], 60).await;
    let config = format!(
        "[server]\nlisten = [\"[::1]:0\"]\ndns_servers = [\"{}\"]\n\
         [pools.named]\nbackends = [\"{}:{port}\"]\n{HEALTH}\n\
         [pools.literal]\nbackends = [\"{}\"]\n{HEALTH}\n\
         [[routes]]\nname = \"n\"\npath_prefix = \"/n\"\nsplit = {{ named = 1 }}\n\
         [[routes]]\nname = \"l\"\nsplit = {{ named = 1, literal = 1 }}\nsticky = {{ client_ip = true }}\n",
        dns.addr,
        dns.name("six"),
        literal.addr
    );
    let veer = start_veer_tweaked(&config, no_jitter).await;
    assert!(veer.addr.is_ipv6(), "{}", veer.addr);
    wait_for("both IPv6 backends healthy", async || {
        let n = status_backends(&veer, "named").await;
        let l = status_backends(&veer, "literal").await;
        n.len() == 1 && n[0]["health"] == "healthy" && l.len() == 1 && l[0]["health"] == "healthy"
    })
    .await;
    let n = status_backends(&veer, "named").await;
    assert_eq!(n[0]["addr"], format!("[::1]:{port}"));
    let g = get(&veer.url("/n")).await;
    assert_eq!((g.status, g.body.as_str()), (200, "by-name"));

    // Client-IP stickiness over an IPv6 client: always the same pool; and the literal pool's
    // backend sees the client in X-Forwarded-For without brackets.
    let first = get(&veer.url("/x")).await.body == "by-name";
    for _ in 0..10 {
        let g = get(&veer.url("/x")).await;
        assert_eq!(g.status, 200, "{}", g.body);
        assert_eq!(g.body == "by-name", first, "the [::1] client moved");
    }
    veer.shutdown().await;

    // The literal alone, so X-Forwarded-For is always seen.
    let config = format!(
        "[server]\nlisten = [\"[::1]:0\"]\n[pools.literal]\nbackends = [\"{}\"]\n{}",
        literal.addr,
        route("{ literal = 1 }", "")
    );
    let veer = start_veer(&config).await;
    let g = get(&veer.url("/")).await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(
        echoed_get(&echoed(&g.body), "x-forwarded-for"),
        vec!["::1"],
        "{}",
        g.body
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn ipv6_tls_backend_verified_by_its_ip_san_and_a_name_backend_by_its_name() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", &ca.pem());
    let dns = DnsServer::start("test.").await;
    let mut config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ndns_servers = [\"{}\"]\n",
        dns.addr
    );
    // A name backend: TLS verifies the name (no sni needed).
    let (c, k) = ca.leaf(&[&dns.name("secure")]);
    let (named, _s1) = tls_upstream(&c, &k).await;
    dns.set("secure", &[named.ip()], 60).await;
    config.push_str(&format!(
        "[pools.named]\nbackends = [\"{}:{}\"]\ntls = {{ ca = \"ca.pem\" }}\n\
         [[routes]]\nname = \"n\"\npath_prefix = \"/n\"\nsplit = {{ named = 1 }}\n",
        dns.name("secure"),
        named.port()
    ));
    let v6 = have_ipv6_loopback();
    if v6 {
        let (c, k) = ca.leaf(&["::1"]);
        let l = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let (six, s2) = tls_upstream_on(l, &c, &k).await;
        std::mem::forget(s2);
        config.push_str(&format!(
            "[pools.six]\nbackends = [\"{six}\"]\ntls = {{ ca = \"ca.pem\" }}\n\
             [[routes]]\nname = \"s\"\npath_prefix = \"/s\"\nsplit = {{ six = 1 }}\n"
        ));
    } else {
        eprintln!("IPv6 part skipped: this machine has no IPv6 loopback");
    }
    let path = dir.path().join("veer.toml");
    std::fs::write(&path, with_listeners(&config)).unwrap();
    let veer = start_veer_file(dir, path).await;
    let g = get(&veer.url("/n")).await;
    assert_eq!((g.status, g.body.as_str()), (200, "secure HTTP/1.1"));
    if v6 {
        let g = get(&veer.url("/s")).await;
        assert_eq!((g.status, g.body.as_str()), (200, "secure HTTP/1.1"));
    }
    veer.shutdown().await;
}
