//! Upgrading veer in place (SPEC.md §12, issue 16): SIGUSR2 starts the binary at the same
//! path with the same arguments and hands it the listening sockets; the old process finishes
//! what it has and exits 0. Real processes, real sockets.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// A copy of the veer binary in its own folder, so a test can replace it.
fn binary_copy(dir: &std::path::Path) -> std::path::PathBuf {
    let bin = dir.join("veer");
    std::fs::copy(veer_bin(), &bin).unwrap();
    bin
}

fn config(up: SocketAddr) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ndrain_timeout = \"10s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [pools.app]\nbackends = [\"{up}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n"
    )
}

/// One HTTP/1.1 exchange on a blocking socket: (status, whether the answer said close).
fn exchange(s: &mut TcpStream, path: &str, close: bool) -> Result<(u16, bool), String> {
    let extra = if close { "Connection: close\r\n" } else { "" };
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\n{extra}\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err(format!("closed after {} bytes of head", head.len())),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad head {head:?}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok((status, head.contains("connection: close")))
}

/// A client thread sending requests until `stop`: over one keep-alive connection (a new one
/// only when told to close), or a new connection for each request.
fn client(
    addr: SocketAddr,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn: Option<TcpStream> = None;
        while !stop.load(Ordering::Relaxed) {
            if conn.is_none() {
                match TcpStream::connect(addr) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                        conn = Some(s);
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(format!("connect: {e}"));
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                }
            }
            let s = conn.as_mut().unwrap();
            match exchange(s, "/", !keep_alive) {
                Ok((200, close)) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    if close || !keep_alive {
                        conn = None;
                    }
                }
                Ok((status, _)) => {
                    failures.lock().unwrap().push(format!("status {status}"));
                    conn = None;
                }
                Err(e) => {
                    failures.lock().unwrap().push(e);
                    conn = None;
                }
            }
        }
    })
}

/// The new process's id, from the old one's log.
fn new_pid(log: &str) -> Option<u32> {
    let line = log
        .lines()
        .find(|l| l.contains("upgrade: new process ready and serving"))?;
    line.split("pid=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether a process exists and has not exited (a zombie has exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_over_without_refusing_or_failing_a_request() {
    let slow_seen = Arc::new(AtomicBool::new(false));
    let seen = slow_seen.clone();
    let up = upstream_with(move |req| {
        let seen = seen.clone();
        async move {
            if req.uri().path() == "/slow" {
                seen.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            respond(200, "ok")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let bin = binary_copy(dir.path());
    let path = dir.path().join("veer.toml");
    std::fs::write(&path, config(up.addr)).unwrap();
    let mut old = spawn_veer_bin(&bin, &path).await;
    let old_pid = old.pid();
    let addr = old.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::new(AtomicU64::new(0));
    let fresh = Arc::new(AtomicU64::new(0));
    let threads = [
        client(addr, true, stop.clone(), kept.clone(), failures.clone()),
        client(addr, false, stop.clone(), fresh.clone(), failures.clone()),
    ];
    let (k, f) = (kept.clone(), fresh.clone());
    eventually("both clients are served", Duration::from_secs(10), || {
        k.load(Ordering::Relaxed) > 20 && f.load(Ordering::Relaxed) > 20
    })
    .await;

    // A slow request in flight when the signal comes.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        exchange(&mut s, "/slow", false)
    });
    eventually(
        "the slow request reached the backend",
        Duration::from_secs(5),
        || slow_seen.load(Ordering::SeqCst),
    )
    .await;

    old.signal("USR2");
    let status = tokio::time::timeout(Duration::from_secs(30), old.child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "old veer did not exit; log:\n{}",
                old.stderr.lock().unwrap()
            )
        })
        .unwrap();
    let log = old.stderr.lock().unwrap().clone();
    assert!(status.success(), "old veer exited {status:?}; log:\n{log}");
    let pid = new_pid(&log).unwrap_or_else(|| panic!("no new pid in the log:\n{log}"));
    assert_ne!(pid, old_pid);
    assert!(alive(pid), "new veer {pid} is not running; log:\n{log}");

    // The new process serves both clients (the old one is gone).
    let (k0, f0) = (kept.load(Ordering::Relaxed), fresh.load(Ordering::Relaxed));
    let (k, f) = (kept.clone(), fresh.clone());
    eventually("the new process serves", Duration::from_secs(10), || {
        k.load(Ordering::Relaxed) > k0 + 20 && f.load(Ordering::Relaxed) > f0 + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(slow.join().unwrap(), Ok((200, true)), "slow request");
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed during the upgrade (first: {:?}); log:\n{}",
        failures.len(),
        failures.first(),
        old.stderr.lock().unwrap()
    );
    // The admin listener passed over too: the new process answers on the same address.
    assert_eq!(
        get(&format!("http://{}/readyz", old.admin)).await.status,
        200
    );

    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    eventually(
        "the new veer exits on SIGTERM",
        Duration::from_secs(15),
        || !alive(pid),
    )
    .await;
}

#[tokio::test]
async fn a_new_binary_that_fails_leaves_the_old_one_serving() {
    let up = upstream_with(|_| async { respond(200, "ok") }).await;
    let dir = tempfile::tempdir().unwrap();
    let bin = binary_copy(dir.path());
    let path = dir.path().join("veer.toml");
    std::fs::write(&path, config(up.addr)).unwrap();
    let mut old = spawn_veer_bin(&bin, &path).await;
    let url = format!("http://{}/", old.addr);
    assert_eq!(get(&url).await.status, 200);

    // The binary at the same path is now broken.
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    old.signal("USR2");
    let log = old.stderr.clone();
    eventually(
        "the failed upgrade is logged",
        Duration::from_secs(15),
        || log.lock().unwrap().contains("upgrade failed"),
    )
    .await;
    assert!(
        log.lock().unwrap().contains("exited before it was ready"),
        "{}",
        log.lock().unwrap()
    );
    assert!(old.child.try_wait().unwrap().is_none(), "old veer exited");
    for _ in 0..5 {
        assert_eq!(get(&url).await.status, 200);
    }
    let metrics = get(&format!("http://{}/metrics", old.admin)).await;
    let text = metrics.body.clone();
    assert!(
        text.contains("veer_upgrades_total{result=\"failure\"} 1"),
        "{text}"
    );
    // Still a graceful shutdown afterwards.
    old.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), old.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

/// systemd socket activation: the listener comes as descriptor 3 with `LISTEN_FDS=1` and no
/// name veer knows; veer matches it by its address and serves on it (binding the address
/// again would fail: the test holds it).
#[tokio::test]
async fn a_first_start_takes_its_listener_from_systemd() {
    use command_fds::{CommandFdExt, FdMapping};
    use tokio::io::{AsyncBufReadExt, BufReader};
    let up = upstream_with(|_| async { respond(200, "ok") }).await;
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veer.toml");
    std::fs::write(
        &path,
        config(up.addr).replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"{addr}\"]"),
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(veer_bin());
    cmd.args(["run", "--config"])
        .arg(&path)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "veer.socket")
        .env("VEER_LOG", "info")
        .stderr(std::process::Stdio::piped());
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: std::os::fd::OwnedFd::from(held),
        child_fd: 3,
    }])
    .unwrap();
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let announced = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(l)) = lines.next_line().await {
            log.push_str(&l);
            log.push('\n');
            if l.starts_with("veer: proxy=") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(announced, Ok(true), "veer did not start; log:\n{log}");
    assert!(log.contains("listening on an inherited socket"), "{log}");
    assert_eq!(get(&format!("http://{addr}/")).await.status, 200);
}
