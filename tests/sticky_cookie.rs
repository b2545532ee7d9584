//! Sticky cookie attributes (issue 20 item 6): `sticky = { cookie = "veer_id", max_age =
//! "30d", secure = true }`; `Secure` by default on TLS listeners only; the plain
//! `{ cookie = "NAME" }` form stays as it was. Over real sockets, plain and TLS.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use support::*;

const ROUTES: &str = r#"
[[routes]]
name = "web"
split = { blue = 1 }
sticky = { cookie = "veer_id", max_age = "30d" }

[[routes]]
name = "always"
path_prefix = "/always"
split = { blue = 1 }
sticky = { cookie = "veer_id", max_age = "1h30m", secure = true }

[[routes]]
name = "never"
path_prefix = "/never"
split = { blue = 1 }
sticky = { cookie = "veer_id", secure = false }

[[routes]]
name = "plain"
path_prefix = "/plain"
split = { blue = 1 }
sticky = { cookie = "uid" }
"#;

/// The `Set-Cookie` of a GET `path` over TLS (SNI and Host `grpc.test`).
async fn set_cookie_tls(tls: std::net::SocketAddr, path: &str) -> String {
    let stream = handshake(tls, Some("grpc.test"), client_config(None, &[b"http/1.1"])).await;
    let mut send = http1_over(stream).await;
    let req = Request::get(path)
        .header("host", "grpc.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()
        .get("set-cookie")
        .expect("a cookie is minted")
        .to_str()
        .unwrap()
        .to_string()
}

fn id_and_attrs(v: &str, name: &str) -> (String, String) {
    let rest = v
        .strip_prefix(&format!("{name}="))
        .unwrap_or_else(|| panic!("{v}"));
    let (id, attrs) = rest.split_once(';').unwrap();
    assert_eq!(id.len(), 32, "{v}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
    (id.to_string(), attrs.to_string())
}

#[tokio::test]
async fn cookie_attributes_over_plain_and_tls_listeners() {
    let blue = upstream("blue").await;
    let config = format!("[pools.blue]\nbackends = [\"{}\"]\n{ROUTES}", blue.addr);
    let v = start_with_cert(&config).await;
    let plain = |p: &str| format!("http://{}{p}", v.veer.addr);

    // Default: Secure only over TLS.
    let got = get(&plain("/")).await;
    let (_, attrs) = id_and_attrs(got.header("set-cookie").unwrap(), "veer_id");
    assert_eq!(attrs, " Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000");
    let (_, attrs) = id_and_attrs(&set_cookie_tls(v.tls, "/").await, "veer_id");
    assert_eq!(
        attrs,
        " Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000; Secure"
    );

    // secure = true: Secure on the plain listener too (TLS ends in front of veer).
    let got = get(&plain("/always")).await;
    let (_, attrs) = id_and_attrs(got.header("set-cookie").unwrap(), "veer_id");
    assert_eq!(
        attrs,
        " Path=/; HttpOnly; SameSite=Lax; Max-Age=5400; Secure"
    );

    // secure = false: never, even over TLS; no max_age: a session cookie.
    let (_, attrs) = id_and_attrs(&set_cookie_tls(v.tls, "/never").await, "veer_id");
    assert_eq!(attrs, " Path=/; HttpOnly; SameSite=Lax");

    // The old form is unchanged on plain HTTP, and Secure over TLS.
    let got = get(&plain("/plain")).await;
    let (_, attrs) = id_and_attrs(got.header("set-cookie").unwrap(), "uid");
    assert_eq!(attrs, " Path=/; HttpOnly; SameSite=Lax");
    let (_, attrs) = id_and_attrs(&set_cookie_tls(v.tls, "/plain").await, "uid");
    assert_eq!(attrs, " Path=/; HttpOnly; SameSite=Lax; Secure");

    // A request that carries the cookie gets none.
    let got = get_with(&plain("/"), &[("cookie", "veer_id=someone")]).await;
    assert_eq!(got.header("set-cookie"), None);
    v.veer.shutdown().await;
}
