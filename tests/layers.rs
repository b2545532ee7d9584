//! The layer rule of `src/` (issue 13, src/lib.rs "Layout"): a module imports only from its own
//! layer or the layers below it. This test reads every `src/**/*.rs`, maps it to its layer by
//! [`LAYERS`], and fails naming file, line and import for every `crate::…` path (a whole
//! `use crate::{a, b}` group included) and every `super::` that climbs out of its folder when
//! it points to a higher layer. It also fails on an import cycle between two folders.
//!
//! Unit tests at the end of a file (from its `#[cfg(test)]` line on) are not read: a test may
//! build whatever it needs (a whole runtime, say); it is not part of the library's graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` (a folder or a file) and its layer, bottom to top.
const LAYERS: &[(&str, u8)] = &[
    // 0: pure data: config in, typed config out; the shared request body.
    ("config", 0),
    ("body", 0),
    // 1: leaves that decide nothing about the running whole.
    ("tls", 1),
    ("breaker", 1),
    ("metrics", 1),
    // Name lookups for backends by name (SPEC §9): config in, addresses out.
    ("dns", 1),
    // 2: backends, pools, connection pools.
    ("upstream", 2),
    // 3: where a request goes, over a snapshot's pools (a route holds its pools).
    ("routing", 3),
    // 4: health checkers, the snapshot.
    ("health", 4),
    ("runtime", 4),
    // 5: the data plane and the rollout decisions.
    ("proxy", 5),
    ("rollout", 5),
    // 6: the one way a change happens.
    ("control", 6),
    // 7: the admin API.
    ("admin", 7),
    // 8: start and shutdown, the demo.
    ("app", 8),
    ("demo", 8),
    // 9: the binary and its admin client.
    ("main", 9),
    ("cli", 9),
    // The crate root declares every module; it is above them all.
    ("lib", 10),
];

/// Imports allowed to run up a layer: (file, module it reaches, why). Each must still exist
/// (a fixed one is struck from this list), and no other may appear. Issue 13 allowed at most
/// two; none is left. Add one only with the reason it cannot be avoided.
const UPWARD: &[(&str, &str, &str)] = &[];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level module a file of `src/` belongs to, and its module path below `src/`
/// (`src/proxy/mod.rs` → `["proxy"]`, `src/proxy/server.rs` → `["proxy", "server"]`).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs")
            // Unit-test modules split into their own file (`#[cfg(test)] mod tests;`), like
            // the tests at the end of a file, are not part of the library's graph.
            && !p.file_name().is_some_and(|n| n == "tests.rs" || n == "props.rs")
        {
            out.push(p);
        }
    }
}

/// The file's code without comments and without its unit tests, one entry per line.
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        // An inline test module ends what is read; `#[cfg(test)] mod tests;` (a test module
        // in a file of its own) does not.
        if line.starts_with("#[cfg(test)]")
            && lines.get(i + 1).is_some_and(|next| {
                next.trim_start().starts_with("mod ") && next.trim_end().ends_with('{')
            })
        {
            break;
        }
        let t = line.trim_start();
        if t.starts_with("//") {
            out.push(String::new());
            continue;
        }
        // A trailing comment (`code; // why`), but not `//` inside a string ("http://").
        let code = match line.find(" //") {
            Some(i) if line[..i].matches('"').count() % 2 == 0 => &line[..i],
            _ => line,
        };
        out.push(code.to_string());
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The module each top-level item of a `{a, b::c, d::{e}}` group starts with.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && !c.is_whitespace() => {
                start = false;
                heads.push(ident_at(&group[i..]).to_string());
            }
            _ => {}
        }
    }
    heads
}

/// One import of a file: its line, the module of `src/` it reaches, and its text.
struct Import {
    line: usize,
    target: String,
    text: String,
}

