//! Core proxy behaviour (issue 2): real upstreams and a real veer over sockets.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/// Two pools, blue and green, one backend each, and one route with `route_extra` lines.
fn blue_green(blue: SocketAddr, green: SocketAddr, split: &str, route_extra: &str) -> String {
    format!(
        "[pools.blue]\nbackends = [\"{blue}\"]\n\
         [pools.green]\nbackends = [\"{green}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {split}\n{route_extra}\n"
    )
}

/// Send `n` GETs spread over 8 concurrent keep-alive clients; count answers by body.
async fn count_bodies(url: &str, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let client = client();
    let headers: Arc<Vec<(String, String)>> = Arc::new(
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            let url = url.to_string();
            let headers = headers.clone();
            let share = n / 8 + usize::from(t < n % 8);
            tokio::spawn(async move {
                let mut counts: HashMap<String, usize> = HashMap::new();
                for _ in 0..share {
                    let mut b = Request::get(&url);
                    for (k, v) in headers.iter() {
                        b = b.header(k, v);
                    }
                    let resp = client
                        .request(b.body(Full::new(Bytes::new())).unwrap())
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    *counts
                        .entry(String::from_utf8_lossy(&body).into_owned())
                        .or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

fn share(counts: &HashMap<String, usize>, key: &str) -> f64 {
    let all: usize = counts.values().sum();
    *counts.get(key).unwrap_or(&0) as f64 / all as f64
}

/// An upstream that answers with the request head it received, one `name: value` a line,
/// after a first line `METHOD PATH VERSION`, and sets hop-by-hop response headers.
async fn echo_head_upstream() -> Upstream {
    upstream_with(|req| async move {
        let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<bin>")));
        }
        let mut r = respond(200, out);
        let h = r.headers_mut();
        h.insert("connection", "x-resp-hop".parse().unwrap());
        h.insert("x-resp-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-agent", "upstream".parse().unwrap());
        h.insert("trailer", "x-checksum".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("x-resp-keep", "1".parse().unwrap());
        r
    })
    .await
}

/// The echoed header lines as (name, value) pairs.
fn echoed(body: &str) -> Vec<(String, String)> {
    body.lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn echoed_get<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// An upstream counting the request body bytes it receives, answering with the count.
async fn counting_upstream() -> Upstream {
    upstream_with(|req| async move {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return respond(500, format!("body error: {e}")),
            }
        }
        respond(200, n.to_string())
    })
    .await
}

/// What a raw upstream does once it has read a request head.
#[derive(Clone, Copy)]
enum RawReply {
    /// Close the socket without a word.
    Close,
    /// Write these bytes, then close.
    Bytes(&'static [u8]),
}

/// A raw-socket upstream that records each request head (and body framing) it reads.
async fn raw_upstream(reply: RawReply) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h2 = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let heads = h2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = find(&buf, b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let lower = head.to_ascii_lowercase();
                // Read the body as the head frames it, so the reply is not a reset.
                if lower.contains("transfer-encoding: chunked") {
                    while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                } else if let Some(cl) = header_in(&lower, "content-length") {
                    let want: usize = cl.parse().unwrap_or(0);
                    while buf.len() - head_end < want {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                }
                let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
                heads.lock().unwrap().push(format!("{head}{body}"));
                match reply {
                    RawReply::Close => {}
                    RawReply::Bytes(b) => {
                        let _ = s.write_all(b).await;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, heads)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of a header in a lower-cased head, if present.
fn header_in<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim())
}

/// Read exactly one HTTP/1.1 response (Content-Length or chunked) from a stream.
/// `None` if the peer closed before a full response.
async fn read_response(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let lower = head.to_ascii_lowercase();
    if lower.starts_with("http/1.1 1") {
        // An interim response: the caller reads the final one next.
        return Some((head, Vec::new()));
    }
    if lower.contains("transfer-encoding: chunked") {
        while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        return Some((head, buf[head_end..].to_vec()));
    }
    let want: usize = header_in(&lower, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() - head_end < want {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, buf[head_end..head_end + want].to_vec()))
}

/// Wait until the peer closes the stream (read returns 0 or an error), up to `limit`.
/// Returns how long it took, or `None` if it stayed open.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Forwarding basics.

#[tokio::test]
async fn forwards_to_the_only_pool() {
    let blue = upstream("blue").await;
    let veer = start_veer(&format!(
        "[pools.blue]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 1 }}\n",
        blue.addr
    ))
    .await;
    let got = get(&veer.url("/hello")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "blue");
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Weighted split and sticky users.

#[tokio::test]
async fn split_ratio_without_stickiness_is_exact() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 90, green = 10 }",
        "",
    ))
    .await;
    let counts = count_bodies(&veer.url("/"), 4000, &[]).await;
    let g = share(&counts, "green");
    assert!(
        (0.07..=0.13).contains(&g),
        "green share {g:.4} ({counts:?})"
    );
    assert_eq!(counts.values().sum::<usize>(), 4000);
    veer.shutdown().await;
}

#[tokio::test]
async fn split_ratio_with_sticky_cookie_for_new_users() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 90, green = 10 }",
        "sticky = { cookie = \"veer_id\" }",
    ))
    .await;
    // Every request comes without the cookie: each is a new user with a random id.
    let counts = count_bodies(&veer.url("/"), 4000, &[]).await;
    let g = share(&counts, "green");
    assert!(
        (0.07..=0.13).contains(&g),
        "green share {g:.4} ({counts:?})"
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn sticky_cookie_pins_users_and_weight_changes_only_move_users_in() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let sticky = "sticky = { cookie = \"veer_id\" }";
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 90, green = 10 }",
        sticky,
    ))
    .await;
    let client = client();
    let pool_of = |user: String| {
        let client = client.clone();
        let url = veer.url("/");
        async move {
            let req = Request::get(url)
                .header("cookie", format!("other=1; veer_id={user}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            assert!(
                resp.headers().get("set-cookie").is_none(),
                "cookie present: none set"
            );
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&b).into_owned()
        }
    };
    let users: Vec<String> = (0..600).map(|i| format!("user-{i}")).collect();
    let mut before = Vec::new();
    for u in &users {
        let p = pool_of(u.clone()).await;
        assert_eq!(
            pool_of(u.clone()).await,
            p,
            "{u} changed pool between two requests"
        );
        before.push(p);
    }
    let green_before = before.iter().filter(|p| *p == "green").count();
    assert!(
        (30..=90).contains(&green_before),
        "green users at 10%: {green_before}"
    );

    // Raise green: users move into green, never out of it.
    let text = with_listeners(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 50, green = 50 }",
        sticky,
    ));
    let cfg = veer::config::Config::parse(&veer.config_path, &text).unwrap();
    veer.rt().apply(cfg).unwrap();
    let mut after = Vec::new();
    for (u, b) in users.iter().zip(&before) {
        let p = pool_of(u.clone()).await;
        if b == "green" {
            assert_eq!(p, "green", "{u} left green when green's weight rose");
        }
        after.push(p);
    }
    let green_after = after.iter().filter(|p| *p == "green").count();
    assert!(
        (240..=360).contains(&green_after),
        "green users at 50%: {green_after}"
    );

    // Back to 90/10: the pool follows from the bucket, so everyone is where they began.
    let text = with_listeners(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 90, green = 10 }",
        sticky,
    ));
    veer.rt()
        .apply(veer::config::Config::parse(&veer.config_path, &text).unwrap())
        .unwrap();
    for (u, b) in users.iter().zip(&before) {
        assert_eq!(
            &pool_of(u.clone()).await,
            b,
            "{u} not back in its pool after rollback"
        );
    }
    veer.shutdown().await;
}

