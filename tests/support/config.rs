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
