//! The upstream HTTP client: a pooled hyper-util client per backend (so draining a backend can
//! close exactly its connections), and [`UpBody`], a request body that can be handed to a second
//! backend when the first never took it (connect failure).

use crate::config::{PoolConfig, Protocol};
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Idle pooled connections are retired before a typical backend keep-alive timeout (60 s), so
/// veer never sends a request on a connection the backend is about to close.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The client for one backend, and how to address it.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    pub client: Client<Connector, UpBody>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The authority written into upstream request URIs.
    pub authority: http::uri::Authority,
}

/// Errors building a client (TLS material).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA file {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {0} holds no usable certificate")]
    EmptyCa(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

impl UpstreamClient {
    /// Build the client for `addr` in a pool with this config; `base` resolves relative paths.
    pub fn new(
        addr: SocketAddr,
        pool: &PoolConfig,
        base: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(pool.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = crate::tls::upstream_client_config(pool, base)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = match pool.protocol {
            Protocol::H1 => builder.enable_http1().wrap_connector(http),
            Protocol::H2 | Protocol::H2c => builder.enable_http2().wrap_connector(http),
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .timer(TokioTimer::new());
        if pool.protocol != Protocol::H1 {
            b.http2_only(true)
                .http2_adaptive_window(true)
                .http2_keep_alive_interval(Duration::from_secs(30));
        }
        let authority = match pool.tls.as_ref().and_then(|t| t.sni.as_ref()) {
            Some(_) | None => addr.to_string().parse().expect("socket address is an authority"),
        };
        Ok(UpstreamClient {
            client: b.build(connector),
            scheme: if pool.tls.is_some() { "https" } else { "http" },
            authority,
        })
    }
}

/// The downstream body waiting to be sent upstream. Shared between attempts: the first attempt
/// that polls it takes it; if no attempt polled it, a retry can still send it.
#[derive(Debug)]
pub struct BodySlot {
    slot: ArrayQueue<Incoming>,
    hint: SizeHint,
}

impl BodySlot {
    /// `None` for a request without a body (nothing to keep).
    pub fn new(body: Incoming) -> Option<Arc<Self>> {
        if body.is_end_stream() {
            return None;
        }
        let hint = body.size_hint();
        let slot = ArrayQueue::new(1);
        let _ = slot.push(body);
        Some(Arc::new(BodySlot { slot, hint }))
    }

    /// Has an attempt taken (started streaming) the body?
    pub fn is_taken(&self) -> bool {
        self.slot.is_empty()
    }
}

/// Request body sent upstream.
#[derive(Debug, Default)]
pub struct UpBody {
    slot: Option<Arc<BodySlot>>,
    body: Option<Incoming>,
}

impl UpBody {
    pub fn empty() -> Self {
        UpBody::default()
    }

    pub fn from_slot(slot: &Option<Arc<BodySlot>>) -> Self {
        UpBody {
            slot: slot.clone(),
            body: None,
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.body.is_none() {
            match this.slot.take().and_then(|s| s.slot.pop()) {
                Some(b) => this.body = Some(b),
                None => return Poll::Ready(None),
            }
        }
        match this.body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.body, &self.slot) {
            (Some(b), _) => b.is_end_stream(),
            (None, Some(_)) => false,
            (None, None) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.body, &self.slot) {
            (Some(b), _) => b.size_hint(),
            (None, Some(s)) => s.hint.clone(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
