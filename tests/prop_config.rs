//! Property tests of the config loader (a stable stand-in for cargo-fuzz): what `veer check`
//! runs (`Config::load`) on mutated example configs, on every truncation of one, and on files
//! made from a grammar of sections, keys and values. It loads, or it names problems that lie
//! inside the file (line ≤ line count, col ≤ that line's length + 1); never a panic.
//!
//! The case count is `PROPTEST_CASES` (default [`DEFAULT_CASES`]).

mod support;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use std::path::Path;
use support::fuzz::{mutate, Mutation};

/// Cases per property when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 512;

fn runner() -> TestRunner {
    support::fuzz::runner(DEFAULT_CASES)
}

fn run<T: std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    check: impl Fn(T) -> Result<(), String>,
) {
    if let Err(e) = runner().run(&strategy, |v| check(v).map_err(TestCaseError::fail)) {
        panic!("{e}");
    }
}

/// The example configs, by name.
fn examples() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "toml").then(|| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 4,
        "config/*.toml not found in {}",
        dir.display()
    );
    out
}

/// How far a file got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Refused for its TOML syntax or its shape (unknown keys, wrong types, missing keys).
    Shape,
    /// Past the shape checks: refused for what its values mean.
    Meaning,
    Loaded,
}

/// Write `bytes` as a config file in a temp dir, load it as `veer check` does, and check
/// every error it reports lies inside the file.
fn load_checked(dir: &Path, bytes: &[u8]) -> Result<Depth, String> {
    let path = dir.join("veer.toml");
    std::fs::write(&path, bytes).unwrap();
    let errors = match veer::config::Config::load(&path) {
        Ok(config) => {
            let _ = config.summary();
            return Ok(Depth::Loaded);
        }
        Err(errors) => errors,
    };
    if errors.0.is_empty() {
        return Err("an empty error list".into());
    }
    // A file that is not UTF-8 is refused as a whole (at 1:1); lines are counted in text.
    let text = String::from_utf8_lossy(bytes);
    // The place after a final newline is a line of its own (where EOF errors point).
    let lines: Vec<&str> = text.split('\n').collect();
    for e in &errors.0 {
        let shown = e.to_string();
        if e.file != path {
            return Err(format!("names another file: {shown}"));
        }
        if e.message.trim().is_empty() {
            return Err(format!("an error without a message: {shown:?}"));
        }
        // "expected a boolean or a table, found a table" contradicts itself.
        if let Some((want, found)) = e
            .message
            .split_once("expected ")
            .and_then(|(_, rest)| rest.split_once(", found "))
        {
            let found = found.trim_end_matches('.');
            if want.split(" or ").any(|w| w == found) {
                return Err(format!("the message contradicts itself: {shown}"));
            }
        }
        if e.line == 0 || e.col == 0 {
            return Err(format!("0-based place: {shown}"));
        }
        let Some(line) = lines.get(e.line - 1) else {
            return Err(format!(
                "line {} past the end ({} lines): {shown}",
                e.line,
                lines.len()
            ));
        };
        if e.col > line.chars().count() + 1 {
            return Err(format!(
                "column {} past the end of line {} ({:?}): {shown}",
                e.col, e.line, line
            ));
        }
    }
    let shape = errors.0.iter().any(|e| {
        let m = &e.message;
        m.starts_with("invalid TOML")
            || m.contains(", found ")
            || m.contains("unknown key")
            || m.contains("missing required key")
            || m.starts_with("cannot read config file")
    });
    Ok(if shape { Depth::Shape } else { Depth::Meaning })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        (
            any::<usize>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..4),
                prop::sample::select(vec![
                    b"\n".to_vec(),
                    b"\"".to_vec(),
                    b"[".to_vec(),
                    b"]]".to_vec(),
                    b" = ".to_vec(),
                    b"\n[server]\n".to_vec(),
                    b"\nlisten = 1\n".to_vec(),
                    b"\xc3\xa9".to_vec(),
                    b"\r\n".to_vec(),
                    b"#".to_vec(),
                    b"'''".to_vec(),
                    b"{".to_vec(),
                ]),
            ]
        )
            .prop_map(|(p, v)| Mutation::Insert(p, v)),
        (any::<usize>(), 1usize..40).prop_map(|(p, n)| Mutation::Delete(p, n)),
    ]
}

