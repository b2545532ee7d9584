//! TLS and HTTP/2 to backends: certificate verification and SNI, health checks in the pool's
//! protocol, h2c, and gRPC-style streaming with trailers and grpc-status failures.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use std::time::Duration;
use support::*;
use tokio::sync::mpsc;

// ---------- upstream TLS and HTTP/2 ----------

#[tokio::test]
async fn upstream_tls_verifies_against_the_ca_and_sni() {
    let ca = Ca::new();
    let (c, k) = ca.leaf(&["backend.test"]);
    let (addr, _stop) = tls_upstream(&c, &k).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", &ca.pem());
    let pool =
        |name: &str, extra: &str| format!("[pools.{name}]\nbackends = [\"{addr}\"]\n{extra}\n");
    let route = |name: &str| {
        format!("[[routes]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\nsplit = {{ {name} = 100 }}\n")
    };
    let mut config = String::new();
    for (name, extra) in [
        ("good", "tls = { ca = \"ca.pem\", sni = \"backend.test\" }"),
        (
            "h2tls",
            "protocol = \"h2\"\ntls = { ca = \"ca.pem\", sni = \"backend.test\" }",
        ),
        ("sysroots", "tls = { sni = \"backend.test\" }"),
        (
            "wrongsni",
            "tls = { ca = \"ca.pem\", sni = \"other.test\" }",
        ),
        ("skip", "tls = { insecure_skip_verify = true }"),
    ] {
        config.push_str(&pool(name, extra));
        config.push_str(&route(name));
    }
    let v = start_in(dir, &config).await;
    let got = get_with(&v.veer.url("/"), &[("host", "good.test")]).await;
    assert_eq!((got.status, got.body.as_str()), (200, "secure HTTP/1.1"));
    let got = get_with(&v.veer.url("/"), &[("host", "h2tls.test")]).await;
    assert_eq!((got.status, got.body.as_str()), (200, "secure HTTP/2.0"));
    // Not signed by any system root: refused.
    let got = get_with(&v.veer.url("/"), &[("host", "sysroots.test")]).await;
    assert_eq!(got.status, 502, "{}", got.body);
    // The certificate is not for the name veer asked for: refused.
    let got = get_with(&v.veer.url("/"), &[("host", "wrongsni.test")]).await;
    assert_eq!(got.status, 502, "{}", got.body);
    // Verification off: accepted (the certificate has no IP name and no trusted root).
    let got = get_with(&v.veer.url("/"), &[("host", "skip.test")]).await;
    assert_eq!((got.status, got.body.as_str()), (200, "secure HTTP/1.1"));
    v.veer.shutdown().await;
}

#[tokio::test]
async fn health_checks_speak_the_pools_tls_and_protocol() {
    let ca = Ca::new();
    let (c, k) = ca.leaf(&["backend.test"]);
    let (tls_addr, _stop) = tls_upstream(&c, &k).await;
    // An h2c backend that fails anything but HTTP/2.
    let h2c = upstream_with(|req| async move {
        respond(
            if req.version() == Version::HTTP_2 {
                200
            } else {
                505
            },
            "h2c",
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", &ca.pem());
    let check =
        "interval = \"100ms\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 1";
    let config = format!(
        "[pools.tls]\nbackends = [\"{tls_addr}\"]\nprotocol = \"h2\"\ntls = {{ ca = \"ca.pem\", sni = \"backend.test\" }}\n\
         [pools.tls.health_check]\npath = \"/health\"\n{check}\n\
         [pools.h2c]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n[pools.h2c.health_check]\npath = \"/health\"\n{check}\n\
         [[routes]]\nname = \"tls\"\nhosts = [\"tls.test\"]\nsplit = {{ tls = 100 }}\n\
         [[routes]]\nname = \"h2c\"\nhosts = [\"h2c.test\"]\nsplit = {{ h2c = 100 }}\n",
        h2c.addr
    );
    let v = start_in(dir, &config).await;
    let rt = v.veer.rt().clone();
    eventually(
        "both backends pass their checks",
        Duration::from_secs(5),
        || {
            rt.registry
                .all()
                .iter()
                .all(|b| b.health() == veer::upstream::Health::Healthy)
        },
    )
    .await;
    let got = get_with(&v.veer.url("/"), &[("host", "tls.test")]).await;
    assert_eq!((got.status, got.body.as_str()), (200, "secure HTTP/2.0"));
    let got = get_with(&v.veer.url("/"), &[("host", "h2c.test")]).await;
    assert_eq!((got.status, got.body.as_str()), (200, "h2c"));
    v.veer.shutdown().await;
}

#[tokio::test]
async fn h2c_upstream_gets_http2_with_the_downstream_authority() {
    let up = echo_upstream().await;
    let v = start_veer(&format!(
        "[pools.grpc]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n[[routes]]\nname = \"r\"\nhosts = [\"*\"]\nsplit = {{ grpc = 100 }}\n",
        up.addr
    ))
    .await;
    let got = get_with(&v.url("/"), &[("host", "svc.test:8443")]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "HTTP/2.0 http svc.test:8443");
    v.shutdown().await;
}

// ---------- gRPC-style streaming ----------
async fn grpc_upstream() -> Upstream {
    upstream_with(|req: Request<Incoming>| async move {
        let te = req
            .headers()
            .get("te")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let status = req
            .headers()
            .get("x-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_string();
        if req.headers().contains_key("x-trailers-only") {
            // An immediate error: the status in the headers, no body, no trailers.
            let mut r = Response::new(body_empty());
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            r.headers_mut()
                .insert("grpc-status", status.parse().unwrap());
            return r;
        }
        let (tx, rx) = mpsc::channel(16);
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    let _ = tx.send(Frame::data(data)).await;
                }
            }
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", status.parse().unwrap());
            t.insert("grpc-message", "done".parse().unwrap());
            t.insert("x-te-seen", te.parse().unwrap());
            let _ = tx.send(Frame::trailers(t)).await;
        });
        let mut resp = Response::new(ChannelBody(rx).boxed());
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        resp
    })
    .await
}

