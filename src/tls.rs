//! TLS: the downstream server config (certificates picked by SNI, TLS 1.2/1.3, ALPN h2 and
//! http/1.1), the certificate checks behind `veer check`, hot reload of certificate files, and
//! the upstream client config (system roots or a CA file, optional verification skip).
//!
//! Certificates live in an [`ArcSwap`] shared with the TLS listeners: a reload builds a whole
//! new `ServerConfig` off the request path and swaps it in, so new handshakes use it while
//! connections already established keep the keys they negotiated.

use crate::config::{validate::resolve, Config, PoolConfig, TlsConfig};
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A certificate expiring sooner than this gets a warning from `veer check`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Errors loading TLS material; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate found")]
    NoCert(String),
    #[error("{0}: no PEM private key found (expected PKCS#8, RSA or SEC1)")]
    NoKey(String),
    #[error("{path}: unusable private key: {source}")]
    BadKey {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{path}: invalid certificate: {reason}")]
    BadCert { path: String, reason: String },
    #[error("key {key} does not match certificate {cert}")]
    Mismatch { cert: String, key: String },
    #[error("{path}: certificate expired at {at}")]
    Expired { path: String, at: String },
    #[error("{path}: certificate is not valid before {at}")]
    NotYetValid { path: String, at: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no [[tls.certificates]] configured")]
    NoCertificates,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        source: e,
    })
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(path, &read(path)?)
}

fn parse_certs(path: &Path, data: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let name = path.display().to_string();
    let certs: Vec<_> = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: name.clone(),
            source: e,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(name));
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let name = path.display().to_string();
    rustls_pemfile::private_key(&mut read(path)?.as_slice())
        .map_err(|e| TlsError::Read {
            path: name.clone(),
            source: e,
        })?
        .ok_or(TlsError::NoKey(name))
}

/// A certificate and key loaded from disk and checked.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// DNS names (lower case) the certificate answers for, wildcards as `*.example.com`.
    pub names: Vec<String>,
    /// Expiry of the leaf certificate, seconds since the Unix epoch.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

/// Load a certificate chain and its key, and check that they belong together and that the
/// leaf is valid now.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, TlsError> {
    let chain = read_certs(cert_path)?;
    let key_der = read_key(key_path)?;
    let cert_name = cert_path.display().to_string();
    let key_name = key_path.display().to_string();
    let (names, not_before, not_after) = leaf_info(&cert_name, &chain[0])?;
    let now = x509_parser::time::ASN1Time::now();
    if not_after < now {
        return Err(TlsError::Expired {
            path: cert_name,
            at: not_after.to_string(),
        });
    }
    if not_before > now {
        return Err(TlsError::NotYetValid {
            path: cert_name,
            at: not_before.to_string(),
        });
    }
    let signer = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::BadKey {
            path: key_name.clone(),
            source: e,
        })?;
    let key = CertifiedKey::new(chain, signer);
    match key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::Mismatch {
                cert: cert_name,
                key: key_name,
            })
        }
        Err(e) => {
            return Err(TlsError::BadCert {
                path: cert_name,
                reason: e.to_string(),
            })
        }
    }
    Ok(LoadedCert {
        names,
        not_after: not_after.timestamp(),
        key: Arc::new(key),
    })
}

type Validity = (
    Vec<String>,
    x509_parser::time::ASN1Time,
    x509_parser::time::ASN1Time,
);