#[test]
fn mutated_example_configs_load_or_name_a_place_in_the_file() {
    let files = examples();
    let dir = tempfile::tempdir().unwrap();
    let n = files.len();
    run(
        (0..n, prop::collection::vec(mutation(), 1..6)),
        |(i, muts)| {
            let mut bytes = files[i].1.clone();
            mutate(&mut bytes, &muts, 0..0);
            load_checked(dir.path(), &bytes)
                .map(|_| ())
                .map_err(|e| format!("{} mutated: {e}\n{}", files[i].0, show(&bytes)))
        },
    );
}

/// Every prefix of one example (the one with the most kinds of sections).
#[test]
fn every_truncation_of_an_example_loads_or_names_a_place_in_the_file() {
    let files = examples();
    let (name, bytes) = files
        .iter()
        .find(|(n, _)| n == "canary.toml")
        .expect("config/canary.toml");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        load_checked(dir.path(), bytes).unwrap(),
        Depth::Loaded,
        "{name} itself loads"
    );
    for k in 0..bytes.len() {
        if let Err(e) = load_checked(dir.path(), &bytes[..k]) {
            panic!("{name} cut at byte {k}: {e}\n{}", show(&bytes[..k]));
        }
    }
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    match s.char_indices().nth(3000) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.into_owned(),
    }
}

// A grammar of config files: the sections of the schema with their keys, values mostly of
// the right type (so validation runs past the shape checks), and wrong ones, unknown keys and
// broken lines among them.

#[derive(Debug, Clone, Copy)]
enum Kind {
    Dur,
    Int,
    Float,
    Bool,
    Str,
    Addr,
    Addrs,
    Backends,
    Split,
    Hosts,
    Steps,
    Sticky,
    Override,
    Retry,
}

const SERVER: &[(&str, Kind)] = &[
    ("listen", Kind::Addrs),
    ("workers", Kind::Int),
    ("tls_listen", Kind::Addrs),
    ("header_read_timeout", Kind::Dur),
    ("request_timeout", Kind::Dur),
    ("body_timeout", Kind::Dur),
    ("idle_timeout", Kind::Dur),
    ("max_header_bytes", Kind::Int),
    ("max_connections", Kind::Int),
    ("drain_timeout", Kind::Dur),
];
const ADMIN: &[(&str, Kind)] = &[("listen", Kind::Addr), ("token_env", Kind::Str)];
const POOL: &[(&str, Kind)] = &[
    ("backends", Kind::Backends),
    ("lb", Kind::Str),
    ("connect_timeout", Kind::Dur),
    ("protocol", Kind::Str),
    ("tls", Kind::Bool),
    ("sni", Kind::Str),
    ("insecure_skip_verify", Kind::Bool),
];
/// `[pools.blue]` takes its TLS settings from a `[pools.blue.tls]` section.
const POOL_BLUE: &[(&str, Kind)] = &[
    ("backends", Kind::Backends),
    ("lb", Kind::Str),
    ("connect_timeout", Kind::Dur),
    ("protocol", Kind::Str),
];
const HEALTH: &[(&str, Kind)] = &[
    ("path", Kind::Str),
    ("interval", Kind::Dur),
    ("timeout", Kind::Dur),
    ("healthy_threshold", Kind::Int),
    ("unhealthy_threshold", Kind::Int),
    ("expect_status", Kind::Str),
];
const BREAKER: &[(&str, Kind)] = &[
    ("consecutive_failures", Kind::Int),
    ("open_for", Kind::Dur),
    ("half_open_requests", Kind::Int),
    ("max_concurrent_requests", Kind::Int),
    ("grpc_status_failures", Kind::Bool),
];
const UPSTREAM_TLS: &[(&str, Kind)] = &[
    ("ca", Kind::Str),
    ("sni", Kind::Str),
    ("insecure_skip_verify", Kind::Bool),
];
const ROUTE: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("hosts", Kind::Hosts),
    ("path_prefix", Kind::Str),
    ("split", Kind::Split),
    ("sticky", Kind::Sticky),
    ("override", Kind::Override),
    ("fallback", Kind::Bool),
    ("retry", Kind::Retry),
];
const ROLLOUT: &[(&str, Kind)] = &[
    ("to", Kind::Str),
    ("steps", Kind::Steps),
    ("step_interval", Kind::Dur),
    ("min_requests", Kind::Int),
    ("max_error_rate", Kind::Float),
    ("max_p99", Kind::Dur),
    ("approval", Kind::Bool),
    ("approval_timeout", Kind::Dur),
    ("notify_url", Kind::Str),
    ("state", Kind::Str),
    ("step", Kind::Int),
];
const CERT: &[(&str, Kind)] = &[("cert", Kind::Str), ("key", Kind::Str)];

