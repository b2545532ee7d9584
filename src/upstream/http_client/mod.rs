//! The upstream HTTP client: one per backend (so draining a backend can close exactly its
//! connections, see [`super::conn_pool`]) speaking the pool's protocol (HTTP/1.1, HTTP/2 over TLS
//! by ALPN, or h2c) with optional TLS; and [`UpBody`], a request body that can be handed to a
//! second backend when the first never took it (connect failure).
//!
//! The connector always dials the backend's own address, whatever host the request URI names,
//! and presents a fixed TLS server name (the pool's `sni`, else the backend IP), so URIs can
//! carry the name the backend expects without any DNS lookup.
//!
//! Here: the client and its TLS template, and the gRPC status verdicts; dialling a backend
//! (and cutting its connections) in `dial`, the request body shared between attempts in
//! `up_body`.

mod dial;
mod up_body;

use super::conn_pool::Conns;
use crate::config::{PoolConfig, Protocol};
use crate::tls::UpstreamTlsError;
use crate::upstream::Backend;
use http::HeaderMap;
use hyper_rustls::FixedServerNameResolver;
use hyper_util::client::legacy::connect::HttpConnector;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use super::body::UpstreamBody;
pub use super::conn_pool::{Checkin, ErrorSource, UpstreamError};

pub use dial::{ConnIo, Connector, CutFlag, CutIo, CutSet, Dial};
pub use up_body::{BodySlot, UpBody};

/// The client for one backend, and how to address it.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    pub(crate) conns: Arc<Conns>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The authority written into upstream request URIs that have no better one: the pool's
    /// `sni` with the backend's port, else the backend address.
    pub authority: http::uri::Authority,
    /// The pool speaks HTTP/2 (`h2` or `h2c`).
    pub http2: bool,
    /// Every connection this client made, for cutting them at a drain timeout.
    pub cuts: Arc<CutSet>,
}

/// What the clients of one pool's backends share: the TLS setup (roots, verifier, ALPN),
/// built once per pool rather than once per backend. A pool without TLS never uses it, so all
/// of them share one.
#[derive(Clone)]
pub struct ClientTemplate {
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTemplate")
    }
}

impl ClientTemplate {
    /// The template for a pool with this config; `base` resolves relative paths.
    pub fn new(
        pool: &PoolConfig,
        base: Option<&std::path::Path>,
    ) -> Result<Self, UpstreamTlsError> {
        if pool.tls.is_none() {
            static PLAIN: std::sync::OnceLock<ClientTemplate> = std::sync::OnceLock::new();
            if let Some(t) = PLAIN.get() {
                return Ok(t.clone());
            }
            let t = Self::build(pool, base)?;
            return Ok(PLAIN.get_or_init(|| t).clone());
        }
        Self::build(pool, base)
    }

    fn build(pool: &PoolConfig, base: Option<&std::path::Path>) -> Result<Self, UpstreamTlsError> {
        let mut tls = crate::tls::upstream_client_config(pool, base)?;
        // ALPN offers exactly the pool's protocol (nothing for HTTP/1.1, as hyper-rustls does).
        tls.alpn_protocols = if pool.protocol == Protocol::H1 {
            Vec::new()
        } else {
            vec![b"h2".to_vec()]
        };
        // Each backend keeps its own sessions (see `UpstreamClient::with_template`).
        tls.resumption = rustls::client::Resumption::disabled();
        Ok(ClientTemplate { tls: Arc::new(tls) })
    }

    /// The TLS config of one backend's client: the pool's, with a session cache of its own
    /// sized for the one server name it talks to (the default holds 32 servers' worth, about
    /// 16 KiB per backend).
    fn for_backend(&self, pool: &PoolConfig) -> Arc<rustls::ClientConfig> {
        if pool.tls.is_none() {
            return self.tls.clone();
        }
        let mut tls = (*self.tls).clone();
        tls.resumption = rustls::client::Resumption::in_memory_sessions(TICKETS_PER_SERVER);
        Arc::new(tls)
    }
}