/// DNS names (subjectAltName, else the common name) and validity of a leaf certificate.
fn leaf_info(path: &str, der: &CertificateDer<'_>) -> Result<Validity, TlsError> {
    use x509_parser::extensions::GeneralName;
    let bad = |reason: String| TlsError::BadCert {
        path: path.to_string(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(bad(e.to_string())),
    };
    if names.is_empty() {
        // Old-style certificates carry the name only in the subject's CN.
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
        {
            names.push(cn.trim_end_matches('.').to_ascii_lowercase());
        }
    }
    let v = cert.validity();
    Ok((names, v.not_before, v.not_after))
}

/// Picks the certificate for a handshake by SNI: an exact name first, then a wildcard for the
/// parent domain; no SNI or an unknown name gets the first configured certificate.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// Build from loaded certificates; the first is the default. Earlier certificates win a
    /// name claimed twice.
    pub fn new(certs: &[LoadedCert]) -> Result<Self, TlsError> {
        let first = certs.first().ok_or(TlsError::NoCertificates)?;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard
                        .entry(parent.to_string())
                        .or_insert_with(|| c.key.clone()),
                    None => exact.entry(n.clone()).or_insert_with(|| c.key.clone()),
                };
            }
        }
        Ok(SniResolver {
            exact,
            wildcard,
            default: first.key.clone(),
        })
    }

    /// The certificate for a server name (`None` = no SNI).
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        // A wildcard covers exactly one label.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

pub fn cert_paths(tls: &TlsConfig, config_file: &Path) -> Vec<(PathBuf, PathBuf)> {
    tls.certificates
        .iter()
        .map(|c| (resolve(config_file, &c.cert), resolve(config_file, &c.key)))
        .collect()
}

/// Load every configured certificate (in order).
pub fn load_all(tls: &TlsConfig, config_file: &Path) -> Result<Vec<LoadedCert>, TlsError> {
    cert_paths(tls, config_file)
        .iter()
        .map(|(c, k)| load_pair(c, k))
        .collect()
}

/// The downstream TLS server config for the configured certificates.
pub fn server_config(
    config: &Config,
    config_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_all(&config.tls, config_file)?;
    warn_expiring(&config.tls, config_file, &certs);
    build_server_config(&certs, None)
}

/// Log a warning for each certificate in use that expires within [`EXPIRY_WARNING`], at every
/// load, so a running veer says so and not only `veer check`.
fn warn_expiring(tls: &TlsConfig, config_file: &Path, certs: &[LoadedCert]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for ((path, _), c) in cert_paths(tls, config_file).iter().zip(certs) {
        let left = c.not_after - now;
        if left < EXPIRY_WARNING.as_secs() as i64 {
            let days = left / 86400;
            tracing::warn!(cert = %path.display(), days, "TLS certificate expires soon");
        }
    }
}

fn build_server_config(
    certs: &[LoadedCert],
    previous: Option<&rustls::ServerConfig>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let resolver = SniResolver::new(certs)?;
    let mut sc = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Some(prev) = previous {
        // Sessions survive a certificate change, so clients resume as before.
        sc.session_storage = prev.session_storage.clone();
        sc.ticketer = prev.ticketer.clone();
    }
    Ok(Arc::new(sc))
}

/// The certificate check validation runs for `veer check`, `veer run` and reloads.
pub struct CertificateFiles;

impl crate::config::CertificateCheck for CertificateFiles {
    fn check(&self, tls: &TlsConfig, config_file: &Path) -> (Vec<(usize, String)>, Vec<String>) {
        check_certificates(tls, config_file)
    }
}

/// Problems `veer check` reports for `[[tls.certificates]]`: errors by entry index, and
/// warnings (certificates expiring soon).
pub fn check_certificates(
    tls: &TlsConfig,
    config_file: &Path,
) -> (Vec<(usize, String)>, Vec<String>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for (i, (cert, key)) in cert_paths(tls, config_file).iter().enumerate() {
        match load_pair(cert, key) {
            Ok(c) => {
                let left = c.not_after - now;
                if left < EXPIRY_WARNING.as_secs() as i64 {
                    warnings.push(format!(
                        "tls.certificates[{i}]: certificate {} expires in {} day(s)",
                        cert.display(),
                        left / 86400
                    ));
                }
            }
            Err(e) => errors.push((i, format!("tls.certificates[{i}]: {e}"))),
        }
    }
    (errors, warnings)
}