#[tokio::test]
async fn sticky_cookie_is_set_when_missing_and_then_honoured() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 50, green = 50 }",
        "sticky = { cookie = \"veer_id\" }",
    ))
    .await;
    for _ in 0..10 {
        let first = get(&veer.url("/")).await;
        let set = first
            .header("set-cookie")
            .expect("a cookie is set when missing")
            .to_string();
        let (pair, attrs) = set.split_once("; ").unwrap();
        let (name, id) = pair.split_once('=').unwrap();
        assert_eq!(name, "veer_id");
        assert!(
            id.len() >= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "id {id:?}"
        );
        assert_eq!(attrs, "Path=/; HttpOnly; SameSite=Lax");
        for _ in 0..5 {
            let again = get_with(&veer.url("/x"), &[("cookie", pair)]).await;
            assert_eq!(again.body, first.body, "the new cookie pins the same pool");
            assert!(again.header("set-cookie").is_none());
        }
    }
    veer.shutdown().await;
}

#[tokio::test]
async fn sticky_by_header() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 50, green = 50 }",
        "sticky = { header = \"x-user-id\" }",
    ))
    .await;
    let mut green_users = 0;
    for i in 0..200 {
        let id = format!("u{i}");
        let a = get_with(&veer.url("/"), &[("x-user-id", &id)]).await;
        let b = get_with(&veer.url("/other"), &[("x-user-id", &id)]).await;
        assert_eq!(a.body, b.body, "user {id} moved");
        assert!(
            a.header("set-cookie").is_none(),
            "no cookie for header stickiness"
        );
        green_users += usize::from(a.body == "green");
    }
    assert!(
        (60..=140).contains(&green_users),
        "green users {green_users}/200"
    );
    veer.shutdown().await;
}