/// The crate-level modules a file reaches through `crate::` paths and `super::` paths that
/// climb out of its own top-level module.
fn imports(path_in_crate: &[String], lines: &[String]) -> Vec<Import> {
    let joined = lines.join("\n");
    let line_at = |off: usize| joined[..off].matches('\n').count() + 1;
    let text_at = |off: usize| lines[line_at(off) - 1].trim().to_string();
    let mut out = Vec::new();
    let mut push = |off: usize, target: String| {
        if !target.is_empty() && target != "self" {
            out.push(Import {
                line: line_at(off),
                target,
                text: text_at(off),
            });
        }
    };
    for (off, _) in joined.match_indices("crate::") {
        // `$crate::` in a macro is the same crate; a longer word ending in `crate` is not.
        let before = joined[..off].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &joined[off + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            for head in group_heads(&group[..end]) {
                push(off, head);
            }
        } else {
            push(off, ident_at(rest).to_string());
        }
    }
    // `super::` from module path a::b climbs to a; `super::super::` to the crate root, where
    // the next segment names a top-level module.
    for (off, _) in joined.match_indices("super::") {
        let before = joined[..off].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut rest = &joined[off..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        if ups >= path_in_crate.len() {
            push(off, ident_at(rest).to_string());
        }
    }
    out
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut unknown = Vec::new();
    let mut used_exceptions = BTreeSet::new();
    // Folder → folders it imports from (for the cycle check), exceptions left out.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let shown = format!("src/{}", rel.display());
        let path = module_path(rel);
        let module = path.first().cloned().unwrap_or_default();
        let Some(layer) = layer_of(&module) else {
            unknown.push(format!(
                "{shown}: module `{module}` is not in the layer map: add it to LAYERS in \
                 tests/layers.rs (and to the layers in src/lib.rs's Layout section)"
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for imp in imports(&path, &code_lines(&text)) {
            if imp.target == module {
                continue;
            }
            let Some(to) = layer_of(&imp.target) else {
                // Not a module of src/ (a macro, or an item of the crate root): no layer.
                continue;
            };
            let excepted = UPWARD
                .iter()
                .any(|(f, m, _)| *f == shown && *m == imp.target);
            if to > layer && module != "lib" {
                if excepted {
                    used_exceptions.insert((shown.clone(), imp.target.clone()));
                    continue;
                }
                violations.push(format!(
                    "{shown}:{}: `{module}` (layer {layer}) imports `{}` (layer {to}): {}",
                    imp.line, imp.target, imp.text
                ));
            }
            if module != "lib" {
                graph.entry(module.clone()).or_default().insert(imp.target);
            }
        }
    }
    assert!(unknown.is_empty(), "\n{}\n", unknown.join("\n"));
    assert!(
        violations.is_empty(),
        "imports that run up a layer (a module imports only from its own layer or below; see \
         src/lib.rs's Layout):\n{}\n",
        violations.join("\n")
    );
    let stale: Vec<_> = UPWARD
        .iter()
        .filter(|(f, m, _)| !used_exceptions.contains(&(f.to_string(), m.to_string())))
        .map(|(f, m, _)| format!("{f} → {m}"))
        .collect();
    assert!(
        stale.is_empty(),
        "these upward imports are gone: strike them from UPWARD in tests/layers.rs:\n{}\n",
        stale.join("\n")
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between folders (not counting the listed upward imports): {}",
            cycle.join(" → ")
        );
    }
}

/// A cycle in the folder graph, as the folders on it (the first repeated at the end).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_scanner_sees_groups_nested_paths_and_super() {
    let lines: Vec<String> = [
        "use crate::{config::Config, proxy::{body, server}, runtime};",
        "use super::super::admin::x;",
        "use super::sibling;",
        "let a = crate::metrics::Metrics::new(); // crate::ignored",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let lines = code_lines(&lines.join("\n"));
    let path = ["upstream".to_string(), "client".to_string()];
    let got: Vec<(usize, String)> = imports(&path, &lines)
        .into_iter()
        .map(|i| (i.line, i.target))
        .collect();
    assert_eq!(
        got,
        [
            (1, "config".to_string()),
            (1, "proxy".to_string()),
            (1, "runtime".to_string()),
            (4, "metrics".to_string()),
            (2, "admin".to_string()),
        ]
    );
    assert_eq!(
        module_path(Path::new("proxy/mod.rs")),
        ["proxy".to_string()]
    );
}
