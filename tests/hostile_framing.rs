//! Hostile framing (issue 12, items 1, 6, 7 and 8a): each hole is sent as the exact bytes
//! over a real socket, to a real veer in front of a raw TCP backend that records what it
//! read (method, target, headers, body) and answers with exact bytes of its own.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One pool (`app`) of `backends`, one route, and `server` lines (with their own listen).
fn one_pool(backend: SocketAddr, server: &str) -> String {
    format!(
        "{server}[pools.app]\nbackends = [\"{backend}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Item 1: h2c upgrade smuggling.

/// The h2c upgrade request a client sends (curl --http2 does), with `extra` header lines and
/// `body`.
fn h2c_request(method: &str, path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n{extra}\r\n{body}"
    )
    .into_bytes()
}

#[tokio::test]
async fn an_h2c_upgrade_is_stripped_and_answered_as_plain_http1() {
    // A backend that would switch to h2c, then echo, if asked.
    let b = raw_backend(|req| {
        if req.header("upgrade").is_empty() {
            ok(&format!("plain {}", req.target))
        } else {
            switch_to("h2c")
        }
    })
    .await;
    let veer = start_veer(&one_pool(b.addr, "")).await;
    let mut c = RawClient::connect(veer.addr).await;
    // Body-less (the fast path), then with a body (hyper's path).
    let r = c.send(&h2c_request("GET", "/one", "", "")).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "plain /one"), "{r:?}");
    let r = c
        .send(&h2c_request(
            "POST",
            "/two",
            "Content-Length: 5\r\n",
            "hello",
        ))
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "plain /two"), "{r:?}");
    assert!(r.header("upgrade").is_none(), "{r:?}");
    // The connection is still veer's HTTP/1.1: the next request is parsed, routed and
    // forwarded as one, not copied into a tunnel.
    let r = c
        .send(b"GET /three HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "plain /three"));
    // What a client that believed in the switch sends next (the HTTP/2 preface) is never
    // a backend's to read.
    c.s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), c.read()).await;

    let seen = b.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/one", "/two", "/three"], "{seen:?}");
    for s in &seen {
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(
                s.header(gone).is_empty(),
                "{gone} reached the backend: {s:?}"
            );
        }
        // Each was parsed by veer: it carries veer's forwarding headers.
        assert_eq!(s.header("x-forwarded-for"), ["127.0.0.1"], "{s:?}");
    }
    assert_eq!(seen[1].body, b"hello");
    assert_eq!(b.echoed(), 0, "bytes went through a tunnel");
    veer.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_switches_protocols_unasked_gets_502_and_no_tunnel() {
    // A backend that answers every request with 101, then echoes.
    let b = raw_backend(|_| switch_to("h2c")).await;
    let veer = start_veer(&one_pool(b.addr, "")).await;
    for req in [
        h2c_request("GET", "/fast", "", ""),
        h2c_request("POST", "/hyper", "Content-Length: 5\r\n", "hello"),
        b"GET /plain HTTP/1.1\r\nHost: app\r\n\r\n".to_vec(),
    ] {
        let mut c = RawClient::connect(veer.addr).await;
        let r = c.send(&req).await.unwrap();
        assert_eq!(r.status, 502, "{r:?}");
        // Whatever the client sends next is parsed by veer (a bad request), never echoed.
        c.s.write_all(b"tunnelled?\r\n\r\n").await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), c.read())
            .await
            .unwrap();
        assert!(next.as_ref().is_none_or(|r| r.status == 400), "{next:?}");
    }
    let seen = b.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.header("upgrade").is_empty()),
        "{seen:?}"
    );
    assert_eq!(b.echoed(), 0, "bytes went through a tunnel");
    veer.shutdown().await;
}