/// One GET from a chosen loopback source address (127.0.0.x), on a fresh connection.
async fn get_from(src: [u8; 4], proxy: SocketAddr) -> String {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((src, 0))).unwrap();
    let mut s = sock.connect(proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await.expect("a response");
    assert_eq!(status_of(&head), 200, "{head}");
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn sticky_by_client_ip() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 50, green = 50 }",
        "sticky = { client_ip = true }",
    ))
    .await;
    let mut seen = HashMap::<String, usize>::new();
    for last in 2..62u8 {
        let a = get_from([127, 0, 0, last], veer.addr).await;
        for _ in 0..3 {
            assert_eq!(
                get_from([127, 0, 0, last], veer.addr).await,
                a,
                "127.0.0.{last} moved"
            );
        }
        *seen.entry(a).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "60 client IPs all in one pool: {seen:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn override_by_header_and_cookie_forces_the_pool() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 100, green = 0 }",
        "override = { header = \"x-veer-pool\", cookie = \"veer_pool\" }",
    ))
    .await;
    let url = veer.url("/");
    let plain = count_bodies(&url, 200, &[]).await;
    assert_eq!(plain.get("blue"), Some(&200), "{plain:?}");
    // A weight-0 pool is reachable by override.
    let by_header = count_bodies(&url, 50, &[("x-veer-pool", "green")]).await;
    assert_eq!(by_header.get("green"), Some(&50), "{by_header:?}");
    let by_cookie = count_bodies(&url, 50, &[("cookie", "a=b; veer_pool=green")]).await;
    assert_eq!(by_cookie.get("green"), Some(&50), "{by_cookie:?}");
    // The header wins over the cookie; an unknown pool name is ignored.
    let both = get_with(
        &url,
        &[("x-veer-pool", "blue"), ("cookie", "veer_pool=green")],
    )
    .await;
    assert_eq!(both.body, "blue");
    let unknown = get_with(&url, &[("x-veer-pool", "purple")]).await;
    assert_eq!((unknown.status, unknown.body.as_str()), (200, "blue"));
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Routing.

#[tokio::test]
async fn routes_by_host_and_longest_prefix() {
    let exact = upstream("exact").await;
    let suffix = upstream("suffix").await;
    let suffix_api = upstream("suffix-api").await;
    let any_static = upstream("any-static").await;
    let veer = start_veer(&format!(
        "[pools.exact]\nbackends = [\"{}\"]\n\
         [pools.suffix]\nbackends = [\"{}\"]\n\
         [pools.suffix_api]\nbackends = [\"{}\"]\n\
         [pools.any_static]\nbackends = [\"{}\"]\n\
         [[routes]]\nname = \"exact\"\nhosts = [\"api.example.com\"]\nsplit = {{ exact = 1 }}\n\
         [[routes]]\nname = \"suffix\"\nhosts = [\"*.example.com\"]\nsplit = {{ suffix = 1 }}\n\
         [[routes]]\nname = \"suffix-api\"\nhosts = [\"*.example.com\"]\npath_prefix = \"/api\"\nsplit = {{ suffix_api = 1 }}\n\
         [[routes]]\nname = \"static\"\nhosts = [\"*\"]\npath_prefix = \"/static\"\nsplit = {{ any_static = 1 }}\n",
        exact.addr, suffix.addr, suffix_api.addr, any_static.addr
    ))
    .await;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("api.example.com", "/", 200, "exact"),
        ("API.Example.COM:8080", "/x", 200, "exact"),
        ("api.example.com.", "/x", 200, "exact"),
        ("www.example.com", "/", 200, "suffix"),
        ("a.b.example.com", "/", 200, "suffix"),
        ("www.example.com", "/api", 200, "suffix-api"),
        ("www.example.com", "/api/users?x=1", 200, "suffix-api"),
        ("www.example.com", "/apix", 200, "suffix"),
        // The longest prefix wins among the routes that match the host.
        ("api.example.com", "/api/v1", 200, "suffix-api"),
        ("api.example.com", "/static/app.js", 200, "any-static"),
        ("other.org", "/static/app.js", 200, "any-static"),
        ("other.org", "/static", 200, "any-static"),
        // No route: the bare domain is not matched by *.example.com, and "/" has no "*" route.
        ("example.com", "/", 404, ""),
        ("other.org", "/", 404, ""),
        ("other.org", "/staticx", 404, ""),
    ];
    for (host, path, status, body) in cases {
        let got = get_with(&veer.url(path), &[("host", host)]).await;
        assert_eq!(got.status, *status, "{host}{path}: {}", got.body);
        if *status == 200 {
            assert_eq!(got.body, *body, "{host}{path}");
        }
    }
    veer.shutdown().await;
}

