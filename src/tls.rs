//! TLS: the downstream server config (certificates picked by SNI) and the upstream client
//! config (system roots or a CA file, optional SNI and verification skip).

use crate::config::{validate::resolve, Config, PoolConfig};
use crate::upstream::client::ClientError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Errors loading TLS material; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no certificate found in PEM file")]
    NoCert(String),
    #[error("{0}: no private key found in PEM file")]
    NoKey(String),
    #[error("{path}: {source}")]
    Rustls {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error("no [[tls.certificates]] configured")]
    NoCertificates,
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| TlsError::Read { path: name.clone(), source: e })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read { path: name.clone(), source: e })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(name));
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| TlsError::Read { path: name.clone(), source: e })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| TlsError::Read { path: name.clone(), source: e })?
        .ok_or(TlsError::NoKey(name))
}

/// The downstream TLS server config for the configured certificates.
pub fn server_config(config: &Config, config_file: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let first = config.tls.certificates.first().ok_or(TlsError::NoCertificates)?;
    let cert_path = resolve(config_file, &first.cert);
    let certs = read_certs(&cert_path)?;
    let key = read_key(&resolve(config_file, &first.key))?;
    let mut sc = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls { path: cert_path.display().to_string(), source: e })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls { path: cert_path.display().to_string(), source: e })?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

/// The client config for TLS to a pool's backends.
pub fn upstream_client_config(pool: &PoolConfig, base: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match pool.tls.as_ref().and_then(|t| t.ca.as_ref()) {
        Some(ca) => {
            let path = match base {
                Some(b) if ca.is_relative() => b.join(ca),
                _ => ca.clone(),
            };
            let data = std::fs::read(&path).map_err(|e| ClientError::Ca { path: path.display().to_string(), source: e })?;
            for c in rustls_pemfile::certs(&mut data.as_slice()).flatten() {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(ClientError::EmptyCa(path.display().to_string()));
            }
        }
        None if pool.tls.is_some() => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
        None => {}
    }
    // ALPN is set by the connector builder from the pool's protocol.
    let cc = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cc)
}
