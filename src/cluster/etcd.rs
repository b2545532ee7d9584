//! An etcd v3 client over etcd's own JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/watch`, `/v3/lease/*`, `/v3/auth/authenticate`: the documented v3 API over
//! HTTP/1.1, keys and values in base64), on the hyper client and rustls veer already has.
//! No `protoc`, no generated code: a fresh machine with only Rust builds it.
//!
//! What users of gRPC clients report breaking is handled here and in [`super::watch_from`]:
//! every call fails over between the endpoints (the one that answered last is tried first),
//! a watch stream that ends (a member died) is reported so the caller re-watches from the
//! revision after the last it applied, watches ask for a member with a leader (one cut off
//! from the quorum ends the watch instead of going silent), and an expired auth token is
//! renewed once per call.

use super::store::{
    prefix_end, Compare, Event, Kv, Op, Range, Store, StoreError, TxnResult, WatchItem, WatchStream,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How to reach the etcd cluster.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Optional auth: user name and password.
    pub credentials: Option<(String, String)>,
    /// CA bundle (PEM) for `https` endpoints; the system roots when absent.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for client-certificate auth.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// Per-call limit; an endpoint that takes longer counts as down for that call.
    pub timeout: Duration,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EtcdSetupError {
    #[error("no etcd endpoints")]
    NoEndpoints,
    #[error("etcd endpoint {0:?} is not an http:// or https:// URL")]
    BadEndpoint(String),
    #[error("TLS to etcd: {0}")]
    Tls(String),
}

/// An etcd v3 cluster.
pub struct Etcd {
    endpoints: Vec<Uri>,
    /// The endpoint tried first: the last one that answered.
    current: AtomicUsize,
    client: HttpsClient,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

/// proto3 JSON writes 64-bit integers as strings and leaves out zero values.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(v: &Value) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&unb64(&v["key"])).into_owned(),
        value: unb64(&v["value"]),
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    }
}

/// gRPC codes that mean "this member cannot serve now; another may".
fn member_unavailable(code: i64, message: &str) -> bool {
    // 14 Unavailable, 4 DeadlineExceeded.
    code == 14
        || code == 4
        || message.contains("no leader")
        || message.contains("timed out")
        || message.contains("leader changed")
        || message.contains("not capable")
}

fn auth_failed(code: i64, message: &str) -> bool {
    code == 16 || message.contains("invalid auth token")
}

enum CallError {
    /// Try the next endpoint.
    Endpoint(String),
    /// The auth token is no longer valid.
    Auth,
    /// The store's answer: the same on every endpoint.
    Store(String),
}

