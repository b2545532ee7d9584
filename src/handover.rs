//! Listening sockets passed in from outside: from a parent veer during an upgrade in place
//! (SIGUSR2, SPEC.md §12) or from systemd socket activation (`LISTEN_FDS`), and the parent's
//! side of an upgrade: starting the new binary with them and waiting until it is ready.
//!
//! The protocol is systemd's: descriptors from 3 on, `LISTEN_FDS` says how many and
//! `LISTEN_FDNAMES` which is which. veer names its own `http@ADDR`, `https@ADDR` and
//! `admin@ADDR` (ADDR as the config writes it, `:` spelt `+`, as names cannot hold `:`), and
//! adds a datagram socket named `veer-ready` on which the child says `READY=1`. Sockets from
//! systemd, named otherwise, are matched by the address they are bound to. `listenfd` and
//! `command-fds` hold the `unsafe` this takes.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The name of the readiness socket among the passed descriptors.
pub const READY_NAME: &str = "veer-ready";

/// What a listener serves, as its handover name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Https,
    Admin,
}

/// The handover name of a listener: `http@127.0.0.1+8080`.
pub fn name(kind: Kind, addr: SocketAddr) -> String {
    let k = match kind {
        Kind::Http => "http",
        Kind::Https => "https",
        Kind::Admin => "admin",
    };
    format!("{k}@{}", addr.to_string().replace(':', "+"))
}

#[derive(Default)]
struct Inherited {
    listeners: Vec<(String, std::net::TcpListener)>,
    ready: Option<UnixDatagram>,
}

static INHERITED: Mutex<Option<Inherited>> = Mutex::new(None);

/// The binary and arguments this process was started with, for the upgrade to run again.
static SELF: OnceLock<(PathBuf, Vec<std::ffi::OsString>)> = OnceLock::new();

/// Take the descriptors the environment hands this process and remember how it was
/// started. Call first thing in `main`, before any thread starts: it reads and clears
/// `LISTEN_FDS`/`LISTEN_PID` (so children never see them). Returns how many listeners came.
pub fn take_from_env() -> usize {
    if let Ok(exe) = std::env::current_exe() {
        let _ = SELF.set((exe, std::env::args_os().skip(1).collect()));
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut got = Inherited::default();
    for i in 0..fds.len() {
        let name = names.get(i).cloned().unwrap_or_default();
        if name == READY_NAME {
            match fds.take_unix_datagram(i) {
                Ok(Some(s)) => got.ready = Some(s),
                _ => eprintln!(
                    "veer: inherited descriptor {} is not a datagram socket",
                    i + 3
                ),
            }
            continue;
        }
        match fds.take_tcp_listener(i) {
            Ok(Some(l)) => got.listeners.push((name, l)),
            Ok(None) => {}
            Err(e) => eprintln!(
                "veer: inherited descriptor {} ({name}) is not a TCP listener: {e}",
                i + 3
            ),
        }
    }
    std::env::remove_var("LISTEN_FDNAMES");
    let n = got.listeners.len();
    *INHERITED.lock().unwrap_or_else(|e| e.into_inner()) = Some(got);
    n
}

/// The inherited listener for `kind` on `addr` (as the config writes it), if one was passed:
/// by name (a parent veer), else by the address it is bound to (systemd; never for port 0).
/// Each is taken once.
pub fn take_listener(kind: Kind, addr: SocketAddr) -> Option<std::net::TcpListener> {
    let mut guard = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    let inherited = guard.as_mut()?;
    let wanted = name(kind, addr);
    let at = inherited
        .listeners
        .iter()
        .position(|(n, _)| *n == wanted)
        .or_else(|| {
            (addr.port() != 0).then(|| {
                inherited
                    .listeners
                    .iter()
                    .position(|(n, l)| !n.contains('@') && l.local_addr().ok() == Some(addr))
            })?
        })?;
    Some(inherited.listeners.swap_remove(at).1)
}

/// Close the inherited listeners the config did not claim (an address it no longer names).
pub fn close_unclaimed() {
    let mut guard = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(inherited) = guard.as_mut() {
        for (name, l) in inherited.listeners.drain(..) {
            tracing::info!(name, addr = ?l.local_addr().ok(), "inherited listener not in the config; closed");
        }
    }
}

/// Tell whoever started this process that it is serving: the parent veer of an upgrade
/// (over `veer-ready`), and systemd where `NOTIFY_SOCKET` is set (`Type=notify`).
pub fn notify_ready() {
    let ready = INHERITED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|i| i.ready.take());
    if let Some(s) = ready {
        if let Err(e) = s.send(b"READY=1") {
            tracing::warn!(error = %e, "cannot tell the old process that this one is ready");
        }
    }
    sd_notify(&format!("READY=1\nMAINPID={}", std::process::id()));
}

