//! A real 3-member etcd cluster (`/usr/bin/etcd`, Debian's `etcd-server`) on free loopback
//! ports in a temp dir, for the fleet tests. Members can be killed and started again; every
//! process is killed when the cluster is dropped.

use super::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    initial: String,
    token: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The etcd binary; the fleet tests need it (scripts/test installs `etcd-server`).
pub fn etcd_bin() -> &'static str {
    let bin = "/usr/bin/etcd";
    assert!(
        std::path::Path::new(bin).exists(),
        "the fleet tests need etcd: apt-get install -y etcd-server (scripts/test does it)"
    );
    bin
}

impl EtcdCluster {
    /// Start three members and wait until the cluster serves writes. A free port can be
    /// taken by another process between the probe and etcd's bind (tests run side by side):
    /// then the cluster is started again on other ports.
    pub async fn start() -> EtcdCluster {
        for _ in 0..3 {
            let c = EtcdCluster::start_once().await;
            let end = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < end {
                if c.healthy_within(Duration::from_millis(500)).await {
                    return c;
                }
                if c.logs().contains("address already in use") {
                    break;
                }
            }
            if !c.logs().contains("address already in use") {
                c.wait_healthy(Duration::ZERO).await;
            }
        }
        panic!("etcd could not bind its ports three times");
    }

    async fn start_once() -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("veer-test-{}-{}", std::process::id(), members[0].client);
        let mut c = EtcdCluster {
            dir,
            members: Vec::new(),
            initial,
            token,
        };
        for m in &mut members {
            m.child = Some(c.spawn(m));
        }
        c.members = members;
        c
    }

    /// Every member's log so far.
    fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    fn spawn(&self, m: &Member) -> Child {
        let data = self.dir.path().join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .unwrap();
        Command::new(etcd_bin())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-cluster")
            .arg(&self.initial)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd")
    }

    /// `http://127.0.0.1:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// The endpoints as a TOML array.
    pub fn endpoints_toml(&self) -> String {
        format!(
            "[{}]",
            self.endpoints()
                .iter()
                .map(|e| format!("{e:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// kill -9 one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a killed member again (its data dir is kept).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none());
        let child = self.spawn(&self.members[i]);
        self.members[i].child = Some(child);
    }

    /// Wait until every running member reports healthy (it has a leader and a quorum).
    pub async fn wait_healthy(&self, within: Duration) {
        if !self.healthy_within(within).await {
            panic!(
                "etcd did not become healthy in {within:?}:\n{}",
                self.logs()
            );
        }
    }

    /// Whether every running member reports healthy within `within`.
    async fn healthy_within(&self, within: Duration) -> bool {
        let end = tokio::time::Instant::now() + within;
        loop {
            let mut all = true;
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                all &= healthy(m.client).await;
            }
            if all {
                return true;
            }
            if tokio::time::Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run `etcdctl` against the running members; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.ctl_with_stdin(args, None)
    }

    /// `etcdctl` with `input` on its stdin (`put KEY` reads the value from stdin).
    pub fn ctl_with_stdin(&self, args: &[&str], input: Option<&str>) -> String {
        use std::io::Write;
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", eps.join(",")))
            .args(["--command-timeout=5s"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl (Debian's etcd-client) is needed");
        {
            let mut stdin = child.stdin.take().unwrap();
            if let Some(i) = input {
                stdin.write_all(i.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A key's value now (`None`: absent).
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", "--print-value-only", key]);
        if out.is_empty() {
            None
        } else {
            Some(out.strip_suffix('\n').unwrap_or(&out).to_string())
        }
    }

    /// A key's value as the running members hold it, read without a quorum (etcd's
    /// serializable read), so it answers while the cluster has lost its quorum.
    pub fn get_serializable(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", "--consistency=s", "--print-value-only", key]);
        (!out.is_empty()).then(|| out.strip_suffix('\n').unwrap_or(&out).to_string())
    }

    /// A key's value as it was at `rev` (`None`: absent then, or compacted).
    pub fn get_at(&self, key: &str, rev: i64) -> Option<(i64, String)> {
        let out = self.ctl(&["get", "-w", "json", &format!("--rev={rev}"), key]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let kv = v["kvs"].get(0)?;
        use base64::Engine;
        let val = base64::engine::general_purpose::STANDARD
            .decode(kv["value"].as_str()?)
            .ok()?;
        Some((kv["mod_revision"].as_i64()?, String::from_utf8(val).ok()?))
    }

    /// The key's mod revision now.
    pub fn mod_revision(&self, key: &str) -> i64 {
        let out = self.ctl(&["get", "-w", "json", key]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["kvs"][0]["mod_revision"].as_i64().unwrap_or(0)
    }
}

/// `GET /health` of one member says `"health":"true"`.
async fn healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(String::from_utf8_lossy(&out).contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ask).await,
        Ok(Some(true))
    )
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A fleet under test: etcd, two upstreams, a folder of replica configs.
pub struct Bed {
    pub etcd: EtcdCluster,
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub blue: Upstream,
    pub green: Upstream,
}

impl Bed {
    pub async fn new() -> Bed {
        Bed::with_green(upstream("green").await).await
    }

    /// A bed whose `green` pool is `green` (one that fails or answers slowly on cue).
    pub async fn with_green(green: Upstream) -> Bed {
        let etcd = EtcdCluster::start().await;
        let prefix = format!("/veer/t{}", std::process::id());
        Bed {
            etcd,
            dir: tempfile::tempdir().unwrap(),
            prefix,
            blue: upstream("blue").await,
            green,
        }
    }

    pub fn doc_key(&self) -> String {
        format!("{}/doc/config", self.prefix)
    }

    /// A replica's file: its own sections, `[cluster]`, and the pools and routes it seeds
    /// the store with when the store has none.
    pub fn config(&self, node: &str, ttl: &str, route_extra: &str) -> String {
        format!(
            r#"[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"

[cluster]
etcd = {etcd}
prefix = "{prefix}"
node = "{node}"
lease_ttl = "{ttl}"

# The fleet's pools: seeded into the store by the first replica.
[pools.blue]
backends = ["{blue}"]  # v1
[pools.green]
backends = ["{green}"]  # v2

[[routes]]
name = "web"
split = {{ blue = 100, green = 0 }}  # the split, kept by API writes
{route_extra}
"#,
            etcd = self.etcd.endpoints_toml(),
            prefix = self.prefix,
            blue = self.blue.addr,
            green = self.green.addr,
        )
    }

    pub fn path(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.toml"))
    }

    pub async fn replica(&self, node: &str, ttl: &str, route_extra: &str) -> VeerProcess {
        let path = self.path(node);
        std::fs::write(&path, self.config(node, ttl, route_extra)).unwrap();
        spawn_veer(&path).await
    }
}

pub async fn status(admin: SocketAddr) -> Value {
    json_of(&admin_call(admin, "GET", "/api/status", "").await)
}

pub fn green_of(s: &Value) -> u64 {
    s["routes"][0]["split"]["green"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Poll `f` every 20 ms until it is true; panics after `within`. Returns the time taken.
pub async fn until<F, Fut>(what: &str, within: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn put_split(admin: SocketAddr, blue: u32, green: u32) -> Got {
    admin_call(
        admin,
        "PUT",
        "/api/routes/web/split",
        &format!(r#"{{"blue": {blue}, "green": {green}}}"#),
    )
    .await
}