const SECTIONS: &[(&str, &[(&str, Kind)])] = &[
    ("[server]", SERVER),
    ("[admin]", ADMIN),
    ("[pools.blue]", POOL_BLUE),
    ("[pools.green]", POOL),
    ("[pools.blue.health_check]", HEALTH),
    ("[pools.green.circuit_breaker]", BREAKER),
    ("[pools.blue.tls]", UPSTREAM_TLS),
    ("[[routes]]", ROUTE),
    ("[routes.rollout]", ROLLOUT),
    ("[[tls.certificates]]", CERT),
    (
        "[[pools.red.backends]]",
        &[("addr", Kind::Addr), ("weight", Kind::Int)],
    ),
];

fn pick(v: &[&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(v.to_vec())
        .prop_map(String::from)
        .boxed()
}

fn right_value(kind: Kind) -> BoxedStrategy<String> {
    match kind {
        Kind::Dur => pick(&[
            "\"2s\"",
            "\"250ms\"",
            "\"1m30s\"",
            "\"0s\"",
            "\"1h\"",
            "\"2 parsecs\"",
            "\"-1s\"",
            "\"99999999999999h\"",
            "\"\"",
            "\"1.5s\"",
            "\"s\"",
        ]),
        Kind::Int => prop_oneof![
            pick(&["0", "1", "2", "3", "10", "100", "65536", "-1", "1_000"]),
            any::<i64>().prop_map(|n| n.to_string()),
        ]
        .boxed(),
        Kind::Float => pick(&[
            "0.01", "0.5", "1.0", "1", "-0.1", "2.5", "nan", "inf", "1e-9",
        ]),
        Kind::Bool => pick(&["true", "false"]),
        Kind::Str => pick(&[
            "\"blue\"",
            "\"green\"",
            "\"web\"",
            "\"/\"",
            "\"/api\"",
            "\"/health\"",
            "\"/a b\"",
            "\"/a\\r\\nb\"",
            "\"h1\"",
            "\"h2\"",
            "\"h2c\"",
            "\"round_robin\"",
            "\"least_request\"",
            "\"200-399\"",
            "\"600-100\"",
            "\"pending\"",
            "\"succeeded\"",
            "\"VEER_TOKEN\"",
            "\"\"",
            "\"é\"",
            "\"\\u0000\"",
            "\"config/certs/x.crt\"",
            "\"http://127.0.0.1:1/hook\"",
            "'literal'",
        ]),
        Kind::Addr => pick(&[
            "\"127.0.0.1:0\"",
            "\"[::1]:0\"",
            "\"127.0.0.1:9001\"",
            "\"300.1.1.1:99999\"",
            "\"localhost:80\"",
            "\"127.0.0.1\"",
            "\"\"",
        ]),
        Kind::Addrs => prop::collection::vec(right_value(Kind::Addr), 0..3)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
        Kind::Backends => prop::collection::vec(
            prop_oneof![
                12 => right_value(Kind::Addr),
                1 => (right_value(Kind::Addr), right_value(Kind::Int))
                    .prop_map(|(a, w)| format!("{{ addr = {a}, weight = {w} }}")),
                1 => pick(&["{ weight = 1 }", "{ addr = 1 }", "{}", "7", "{ addr = \"127.0.0.1:1\", weight = -1 }"]),
            ],
            0..3,
        )
        .prop_map(|v| format!("[{}]", v.join(", ")))
        .boxed(),
        Kind::Split => prop::collection::vec(
            (
                pick(&["blue", "green", "red", "\"a b\""]),
                right_value(Kind::Int),
            ),
            0..3,
        )
        .prop_map(|kv| {
            let kv: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", kv.join(", "))
        })
        .boxed(),
        Kind::Hosts => prop::collection::vec(
            pick(&[
                "\"*\"",
                "\"a.example\"",
                "\"*.example.com\"",
                "\"\"",
                "\"a b\"",
                "\"*.*\"",
            ]),
            0..3,
        )
        .prop_map(|v| format!("[{}]", v.join(", ")))
        .boxed(),
        Kind::Steps => prop::collection::vec(right_value(Kind::Int), 0..4)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
        Kind::Sticky => pick(&[
            "{ cookie = \"veer_id\" }",
            "{ header = \"x-user\" }",
            "{ client_ip = true }",
            "{ cookie = \"a\", header = \"b\" }",
            "{}",
            "{ cookie = \"\" }",
            "\"cookie\"",
        ]),
        Kind::Override => pick(&[
            "{ header = \"x-veer-pool\" }",
            "{ cookie = \"veer_pool\" }",
            "{}",
            "{ header = \"bad header\" }",
        ]),
        Kind::Retry => pick(&[
            "{ attempts = 2, backoff = \"25ms\" }",
            "{ attempts = 0 }",
            "{ attempts = 11 }",
            "{ budget_percent = 101 }",
            "{ idempotent_only = false }",
            "{ backoff = 1 }",
        ]),
    }
}

/// Any value at all: of another type, or not TOML.
fn wrong_value() -> BoxedStrategy<String> {
    prop_oneof![
        pick(&[
            "1979-05-27",
            "07:32:00",
            "[1, \"a\"]",
            "{ a = 1 }",
            "[]",
            "{}",
            "0x10",
            "01",
            "\"\"\"multi\nline\"\"\"",
            "1e400",
            "[[1]]",
        ]),
        right_value(Kind::Int),
        right_value(Kind::Str),
        right_value(Kind::Bool),
    ]
    .boxed()
}

/// One section: its header and distinct keys of its own (mostly), in any order.
fn section_text(i: usize, with_skeleton: bool) -> BoxedStrategy<String> {
    let (header, keys) = SECTIONS[i];
    // With the skeleton, the keys a valid file needs are there and right.
    // Required keys are there (with the skeleton, right), so most files get past the
    // shape checks; their values are another matter.
    let needed: &[&str] = match (with_skeleton, header) {
        (true, "[pools.blue]" | "[pools.green]") => &["backends"],
        (true, "[[routes]]") => &["name", "split"],
        (_, "[routes.rollout]") => &["to", "steps"],
        (_, "[[tls.certificates]]") => &["cert", "key"],
        (_, "[[pools.red.backends]]") => &["addr"],
        _ => &[],
    };
    let pair = move |k: usize| {
        let (name, kind) = keys[k];
        let value = if needed.contains(&name) && with_skeleton {
            match name {
                "backends" => Just("[\"127.0.0.1:9001\"]".to_string()).boxed(),
                "name" => Just("\"web\"".to_string()).boxed(),
                "split" => Just("{ blue = 90, green = 10 }".to_string()).boxed(),
                _ => right_value(kind),
            }
        } else {
            prop_oneof![20 => right_value(kind), 1 => wrong_value()].boxed()
        };
        value.prop_map(move |v| format!("{name} = {v}")).boxed()
    };
    prop::sample::subsequence((0..keys.len()).collect::<Vec<_>>(), 0..=keys.len())
        .prop_flat_map(move |mut chosen| {
            for (k, (name, _)) in keys.iter().enumerate() {
                if needed.contains(name) && !chosen.contains(&k) {
                    chosen.push(k);
                }
            }
            let lines: Vec<BoxedStrategy<String>> = chosen.into_iter().map(pair).collect();
            lines
        })
        .prop_map(move |lines| {
            let mut s = format!("{header}\n");
            for l in lines {
                s.push_str(&l);
                s.push('\n');
            }
            s
        })
        .boxed()
}

fn config_text() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.8),
        prop::sample::subsequence((0..SECTIONS.len()).collect::<Vec<_>>(), 0..=SECTIONS.len()),
    )
        .prop_flat_map(|(with_skeleton, mut chosen)| {
            if with_skeleton {
                for h in ["[pools.blue]", "[pools.green]", "[[routes]]"] {
                    let i = SECTIONS.iter().position(|(s, _)| *s == h).unwrap();
                    if !chosen.contains(&i) {
                        chosen.push(i);
                    }
                }
                chosen.sort_unstable();
            }
            let sections: Vec<BoxedStrategy<String>> = chosen
                .into_iter()
                .map(|i| section_text(i, with_skeleton))
                .collect();
            (
                sections,
                prop_oneof![
                    3 => Just(vec![]),
                    1 => prop::collection::vec((noise(), any::<prop::sample::Index>()), 1..3),
                ],
            )
        })
        .prop_map(|(sections, noise)| {
            let mut lines: Vec<String> = sections.concat().lines().map(String::from).collect();
            for (n, at) in noise {
                lines.insert(at.index(lines.len() + 1), n);
            }
            lines.join("\n") + "\n"
        })
}

