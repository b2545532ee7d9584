//! Memory at scale (issue 15): a backend and a route cost what they use. Each test starts the
//! real binary twice, with one item and with many, and bounds the resident memory the many
//! add per item. The bounds are generous (the test binary is a debug build, and memory freed
//! after loading stays with the allocator for a while) and far below what a backend (105 KiB)
//! and a route (258 KiB) cost before issue 15. Times stay in `benches/memory.sh`.

mod support;

use std::fmt::Write;
use support::*;

/// Resident memory of a process now (VmRSS), in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Start veer on this config (listeners on port 0, one worker), send it one request, and
/// return its resident memory once it serves.
async fn rss_serving(config: &str, host: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veer.toml");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n{config}"
    );
    std::fs::write(&path, text).unwrap();
    let mut veer = spawn_veer(&path).await;
    // One request, so what the first one allocates is counted (its answer does not matter:
    // most backends here do not exist).
    let url = format!("http://{}/", veer.addr);
    let got = get_with(&url, &[("host", host)]).await;
    assert!(got.status > 0, "no answer from veer");
    let rss = rss_kib(veer.pid());
    assert!(rss > 0, "could not read VmRSS");
    let _ = veer.child.kill().await;
    rss
}

/// `n` backends in one pool: the first a real upstream, the others addresses nothing listens on.
fn backends_config(first: std::net::SocketAddr, n: usize) -> String {
    let mut c = format!("[pools.blue]\nbackends = [\n  \"{first}\",\n");
    for i in 1..n {
        writeln!(c, "  \"127.1.{}.{}:80\",", i / 250, i % 250 + 1).unwrap();
    }
    c.push_str("]\n[[routes]]\nname = \"web\"\nsplit = { blue = 100 }\n");
    c
}

/// `n` host routes, each of two pools of one backend at 90/10.
fn routes_config(blue: std::net::SocketAddr, green: std::net::SocketAddr, n: usize) -> String {
    let mut c = String::new();
    for i in 0..n {
        writeln!(
            c,
            "[pools.b{i}]\nbackends = [\"{blue}\"]\n[pools.g{i}]\nbackends = [\"{green}\"]\n\
             [[routes]]\nname = \"r{i}\"\nhosts = [\"h{i}.example\"]\nsplit = {{ b{i} = 90, g{i} = 10 }}"
        )
        .unwrap();
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_thousand_backends_cost_a_few_kib_each() {
    const N: usize = 4000;
    let up = upstream("blue").await;
    let one = rss_serving(&backends_config(up.addr, 1), "app").await;
    let many = rss_serving(&backends_config(up.addr, N), "app").await;
    let per = many.saturating_sub(one) as f64 / (N - 1) as f64;
    eprintln!("RSS: 1 backend {one} KiB, {N} backends {many} KiB: {per:.2} KiB per backend");
    assert!(
        per < 16.0,
        "a backend costs {per:.2} KiB of RSS (105 KiB before issue 15)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_routes_of_two_pools_cost_a_few_kib_each() {
    const N: usize = 1000;
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let one = rss_serving(&routes_config(blue.addr, green.addr, 1), "h0.example").await;
    let many = rss_serving(&routes_config(blue.addr, green.addr, N), "h0.example").await;
    let per = many.saturating_sub(one) as f64 / (N - 1) as f64;
    eprintln!("RSS: 1 route {one} KiB, {N} routes {many} KiB: {per:.2} KiB per route");
    assert!(
        per < 64.0,
        "a route of two pools costs {per:.2} KiB of RSS (258 KiB before issue 15)"
    );
}