/// A WebSocket-style upgrade request for `proto`.
fn upgrade_request(proto: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Send an upgrade for `proto`; with a 101, send bytes through and return what came back.
async fn try_upgrade(addr: SocketAddr, proto: &str) -> (u16, Option<Vec<u8>>) {
    let mut c = RawClient::connect(addr).await;
    let r = c.send(&upgrade_request(proto)).await.unwrap();
    if r.status != 101 {
        return (r.status, None);
    }
    c.s.write_all(b"ping through").await.unwrap();
    let mut got = std::mem::take(&mut c.buf);
    while got.len() < 12 {
        if !fill(&mut c.s, &mut got).await {
            break;
        }
    }
    (101, Some(got))
}

#[tokio::test]
async fn every_upgrade_but_h2c_or_only_the_configured_ones_are_tunnelled() {
    // The backend switches to whatever it is asked, else to h2c.
    let b = raw_backend(|req| match req.header("upgrade").first() {
        Some(p) => switch_to(p),
        None => switch_to("h2c"),
    })
    .await;
    // Default ("*"): every upgrade but h2c is tunnelled (SPEC §6).
    let veer = start_veer(&one_pool(b.addr, "")).await;
    assert_eq!(
        try_upgrade(veer.addr, "x-custom").await,
        (101, Some(b"ping through".to_vec()))
    );
    assert_eq!(try_upgrade(veer.addr, "websocket, h2c").await, (502, None));
    let seen = b.seen();
    let upgrades: Vec<Vec<&str>> = seen.iter().map(|s| s.header("upgrade")).collect();
    assert_eq!(upgrades, [vec!["x-custom"], vec![]], "{seen:?}");
    veer.shutdown().await;

    // Restricted to WebSocket.
    let veer = start_veer(&one_pool(
        b.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nupgrades = [\"websocket\"]\n",
    ))
    .await;
    assert_eq!(
        try_upgrade(veer.addr, "websocket").await,
        (101, Some(b"ping through".to_vec()))
    );
    // Any case, as clients send it.
    assert_eq!(try_upgrade(veer.addr, "WebSocket").await.0, 101);
    // Anything else is forwarded without its Upgrade: the backend's unasked 101 is a 502.
    assert_eq!(try_upgrade(veer.addr, "x-custom").await, (502, None));
    assert_eq!(try_upgrade(veer.addr, "websocket, h2c").await, (502, None));
    let seen = b.seen()[2..].to_vec();
    let upgrades: Vec<Vec<&str>> = seen.iter().map(|s| s.header("upgrade")).collect();
    assert_eq!(
        upgrades,
        [vec!["websocket"], vec!["WebSocket"], vec![], vec![]],
        "{seen:?}"
    );
    let echoed = b.echoed();
    assert_eq!(
        echoed, 36,
        "only the x-custom and two WebSocket tunnels carried bytes"
    );
    veer.shutdown().await;

    // Configured: x-custom too, and no WebSocket.
    let veer = start_veer(&one_pool(
        b.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nupgrades = [\"X-Custom\"]\n",
    ))
    .await;
    assert_eq!(
        try_upgrade(veer.addr, "x-custom").await,
        (101, Some(b"ping through".to_vec()))
    );
    assert_eq!(try_upgrade(veer.addr, "websocket").await, (502, None));
    veer.shutdown().await;

    // A backend answering a WebSocket upgrade with a switch to h2c gets no tunnel.
    let b = raw_backend(|_| switch_to("h2c")).await;
    let veer = start_veer(&one_pool(b.addr, "")).await;
    assert_eq!(try_upgrade(veer.addr, "websocket").await, (502, None));
    assert_eq!(b.seen()[0].header("upgrade"), ["websocket"]);
    assert_eq!(b.echoed(), 0);
    veer.shutdown().await;
}

#[test]
fn h2c_cannot_be_configured_as_an_upgrade() {
    let text =
        "[server]\nlisten = [\"127.0.0.1:0\"]\nupgrades = [\"websocket\", \"h2c\", \"a b\"]\n\
                [pools.app]\nbackends = [\"127.0.0.1:1\"]\n\
                [[routes]]\nname = \"web\"\nsplit = { app = 1 }\n";
    let e = veer::config::Config::parse(std::path::Path::new("v.toml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("v.toml:3:26: server.upgrades: \"h2c\" is never tunnelled"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:3:33: server.upgrades: \"a b\" is not a protocol name"),
        "{e}"
    );
    let ok = text.replace(", \"h2c\", \"a b\"", ", \"X-Custom\"");
    let c = veer::config::Config::parse(std::path::Path::new("v.toml"), &ok).unwrap();
    assert_eq!(c.server.upgrades, ["websocket", "x-custom"]);
    let c = veer::config::Config::parse(
        std::path::Path::new("v.toml"),
        &ok.replace("upgrades = [\"websocket\", \"X-Custom\"]\n", ""),
    )
    .unwrap();
    assert_eq!(c.server.upgrades, ["*"], "the default");
}

// ---------------------------------------------------------------------------------------------
// Item 6: path and authority confusion.

/// Two pools, `secret` (routed by `/secret`) and `site` (everything else), each a backend
/// answering with its name and the target it read.
/// A raw backend answering `NAME TARGET` to every request.
async fn named(name: &'static str) -> RawBackend {
    raw_backend(move |r| ok(&format!("{name} {}", r.target))).await
}

async fn secret_and_site() -> (RawBackend, RawBackend, Veer) {
    let secret = named("secret").await;
    let site = named("site").await;
    let veer = start_veer(&format!(
        "[pools.secret]\nbackends = [\"{}\"]\n[pools.site]\nbackends = [\"{}\"]\n\
         [[routes]]\nname = \"secret\"\npath_prefix = \"/secret\"\nsplit = {{ secret = 1 }}\n\
         [[routes]]\nname = \"site\"\nsplit = {{ site = 1 }}\n",
        secret.addr, site.addr
    ))
    .await;
    (secret, site, veer)
}

#[tokio::test]
async fn percent_encoded_unreserved_characters_are_decoded_before_routing() {
    let (secret, site, veer) = secret_and_site().await;
    let mut c = RawClient::connect(veer.addr).await;
    for (target, want) in [
        // Decoded, routed and forwarded as every backend reads it.
        ("/%73ecret/x", "secret /secret/x"),
        ("/%53ecret/x", "site /Secret/x"),
        ("/%73%65%63%72%65%74", "secret /secret"),
        ("/x/%2e%2E/%73ecret/./y?q=%73", "secret /secret/y?q=%73"),
        ("/%7Euser/%41-%5f", "site /~user/A-_"),
        // Reserved characters stay encoded (in upper case): `%2F` is not a `/`.
        ("/%2fsecret/x", "site /%2Fsecret/x"),
        ("/secret%2Fx", "site /secret%2Fx"),
        ("/a%20b", "site /a%20b"),
        // Nothing to do: forwarded byte for byte.
        ("/secret/plain.txt?a=%2f", "secret /secret/plain.txt?a=%2f"),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: app\r\n\r\n");
        let r = c.send(req.as_bytes()).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, want), "{target}");
    }
    // With a body (hyper's path upstream), the same.
    let r = c
        .send(b"POST /%73ecret/up HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "secret /secret/up"));
    let seen = secret.seen();
    assert_eq!(seen.last().unwrap().body, b"hi");
    assert!(
        seen.iter().all(|s| s.target.starts_with("/secret")),
        "{seen:?}"
    );
    assert!(
        site.seen()
            .iter()
            .all(|s| !s.target.starts_with("/secret/")),
        "{:?}",
        site.seen()
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn a_percent_that_starts_no_escape_is_400_and_reaches_no_backend() {
    let (secret, site, veer) = secret_and_site().await;
    // `%%37%33` would read as `%73` once decoded: veer and a backend would disagree.
    for target in ["/%%37%33ecret/x", "/a%zz", "/a%4", "/secret/%"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: app\r\n\r\n");
        let r = RawClient::connect(veer.addr)
            .await
            .send(req.as_bytes())
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{target}: {r:?}");
    }
    assert!(secret.seen().is_empty() && site.seen().is_empty());
    veer.shutdown().await;
}

/// Two routes by host: `internal.example` to pool internal, `probe.test` to pool probe.
async fn internal_and_probe() -> (RawBackend, RawBackend, Veer) {
    let internal = named("internal").await;
    let probe = named("probe").await;
    let veer = start_veer(&format!(
        "[pools.internal]\nbackends = [\"{}\"]\n[pools.probe]\nbackends = [\"{}\"]\n\
         [[routes]]\nname = \"internal\"\nhosts = [\"internal.example\"]\nsplit = {{ internal = 1 }}\n\
         [[routes]]\nname = \"probe\"\nhosts = [\"probe.test\"]\nsplit = {{ probe = 1 }}\n",
        internal.addr, probe.addr
    ))
    .await;
    (internal, probe, veer)
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_and_forwarded_by_its_authority() {
    let (internal, probe, veer) = internal_and_probe().await;
    let mut c = RawClient::connect(veer.addr).await;
    let r = c
        .send(b"GET http://internal.example/abs?x=1 HTTP/1.1\r\nHost: probe.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "internal /abs?x=1"));
    let r = c
        .send(
            b"POST http://Internal.Example:80/up HTTP/1.1\r\nHost: probe.test\r\n\
              Content-Length: 2\r\n\r\nhi",
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "internal /up"));
    // Without a path, the target is `/`.
    let r = c
        .send(b"GET http://internal.example HTTP/1.1\r\nHost: internal.example\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "internal /"));
    // Origin-form still goes by Host.
    let r = c
        .send(b"GET /by-host HTTP/1.1\r\nHost: probe.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "probe /by-host"));

    let seen = internal.seen();
    let hosts: Vec<Vec<&str>> = seen.iter().map(|s| s.header("host")).collect();
    assert_eq!(
        hosts,
        [
            vec!["internal.example"],
            vec!["Internal.Example:80"],
            vec!["internal.example"]
        ]
    );
    for s in &seen {
        assert_eq!(s.header("x-forwarded-host"), s.header("host"), "{s:?}");
        assert!(s.target.starts_with('/'), "origin-form upstream: {s:?}");
    }
    assert_eq!(seen[1].body, b"hi");
    assert_eq!(probe.seen().len(), 1);

    // Userinfo or a scheme other than http(s) is a malformed target.
    for req in [
        &b"GET http://user@internal.example/ HTTP/1.1\r\nHost: internal.example\r\n\r\n"[..],
        b"GET ftp://internal.example/ HTTP/1.1\r\nHost: internal.example\r\n\r\n",
    ] {
        let r = RawClient::connect(veer.addr).await.send(req).await;
        assert!(r.as_ref().is_none_or(|r| r.status == 400), "{r:?}");
    }
    assert_eq!(internal.seen().len(), 3);
    veer.shutdown().await;
}

#[tokio::test]
async fn an_http2_authority_wins_over_a_host_header() {
    use http_body_util::Empty;
    let (internal, probe, veer) = internal_and_probe().await;
    let tcp = TcpStream::connect(veer.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://internal.example/h2")
        .header("host", "probe.test")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = internal.seen();
    assert_eq!(seen.len(), 1, "routed by :authority");
    assert_eq!(seen[0].target, "/h2");
    assert_eq!(seen[0].header("host"), ["internal.example"]);
    assert!(probe.seen().is_empty());
    veer.shutdown().await;
}

#[tokio::test]
async fn connection_cannot_strip_host_length_or_forwarding_headers() {
    let b = named("got").await;
    let veer = start_veer(&one_pool(b.addr, "")).await;
    let mut c = RawClient::connect(veer.addr).await;
    let named = "Connection: Host, Content-Length, X-Forwarded-For, x-forwarded-proto, \
                 Forwarded, X-Other\r\n\
                 X-Forwarded-For: 10.1.1.1\r\nForwarded: for=10.1.1.1\r\nX-Other: 1\r\n";
    let r = c
        .send(format!("GET /fast HTTP/1.1\r\nHost: app.example\r\n{named}\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let mut c = RawClient::connect(veer.addr).await;
    let r = c
        .send(
            format!(
                "POST /hyper HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n{named}\r\nhello"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = b.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.header("host"), ["app.example"], "{s:?}");
        assert_eq!(
            s.header("x-forwarded-for"),
            ["10.1.1.1, 127.0.0.1"],
            "{s:?}"
        );
        assert_eq!(s.header("x-forwarded-proto"), ["http"], "{s:?}");
        assert_eq!(s.header("x-forwarded-host"), ["app.example"], "{s:?}");
        assert_eq!(s.header("forwarded"), ["for=10.1.1.1"], "{s:?}");
        // What Connection may name still goes.
        assert!(s.header("x-other").is_empty(), "{s:?}");
        assert!(s.header("connection").is_empty(), "{s:?}");
    }
    assert_eq!(seen[1].header("content-length"), ["5"]);
    assert_eq!(seen[1].body, b"hello");
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Item 7: upstream framing.

/// A GET (the fast path upstream) and a POST with a body (hyper's path).
fn both_paths() -> [&'static [u8]; 2] {
    [
        b"GET /fast HTTP/1.1\r\nHost: app\r\n\r\n",
        b"POST /hyper HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi",
    ]
}

#[tokio::test]
async fn an_upstream_answer_with_content_length_and_chunked_is_read_as_chunked() {
    let b = raw_backend(|_| {
        Answer::Reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let veer = start_veer(&one_pool(b.addr, "")).await;
    for req in both_paths() {
        // Twice on one client connection: the first answer's framing was right.
        let mut c = RawClient::connect(veer.addr).await;
        for _ in 0..2 {
            let r = c.send(req).await.unwrap();
            assert_eq!((r.status, r.text().as_str()), (200, "hello world"), "{r:?}");
            assert!(
                r.header("content-length").is_none_or(|v| v == "11"),
                "the upstream's Content-Length was relayed: {r:?}"
            );
        }
    }
    assert_eq!(b.seen().len(), 4);
    veer.shutdown().await;
}

#[tokio::test]
async fn an_upstream_answer_with_conflicting_or_invalid_length_is_502() {
    for framing in [
        "Content-Length: 5\r\nContent-Length: 7",
        "Content-Length: 5, 7",
        "Content-Length: abc",
        "Content-Length: +5",
        "Content-Length: -1",
        "Content-Length: 0x5",
        "Content-Length: 99999999999999999999999",
    ] {
        // Kept open after the answer: a proxy that trusted one of the lengths would hang or
        // cut the body short.
        let answer = format!("HTTP/1.1 200 OK\r\n{framing}\r\n\r\nhello world");
        let b = raw_backend(move |_| Answer::Reply(answer.clone().into_bytes())).await;
        let veer = start_veer(&one_pool(b.addr, "")).await;
        for req in both_paths() {
            let r = RawClient::connect(veer.addr).await.send(req).await;
            assert_eq!(
                r.map(|r| r.status),
                Some(502),
                "{framing:?} {}",
                String::from_utf8_lossy(req)
            );
        }
        veer.shutdown().await;
    }
    // The same length said twice is one length (RFC 9110 §8.6), relayed once.
    for framing in [
        "Content-Length: 5, 5",
        "Content-Length: 5\r\nContent-Length: 5",
    ] {
        let answer = format!("HTTP/1.1 200 OK\r\n{framing}\r\n\r\nhello");
        let b = raw_backend(move |_| Answer::Reply(answer.clone().into_bytes())).await;
        let veer = start_veer(&one_pool(b.addr, "")).await;
        for req in both_paths() {
            let r = RawClient::connect(veer.addr).await.send(req).await.unwrap();
            assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{r:?}");
            let lengths: Vec<_> = r
                .headers
                .iter()
                .filter(|(k, _)| k == "content-length")
                .collect();
            assert_eq!(lengths.len(), 1, "{framing:?}: {r:?}");
        }
        veer.shutdown().await;
    }
}

#[tokio::test]
async fn an_http_1_0_answer_with_transfer_encoding_is_502() {
    let b = raw_backend(|_| {
        Answer::Reply(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let veer = start_veer(&one_pool(b.addr, "")).await;
    for req in both_paths() {
        let mut c = RawClient::connect(veer.addr).await;
        assert_eq!(c.send(req).await.unwrap().status, 502);
        assert!(c.nothing_more(Duration::from_millis(200)).await);
    }
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Item 8a: `veer check` and health-check paths.

#[test]
fn veer_check_rejects_health_check_paths_that_cannot_be_sent() {
    let bad = [
        (
            r#""/a b""#,
            "must not contain spaces (percent-encode them as %20)",
        ),
        (r#""/a\r\nHost: x""#, "must not contain CR or LF"),
        (r#""/a\u0000""#, "must not contain control characters"),
        (
            r#""/caf\u00e9""#,
            "must be ASCII (percent-encode other characters)",
        ),
        (
            r#""/x#top""#,
            "must not contain '#' (a fragment is never sent)",
        ),
        (r#""/a<b>""#, "is not a valid request path"),
        (r#""health""#, "must start with '/'"),
    ];
    let mut text = String::new();
    for (i, (path, _)) in bad.iter().enumerate() {
        text.push_str(&format!(
            "[pools.p{i}]\nbackends = [\"127.0.0.1:{}\"]\n[pools.p{i}.health_check]\npath = {path}\n",
            9001 + i
        ));
    }
    text.push_str(
        "[pools.fine]\nbackends = [\"127.0.0.1:9100\"]\n\
         health_check = { path = \"/healthz?full=1&x=%20\" }\n\
         [[routes]]\nname = \"web\"\nsplit = { fine = 1 }\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("veer.toml");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(veer_bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let expected: Vec<String> = bad
        .iter()
        .enumerate()
        .map(|(i, (path, why))| {
            // The value as `{:?}` shows it: TOML's escapes read back, then Rust's written.
            let value: String = toml::from_str::<toml::Value>(&format!("v = {path}")).unwrap()["v"]
                .as_str()
                .unwrap()
                .to_string();
            format!(
                "{}:{}:8: pools.p{i}.health_check.path: path {value:?} {why}",
                file.display(),
                4 * i + 4
            )
        })
        .collect();
    assert_eq!(lines, expected, "{stderr}");
}
