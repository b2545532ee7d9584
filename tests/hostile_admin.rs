//! The admin API against web pages (issue 12 items 5 and 8b): a cross-site `text/plain` POST
//! and a DNS-rebinding `Host` are refused before anything changes, the listener's own names,
//! `[admin] hosts`, probes by pod IP, the CLI client and the status page keep working, and a
//! JSON body with a repeated key is a 400 naming it. Every request is sent as bytes over a
//! real socket; what the backends then receive shows nothing moved.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;

/// Route `web` over blue (live) and green (idle), with `admin` as the `[admin]` table body.
fn config_text(blue: SocketAddr, green: SocketAddr, admin: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\n{admin}\n[pools.blue]\nbackends = [\"{blue}\"]\n[pools.green]\nbackends = [\"{green}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 1, green = 0 }}\n"
    )
}

async fn veer_on(blue: SocketAddr, green: SocketAddr, admin: &str) -> Veer {
    start_veer(&config_text(blue, green, admin)).await
}

/// One request as raw bytes on its own connection; the status code and the whole answer.
async fn raw_call(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let req = format!("{head}Connection: close\r\n\r\n{body}");
    let out = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {out:?}"));
    (code, out)
}

/// The JSON body of a raw answer.
fn body_json(out: &str) -> serde_json::Value {
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Send a few requests through the proxy and return how many each upstream got.
async fn traffic(v: &Veer, blue: &Upstream, green: &Upstream) -> (usize, usize) {
    let (b0, g0) = (blue.hits(), green.hits());
    for _ in 0..5 {
        assert_eq!(get(&v.url("/")).await.status, 200);
    }
    (blue.hits() - b0, green.hits() - g0)
}

#[tokio::test]
async fn a_cross_site_text_plain_swap_is_refused_and_changes_nothing() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = veer_on(blue.addr, green.addr, "listen = \"127.0.0.1:0\"").await;
    let before = std::fs::read(&v.config_path).unwrap();
    let host = v.admin.to_string();
    // What a page on evil.example can send with fetch(…, {mode: "no-cors"}) or a form.
    let cases = [
        (
            format!("POST /api/routes/web/swap?force=true HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\nContent-Length: {{len}}\r\n"),
            "hi",
            403,
        ),
        // Origin alone (an older browser without Sec-Fetch-*).
        (
            format!("POST /api/routes/web/swap?force=true HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: {{len}}\r\n"),
            "hi",
            403,
        ),
        // Sec-Fetch-Site alone, body-less.
        (
            format!("POST /api/routes/web/swap?force=true HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 0\r\n"),
            "",
            403,
        ),
        // A sandboxed frame or file:// page: Origin null.
        (
            format!("POST /api/routes/web/swap?force=true HTTP/1.1\r\nHost: {host}\r\nOrigin: null\r\nContent-Length: 0\r\n"),
            "",
            403,
        ),
        // Another port on the same machine is another origin.
        (
            format!("PUT /api/routes/web/split HTTP/1.1\r\nHost: {host}\r\nOrigin: http://127.0.0.1:1\r\nContent-Type: application/json\r\nContent-Length: {{len}}\r\n"),
            r#"{"blue": 0, "green": 100}"#,
            403,
        ),
        // No Origin, but a body that is not declared JSON: a form post, or text/plain.
        (
            format!("PUT /api/routes/web/split HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {{len}}\r\n"),
            r#"{"blue": 0, "green": 100}"#,
            415,
        ),
        (
            format!("PUT /api/routes/web/split HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"),
            "19\r\n{\"blue\": 0, \"green\": 100}\r\n0\r\n\r\n",
            415,
        ),
        (
            format!("PUT /api/routes/web/split HTTP/1.1\r\nHost: {host}\r\nContent-Length: {{len}}\r\n"),
            r#"{"blue": 0, "green": 100}"#,
            415,
        ),
    ];
    for (head, body, want) in &cases {
        let head = head.replace("{len}", &body.len().to_string());
        let (code, out) = raw_call(v.admin, &head, body).await;
        assert_eq!(code, *want, "{head}{body}\n→ {out}");
        let reason = body_json(&out)["error"].as_str().unwrap().to_string();
        assert!(!reason.is_empty(), "{out}");
        if *want == 415 {
            assert!(reason.contains("application/json"), "{reason}");
        } else {
            assert!(reason.contains("cross-"), "{reason}");
        }
    }
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 1), ("green".into(), 0)]
    );
    assert_eq!(std::fs::read(&v.config_path).unwrap(), before);
    assert_eq!(traffic(&v, &blue, &green).await, (5, 0));

    // The same swap from a non-browser client (no Origin, no body) goes through.
    let (code, out) = raw_call(
        v.admin,
        &format!("POST /api/routes/web/swap?force=true HTTP/1.1\r\nHost: {host}\r\n"),
        "",
    )
    .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(traffic(&v, &blue, &green).await, (0, 5));
    v.shutdown().await;
}