/// Send a message to systemd's notification socket, if there is one.
pub fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| {
        let bytes = path.as_encoded_bytes();
        if let Some(abstract_name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            s.send_to_addr(msg.as_bytes(), &addr)
        } else {
            s.send_to(msg.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Why an upgrade did not happen (the old process goes on serving).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot start {exe}: {source}")]
    Spawn {
        exe: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the new process exited before it was ready ({0})")]
    Exited(std::process::ExitStatus),
    #[error("the new process was not ready within {0:?}; killed")]
    NotReady(Duration),
    #[error("cannot pass the listeners: {0}")]
    Fds(String),
}

/// Start this binary again (same path, same arguments) with `sockets` (handover name and
/// a duplicate of the listening descriptor), and wait until it says it is ready. A child
/// that exits or stays silent past `timeout` is killed (and reaped); the caller keeps
/// serving. Returns the new process's id.
pub async fn start_successor(
    sockets: Vec<(String, OwnedFd)>,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    let (exe, args) = SELF
        .get()
        .cloned()
        .ok_or_else(|| UpgradeError::Fds("the binary's path is not known".into()))?;
    start_program(&exe, &args, sockets, timeout).await
}

/// [`start_successor`] with the program and its arguments given.
pub async fn start_program(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    sockets: Vec<(String, OwnedFd)>,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    use command_fds::{CommandFdExt, FdMapping};
    let (ours, theirs) = UnixDatagram::pair().map_err(|e| UpgradeError::Fds(e.to_string()))?;
    let mut names: Vec<String> = Vec::with_capacity(sockets.len() + 1);
    let mut mappings = Vec::with_capacity(sockets.len() + 1);
    for (i, (name, fd)) in sockets.into_iter().enumerate() {
        names.push(name);
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: 3 + i as i32,
        });
    }
    mappings.push(FdMapping {
        parent_fd: OwnedFd::from(theirs),
        child_fd: 3 + names.len() as i32,
    });
    names.push(READY_NAME.into());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD");
    cmd.fd_mappings(mappings)
        .map_err(|e| UpgradeError::Fds(e.to_string()))?;
    let mut child =
        tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|e| UpgradeError::Spawn {
                exe: exe.display().to_string(),
                source: e,
            })?;
    let pid = child.id().unwrap_or(0);
    ours.set_nonblocking(true)
        .map_err(|e| UpgradeError::Fds(e.to_string()))?;
    let ours =
        tokio::net::UnixDatagram::from_std(ours).map_err(|e| UpgradeError::Fds(e.to_string()))?;
    let ready = async {
        let mut buf = [0u8; 64];
        loop {
            match ours.recv(&mut buf).await {
                Ok(n) if buf[..n].starts_with(b"READY=1") => return true,
                Ok(_) => continue,
                // Every copy of the child's end closed: it died or closed it unsaid.
                Err(_) => return false,
            }
        }
    };
    let outcome = tokio::select! {
        ok = ready => if ok { Ok(()) } else { Err(None) },
        status = child.wait() => Err(status.ok()),
        _ = tokio::time::sleep(timeout) => Err(None),
    };
    match outcome {
        Ok(()) => {
            // The child lives on after this process exits; tokio reaps it if it ends first.
            drop(child);
            Ok(pid)
        }
        Err(status) => {
            let status = match status {
                Some(s) => s,
                None => {
                    let _ = child.start_kill();
                    match child.wait().await {
                        Ok(s) if s.code().is_some() => return Err(UpgradeError::Exited(s)),
                        _ => return Err(UpgradeError::NotReady(timeout)),
                    }
                }
            };
            Err(UpgradeError::Exited(status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hold_no_colon() {
        let v6: SocketAddr = "[::1]:8443".parse().unwrap();
        assert_eq!(name(Kind::Https, v6), "https@[++1]+8443");
        let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(name(Kind::Admin, v4), "admin@127.0.0.1+0");
    }

    /// A new binary that never says it is ready is killed at the bound (paused time: the
    /// bound passes at once once nothing else is going on).
    #[tokio::test(start_paused = true)]
    async fn a_successor_not_ready_in_time_is_killed() {
        let started = std::time::Instant::now();
        let r = start_program(
            std::path::Path::new("sleep"),
            &["300".into()],
            Vec::new(),
            Duration::from_secs(30),
        )
        .await;
        assert!(
            matches!(r, Err(UpgradeError::NotReady(d)) if d == Duration::from_secs(30)),
            "{r:?}"
        );
        // Killed and reaped, not waited out.
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_successor_that_exits_is_reported() {
        let r = start_program(
            std::path::Path::new("sh"),
            &["-c".into(), "exit 3".into()],
            Vec::new(),
            Duration::from_secs(30),
        )
        .await;
        assert!(
            matches!(&r, Err(UpgradeError::Exited(s)) if s.code() == Some(3)),
            "{r:?}"
        );
    }
}