/// Rebuild the server config from the certificate files of `config` and swap it in. On any
/// error the old config stays live.
pub fn reload(
    swap: &ArcSwap<rustls::ServerConfig>,
    config: &Config,
    config_file: &Path,
) -> Result<(), TlsError> {
    let certs = load_all(&config.tls, config_file)?;
    warn_expiring(&config.tls, config_file, &certs);
    let old = swap.load_full();
    swap.store(build_server_config(&certs, Some(&old))?);
    Ok(())
}

/// Root certificates of the system, read once per process.
fn native_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading system root certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system root certificates found; upstream TLS needs `ca = \"file\"`"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// Errors building a client (TLS material).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot read CA file {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {0} holds no usable certificate")]
    EmptyCa(String),
    #[error("sni {0:?} is not a valid DNS name")]
    BadSni(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The client config for TLS to a pool's backends (`base` resolves a relative CA path).
/// ALPN is left to the connector, which sets it from the pool's protocol.
pub fn upstream_client_config(
    pool: &PoolConfig,
    base: Option<&Path>,
) -> Result<rustls::ClientConfig, UpstreamTlsError> {
    let builder =
        rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS)?;
    let Some(tls) = pool.tls.as_ref() else {
        return Ok(builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth());
    };
    if tls.insecure_skip_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth());
    }
    let roots = match &tls.ca {
        Some(ca) => {
            let path = match base {
                Some(b) if ca.is_relative() => b.join(ca),
                _ => ca.clone(),
            };
            let data = std::fs::read(&path).map_err(|e| UpstreamTlsError::Ca {
                path: path.display().to_string(),
                source: e,
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut data.as_slice()).flatten() {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(UpstreamTlsError::EmptyCa(path.display().to_string()));
            }
            Arc::new(roots)
        }
        None => native_roots(),
    };
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The server name presented to (and verified against) a pool's backends: the pool's `sni`,
/// else the backend's IP address (no SNI is sent for an IP; the certificate needs an IP SAN).
pub fn upstream_server_name(
    pool: &PoolConfig,
    addr: std::net::SocketAddr,
) -> Result<ServerName<'static>, UpstreamTlsError> {
    match pool.tls.as_ref().and_then(|t| t.sni.as_ref()) {
        Some(sni) => {
            ServerName::try_from(sni.clone()).map_err(|_| UpstreamTlsError::BadSni(sni.clone()))
        }
        None => Ok(ServerName::IpAddress(addr.ip().into())),
    }
}

/// `insecure_skip_verify = true`: any certificate is accepted, but the handshake signatures
/// are still checked (so the peer at least holds the key of the certificate it sent).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> LoadedCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap()
                .self_signed(&key)
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        load_pair(&c, &k).unwrap()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let a = pair(&["a.example.com"]);
        let b = pair(&["*.example.com", "b.test"]);
        let r = SniResolver::new(&[a.clone(), b.clone()]).unwrap();
        assert!(Arc::ptr_eq(&r.pick(Some("a.example.com")), &a.key));
        assert!(Arc::ptr_eq(&r.pick(Some("A.Example.COM.")), &a.key));
        assert!(Arc::ptr_eq(&r.pick(Some("x.example.com")), &b.key));
        assert!(Arc::ptr_eq(&r.pick(Some("b.test")), &b.key));
        // A wildcard covers one label only.
        assert!(Arc::ptr_eq(&r.pick(Some("y.x.example.com")), &a.key));
        assert!(Arc::ptr_eq(&r.pick(Some("example.com")), &a.key));
        assert!(Arc::ptr_eq(&r.pick(None), &a.key));
        assert_eq!(b.names, vec!["*.example.com", "b.test"]);
    }

    #[test]
    fn mismatched_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = rcgen::KeyPair::generate().unwrap();
        let k2 = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&k1)
            .unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, k2.serialize_pem()).unwrap();
        let e = load_pair(&c, &k).unwrap_err().to_string();
        assert!(
            e.contains("k.pem") && e.contains("c.pem") && e.contains("does not match"),
            "{e}"
        );
        let e = load_pair(&dir.path().join("nope.pem"), &k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let e = load_pair(&k, &k).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
