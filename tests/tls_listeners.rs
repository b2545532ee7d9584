//! HTTPS listeners end to end: ALPN, SNI, key formats, certificate hot reload, `veer check`
//! on certificate files, and curl over HTTP/2. Every certificate is generated with rcgen
//! (tests/support/tls.rs); none is committed.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn web_pool(up: &Upstream) -> String {
    format!(
        "[pools.web]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nhosts = [\"*\"]\nsplit = {{ web = 100 }}\n",
        up.addr
    )
}

/// veer in `dir` with one `[[tls.certificates]]` entry per stem (`{stem}.crt`, `{stem}.key`,
/// already written there), in front of an [`echo_upstream`] (keep it: dropping it stops it).
async fn start_serving(dir: tempfile::TempDir, stems: &[&str]) -> (TlsVeer, Upstream) {
    let up = echo_upstream().await;
    let certs: String = stems
        .iter()
        .map(|s| format!("[[tls.certificates]]\ncert = \"{s}.crt\"\nkey = \"{s}.key\"\n"))
        .collect();
    let v = start_in(dir, &format!("{certs}{}", web_pool(&up))).await;
    (v, up)
}

// ---------- downstream HTTPS ----------

#[tokio::test]
async fn https_speaks_http1_and_http2_by_alpn() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    ca.write_leaf(dir.path(), "a", &["a.test"]);
    let (v, _up) = start_serving(dir, &["a"]).await;

    // HTTP/1.1 by ALPN, certificate chain verified against the test CA.
    let tls = handshake(
        v.tls,
        Some("a.test"),
        client_config(Some(ca.roots()), &[b"http/1.1"]),
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = http1_over(tls).await;
    let (version, body) = get_text(&mut h1, "a.test").await;
    assert_eq!(version, Version::HTTP_11);
    assert!(
        body.contains(" https "),
        "X-Forwarded-Proto must be https: {body}"
    );

    // HTTP/2 by ALPN.
    let tls = handshake(
        v.tls,
        Some("a.test"),
        client_config(Some(ca.roots()), &[b"h2", b"http/1.1"]),
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = h2
        .send_request(
            Request::get("https://a.test/x")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains(" https "));

    // TLS 1.2 is still accepted; the plain listener still says http.
    let mut c12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(ca.roots())
    .with_no_client_auth();
    c12.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = handshake(v.tls, Some("a.test"), c12).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut h1 = http1_over(tls).await;
    assert!(get_text(&mut h1, "a.test").await.1.contains(" https "));
    let plain = get(&v.veer.url("/")).await;
    assert!(plain.body.contains(" http "), "{}", plain.body);
    v.veer.shutdown().await;
}

#[tokio::test]
async fn sni_picks_the_certificate_and_unknown_or_missing_sni_gets_the_first() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    for (name, names) in [
        ("default", &["default.test"][..]),
        ("a", &["a.test"][..]),
        ("b", &["*.b.test", "b.test"][..]),
    ] {
        ca.write_leaf(dir.path(), &format!("certs/{name}"), names);
    }
    let (v, _up) = start_serving(dir, &["certs/default", "certs/a", "certs/b"]).await;
    assert_eq!(served_names(v.tls, Some("a.test")).await, ["a.test"]);
    assert_eq!(served_names(v.tls, Some("A.TEST")).await, ["a.test"]);
    assert_eq!(
        served_names(v.tls, Some("api.b.test")).await,
        ["*.b.test", "b.test"]
    );
    assert_eq!(
        served_names(v.tls, Some("b.test")).await,
        ["*.b.test", "b.test"]
    );
    assert_eq!(
        served_names(v.tls, Some("unknown.test")).await,
        ["default.test"]
    );
    assert_eq!(served_names(v.tls, None).await, ["default.test"]);
    // The chosen certificate verifies for its own name.
    let tls = handshake(
        v.tls,
        Some("api.b.test"),
        client_config(Some(ca.roots()), &[b"http/1.1"]),
    )
    .await;
    let mut h1 = http1_over(tls).await;
    assert_eq!(get_text(&mut h1, "api.b.test").await.0, Version::HTTP_11);
    v.veer.shutdown().await;
}

/// RSA (PKCS#1) and EC (SEC1) keys as openssl writes them, where openssl is installed.
#[tokio::test]
async fn pkcs1_rsa_and_sec1_ec_keys_load() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not on PATH; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["genrsa", "-traditional", "-out", "rsa.key", "2048"]);
    run(&[
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
        "-out",
        "ec.key",
    ]);
    for (k, name) in [("rsa", "rsa.test"), ("ec", "ec.test")] {
        run(&[
            "req",
            "-x509",
            "-key",
            &format!("{k}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
            "-days",
            "30",
            "-out",
            &format!("{k}.crt"),
        ]);
    }
    assert!(std::fs::read_to_string(d.join("rsa.key"))
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    assert!(std::fs::read_to_string(d.join("ec.key"))
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));
    let (v, _up) = start_serving(dir, &["rsa", "ec"]).await;
    assert_eq!(served_names(v.tls, Some("rsa.test")).await, ["rsa.test"]);
    assert_eq!(served_names(v.tls, Some("ec.test")).await, ["ec.test"]);
    v.veer.shutdown().await;
}