#[tokio::test]
async fn dot_segments_cannot_slip_a_path_under_another_routes_prefix() {
    let echo = |name: &'static str| {
        upstream_with(move |req| async move { respond(200, format!("{name} {}", req.uri())) })
    };
    let api = echo("api").await;
    let site = echo("site").await;
    let veer = start_veer(&format!(
        "[pools.api]\nbackends = [\"{}\"]\n[pools.site]\nbackends = [\"{}\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nsplit = {{ api = 1 }}\n\
         [[routes]]\nname = \"site\"\nsplit = {{ site = 1 }}\n",
        api.addr, site.addr
    ))
    .await;
    for (path, want) in [
        // Routed and forwarded as the backend would read them.
        ("/api/../admin", "site /admin"),
        ("/api/%2e%2e/admin?x=1", "site /admin?x=1"),
        ("/api/./v1/users", "api /api/v1/users"),
        ("/static/../api/v1", "api /api/v1"),
        // Untouched without dot-segments.
        ("/api/v1/file.tar.gz", "api /api/v1/file.tar.gz"),
        ("/.well-known/acme", "site /.well-known/acme"),
    ] {
        let got = get(&veer.url(path)).await;
        assert_eq!((got.status, got.body.as_str()), (200, want), "{path}");
    }
    // On the wire exactly as written (a client library might resolve it first).
    let answer = raw(
        veer.addr,
        b"GET /api/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.ends_with("site /admin"), "{answer}");
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Headers.

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let up = echo_head_upstream().await;
    let veer = start_veer(&format!(
        "[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        up.addr
    ))
    .await;
    let req = "GET /echo?q=1 HTTP/1.1\r\n\
               Host: shop.example.com:8080\r\n\
               Connection: close, X-Secret\r\n\
               X-Secret: s3cret\r\n\
               Keep-Alive: timeout=5\r\n\
               TE: trailers, deflate\r\n\
               Trailer: x-checksum\r\n\
               Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
               Proxy-Connection: keep-alive\r\n\
               Upgrade: h2c\r\n\
               X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\
               X-Forwarded-Proto: https\r\n\
               X-Keep: yes\r\n\
               \r\n";
    let raw_resp = raw(veer.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw_resp), 200, "{raw_resp}");
    let body = raw_resp.split_once("\r\n\r\n").unwrap().1;
    assert!(body.starts_with("GET /echo?q=1 HTTP/1.1"), "{body}");
    let seen = echoed(body);
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            echoed_get(&seen, gone).is_empty(),
            "{gone} reached the upstream: {body}"
        );
    }
    assert_eq!(
        echoed_get(&seen, "host"),
        ["shop.example.com:8080"],
        "Host kept"
    );
    assert_eq!(echoed_get(&seen, "x-keep"), ["yes"]);
    assert_eq!(
        echoed_get(&seen, "x-forwarded-for"),
        ["10.0.0.1, 10.0.0.2, 127.0.0.1"]
    );
    assert_eq!(
        echoed_get(&seen, "x-forwarded-proto"),
        ["http"],
        "set, not trusted from the client"
    );
    assert_eq!(
        echoed_get(&seen, "x-forwarded-host"),
        ["shop.example.com:8080"]
    );

    // Response side, through a keep-alive client.
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 200);
    for gone in [
        "x-resp-hop",
        "keep-alive",
        "proxy-agent",
        "trailer",
        "upgrade",
    ] {
        assert!(
            got.headers.get(gone).is_none(),
            "{gone} reached the client: {:?}",
            got.headers
        );
    }
    assert!(
        got.headers
            .get_all("connection")
            .iter()
            .all(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive")),
        "upstream's Connection leaked: {:?}",
        got.headers
    );
    assert_eq!(got.header("x-resp-keep"), Some("1"));
    // Without a prior X-Forwarded-For, it is just the client.
    let seen = echoed(&got.body);
    assert_eq!(echoed_get(&seen, "x-forwarded-for"), ["127.0.0.1"]);

    // A request with a body goes another way upstream (not the body-less fast path): the
    // same forwarding headers, each once.
    let req = "POST /echo HTTP/1.1\r\n\
               Host: shop.example.com\r\n\
               X-Forwarded-For: 10.0.0.9\r\n\
               X-Forwarded-Host: spoofed.example\r\n\
               Content-Length: 5\r\n\
               Connection: close\r\n\
               \r\nhello";
    let raw_resp = raw(veer.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw_resp), 200, "{raw_resp}");
    let seen = echoed(raw_resp.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(
        echoed_get(&seen, "x-forwarded-for"),
        ["10.0.0.9, 127.0.0.1"]
    );
    assert_eq!(echoed_get(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed_get(&seen, "x-forwarded-host"), ["shop.example.com"]);
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Bodies and framing.

#[tokio::test]
async fn expect_100_continue_does_not_stall() {
    let up = counting_upstream().await;
    let veer = start_veer(&format!(
        "[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        up.addr
    ))
    .await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // A client waits for 100 Continue before sending the body; veer must send it promptly.
    let (interim, _) = tokio::time::timeout(Duration::from_secs(3), read_response(&mut s))
        .await
        .expect("no 100 Continue: the upload stalls")
        .expect("connection closed");
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "100 Continue took {:?}",
        started.elapsed()
    );
    s.write_all(b"hello world").await.unwrap();
    let (head, body) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, b"11");

    // The hyper client's own Expect handling works too (it sends the body at once).
    let req = Request::post(veer.url("/upload"))
        .header("expect", "100-continue")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    let got = send(req).await;
    assert_eq!((got.status, got.body.as_str()), (200, "10"));
    veer.shutdown().await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_forwarded_with_both() {
    let (addr, heads) = raw_upstream(RawReply::Bytes(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ))
    .await;
    let veer = start_veer(&format!(
        "[pools.app]\nbackends = [\"{addr}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
    ))
    .await;
    let smuggles: [&[u8]; 2] = [
        b"POST /a HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    let mut forwarded = 0;
    for req in smuggles {
        let resp = raw(veer.addr, req, Duration::from_secs(5)).await;
        let status = status_of(&resp);
        assert!(status == 200 || status == 400, "{resp}");
        forwarded += usize::from(status == 200);
    }
    let seen = heads.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        forwarded,
        "a request answered 400 still reached the upstream"
    );
    for h in &seen {
        let lower = h.to_ascii_lowercase();
        let (head, body) = lower.split_once("\r\n\r\n").unwrap();
        let te = header_in(head, "transfer-encoding");
        let cl = header_in(head, "content-length");
        assert!(
            !(te.is_some() && cl.is_some()),
            "forwarded with both framings:\n{h}"
        );
        // What arrives is the chunked body, intact.
        if te.is_some() {
            assert!(body.contains("hello"), "{h}");
        }
    }
    // Not even a request with a TE the proxy cannot frame (no final chunked) gets through.
    let before = heads.lock().unwrap().len();
    let resp = raw(
        veer.addr,
        b"POST /c HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert_eq!(
        heads.lock().unwrap().len(),
        before,
        "a request with bad framing reached the upstream"
    );
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Upgrades.

/// A WebSocket echo server on a raw listener.
async fn ws_echo_upstream() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = ws_echo_upstream().await;
    let veer = start_veer(&format!(
        "[pools.ws]\nbackends = [\"{up}\"]\n[[routes]]\nname = \"ws\"\nsplit = {{ ws = 1 }}\n",
    ))
    .await;
    let tcp = TcpStream::connect(veer.addr).await.unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(format!("ws://{}/chat", veer.addr), tcp),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello through veer")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.into_text().unwrap(), "hello through veer");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.into_data(), big);
    ws.close(None).await.unwrap();
    drop(ws);
    veer.shutdown().await;
}

#[tokio::test]
async fn websocket_tunnel_counts_as_a_connection_and_is_cut_by_a_drain() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = ws_echo_upstream().await;
    let veer = start_veer(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 1\n\
         [pools.ws]\nbackends = [\"{up}\"]\n[[routes]]\nname = \"ws\"\nsplit = {{ ws = 1 }}\n",
    ))
    .await;
    let tcp = TcpStream::connect(veer.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/chat", veer.addr), tcp)
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap(),
        "one"
    );
    // The tunnel holds the only connection slot.
    let mut other = TcpStream::connect(veer.addr).await.unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(400), read_response(&mut other)).await;
    assert!(
        waited.is_err(),
        "served beside an open tunnel with max_connections = 1"
    );
    // Draining the backend cuts the tunnel at the drain timeout.
    let started = Instant::now();
    veer.rt()
        .registry
        .set_draining("ws", up, true, Duration::from_millis(300));
    let end = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "tunnel still open after the drain timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // The slot is free again: the waiting connection is served (503: its only backend drains).
    let (head, _) = tokio::time::timeout(Duration::from_secs(3), read_response(&mut other))
        .await
        .expect("slot not released when the tunnel ended")
        .unwrap();
    assert_eq!(status_of(&head), 503, "{head}");
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Errors veer answers itself, each provoked for real.

