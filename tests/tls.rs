//! TLS end to end: HTTPS listeners (ALPN, SNI, certificate hot reload), `veer check` on
//! certificate files, TLS and HTTP/2 to upstreams, and gRPC-style streaming with trailers.
//! Every certificate is generated here with rcgen; none is committed.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use support::*;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

// ---------- certificates ----------

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "veer test CA");
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for these names (DNS names or IPs), as (cert PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf_with(names, |_| {})
    }

    fn leaf_with(
        &self,
        names: &[&str],
        f: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        f(&mut p);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.cert.der().clone()).unwrap();
        r
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Replace a file the way deploy tools do: write a temporary file, rename it over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The DNS names of a DER certificate.
fn names_of(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------- TLS clients ----------

/// Accepts any server certificate (for tests that look at which certificate was sent).
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::ring::default_provider();
        rustls::crypto::verify_tls12_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::ring::default_provider();
        rustls::crypto::verify_tls13_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(roots: Option<rustls::RootCertStore>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap();
    let mut c = match roots {
        Some(r) => b.with_root_certificates(r).with_no_client_auth(),
        None => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

/// Handshake with `addr`; `sni = None` sends no SNI at all.
async fn handshake(
    addr: SocketAddr,
    sni: Option<&str>,
    mut config: rustls::ClientConfig,
) -> TlsStream<TcpStream> {
    if sni.is_none() {
        config.enable_sni = false;
    }
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_string()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed")
}

/// The names of the certificate veer presents for `sni`.
async fn served_names(addr: SocketAddr, sni: Option<&str>) -> Vec<String> {
    let tls = handshake(addr, sni, client_config(None, &[])).await;
    names_of(&tls.get_ref().1.peer_certificates().unwrap()[0])
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http1_over(tls: TlsStream<TcpStream>) -> H1 {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get_text(send: &mut H1, host: &str) -> (Version, String) {
    let req = Request::get("/")
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (v, String::from_utf8_lossy(&body).into_owned())
}

// ---------- veer ----------

struct TlsVeer {
    veer: Veer,
    tls: SocketAddr,
}

/// Start veer from `config` (after a `[server]` with one plain and one TLS listener on port
/// 0) in `dir`, where the certificate files already are.
async fn start_in(dir: tempfile::TempDir, config: &str) -> TlsVeer {
    start_in_with(dir, "", config).await
}

/// [`start_in`] with more `[server]` keys (`server`, lines ending in a newline).
async fn start_in_with(dir: tempfile::TempDir, server: &str, config: &str) -> TlsVeer {
    let tls_listen = if config.contains("[[tls.certificates]]") {
        "tls_listen = [\"127.0.0.1:0\"]\n"
    } else {
        ""
    };
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{tls_listen}{server}[admin]\nlisten = \"127.0.0.1:0\"\n{config}"
    );
    let path = write(dir.path(), "veer.toml", &text);
    let veer = start_veer_file(dir, path).await;
    let tls = veer
        .running
        .as_ref()
        .unwrap()
        .tls_listen
        .first()
        .copied()
        .unwrap_or(veer.addr);
    TlsVeer { veer, tls }
}

/// An upstream that answers with what it saw: HTTP version, X-Forwarded-Proto, authority.
async fn echo_upstream() -> Upstream {
    upstream_with(|req| async move {
        let xfp = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            })
            .unwrap_or_default();
        respond(200, format!("{:?} {xfp} {host}", req.version()))
    })
    .await
}

fn web_pool(up: &Upstream) -> String {
    format!(
        "[pools.web]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nhosts = [\"*\"]\nsplit = {{ web = 100 }}\n",
        up.addr
    )
}

// ---------- downstream HTTPS ----------

#[tokio::test]
async fn https_speaks_http1_and_http2_by_alpn() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = ca.leaf(&["a.test"]);
    write(dir.path(), "a.crt", &c);
    write(dir.path(), "a.key", &k);
    let up = echo_upstream().await;
    let v = start_in(
        dir,
        &format!(
            "[[tls.certificates]]\ncert = \"a.crt\"\nkey = \"a.key\"\n{}",
            web_pool(&up)
        ),
    )
    .await;

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
        let (c, k) = ca.leaf(names);
        write(dir.path(), &format!("certs/{name}.crt"), &c);
        write(dir.path(), &format!("certs/{name}.key"), &k);
    }
    let up = echo_upstream().await;
    let v = start_in(
        dir,
        &format!(
            "[[tls.certificates]]\ncert = \"certs/default.crt\"\nkey = \"certs/default.key\"\n\
             [[tls.certificates]]\ncert = \"certs/a.crt\"\nkey = \"certs/a.key\"\n\
             [[tls.certificates]]\ncert = \"certs/b.crt\"\nkey = \"certs/b.key\"\n{}",
            web_pool(&up)
        ),
    )
    .await;
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
    let up = echo_upstream().await;
    let v = start_in(
        dir,
        &format!(
            "[[tls.certificates]]\ncert = \"rsa.crt\"\nkey = \"rsa.key\"\n\
             [[tls.certificates]]\ncert = \"ec.crt\"\nkey = \"ec.key\"\n{}",
            web_pool(&up)
        ),
    )
    .await;
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
    let (c, k) = ca.leaf(&["a.test", "one.a.test"]);
    write(&d, "a.crt", &c);
    write(&d, "a.key", &k);
    // A Kubernetes-style secret volume: files reached through the `..data` symlink.
    let (c, k) = ca.leaf(&["k.test", "one.k.test"]);
    write(&d, "secret/..v1/tls.crt", &c);
    write(&d, "secret/..v1/tls.key", &k);
    std::os::unix::fs::symlink("..v1", d.join("secret/..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", d.join("secret/tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", d.join("secret/tls.key")).unwrap();
    let up = echo_upstream().await;
    let v = start_in(
        dir,
        &format!(
            "[[tls.certificates]]\ncert = \"a.crt\"\nkey = \"a.key\"\n\
             [[tls.certificates]]\ncert = \"secret/tls.crt\"\nkey = \"secret/tls.key\"\n{}",
            web_pool(&up)
        ),
    )
    .await;
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
    let (c, k) = ca.leaf(&["k.test", "two.k.test"]);
    write(&d, "secret/..v2/tls.crt", &c);
    write(&d, "secret/..v2/tls.key", &k);
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
    let (c, k) = ca.leaf(&["a.test", "one.a.test"]);
    write(&d, "a.crt", &c);
    write(&d, "a.key", &k);
    let up = echo_upstream().await;
    let v = start_in(
        dir,
        &format!(
            "[[tls.certificates]]\ncert = \"a.crt\"\nkey = \"a.key\"\n{}",
            web_pool(&up)
        ),
    )
    .await;
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

// ---------- upstream TLS and HTTP/2 ----------

/// A TLS upstream (ALPN h2 and http/1.1) answering with the HTTP version it saw.
async fn tls_upstream(cert: &str, key: &str) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = s.cancelled() => return,
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(respond(
                        200,
                        format!("secure {:?}", req.version()),
                    ))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, stop)
}

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

/// A request or response body fed frame by frame from a channel.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// A gRPC-like echo service: each request message is answered at once, and the call ends with
/// trailers. `grpc-status` comes from the `x-status` request header.
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

type H2 = hyper::client::conn::http2::SendRequest<ChannelBody>;

async fn h2_client_tls(addr: SocketAddr) -> H2 {
    let tls = handshake(addr, Some("grpc.test"), client_config(None, &[b"h2"])).await;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
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

async fn next_frame(body: &mut Incoming) -> Frame<Bytes> {
    tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("no frame in time")
        .expect("body ended early")
        .expect("body error")
}

fn grpc_config(up: &Upstream, breaker: &str) -> String {
    format!(
        "[pools.grpc]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n{breaker}\n[[routes]]\nname = \"grpc\"\nhosts = [\"*\"]\nsplit = {{ grpc = 100 }}\n",
        up.addr
    )
}

async fn tls_dir_with_cert() -> tempfile::TempDir {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = ca.leaf(&["grpc.test"]);
    write(dir.path(), "g.crt", &c);
    write(dir.path(), "g.key", &k);
    dir
}

const CERT: &str = "[[tls.certificates]]\ncert = \"g.crt\"\nkey = \"g.key\"\n";

#[tokio::test]
async fn grpc_streams_both_ways_and_keeps_trailers() {
    let up = grpc_upstream().await;
    let v = start_in(
        tls_dir_with_cert().await,
        &format!("{CERT}{}", grpc_config(&up, "")),
    )
    .await;
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
    let v = start_in(
        tls_dir_with_cert().await,
        &format!(
            "{CERT}{}",
            grpc_config(
                &up,
                "[pools.grpc.circuit_breaker]\nconsecutive_failures = 3\nopen_for = \"1m\""
            )
        ),
    )
    .await;
    let mut client = h2_client_tls(v.tls).await;
    failing_calls(&mut client, 6).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(breaker_of(&v.veer), "closed");
    v.veer.shutdown().await;

    // Configured: three in a row (in trailers and trailers-only) open it.
    let v = start_in(
        tls_dir_with_cert().await,
        &format!(
            "{CERT}{}",
            grpc_config(
                &up,
                "[pools.grpc.circuit_breaker]\nconsecutive_failures = 3\nopen_for = \"1m\"\ngrpc_status_failures = true"
            )
        ),
    )
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
    let (c, k) = ca.leaf(&["a.test"]);
    write(dir.path(), "a.crt", &c);
    write(dir.path(), "a.key", &k);
    let up = echo_upstream().await;
    let v = start_in(
        dir,
        &format!(
            "[[tls.certificates]]\ncert = \"a.crt\"\nkey = \"a.key\"\n{}",
            web_pool(&up)
        ),
    )
    .await;
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

// ---------- downstream HTTP/2 over TLS, served on h2 without hyper ----------

type H2Full = hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>;

/// An HTTP/2 client over TLS with HTTP/2's default windows (64 KiB - 1) and no window
/// growth, so a large download has to wait for the client's window updates.
async fn h2_client_small_window(addr: SocketAddr) -> H2Full {
    let tls = handshake(addr, Some("grpc.test"), client_config(None, &[b"h2"])).await;
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .adaptive_window(false)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn h2_get(authority: &str, path: &str) -> Request<http_body_util::Full<Bytes>> {
    Request::get(format!("https://{authority}{path}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap()
}

/// A large body of bytes that says where each one belongs.
fn patterned(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

fn routed_pool(up: &Upstream) -> String {
    format!(
        "{CERT}[pools.web]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nhosts = [\"grpc.test\"]\nsplit = {{ web = 100 }}\n",
        up.addr
    )
}

#[tokio::test]
async fn http2_over_tls_moves_large_bodies_both_ways_under_flow_control() {
    const DOWN: usize = 4 * 1024 * 1024;
    const UP: usize = 3 * 1024 * 1024 + 17;
    let up = upstream_with(|req: Request<Incoming>| async move {
        if req.method() == http::Method::POST {
            let got = req.into_body().collect().await.unwrap().to_bytes();
            let intact = got == patterned(got.len());
            return respond(200, format!("{} {intact}", got.len()));
        }
        let mut r = Response::new(body(patterned(DOWN)));
        r.headers_mut()
            .insert("content-length", DOWN.to_string().parse().unwrap());
        r
    })
    .await;
    let v = start_in(tls_dir_with_cert().await, &routed_pool(&up)).await;
    let mut client = h2_client_small_window(v.tls).await;

    // Download: 64 times the client's window, so veer waits for window updates throughout.
    let resp = client
        .send_request(h2_get("grpc.test", "/big"))
        .await
        .unwrap();
    assert_eq!(
        (resp.status(), resp.version()),
        (StatusCode::OK, Version::HTTP_2)
    );
    let got = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("download stalled")
        .unwrap()
        .to_bytes();
    assert_eq!(got.len(), DOWN);
    assert!(got == patterned(DOWN), "download corrupted");

    // Upload: more than veer's own 1 MiB windows, with a Content-Length.
    let req = Request::post("https://grpc.test/up")
        .header("content-length", UP.to_string())
        .body(http_body_util::Full::new(patterned(UP)))
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, format!("{UP} true"));

    // veer's own answer (no route for this host) says how long it is.
    let resp = client
        .send_request(h2_get("elsewhere.test", "/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let len: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes().len(),
        len
    );
    v.veer.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls_client_reset_cancels_the_request_and_frees_the_backend() {
    use futures_util::StreamExt;
    let up = upstream_with(|req: Request<Incoming>| async move {
        if req.uri().path() == "/hang" {
            std::future::pending::<()>().await;
        }
        // One chunk, then silence.
        let s = futures_util::stream::once(async {
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"first")))
        })
        .chain(futures_util::stream::pending());
        Response::new(BodyExt::boxed(http_body_util::StreamBody::new(s)))
    })
    .await;
    let v = start_in(tls_dir_with_cert().await, &routed_pool(&up)).await;
    let backend = v.veer.rt().registry.get("web", up.addr).unwrap();
    let mut client = h2_client_small_window(v.tls).await;

    // Reset while veer waits for the backend's answer.
    let pending = client.send_request(h2_get("grpc.test", "/hang"));
    let waiting = tokio::spawn(pending);
    eventually("request at the backend", Duration::from_secs(5), || {
        backend.in_flight() == 1
    })
    .await;
    waiting.abort(); // drops the response future: the client resets the stream
    eventually(
        "lease released after the reset",
        Duration::from_secs(5),
        || backend.in_flight() == 0,
    )
    .await;

    // Reset while veer streams a body that has stalled.
    let resp = client
        .send_request(h2_get("grpc.test", "/stall"))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = next_frame(&mut body).await.into_data().unwrap();
    assert_eq!(first, "first");
    assert_eq!(backend.in_flight(), 1);
    drop(body);
    eventually(
        "lease released after the reset",
        Duration::from_secs(5),
        || backend.in_flight() == 0,
    )
    .await;

    // The connection itself is fine.
    client.ready().await.unwrap();
    let resp = client
        .send_request(h2_get("elsewhere.test", "/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    v.veer.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls_a_cut_upstream_body_resets_the_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that promises 100 bytes, sends 5 and closes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
                    .await;
            });
        }
    });
    let v = start_in(
        tls_dir_with_cert().await,
        &format!(
            "{CERT}[pools.web]\nbackends = [\"{addr}\"]\n[[routes]]\nname = \"web\"\nhosts = [\"*\"]\nsplit = {{ web = 100 }}\n"
        ),
    )
    .await;
    let mut client = h2_client_small_window(v.tls).await;
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        // The reset may come with the head, before the client has taken the response.
        let resp = client.send_request(h2_get("grpc.test", "/")).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.map(|_| ())
    })
    .await
    .expect("cut body never ended");
    let e = got.expect_err("a cut body must not look complete");
    assert!(format!("{e:?}").contains("INTERNAL_ERROR"), "{e:?}");
    v.veer.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls_shutdown_lets_the_request_in_flight_finish() {
    let (at_backend, arrived) = tokio::sync::oneshot::channel::<()>();
    let at_backend = Arc::new(std::sync::Mutex::new(Some(at_backend)));
    let (go, release) = tokio::sync::watch::channel(false);
    let up = upstream_with(move |_req| {
        let at_backend = at_backend.clone();
        let mut release = release.clone();
        async move {
            if let Some(tx) = at_backend.lock().unwrap().take() {
                let _ = tx.send(());
            }
            let _ = release.wait_for(|go| *go).await;
            respond(200, "finished")
        }
    })
    .await;
    let v = start_in(tls_dir_with_cert().await, &routed_pool(&up)).await;
    let mut client = h2_client_small_window(v.tls).await;
    let answer = tokio::spawn(client.send_request(h2_get("grpc.test", "/slow")));
    arrived.await.unwrap();
    let shutdown = tokio::spawn(v.veer.shutdown());
    // Shutdown waits for the request; the backend answers only now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!shutdown.is_finished(), "shutdown did not wait");
    go.send(true).unwrap();
    let resp = answer.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "finished");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown hung")
        .unwrap();
}