/// The config watcher takes one look at the file just after start; changing files before it
/// has would make that look count too. There is no signal for it, so give it a moment.
async fn let_startup_settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn reloads(v: &Veer, result: &str) -> u64 {
    v.rt().metrics.reloads.with_label_values(&[result]).get()
}

/// Handshake until the served certificate has `name`, within `limit`.
async fn wait_for_cert(addr: SocketAddr, sni: &str, name: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if served_names(addr, Some(sni))
            .await
            .iter()
            .any(|n| n == name)
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "certificate {name} not served within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn replaced_certificate_serves_new_handshakes_and_open_connections_keep_working() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    ca.write_leaf(&d, "a", &["a.test", "one.a.test"]);
    // A Kubernetes-style secret volume: files reached through the `..data` symlink.
    ca.write_leaf(&d, "secret/..v1/tls", &["k.test", "one.k.test"]);
    std::os::unix::fs::symlink("..v1", d.join("secret/..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", d.join("secret/tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", d.join("secret/tls.key")).unwrap();
    let (v, _up) = start_serving(dir, &["a", "secret/tls"]).await;
    let tls = handshake(v.tls, Some("a.test"), client_config(None, &[b"http/1.1"])).await;
    assert!(names_of(&tls.get_ref().1.peer_certificates().unwrap()[0])
        .contains(&"one.a.test".to_string()));
    let mut open = http1_over(tls).await;
    get_text(&mut open, "a.test").await;
    let_startup_settle().await;

    // Replace by rename: key first, then the certificate (a moment of mismatch on disk).
    let (c, k) = ca.leaf(&["a.test", "two.a.test"]);
    replace(&d.join("a.key"), &k);
    replace(&d.join("a.crt"), &c);
    let took = wait_for_cert(v.tls, "a.test", "two.a.test", Duration::from_secs(2)).await;
    eprintln!("rename picked up after {took:?}");
    // The connection opened before still works, on the keys it negotiated.
    let (_, body) = get_text(&mut open, "a.test").await;
    assert!(body.contains(" https "));
    assert!(!open.is_closed());
    assert_eq!(
        reloads(&v.veer, "failure"),
        0,
        "a settled pair must not count a failure"
    );
    assert!(reloads(&v.veer, "success") >= 1);

    // Symlink swap, as Kubernetes updates a secret volume.
    assert_eq!(
        served_names(v.tls, Some("k.test")).await,
        ["k.test", "one.k.test"]
    );
    ca.write_leaf(&d, "secret/..v2/tls", &["k.test", "two.k.test"]);
    std::os::unix::fs::symlink("..v2", d.join("secret/..data_tmp")).unwrap();
    std::fs::rename(d.join("secret/..data_tmp"), d.join("secret/..data")).unwrap();
    wait_for_cert(v.tls, "k.test", "two.k.test", Duration::from_secs(2)).await;
    get_text(&mut open, "a.test").await;
    // The other certificate was reloaded along with it, unchanged.
    assert_eq!(
        served_names(v.tls, Some("a.test")).await,
        ["a.test", "two.a.test"]
    );
    v.veer.shutdown().await;
}

#[tokio::test]
async fn mismatched_key_is_refused_by_reload_and_the_old_pair_stays() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    ca.write_leaf(&d, "a", &["a.test", "one.a.test"]);
    let (v, _up) = start_serving(dir, &["a"]).await;
    let_startup_settle().await;
    let (_, other_key) = ca.leaf(&["a.test"]);
    replace(&d.join("a.key"), &other_key);
    let start = Instant::now();
    while reloads(&v.veer, "failure") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the bad pair was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reloads(&v.veer, "success"), 0);
    // Counted once, not at every poll.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(reloads(&v.veer, "failure"), 1);
    // New handshakes still get the old, working pair.
    let tls = handshake(
        v.tls,
        Some("a.test"),
        client_config(Some(ca.roots()), &[b"http/1.1"]),
    )
    .await;
    assert!(names_of(&tls.get_ref().1.peer_certificates().unwrap()[0])
        .contains(&"one.a.test".to_string()));
    let mut h1 = http1_over(tls).await;
    get_text(&mut h1, "a.test").await;
    // Fixing the files is picked up.
    let (c, k) = ca.leaf(&["a.test", "two.a.test"]);
    replace(&d.join("a.key"), &k);
    replace(&d.join("a.crt"), &c);
    wait_for_cert(v.tls, "a.test", "two.a.test", Duration::from_secs(2)).await;
    v.veer.shutdown().await;
}