fn body_empty() -> http_body_util::combinators::BoxBody<Bytes, hyper::Error> {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

fn grpc_request(headers: &[(&str, &str)]) -> (Request<ChannelBody>, mpsc::Sender<Frame<Bytes>>) {
    let (tx, rx) = mpsc::channel(16);
    let mut b = Request::post("https://grpc.test/echo.Echo/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    (b.body(ChannelBody(rx)).unwrap(), tx)
}
fn grpc_config(up: &Upstream, breaker: &str) -> String {
    format!(
        "[pools.grpc]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n{breaker}\n[[routes]]\nname = \"grpc\"\nhosts = [\"*\"]\nsplit = {{ grpc = 100 }}\n",
        up.addr
    )
}
#[tokio::test]
async fn grpc_streams_both_ways_and_keeps_trailers() {
    let up = grpc_upstream().await;
    let v = start_with_cert(&grpc_config(&up, "")).await;
    let mut client = h2_client_tls(v.tls).await;
    let (req, tx) = grpc_request(&[]);
    let resp_fut = client.send_request(req);
    tx.send(Frame::data(Bytes::from_static(b"ping-1")))
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp_fut)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    // Each message comes back before the next is sent: nothing is buffered whole.
    assert_eq!(next_frame(&mut body).await.into_data().unwrap(), "ping-1");
    tx.send(Frame::data(Bytes::from_static(b"ping-2")))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut body).await.into_data().unwrap(), "ping-2");
    drop(tx);
    let trailers = next_frame(&mut body)
        .await
        .into_trailers()
        .expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
    assert_eq!(
        trailers["x-te-seen"], "trailers",
        "te: trailers must reach an h2 upstream"
    );
    v.veer.shutdown().await;
}

fn breaker_of(v: &Veer) -> String {
    let b = v.rt().registry.all();
    b[0].breaker.state().as_str().to_string()
}

type H2 = hyper::client::conn::http2::SendRequest<ChannelBody>;

async fn failing_calls(client: &mut H2, n: usize) {
    for i in 0..n {
        let extra: &[(&str, &str)] = if i % 2 == 1 {
            &[("x-status", "14"), ("x-trailers-only", "1")]
        } else {
            &[("x-status", "14")]
        };
        let (req, tx) = grpc_request(extra);
        drop(tx);
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let in_headers = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        let mut body = resp.into_body();
        let status = match in_headers {
            Some(s) => Some(s),
            None => resp_status(&mut body).await,
        };
        assert_eq!(status.as_deref(), Some("14"));
    }
}

async fn resp_status(body: &mut Incoming) -> Option<String> {
    while let Some(f) = body.frame().await {
        if let Ok(t) = f.unwrap().into_trailers() {
            return t
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
        }
    }
    None
}

#[tokio::test]
async fn grpc_status_errors_trip_the_breaker_only_when_configured() {
    let up = grpc_upstream().await;
    // Not configured: any number of UNAVAILABLE answers leave the breaker closed.
    let v = start_with_cert(&grpc_config(
        &up,
        "[pools.grpc.circuit_breaker]\nconsecutive_failures = 3\nopen_for = \"1m\"",
    ))
    .await;
    let mut client = h2_client_tls(v.tls).await;
    failing_calls(&mut client, 6).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(breaker_of(&v.veer), "closed");
    v.veer.shutdown().await;

    // Configured: three in a row (in trailers and trailers-only) open it.
    let v = start_with_cert(&grpc_config(
                &up,
                "[pools.grpc.circuit_breaker]\nconsecutive_failures = 3\nopen_for = \"1m\"\ngrpc_status_failures = true"
            ))
    .await;
    let mut client = h2_client_tls(v.tls).await;
    failing_calls(&mut client, 3).await;
    let veer = &v.veer;
    eventually("breaker opens", Duration::from_secs(5), || {
        breaker_of(veer) == "open"
    })
    .await;
    v.veer.shutdown().await;
}