impl Etcd {
    pub fn new(opts: EtcdOptions) -> Result<Etcd, EtcdSetupError> {
        if opts.endpoints.is_empty() {
            return Err(EtcdSetupError::NoEndpoints);
        }
        let mut endpoints = Vec::new();
        for e in &opts.endpoints {
            let uri: Uri = e
                .trim_end_matches('/')
                .parse()
                .map_err(|_| EtcdSetupError::BadEndpoint(e.clone()))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                return Err(EtcdSetupError::BadEndpoint(e.clone()));
            }
            endpoints.push(uri);
        }
        let mut roots = rustls::RootCertStore::empty();
        match &opts.ca {
            Some(ca) => {
                for c in
                    crate::tls::read_certs(ca).map_err(|e| EtcdSetupError::Tls(e.to_string()))?
                {
                    roots
                        .add(c)
                        .map_err(|e| EtcdSetupError::Tls(e.to_string()))?;
                }
            }
            None => {
                if endpoints.iter().any(|u| u.scheme_str() == Some("https")) {
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| EtcdSetupError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let tls = match &opts.cert {
            Some((cert, key)) => {
                let chain =
                    crate::tls::read_certs(cert).map_err(|e| EtcdSetupError::Tls(e.to_string()))?;
                let key =
                    crate::tls::read_key(key).map_err(|e| EtcdSetupError::Tls(e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| EtcdSetupError::Tls(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(opts.timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Etcd {
            endpoints,
            current: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            credentials: opts.credentials,
            token: Mutex::new(None),
            timeout: opts.timeout,
        })
    }

    fn request(&self, at: usize, path: &str, body: &Value, watch: bool) -> Request<Full<Bytes>> {
        let base = &self.endpoints[at];
        let uri = format!(
            "{}://{}{}",
            base.scheme_str().unwrap_or("http"),
            base.authority().map(|a| a.as_str()).unwrap_or(""),
            path
        );
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            req = req.header(http::header::AUTHORIZATION, t);
        }
        if watch {
            // Ask for a member that has a leader: one cut off from the quorum then ends the
            // watch (and veer moves to another member) instead of going silent.
            req = req.header("grpc-metadata-hasleader", "true");
        }
        req.body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid request")
    }

    async fn once(&self, at: usize, path: &str, body: &Value) -> Result<Value, CallError> {
        let req = self.request(at, path, body, false);
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CallError::Endpoint(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Endpoint(e.to_string()))?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| CallError::Endpoint(format!("bad answer ({status}): {e}")))?;
            if status == StatusCode::OK && v.get("error").is_none() {
                return Ok(v);
            }
            Err(classify(&v, status))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Endpoint("timed out".into())),
        }
    }

    /// One call, failing over between endpoints, renewing the auth token once.
    async fn call(&self, path: &str, body: Value) -> Result<Value, StoreError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut reauthed = false;
        let mut last = String::new();
        let mut i = 0;
        while i < n {
            let at = (first + i) % n;
            if self.credentials.is_some()
                && self
                    .token
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none()
            {
                if let Err(e) = self.authenticate(at).await {
                    match e {
                        CallError::Store(m) => return Err(StoreError::Store(m)),
                        CallError::Auth => {
                            return Err(StoreError::Store("authentication failed".into()))
                        }
                        CallError::Endpoint(m) => {
                            last = format!("{}: {m}", self.endpoints[at]);
                            i += 1;
                            continue;
                        }
                    }
                }
            }
            match self.once(at, path, &body).await {
                Ok(v) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(CallError::Auth) if self.credentials.is_some() && !reauthed => {
                    reauthed = true;
                    *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    continue;
                }
                Err(CallError::Auth) => {
                    return Err(StoreError::Store("authentication failed".into()))
                }
                Err(CallError::Store(m)) => return Err(StoreError::Store(m)),
                Err(CallError::Endpoint(m)) => {
                    last = format!("{}: {m}", self.endpoints[at]);
                    i += 1;
                }
            }
        }
        Err(StoreError::Unreachable(last))
    }

    async fn authenticate(&self, at: usize) -> Result<(), CallError> {
        let Some((user, pass)) = &self.credentials else {
            return Ok(());
        };
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let v = self
            .once(
                at,
                "/v3/auth/authenticate",
                &json!({"name": user, "password": pass}),
            )
            .await
            .map_err(|e| match e {
                CallError::Auth => CallError::Store("authentication failed".into()),
                e => e,
            })?;
        let token = v["token"].as_str().unwrap_or_default().to_string();
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(())
    }

    async fn watch_on(&self, prefix: &str, from: i64) -> Result<WatchStream, StoreError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "start_revision": from.to_string(),
        }});
        let mut last = String::new();
        for i in 0..n {
            let at = (first + i) % n;
            if self.credentials.is_some() {
                if let Err(CallError::Store(m)) = self.authenticate(at).await {
                    return Err(StoreError::Store(m));
                }
            }
            match self.open_watch(at, &body).await {
                Ok(s) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(s);
                }
                Err(m) => last = format!("{}: {m}", self.endpoints[at]),
            }
        }
        Err(StoreError::Unreachable(last))
    }

    /// Open a watch on one endpoint and wait for etcd to confirm it.
    async fn open_watch(&self, at: usize, body: &Value) -> Result<WatchStream, String> {
        let req = self.request(at, "/v3/watch", body, true);
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("watch refused: {}", resp.status()));
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        let (tx, rx) = mpsc::channel(64);
        // The first message says whether the watch was created.
        let created = tokio::time::timeout(self.timeout, async {
            loop {
                let frame = body
                    .frame()
                    .await
                    .ok_or("the watch ended")?
                    .map_err(|e| e.to_string())?;
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                let msgs = split_json(&mut buf)?;
                for m in msgs {
                    let r = &m["result"];
                    if m.get("error").is_some() || r["canceled"].as_bool() == Some(true) {
                        return Err(format!("watch refused: {}", m));
                    }
                    if r["created"].as_bool() == Some(true) {
                        return Ok(());
                    }
                }
            }
        })
        .await;
        match created {
            Err(_) => return Err("timed out".into()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
        }
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    f = body.frame() => f,
                    _ = tx.closed() => return,
                };
                let data = match frame {
                    None => {
                        let _ = tx
                            .send(Err(StoreError::Unreachable("the watch ended".into())))
                            .await;
                        return;
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(StoreError::Unreachable(e.to_string()))).await;
                        return;
                    }
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                };
                buf.extend_from_slice(&data);
                let msgs = match split_json(&mut buf) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::Store(e))).await;
                        return;
                    }
                };
                for m in msgs {
                    let item = watch_item(&m);
                    let end = !matches!(item, Ok(WatchItem::Events(_)));
                    if tx.send(item).await.is_err() || end {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

fn classify(v: &Value, status: StatusCode) -> CallError {
    let code = int(&v["code"]);
    let message = v["message"]
        .as_str()
        .or(v["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    if auth_failed(code, &message) {
        CallError::Auth
    } else if member_unavailable(code, &message) || status.is_server_error() && code == 0 {
        CallError::Endpoint(message)
    } else {
        CallError::Store(message)
    }
}

/// Take every complete JSON object off the front of `buf`.
fn split_json(buf: &mut BytesMut) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut used = 0;
    {
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
        loop {
            match it.next() {
                Some(Ok(v)) => {
                    used = it.byte_offset();
                    out.push(v);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("bad watch message: {e}")),
                None => {
                    used = it.byte_offset();
                    break;
                }
            }
        }
    }
    let _ = buf.split_to(used);
    Ok(out)
}

/// One watch message: events, a compaction, or the end of the watch.
fn watch_item(m: &Value) -> Result<WatchItem, StoreError> {
    if let Some(e) = m.get("error") {
        return Err(StoreError::Unreachable(format!("watch: {e}")));
    }
    let r = &m["result"];
    let compact = int(&r["compact_revision"]);
    if compact > 0 {
        return Ok(WatchItem::Compacted {
            compact_revision: compact,
        });
    }
    if r["canceled"].as_bool() == Some(true) {
        return Err(StoreError::Unreachable(format!(
            "watch canceled: {}",
            r["cancel_reason"].as_str().unwrap_or("")
        )));
    }
    let events = r["events"]
        .as_array()
        .map(|evs| {
            evs.iter()
                .map(|e| {
                    let kv = kv_of(&e["kv"]);
                    if e["type"].as_str() == Some("DELETE") {
                        Event::Delete {
                            key: kv.key,
                            mod_revision: kv.mod_revision,
                        }
                    } else {
                        Event::Put(kv)
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(WatchItem::Events(events))
}

fn compare_json(c: &Compare) -> Value {
    match c {
        Compare::ModRevision(k, r) => json!({"key": b64(k.as_bytes()), "target": "MOD",
            "result": "EQUAL", "mod_revision": r.to_string()}),
        Compare::CreateRevision(k, r) => json!({"key": b64(k.as_bytes()), "target": "CREATE",
            "result": "EQUAL", "create_revision": r.to_string()}),
        Compare::Value(k, v) => json!({"key": b64(k.as_bytes()), "target": "VALUE",
            "result": "EQUAL", "value": b64(v)}),
    }
}

fn op_json(o: &Op) -> Value {
    match o {
        Op::Put { key, value, lease } => {
            let mut p = json!({"key": b64(key.as_bytes()), "value": b64(value)});
            if *lease != 0 {
                p["lease"] = json!(lease.to_string());
            }
            json!({ "request_put": p })
        }
        Op::Delete { key } => json!({"request_delete_range": {"key": b64(key.as_bytes())}}),
    }
}

impl Store for Etcd {
    fn get(&self, key: &str, prefix: bool) -> BoxFuture<'_, Result<Range, StoreError>> {
        let mut body = json!({"key": b64(key.as_bytes())});
        if prefix {
            body["range_end"] = json!(b64(&prefix_end(key.as_bytes())));
        }
        Box::pin(async move {
            let v = self.call("/v3/kv/range", body).await?;
            Ok(Range {
                kvs: v["kvs"]
                    .as_array()
                    .map(|a| a.iter().map(kv_of).collect())
                    .unwrap_or_default(),
                revision: int(&v["header"]["revision"]),
            })
        })
    }

    fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> BoxFuture<'_, Result<TxnResult, StoreError>> {
        let body = json!({
            "compare": compares.iter().map(compare_json).collect::<Vec<_>>(),
            "success": ops.iter().map(op_json).collect::<Vec<_>>(),
        });
        Box::pin(async move {
            let v = self.call("/v3/kv/txn", body).await?;
            Ok(TxnResult {
                succeeded: v["succeeded"].as_bool().unwrap_or(false),
                revision: int(&v["header"]["revision"]),
            })
        })
    }

    fn watch(&self, prefix: &str, from: i64) -> BoxFuture<'_, Result<WatchStream, StoreError>> {
        let prefix = prefix.to_string();
        Box::pin(async move { self.watch_on(&prefix, from).await })
    }

    fn lease_grant(&self, ttl_secs: i64) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let v = self
                .call("/v3/lease/grant", json!({"TTL": ttl_secs.to_string()}))
                .await?;
            Ok(int(&v["ID"]))
        })
    }

    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let v = self
                .call("/v3/lease/keepalive", json!({"ID": id.to_string()}))
                .await?;
            if int(&v["result"]["TTL"]) <= 0 {
                return Err(StoreError::LeaseExpired);
            }
            Ok(())
        })
    }

    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self
                .call("/v3/lease/revoke", json!({"ID": id.to_string()}))
                .await
            {
                Ok(_) => Ok(()),
                Err(StoreError::Store(m)) if m.contains("not found") => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_json_keeps_a_partial_object_for_later() {
        let mut buf = BytesMut::from(&b"{\"result\":{\"created\":true}}\n{\"result\":{\"ev"[..]);
        let got = split_json(&mut buf).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&buf[..], b"\n{\"result\":{\"ev");
        buf.extend_from_slice(b"ents\":[]}}");
        assert_eq!(split_json(&mut buf).unwrap().len(), 1);
        assert!(buf.iter().all(|b| b.is_ascii_whitespace()));
    }

    #[test]
    fn watch_messages_become_events() {
        let m: Value = serde_json::from_str(
            r#"{"result":{"events":[{"kv":{"key":"YQ==","value":"Yg==","mod_revision":"7","create_revision":"3"}},{"type":"DELETE","kv":{"key":"Yw==","mod_revision":"7"}}]}}"#,
        )
        .unwrap();
        let Ok(WatchItem::Events(evs)) = watch_item(&m) else {
            panic!()
        };
        assert_eq!(evs[0].key(), "a");
        assert_eq!(evs[0].revision(), 7);
        assert!(matches!(&evs[1], Event::Delete { key, .. } if key == "c"));
        let c: Value =
            serde_json::from_str(r#"{"result":{"canceled":true,"compact_revision":"5"}}"#).unwrap();
        assert!(matches!(
            watch_item(&c),
            Ok(WatchItem::Compacted {
                compact_revision: 5
            })
        ));
    }
}