// ---------- veer check ----------

fn check(path: &Path) -> (bool, String) {
    let out = std::process::Command::new(veer_bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn check_config(dir: &Path, certs: &str) -> PathBuf {
    write(
        dir,
        "veer.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n{certs}\
             [pools.web]\nbackends = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"web\"\nhosts = [\"*\"]\nsplit = {{ web = 100 }}\n"
        ),
    )
}

#[test]
fn check_rejects_bad_certificates_naming_the_file() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (c, k) = ca.leaf(&["a.test"]);
    let (_, other) = ca.leaf(&["a.test"]);
    write(d, "good.crt", &c);
    write(d, "good.key", &k);
    write(d, "other.key", &other);

    let ok = check_config(
        d,
        "[[tls.certificates]]\ncert = \"good.crt\"\nkey = \"good.key\"\n",
    );
    let (pass, text) = check(&ok);
    assert!(pass, "{text}");
    assert!(!text.contains("warning"), "{text}");

    let p = check_config(
        d,
        "[[tls.certificates]]\ncert = \"good.crt\"\nkey = \"other.key\"\n",
    );
    let (pass, text) = check(&p);
    assert!(!pass);
    assert!(
        text.contains("other.key") && text.contains("does not match"),
        "{text}"
    );
    assert!(text.contains("veer.toml:"), "errors are located: {text}");

    let p = check_config(
        d,
        "[[tls.certificates]]\ncert = \"missing.crt\"\nkey = \"good.key\"\n",
    );
    let (pass, text) = check(&p);
    assert!(!pass);
    assert!(text.contains("missing.crt"), "{text}");

    let (c, k) = ca.leaf_with(&["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    write(d, "old.crt", &c);
    write(d, "old.key", &k);
    let p = check_config(
        d,
        "[[tls.certificates]]\ncert = \"old.crt\"\nkey = \"old.key\"\n",
    );
    let (pass, text) = check(&p);
    assert!(!pass);
    assert!(
        text.contains("old.crt") && text.contains("expired"),
        "{text}"
    );

    // Expiring in five days: valid, with a warning.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let (c, k) = ca.leaf_with(&["soon.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(1970, 1, 1) + (now + Duration::from_secs(5 * 86400));
    });
    write(d, "soon.crt", &c);
    write(d, "soon.key", &k);
    let p = check_config(
        d,
        "[[tls.certificates]]\ncert = \"soon.crt\"\nkey = \"soon.key\"\n",
    );
    let (pass, text) = check(&p);
    assert!(pass, "{text}");
    assert!(
        text.contains("warning") && text.contains("soon.crt") && text.contains("expires in"),
        "{text}"
    );
}

/// `config/example-tls.toml` passes `veer check` once its certificate files exist. They are
/// generated here, in a copy of the config folder, since no certificate is committed.
#[test]
fn example_tls_config_passes_check_with_generated_certificates() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example-tls.toml");
    let text = std::fs::read_to_string(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "example-tls.toml", &text);
    let doc: toml::Value = toml::from_str(&text).unwrap();
    let ca = Ca::new();
    for c in doc["tls"]["certificates"].as_array().unwrap() {
        let (cert, key) = ca.leaf(&["example.com", "*.example.com"]);
        write(dir.path(), c["cert"].as_str().unwrap(), &cert);
        write(dir.path(), c["key"].as_str().unwrap(), &key);
    }
    for pool in doc["pools"].as_table().unwrap().values() {
        let ca_file = pool
            .get("ca")
            .or_else(|| pool.get("tls").and_then(|t| t.get("ca")));
        if let Some(f) = ca_file.and_then(|v| v.as_str()) {
            write(dir.path(), f, &ca.pem());
        }
    }
    let (pass, out) = check(&path);
    assert!(pass, "{out}");
}

// ---------- curl ----------

#[tokio::test]
async fn curl_http2_against_the_https_listener() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl not on PATH; skipping");
        return;
    }
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    ca.write_leaf(dir.path(), "a", &["a.test"]);
    let (v, _up) = start_serving(dir, &["a"]).await;
    let port = v.tls.port();
    let out = tokio::process::Command::new("curl")
        .args([
            "--http2",
            "-k",
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg("--resolve")
        .arg(format!("a.test:{port}:127.0.0.1"))
        .arg(format!("https://a.test:{port}/hello"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let body = lines.next().unwrap();
    assert!(body.contains(" https a.test"), "{body}");
    assert_eq!(lines.next(), Some("2 200"));
    v.veer.shutdown().await;
}
