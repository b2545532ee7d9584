//! veer's own log as an operator reads it (issue 20 item 3): a failed upstream attempt
//! (connect refused, reset, timeout) is logged at warn naming route, pool and backend, at most
//! once per backend in a while; no ANSI colour codes when stderr is not a terminal.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A backend that accepts and closes each connection at once (a reset before any answer).
async fn resetting() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    addr
}

/// A backend that reads requests and never answers.
async fn silent() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn warn_lines<'a>(log: &'a str, backend: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains("upstream attempt failed"))
        .filter(|l| l.contains(&format!("backend={backend}")))
        .collect()
}

#[tokio::test]
async fn failed_attempts_warn_once_per_backend_naming_route_pool_and_backend() {
    let dead = dead_addr().await;
    let reset = resetting().await;
    let slow = silent().await;
    let mut text = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nrequest_timeout = \"300ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    for (name, addr) in [("dead", dead), ("reset", reset), ("slow", slow)] {
        text.push_str(&format!(
            "[pools.p{name}]\nbackends = [\"{addr}\"]\n[[routes]]\nname = \"r{name}\"\npath_prefix = \"/{name}\"\nsplit = {{ p{name} = 1 }}\nretry = {{ attempts = 1 }}\n"
        ));
    }
    let (_dir, path) = write_config(&text);
    let veer = spawn_veer(&path).await;
    for _ in 0..4 {
        for name in ["dead", "reset", "slow"] {
            let r = get(&veer_url(&veer, &format!("/{name}/x"))).await;
            assert!(matches!(r.status, 502 | 504), "{name}: {}", r.status);
        }
    }
    let log = veer.stderr.clone();
    eventually("the warnings", Duration::from_secs(5), || {
        let l = log.lock().unwrap();
        [dead, reset, slow]
            .iter()
            .all(|a| !warn_lines(&l, &a.to_string()).is_empty())
    })
    .await;
    for (name, addr, kind) in [
        ("dead", dead, "connect"),
        ("reset", reset, ""),
        ("slow", slow, "timeout"),
    ] {
        let l = log.lock().unwrap().clone();
        let lines = warn_lines(&l, &addr.to_string());
        assert_eq!(lines.len(), 1, "{name}: one warning for 4 failures:\n{l}");
        let line = lines[0];
        assert!(
            line.contains(&format!("route=r{name}")) && line.contains(&format!("pool=p{name}")),
            "{line}"
        );
        assert!(line.contains(kind), "{name}: {line}");
        // Not a terminal: no colour codes.
        assert!(!l.contains('\u{1b}'), "ANSI codes in a piped log:\n{l}");
    }
}

fn veer_url(v: &VeerProcess, path: &str) -> String {
    format!("http://{}{}", v.addr, path)
}