fn one_pool(addr: SocketAddr, server: &str) -> String {
    format!(
        "{server}[admin]\nlisten = \"127.0.0.1:0\"\n\
         [pools.app]\nbackends = [\"{addr}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n"
    )
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_the_upstream() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let bad: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Bad\x01Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Bad: a\x00b\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: app\r\n\r\n",
        // HTTP/1.1 without Host, and with two.
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: evil.example/x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@app\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app app\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for req in bad {
        let started = Instant::now();
        let resp = raw(veer.addr, req, Duration::from_secs(3)).await;
        assert_eq!(
            status_of(&resp),
            400,
            "{:?} got {resp:?}",
            String::from_utf8_lossy(req)
        );
        // `raw` reads until the peer closes: the connection is not kept after a 400.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "kept open after 400: {:?}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(up.hits(), 0, "a malformed request reached the upstream");
    // And a good one on the same proxy does reach it.
    assert_eq!(get(&veer.url("/")).await.status, 200);
    assert_eq!(up.hits(), 1);
    veer.shutdown().await;
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_header_bytes = 16384\n",
    ))
    .await;
    let big = "a".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nHost: app\r\nX-Big: {big}\r\n\r\n");
    let resp = raw(veer.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&resp), 431, "{resp:.200}");
    // Many small headers adding up count the same.
    let many: String = (0..1000)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(20)))
        .collect();
    let req = format!("GET / HTTP/1.1\r\nHost: app\r\n{many}\r\n");
    let resp = raw(veer.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&resp), 431, "{resp:.200}");
    assert_eq!(up.hits(), 0);
    // A head under the limit passes.
    let ok = get_with(&veer.url("/"), &[("x-medium", &"c".repeat(8000))]).await;
    assert_eq!(ok.status, 200);
    veer.shutdown().await;
}

