//! Building config text and files in tests.

use std::net::SocketAddr;
use std::path::PathBuf;

/// `"a", "b"`: addresses as the items of a TOML array.
pub fn quoted(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    list.join(", ")
}

/// Pool `name` over `addrs`, with `extra` lines after it.
pub fn pool(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    format!("[pools.{name}]\nbackends = [{}]\n{extra}\n", quoted(addrs))
}

/// Route `web` at `split` (like `{ p = 1 }`), with `extra` keys after it.
pub fn route(split: &str, extra: &str) -> String {
    format!("[[routes]]\nname = \"web\"\nsplit = {split}\n{extra}\n")
}

/// A config file `veer.toml` with `text` in a fresh folder.
pub fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veer.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Two pools, blue and green, one backend each, and one route with `route_extra` lines.
pub fn blue_green(blue: SocketAddr, green: SocketAddr, split: &str, route_extra: &str) -> String {
    format!(
        "[pools.blue]\nbackends = [\"{blue}\"]\n\
         [pools.green]\nbackends = [\"{green}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {split}\n{route_extra}\n"
    )
}

/// One pool (`app`) of one backend, one route `web`, after `server` lines (with their own
/// listen; empty for the defaults).
pub fn one_pool(addr: SocketAddr, server: &str) -> String {
    format!(
        "{server}[admin]\nlisten = \"127.0.0.1:0\"\n\
         [pools.app]\nbackends = [\"{addr}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n"
    )
}