/// A line that does not belong: an unknown key, or not TOML at all.
fn noise() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (
            pick(&["unknown_key", "listn", "\"quoted key\"", "a.b", "backend"]),
            right_value(Kind::Int)
        )
            .prop_map(|(k, v)| format!("{k} = {v}")),
        1 => pick(&[
            "# a comment", "", "key", "= 1", "listen = [", "]", "\t", "[broken",
            "x = \"unterminated", "a = 1 extra", "é = 1",
        ]),
    ]
}

#[test]
fn generated_configs_load_or_name_a_place_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cases, deep) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    run(
        (config_text(), prop_oneof![Just("\n"), Just("\r\n")]),
        |(text, eol)| {
            let text = text.replace('\n', eol);
            let depth =
                load_checked(dir.path(), text.as_bytes()).map_err(|e| format!("{e}\n{text}"))?;
            cases.set(cases.get() + 1);
            deep.set(deep.get() + u32::from(depth != Depth::Shape));
            Ok(())
        },
    );
    // The grammar is meant to reach validation: a good share of its files get past the
    // syntax and shape checks.
    assert!(
        deep.get() * 8 >= cases.get(),
        "only {} of {} generated configs got past the shape checks",
        deep.get(),
        cases.get()
    );
}

/// Reproducers the properties found, kept as fixed cases.
#[test]
fn config_regressions() {
    let dir = tempfile::tempdir().unwrap();
    for text in [
        &b""[..],
        b"\n",
        b"[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"web\"\nsplit = { blue = 1 }\nx",
        b"\xff\xfe",
        b"[server]\nlisten = [\"127.0.0.1:0\"\n",
        // Once "expected a boolean or a table, found a table".
        b"[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[pools.blue.tls]\nlisten = 1\n\
          [[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n",
    ] {
        if let Err(e) = load_checked(dir.path(), text) {
            panic!("{e}\n{}", show(text));
        }
    }
}