#[tokio::test]
async fn http2_over_tls_idle_connection_is_closed_after_idle_timeout() {
    let up = echo_upstream().await;
    let v = start_in_with(
        tls_dir_with_cert().await,
        "idle_timeout = \"300ms\"\n",
        &routed_pool(&up),
    )
    .await;
    let tls = handshake(v.tls, Some("grpc.test"), client_config(None, &[b"h2"])).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    let resp = send
        .send_request(
            Request::get("https://grpc.test/")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    // GOAWAY after the idle timeout: the client's connection ends cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("idle HTTP/2 connection never closed")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    v.veer.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls_oversized_request_head_gets_431() {
    let up = echo_upstream().await;
    let v = start_in_with(
        tls_dir_with_cert().await,
        "max_header_bytes = 16384\n",
        &routed_pool(&up),
    )
    .await;
    let mut client = h2_client_small_window(v.tls).await;
    let mut req = h2_get("grpc.test", "/");
    req.headers_mut()
        .insert("x-big", "a".repeat(20_000).parse().unwrap());
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(up.hits(), 0);
    // A head under the limit passes, on the same connection.
    let mut req = h2_get("grpc.test", "/");
    req.headers_mut()
        .insert("x-medium", "c".repeat(8000).parse().unwrap());
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    v.veer.shutdown().await;
}