#[tokio::test]
async fn upstream_that_closes_without_answering_gives_502() {
    let (addr, heads) = raw_upstream(RawReply::Close).await;
    let veer = start_veer(&one_pool(addr, "")).await;
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert!(
        !heads.lock().unwrap().is_empty(),
        "the upstream was reached"
    );
    let post = send(
        Request::post(veer.url("/"))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 502);
    veer.shutdown().await;
}

#[tokio::test]
async fn upstream_answering_garbage_gives_502() {
    let (addr, _) = raw_upstream(RawReply::Bytes(
        b"SSH-2.0-OpenSSH_9.0\r\nnot http at all\r\n\r\n",
    ))
    .await;
    let veer = start_veer(&one_pool(addr, "")).await;
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 502, "{}", got.body);
    let (addr, _) = raw_upstream(RawReply::Bytes(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\nabc",
    ))
    .await;
    let veer2 = start_veer(&one_pool(addr, "")).await;
    let got = get(&veer2.url("/")).await;
    assert_eq!(got.status, 502, "{}", got.body);
    veer.shutdown().await;
    veer2.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_gives_502() {
    let dead = dead_addr().await;
    let veer = start_veer(&one_pool(dead, "")).await;
    let started = Instant::now();
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn no_available_backend_gives_503_with_retry_after_at_once() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 90, green = 10 }",
        "",
    ))
    .await;
    let reg = &veer.rt().registry;
    // Fallback: with blue drained, its share goes to green.
    assert!(reg.set_draining("blue", blue.addr, true, Duration::from_secs(1)));
    let counts = count_bodies(&veer.url("/"), 100, &[]).await;
    assert_eq!(counts.get("green"), Some(&100), "{counts:?}");
    // Nothing left: 503 with Retry-After, without waiting.
    assert!(reg.set_draining("green", green.addr, true, Duration::from_secs(1)));
    let started = Instant::now();
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 503, "{}", got.body);
    assert!(got.header("retry-after").is_some(), "{:?}", got.headers);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // Undrained: served again.
    assert!(reg.set_draining("green", green.addr, false, Duration::from_secs(1)));
    assert_eq!(get(&veer.url("/")).await.body, "green");
    veer.shutdown().await;
}