/// A `[section]` and `[[array of tables]]` are the same data as inline tables (TOML): where
/// the schema takes a table, it takes them too (it once refused `[pools.x.tls]` as "expected
/// a boolean or a table, found a table", and `[[pools.x.backends]]` likewise).
#[test]
fn table_sections_are_the_same_as_inline_tables() {
    let text = "[pools.blue]\n[[pools.blue.backends]]\naddr = \"127.0.0.1:9001\"\nweight = 2\n\
                [[pools.blue.backends]]\naddr = \"127.0.0.1:9002\"\n\
                [pools.blue.tls]\nsni = \"x.example\"\ninsecure_skip_verify = true\n\
                [[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n";
    let c =
        veer::config::Config::parse(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let p = &c.pools["blue"];
    let backends: Vec<(String, u32)> = p
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("127.0.0.1:9001".to_string(), 2),
            ("127.0.0.1:9002".to_string(), 1)
        ]
    );
    let tls = p.tls.as_ref().expect("tls from the section");
    assert_eq!(tls.sni.as_deref(), Some("x.example"));
    assert!(tls.insecure_skip_verify);
    // A wrong key in the section is named as in an inline table.
    let bad = text.replace("sni = ", "snii = ");
    let e = veer::config::Config::parse(Path::new("t.toml"), &bad).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(
        e.0[0]
            .message
            .contains("unknown key \"snii\" in [pools.blue.tls]"),
        "{e}"
    );
    assert_eq!((e.0[0].line, e.0[0].col), (8, 1), "{e}");
}
