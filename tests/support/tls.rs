//! The TLS harness: test certificates made with rcgen (none is committed), a veer with a TLS
//! listener beside its plain one, a TLS client with ALPN for HTTP/1.1 and HTTP/2, and a TLS
//! upstream.

use super::{respond, start_veer_file, Veer};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------------
// Certificates and files.

/// A test certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    pub fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "veer test CA");
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for these names (DNS names or IPs), as (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf_with(names, |_| {})
    }

    pub fn leaf_with(
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

    /// A leaf for `names` written as `{stem}.crt` and `{stem}.key` into `dir`.
    pub fn write_leaf(&self, dir: &Path, stem: &str, names: &[&str]) {
        let (c, k) = self.leaf(names);
        write(dir, &format!("{stem}.crt"), &c);
        write(dir, &format!("{stem}.key"), &k);
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.cert.der().clone()).unwrap();
        r
    }
}

/// Write `text` to `dir/name`, making the folders on the way.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Replace a file the way deploy tools do: write a temporary file, rename it over.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The DNS names of a DER certificate.
pub fn names_of(der: &CertificateDer<'_>) -> Vec<String> {
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

/// A CA-signed certificate for `name` written as `cert.pem` and `key.pem` into `dir`, and
/// the roots a client needs to trust it.
pub fn write_test_cert(dir: &Path, name: &str) -> rustls::RootCertStore {
    let ca = Ca::new();
    let (cert, key) = ca.leaf(&[name]);
    write(dir, "cert.pem", &cert);
    write(dir, "key.pem", &key);
    ca.roots()
}

/// A fresh folder with a certificate for `grpc.test` as `g.crt`/`g.key` (see [`CERT`]).
pub async fn tls_dir_with_cert() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Ca::new().write_leaf(dir.path(), "g", &["grpc.test"]);
    dir
}

/// The `[[tls.certificates]]` entry for the files [`tls_dir_with_cert`] writes.
pub const CERT: &str = "[[tls.certificates]]\ncert = \"g.crt\"\nkey = \"g.key\"\n";

// ---------------------------------------------------------------------------------------------
// TLS clients.

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

/// A client config offering `alpn`, trusting `roots` (`None`: any certificate).
pub fn client_config(roots: Option<rustls::RootCertStore>, alpn: &[&[u8]]) -> rustls::ClientConfig {
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
pub async fn handshake(
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
pub async fn served_names(addr: SocketAddr, sni: Option<&str>) -> Vec<String> {
    let tls = handshake(addr, sni, client_config(None, &[])).await;
    names_of(&tls.get_ref().1.peer_certificates().unwrap()[0])
}

pub type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 connection over an open TLS stream.
pub async fn http1_over(tls: TlsStream<TcpStream>) -> H1 {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// GET `/` for `host`: the version and the text of a 200.
pub async fn get_text(send: &mut H1, host: &str) -> (Version, String) {
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

// ---------------------------------------------------------------------------------------------
// veer with a TLS listener.

pub struct TlsVeer {
    pub veer: Veer,
    /// The TLS listener (the plain one when the config has no certificate).
    pub tls: SocketAddr,
}

/// Start veer from `config` (after a `[server]` with one plain and one TLS listener on port
/// 0) in `dir`, where the certificate files already are.
pub async fn start_in(dir: tempfile::TempDir, config: &str) -> TlsVeer {
    start_in_with(dir, "", config).await
}

/// [`start_in`] with more `[server]` keys (`server`, lines ending in a newline).
pub async fn start_in_with(dir: tempfile::TempDir, server: &str, config: &str) -> TlsVeer {
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

/// [`start_in`] in a fresh [`tls_dir_with_cert`] folder, `config` after its [`CERT`].
pub async fn start_with_cert(config: &str) -> TlsVeer {
    start_in(tls_dir_with_cert().await, &format!("{CERT}{config}")).await
}

// ---------------------------------------------------------------------------------------------
// A TLS upstream.

/// A TLS upstream (ALPN h2 and http/1.1) answering with the HTTP version it saw.
pub async fn tls_upstream(
    cert: &str,
    key: &str,
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tls_upstream_on(listener, cert, key).await
}

/// [`tls_upstream`] on a given listener (an IPv6 one, say).
pub async fn tls_upstream_on(
    listener: tokio::net::TcpListener,
    cert: &str,
    key: &str,
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
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