#[tokio::test]
async fn no_fallback_means_503_for_the_chosen_pool() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 50, green = 50 }",
        "fallback = false\nsticky = { header = \"x-user\" }",
    ))
    .await;
    veer.rt()
        .registry
        .set_draining("green", green.addr, true, Duration::from_secs(1));
    let mut codes = HashMap::<u16, usize>::new();
    for i in 0..100 {
        let got = get_with(&veer.url("/"), &[("x-user", &format!("u{i}"))]).await;
        if got.status == 503 {
            assert!(got.header("retry-after").is_some());
        } else {
            assert_eq!(got.body, "blue");
        }
        *codes.entry(got.status).or_default() += 1;
    }
    assert!(codes.get(&503).copied().unwrap_or(0) > 20, "{codes:?}");
    assert!(codes.get(&200).copied().unwrap_or(0) > 20, "{codes:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_gives_504_after_request_timeout() {
    let up = upstream_with(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        respond(200, "late")
    })
    .await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nrequest_timeout = \"300ms\"\n",
    ))
    .await;
    let started = Instant::now();
    let got = get(&veer.url("/")).await;
    let took = started.elapsed();
    assert_eq!(got.status, 504, "{}", got.body);
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "{took:?}"
    );
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Slow and idle clients, connection limits.

#[tokio::test]
async fn slowloris_is_dropped_after_header_read_timeout() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nheader_read_timeout = \"500ms\"\nidle_timeout = \"30s\"\n",
    ))
    .await;
    // Trickles a header line every 100 ms, never finishing the head.
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = loop {
        if started.elapsed() > Duration::from_secs(5) {
            break false;
        }
        if s.write_all(b"X-A: b\r\n").await.is_err() {
            break true;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    };
    let took = started.elapsed();
    assert!(closed, "slowloris still connected after {took:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.is_empty() || status_of(&text) == 408, "{text}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2000),
        "{took:?}"
    );

    // A client that connects and says nothing is dropped on the same clock.
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("silent client kept");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    assert_eq!(up.hits(), 0);
    veer.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nidle_timeout = \"400ms\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await.unwrap();
    assert_eq!(status_of(&head), 200);
    let took = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("idle connection kept");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn keep_alive_outlives_header_read_timeout_while_idle() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nheader_read_timeout = \"200ms\"\nidle_timeout = \"5s\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut s)
            .await
            .expect("keep-alive connection closed early");
        assert_eq!(status_of(&head), 200);
        assert_eq!(body, b"app");
        // Idle between requests for longer than header_read_timeout, within idle_timeout.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    veer.shutdown().await;
}

#[tokio::test]
async fn max_connections_makes_extra_connections_wait() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 2\n",
    ))
    .await;
    let req = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n";
    let mut c1 = TcpStream::connect(veer.addr).await.unwrap();
    let mut c2 = TcpStream::connect(veer.addr).await.unwrap();
    for c in [&mut c1, &mut c2] {
        c.write_all(req).await.unwrap();
        assert_eq!(status_of(&read_response(c).await.unwrap().0), 200);
    }
    // The third connects (the kernel backlog takes it) but is not served.
    let mut c3 = TcpStream::connect(veer.addr).await.unwrap();
    c3.write_all(req).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), read_response(&mut c3)).await;
    assert!(
        waited.is_err(),
        "third connection served over max_connections: {waited:?}"
    );
    // One closes: the third is served.
    drop(c1);
    let (head, _) = tokio::time::timeout(Duration::from_secs(3), read_response(&mut c3))
        .await
        .expect("third connection still waiting after one closed")
        .unwrap();
    assert_eq!(status_of(&head), 200);
    // The second still works.
    c2.write_all(req).await.unwrap();
    assert_eq!(status_of(&read_response(&mut c2).await.unwrap().0), 200);
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2.

#[tokio::test]
async fn h2c_prior_knowledge_downstream() {
    let up = echo_head_upstream().await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let url = veer.url(&format!("/h2/{i}"));
        tasks.push(tokio::spawn(async move {
            let resp = client
                .request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let body = t.await.unwrap();
        // The upstream gets HTTP/1.1 with a Host taken from :authority.
        assert!(body.starts_with(&format!("GET /h2/{i} HTTP/1.1")), "{body}");
        let seen = echoed(&body);
        assert_eq!(
            echoed_get(&seen, "host"),
            [veer.addr.to_string().as_str()],
            "{body}"
        );
        assert_eq!(
            echoed_get(&seen, "x-forwarded-host"),
            [veer.addr.to_string().as_str()]
        );
    }
    veer.shutdown().await;
}

/// An upstream that sends `first`, then each of `then` after `gap`, then (with `stall`)
/// nothing more, ever.
async fn trickling_upstream(gap: Duration, then: usize, stall: bool) -> Upstream {
    upstream_with(move |_req| async move {
        use futures_util::StreamExt;
        let first = futures_util::stream::once(async {
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"first")))
        });
        let rest = futures_util::stream::iter(0..then).then(move |_| async move {
            tokio::time::sleep(gap).await;
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b".")))
        });
        let s = first.chain(rest);
        let s: std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send + Sync>> = if stall {
            Box::pin(s.chain(futures_util::stream::pending()))
        } else {
            Box::pin(s)
        };
        http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(s)))
    })
    .await
}