#[tokio::test]
async fn dns_rebinding_hosts_get_421_on_every_path_but_liveness() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = veer_on(blue.addr, green.addr, "listen = \"127.0.0.1:0\"").await;
    let port = v.admin.port();
    for host in [
        "rebind.evil.example".to_string(),
        format!("rebind.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        // The listener's address on another port is not the listener either.
        "10.0.0.1:80".to_string(),
    ] {
        for (method, path) in [
            ("GET", "/api/status"),
            ("GET", "/"),
            ("GET", "/metrics"),
            ("POST", "/api/routes/web/swap?force=true"),
            ("GET", "/nope"),
        ] {
            let (code, out) = raw_call(
                v.admin,
                &format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n"),
                "",
            )
            .await;
            assert_eq!(code, 421, "{method} {path} Host {host}: {out}");
            let why = body_json(&out)["error"].as_str().unwrap().to_string();
            assert!(why.contains("[admin] hosts"), "{why}");
            assert!(!out.contains("\"routes\""), "no status leaked: {out}");
        }
        // Liveness and readiness answer any Host: a probe never fails over a name.
        for path in ["/healthz", "/readyz"] {
            let (code, out) = raw_call(
                v.admin,
                &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n"),
                "",
            )
            .await;
            assert_eq!(code, 200, "{path} Host {host}: {out}");
        }
    }
    // Malformed or repeated Host: 400.
    for head in [
        "GET /api/status HTTP/1.1\r\nHost: a b\r\n".to_string(),
        format!(
            "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: rebind.evil.example\r\n"
        ),
    ] {
        let (code, out) = raw_call(v.admin, &head, "").await;
        assert_eq!(code, 400, "{head}: {out}");
    }
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 1), ("green".into(), 0)]
    );
    assert_eq!(traffic(&v, &blue, &green).await, (5, 0));
    v.shutdown().await;
}

#[tokio::test]
async fn its_own_names_and_the_configured_hosts_are_answered() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = veer_on(
        blue.addr,
        green.addr,
        "listen = \"127.0.0.1:0\"\nhosts = [\"veer-admin.internal\", \"Ops.Example:8443\"]",
    )
    .await;
    let port = v.admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_string(),
        // A port-forward (kubectl port-forward 18001:9901) keeps the name, not the port.
        "localhost:18001".to_string(),
        "127.0.0.1:18001".to_string(),
        format!("[::1]:{port}"),
        "veer-admin.internal".to_string(),
        format!("veer-admin.internal:{port}"),
        "VEER-ADMIN.internal.".to_string(),
        "ops.example:8443".to_string(),
    ] {
        let (code, out) = raw_call(
            v.admin,
            &format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\n"),
            "",
        )
        .await;
        assert_eq!(code, 200, "Host {host}: {out}");
    }
    for host in ["ops.example", "ops.example:443", "other.internal"] {
        let (code, _) = raw_call(
            v.admin,
            &format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\n"),
            "",
        )
        .await;
        assert_eq!(code, 421, "Host {host}");
    }
    // HTTP/1.0 without Host (HAProxy's default health check) is no browser: answered.
    let (code, out) = raw_call(v.admin, "GET /metrics HTTP/1.0\r\n", "").await;
    assert_eq!(code, 200, "{out}");
    // A page served by a configured name may change things from that origin.
    let (code, out) = raw_call(
        v.admin,
        "POST /api/routes/web/swap HTTP/1.1\r\nHost: veer-admin.internal\r\nOrigin: https://veer-admin.internal\r\nSec-Fetch-Site: same-origin\r\nContent-Length: 0\r\n",
        "",
    )
    .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(traffic(&v, &blue, &green).await, (0, 5));

    // A reload that adds a name takes effect at once.
    let text = std::fs::read_to_string(&v.config_path).unwrap().replace(
        "\"veer-admin.internal\",",
        "\"veer-admin.internal\", \"new.internal\",",
    );
    std::fs::write(&v.config_path, text).unwrap();
    let r = admin_call(v.admin, "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (code, out) = raw_call(
        v.admin,
        "GET /api/status HTTP/1.1\r\nHost: new.internal\r\n",
        "",
    )
    .await;
    assert_eq!(code, 200, "{out}");
    v.shutdown().await;
}

