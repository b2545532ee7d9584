//! Choosing the backend (issue 2): forwarding to the only pool, the weighted split, sticky
//! users (cookie, header, client IP), override by header and cookie, and routing by host and
//! longest path prefix. Real upstreams and a real veer over sockets.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;

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
    let (_blue, _green, veer) = blue_green_veer("{ blue = 90, green = 10 }", "").await;
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
    let (_blue, _green, veer) = blue_green_veer(
        "{ blue = 90, green = 10 }",
        "sticky = { cookie = \"veer_id\" }",
    )
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
    let sticky = "sticky = { cookie = \"veer_id\" }";
    let (blue, green, veer) = blue_green_veer("{ blue = 90, green = 10 }", sticky).await;
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
    let (_blue, _green, veer) = blue_green_veer(
        "{ blue = 50, green = 50 }",
        "sticky = { cookie = \"veer_id\" }",
    )
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
    let (_blue, _green, veer) = blue_green_veer(
        "{ blue = 50, green = 50 }",
        "sticky = { header = \"x-user-id\" }",
    )
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
    let (head, body) = read_head_body(&mut s).await.expect("a response");
    assert_eq!(status_of(&head), 200, "{head}");
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn sticky_by_client_ip() {
    let (_blue, _green, veer) =
        blue_green_veer("{ blue = 50, green = 50 }", "sticky = { client_ip = true }").await;
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
    let (_blue, _green, veer) = blue_green_veer(
        "{ blue = 100, green = 0 }",
        "override = { header = \"x-veer-pool\", cookie = \"veer_pool\" }",
    )
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