#[tokio::test]
async fn a_response_body_that_goes_silent_is_cut_after_body_timeout() {
    let up = trickling_upstream(Duration::from_millis(50), 2, true).await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nbody_timeout = \"300ms\"\n",
    ))
    .await;
    let resp = get_streaming(&veer.url("/events")).await;
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    // The data that came is delivered, then the body ends in an error, not a clean end.
    let got = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
    assert!(got.is_ok(), "silent body never cut");
    assert!(got.unwrap().is_err(), "a cut body must not look complete");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let backend = veer.rt().registry.get("app", up.addr).unwrap();
    eventually("lease released", Duration::from_secs(2), || {
        backend.in_flight() == 0
    })
    .await;
    veer.shutdown().await;
}

#[tokio::test]
async fn a_slow_but_steady_response_body_is_not_cut() {
    // Eight gaps of 100 ms: 800 ms in all, each gap well inside a 400 ms body_timeout.
    let up = trickling_upstream(Duration::from_millis(100), 8, false).await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nbody_timeout = \"400ms\"\n",
    ))
    .await;
    let got = get(&veer.url("/slow")).await;
    assert_eq!((got.status, got.body.as_str()), (200, "first........"));
    veer.shutdown().await;
}

#[tokio::test]
async fn a_drain_timeout_cuts_a_stalled_response_body() {
    use futures_util::StreamExt;
    let up = upstream_with(|_req| async {
        // One chunk, then silence: a long poll or an event stream.
        let s = futures_util::stream::once(async {
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"first")))
        })
        .chain(futures_util::stream::pending());
        http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(s)))
    })
    .await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let resp = get_streaming(&veer.url("/events")).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    let backend = veer.rt().registry.get("app", up.addr).unwrap();
    assert_eq!(backend.in_flight(), 1);
    let started = Instant::now();
    veer.rt()
        .registry
        .set_draining("app", up.addr, true, Duration::from_millis(300));
    let next = tokio::time::timeout(Duration::from_secs(3), body.frame()).await;
    assert!(next.is_ok(), "stalled body not cut by the drain timeout");
    assert!(!matches!(next, Ok(Some(Ok(_)))), "{next:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    eventually("lease released", Duration::from_secs(2), || {
        backend.in_flight() == 0
    })
    .await;
    veer.shutdown().await;
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_by_request_timeout() {
    // request_timeout runs until the response headers once the request is sent; an upload
    // still arriving is not a slow upstream.
    let up = counting_upstream().await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nrequest_timeout = \"400ms\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        s.write_all(b"x").await.unwrap();
    }
    let (head, body) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
        .await
        .unwrap()
        .expect("a response");
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, b"10");
    veer.shutdown().await;
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_does_not_count_against_the_backend() {
    let up = counting_upstream().await;
    // A body stalled on the client answers to request_body_timeout (request_timeout counts
    // only once the body is sent).
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nrequest_timeout = \"200ms\"\nrequest_body_timeout = \"200ms\"\n",
    ))
    .await;
    let backend = veer.rt().registry.get("app", up.addr).unwrap();
    // As many stalled uploads as the breaker's consecutive_failures (5).
    for _ in 0..5 {
        let mut s = TcpStream::connect(veer.addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\nhalf")
            .await
            .unwrap();
        let started = Instant::now();
        let (head, _) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
            .await
            .expect("a stalled upload is never answered")
            .expect("closed without an answer");
        assert_eq!(status_of(&head), 408, "{head}");
        assert!(
            started.elapsed() >= Duration::from_millis(180),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        backend.breaker.state().as_str(),
        "closed",
        "slow clients tripped the backend's breaker"
    );
    assert_eq!(get(&veer.url("/")).await.status, 200);
    veer.shutdown().await;
}

#[tokio::test]
async fn head_requests_keep_the_upstream_length() {
    let up = upstream("0123456789").await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let resp = raw(
        veer.addr,
        b"HEAD / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let lower = resp.to_ascii_lowercase();
    let (head, body) = lower.split_once("\r\n\r\n").unwrap();
    assert_eq!(header_in(head, "content-length"), Some("10"), "{resp}");
    assert!(body.is_empty(), "a HEAD answer has no body: {body:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn h2c_uploads_stream() {
    let up = counting_upstream().await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let payload = Bytes::from(vec![7u8; 8 * 1024 * 1024]);
    let resp = client
        .request(
            Request::post(veer.url("/up"))
                .body(Full::new(payload))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (8 * 1024 * 1024).to_string());
    veer.shutdown().await;
}