#[tokio::test]
async fn a_wildcard_listener_answers_ip_hosts_on_its_port_and_names_only_from_hosts() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let env = format!("VEER_HOSTILE_ADMIN_TOKEN_{}", std::process::id());
    std::env::set_var(&env, "t0ken");
    let v = veer_on(
        blue.addr,
        green.addr,
        &format!("listen = \"0.0.0.0:0\"\ntoken_env = \"{env}\"\nhosts = [\"veer.ns.svc\"]"),
    )
    .await;
    let port = v.admin.port();
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let auth = "Authorization: Bearer t0ken\r\n";
    // A Kubernetes probe or a Prometheus scrape by pod IP.
    for host in [
        format!("10.244.1.7:{port}"),
        format!("[fd00::7]:{port}"),
        format!("127.0.0.1:{port}"),
        format!("veer.ns.svc:{port}"),
    ] {
        for path in ["/metrics", "/api/status", "/"] {
            let (code, out) = raw_call(
                to,
                &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"),
                "",
            )
            .await;
            assert_eq!(code, 200, "{path} Host {host}: {out}");
        }
    }
    for host in [
        "10.244.1.7:80".to_string(),
        "10.244.1.7".to_string(),
        format!("pod-7.evil.example:{port}"),
    ] {
        let (code, out) = raw_call(
            to,
            &format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n{auth}"),
            "",
        )
        .await;
        assert_eq!(code, 421, "Host {host}: {out}");
    }
    let (code, _) = raw_call(
        to,
        "GET /healthz HTTP/1.1\r\nHost: pod-7.evil.example\r\n",
        "",
    )
    .await;
    assert_eq!(code, 200);
    v.shutdown().await;
}

#[tokio::test]
async fn http2_authority_is_checked_like_host() {
    use http_body_util::{BodyExt, Empty};
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = veer_on(blue.addr, green.addr, "listen = \"127.0.0.1:0\"").await;
    let stream = tokio::net::TcpStream::connect(v.admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (authority, want) in [
        ("rebind.evil.example".to_string(), 421),
        (v.admin.to_string(), 200),
    ] {
        let req = http::Request::get(format!("http://{authority}/api/status"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            status,
            want,
            "{authority}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    v.shutdown().await;
}

#[tokio::test]
async fn the_cli_client_and_same_origin_requests_keep_working() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = veer_on(blue.addr, green.addr, "listen = \"127.0.0.1:0\"").await;
    let c = veer::cli::AdminClient::new(&v.admin_url(""), None).unwrap();
    let r = c
        .split("web", &[("blue".into(), 0), ("green".into(), 5)])
        .await
        .unwrap();
    assert_eq!(r["split"], serde_json::json!({"blue": 0, "green": 5}));
    assert_eq!(traffic(&v, &blue, &green).await, (0, 5));
    c.swap("web", false).await.unwrap();
    c.drain("blue", &blue.addr.to_string(), true).await.unwrap();
    c.drain("blue", &blue.addr.to_string(), false)
        .await
        .unwrap();
    assert_eq!(c.status().await.unwrap()["persisted"], true);
    assert_eq!(traffic(&v, &blue, &green).await, (5, 0));
    // A page of this admin API (same origin) may change things.
    let host = v.admin.to_string();
    let (code, out) = raw_call(
        v.admin,
        &format!("PUT /api/routes/web/split HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nSec-Fetch-Site: same-origin\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 24\r\n"),
        r#"{"blue": 0, "green": 1 }"#,
    )
    .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(traffic(&v, &blue, &green).await, (0, 5));
    v.shutdown().await;
}

#[tokio::test]
async fn a_repeated_key_in_a_split_body_is_400_naming_it() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let v = veer_on(blue.addr, green.addr, "listen = \"127.0.0.1:0\"").await;
    let before = std::fs::read(&v.config_path).unwrap();
    let host = v.admin.to_string();
    for body in [
        r#"{"blue": 10, "blue": 90}"#,
        r#"{"green": 90, "blue": 10, "green": 0}"#,
    ] {
        let (code, out) = raw_call(
            v.admin,
            &format!(
                "PUT /api/routes/web/split HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ),
            body,
        )
        .await;
        assert_eq!(code, 400, "{body}: {out}");
        let why = body_json(&out)["error"].as_str().unwrap().to_string();
        let key = if body.starts_with(r#"{"blue"#) {
            "blue"
        } else {
            "green"
        };
        assert!(why.contains(&format!("duplicate key \"{key}\"")), "{why}");
    }
    assert_eq!(
        web_split(v.rt()),
        vec![("blue".into(), 1), ("green".into(), 0)]
    );
    assert_eq!(std::fs::read(&v.config_path).unwrap(), before);
    assert_eq!(traffic(&v, &blue, &green).await, (5, 0));
    v.shutdown().await;
}