/// The TCP connector for pools with this connect timeout: one per timeout, shared by their
/// backends (its settings live behind an `Arc` of 200 bytes that every backend had a copy
/// of: issue 15). Touched only when clients are built, never by requests.
fn tcp_connector(connect_timeout: Duration) -> HttpConnector {
    static BY_TIMEOUT: std::sync::Mutex<Vec<(Duration, HttpConnector)>> =
        std::sync::Mutex::new(Vec::new());
    let mut all = BY_TIMEOUT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = all.iter().find(|(t, _)| *t == connect_timeout) {
        return c.clone();
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    all.push((connect_timeout, http.clone()));
    http
}

/// TLS 1.3 tickets rustls keeps per server (its `MAX_TLS13_TICKETS_PER_SERVER`): a cache of
/// this size holds one server.
const TICKETS_PER_SERVER: usize = 8;

impl UpstreamClient {
    /// Build the client for `addr` in a pool with this config; `base` resolves relative paths.
    pub fn new(
        addr: SocketAddr,
        pool: &PoolConfig,
        base: Option<&std::path::Path>,
    ) -> Result<Self, UpstreamTlsError> {
        Self::with_template(addr, pool, &ClientTemplate::new(pool, base)?)
    }

    /// Build the client for `addr` in a pool with this config from the pool's template.
    pub fn with_template(
        addr: SocketAddr,
        pool: &PoolConfig,
        template: &ClientTemplate,
    ) -> Result<Self, UpstreamTlsError> {
        let cuts = Arc::new(CutSet::default());
        let dial = Dial {
            http: tcp_connector(pool.connect_timeout),
            addr,
            cuts: cuts.clone(),
        };
        let name = crate::tls::upstream_server_name(pool, addr)?;
        let http2 = pool.protocol != Protocol::H1;
        // https or http, by the target's scheme.
        let connector = hyper_rustls::HttpsConnector::new(
            dial,
            template.for_backend(pool),
            false,
            Arc::new(FixedServerNameResolver::new(name)),
        );
        let authority: http::uri::Authority =
            match pool.tls.as_ref().and_then(|t| t.sni.as_ref()) {
                Some(sni) => format!("{sni}:{}", addr.port()).parse(),
                None => addr.to_string().parse(),
            }
            .map_err(|_| UpstreamTlsError::BadSni(addr.to_string()))?;
        let scheme = if pool.tls.is_some() { "https" } else { "http" };
        Ok(UpstreamClient {
            conns: Conns::new(connector, pool.tls.is_some(), http2, authority.clone()),
            scheme,
            authority,
            http2,
            cuts,
        })
    }

    /// Send a request (absolute URI, or origin-form for HTTP/1.1) on one of the backend's connections and wait for the
    /// response head. The future owns what it needs; the [`Checkin`] goes with the response
    /// body and gives the connection back when the body has been read to its end.
    pub fn send(
        &self,
        req: http::Request<UpBody>,
    ) -> impl Future<Output = Result<(http::Response<UpstreamBody>, Checkin), UpstreamError>>
           + Send
           + 'static {
        self.conns.clone().send(req)
    }

    /// Send a body-less HTTP/1.1 request from a borrowed head: the fast path without a request
    /// built for it (see [`super::h1::Head`]). Only for HTTP/1.1 pools.
    pub fn send_head<'a>(
        &self,
        head: super::h1::Head<'a>,
    ) -> impl Future<Output = Result<(http::Response<UpstreamBody>, Checkin), UpstreamError>> + Send + 'a
    {
        debug_assert!(!self.http2);
        self.conns.clone().send_head(head)
    }

    /// Check that a pool's client can be built (TLS material readable) and warn when its
    /// backends' certificates go unverified. Called once per pool at every config load.
    pub fn check(
        pool: &PoolConfig,
        base: Option<&std::path::Path>,
    ) -> Result<(), UpstreamTlsError> {
        // The address does not matter here (a name's are not known yet); the TLS material does.
        let first = &pool.backends[0].addr;
        let addr = first
            .ip()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], first.port())));
        UpstreamClient::new(addr, pool, base)?;
        if pool.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            tracing::warn!(
                pool = %pool.name,
                "insecure_skip_verify = true: backend TLS certificates are NOT verified"
            );
        }
        Ok(())
    }
}

/// How a response counts for the circuit breaker under the pool's gRPC rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcVerdict {
    /// Not gRPC, or the pool does not count gRPC statuses: judge by HTTP status.
    NotCounted,
    /// A trailers-only answer: its `grpc-status` is in the headers.
    Failed,
    Ok,
    /// The status comes in the trailers: judge when they arrive.
    AtTrailers,
}

/// Judge a response's headers under the rule of the backend's pool (`grpc_status_failures`).
pub fn grpc_verdict(backend: &Backend, headers: &HeaderMap) -> GrpcVerdict {
    let is_grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // The content type first: plain HTTP never loads the pool config.
    if !is_grpc || !backend.pool_config().circuit_breaker.grpc_status_failures {
        return GrpcVerdict::NotCounted;
    }
    match headers.get("grpc-status") {
        Some(_) if grpc_ok(headers) => GrpcVerdict::Ok,
        Some(_) => GrpcVerdict::Failed,
        None => GrpcVerdict::AtTrailers,
    }
}

/// Is the `grpc-status` in these trailers (or trailers-only headers) a success? The codes
/// that count as failures are those that map to an HTTP 5xx (UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), the same rule as for plain HTTP: a
/// client's bad argument or a missing entity says nothing about the backend's health.
pub fn grpc_ok(trailers: &HeaderMap) -> bool {
    let code = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u32>().ok());
    // A missing or garbled status is a protocol failure.
    !matches!(code, None | Some(2 | 4 | 12 | 13 | 14 | 15))
}
