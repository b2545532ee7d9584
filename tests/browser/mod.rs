//! A headless Chromium showing one page, driven over the DevTools protocol (for
//! tests/status_page.rs and tests/console.rs).
//!
//! Needs Debian's `chromium` (or `VEER_CHROMIUM=/path/to/chrome`). `VEER_SCREENSHOT=FILE.png`
//! saves screenshots of the page.

#![allow(dead_code)]

use crate::support::{chromium_binary, get};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A headless Chromium showing one page, driven over its DevTools websocket.
pub struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    pub async fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromium ({}): {e}",
                    chromium_binary().display()
                )
            });

        // Chromium writes its DevTools port into the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let ws_url = loop {
            let list = get(&format!("http://127.0.0.1:{port}/json/list")).await;
            let targets: Value = serde_json::from_str(&list.body).unwrap_or(Value::Null);
            let page = targets.as_array().and_then(|a| {
                a.iter()
                    .find(|t| {
                        t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(ws) = page {
                break ws;
            }
            assert!(
                Instant::now() < deadline,
                "chromium never showed {url}: {}",
                list.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("connect to the page's DevTools websocket");
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        }
    }

    /// Call a DevTools method and wait for its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(Message::Text(msg))
            .await
            .expect("send to DevTools");
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = self.ws.next().await {
                if let Ok(Message::Text(t)) = m {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["id"] == id {
                        return v;
                    }
                }
            }
            panic!("DevTools websocket closed");
        })
        .await
        .unwrap_or_else(|_| panic!("DevTools did not answer {method}"));
        if let Some(e) = answer.get("error") {
            panic!("DevTools {method} failed: {e}");
        }
        answer["result"].clone()
    }

    /// Evaluate a JavaScript expression in the page: its value, or the exception it threw.
    pub async fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        match r.get("exceptionDetails") {
            Some(ex) => Err(ex.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Evaluate a JavaScript expression in the page and return its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .await
            .unwrap_or_else(|ex| panic!("page script failed: {expr}: {ex}"))
    }

    /// Poll `expr` until `ok` holds; return the value and how long it took.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        expr: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            // Until the page has loaded, its elements are missing and the expression may throw.
            let v = self.try_eval(expr).await.unwrap_or(Value::Null);
            if ok(&v) {
                return (v, start.elapsed());
            }
            if start.elapsed() > timeout {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!("timed out after {timeout:?} waiting for {what}; last value {v}; page text:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Save a PNG screenshot when `VEER_SCREENSHOT` names a file.
    pub async fn maybe_screenshot(&mut self, suffix: &str) {
        let Ok(path) = std::env::var("VEER_SCREENSHOT") else {
            return;
        };
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64_decode(r["data"].as_str().unwrap_or(""));
        let path = if suffix.is_empty() {
            path
        } else {
            path.replace(".png", &format!("-{suffix}.png"))
        };
        std::fs::write(&path, png).unwrap();
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.call("Browser.close", json!({})),
        )
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.start_kill();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
