//! A walk over the parsed TOML that finds *every* unknown key, wrongly typed value and missing
//! required key, each with its byte offset. serde stops at the first problem; this walk does
//! not, so `veer check` can list them all at once.

use toml_edit::{Item, Value};

/// The shape of a part of the config.
pub enum Shape {
    /// A table with exactly these keys.
    Table(&'static [(&'static str, Shape)]),
    /// A table whose keys are names chosen by the user, each value of one shape.
    Map(&'static Shape),
    /// An array whose elements have this shape (an array of tables included).
    Array(&'static Shape),
    Str,
    /// A duration string like "2s" (parsed later; here only its type is checked).
    Dur,
    Int,
    Bool,
    /// A number; an integer is accepted too.
    Float,
    /// Either a string or a table with these keys.
    StrOrTable(&'static [(&'static str, Shape)]),
    /// Either a boolean or a table with these keys.
    BoolOrTable(&'static [(&'static str, Shape)]),
    /// Either a boolean or one of these strings.
    BoolOrWord(&'static [&'static str]),
    /// A key that must be present, of this shape.
    Required(&'static Shape),
    /// A size: an integer (bytes) or a string like "64KiB" (parsed later).
    Size,
    /// An integer or one of these strings (a rollout step: a percentage or "mirror").
    IntOrWord(&'static [&'static str]),
}

use Shape::*;

const HEALTH: &[(&str, Shape)] = &[
    ("path", Str),
    ("interval", Dur),
    ("timeout", Dur),
    ("healthy_threshold", Int),
    ("unhealthy_threshold", Int),
    ("expect_status", Str),
];
const BREAKER: &[(&str, Shape)] = &[
    ("consecutive_failures", Int),
    ("open_for", Dur),
    ("half_open_requests", Int),
    ("max_concurrent_requests", Int),
    ("grpc_status_failures", Bool),
];
const BACKEND: &[(&str, Shape)] = &[("addr", Required(&Str)), ("weight", Int)];
const UPSTREAM_TLS: &[(&str, Shape)] = &[("ca", Str), ("sni", Str), ("insecure_skip_verify", Bool)];
const POOL: &[(&str, Shape)] = &[
    ("backends", Required(&Array(&StrOrTable(BACKEND)))),
    ("lb", Str),
    ("connect_timeout", Dur),
    ("protocol", Str),
    ("tls", BoolOrTable(UPSTREAM_TLS)),
    ("ca", Str),
    ("sni", Str),
    ("insecure_skip_verify", Bool),
    ("health_check", Table(HEALTH)),
    ("circuit_breaker", Table(BREAKER)),
    // Backends by name (SPEC §9).
    ("dns_refresh", Dur),
    ("slow_start", Dur),
];
const ROLLOUT: &[(&str, Shape)] = &[
    ("to", Required(&Str)),
    ("steps", Required(&Array(&IntOrWord(&["mirror"])))),
    ("step_interval", Dur),
    ("min_requests", Int),
    ("max_error_rate", Float),
    ("max_p99", Dur),
    ("approval", Bool),
    ("approval_timeout", Dur),
    ("notify_url", Str),
    ("state", Str),
    ("step", Int),
    // SPEC §10.
    ("after", Array(&Str)),
    ("gates", Array(&Table(GATE))),
    ("max_error_rate_vs_baseline", Float),
    ("hotfix", Table(HOTFIX)),
    ("step_started_ms", Int),
    ("approval_deadline_ms", Int),
    ("fingerprint", Str),
    ("mode", Str),
    // SPEC §11.
    ("max_diff_rate", Float),
];
/// `[[routes.rollout.gates]]` (SPEC §10).
const GATE: &[(&str, Shape)] = &[
    ("name", Required(&Str)),
    ("when", Str),
    ("prometheus", Str),
    ("query", Str),
    ("min", Float),
    ("max", Float),
    ("webhook", Str),
    ("interval", Dur),
    ("timeout", Dur),
    ("steady_for", Dur),
    ("headers", Map(&Str)),
    ("hotfix", Bool),
];
const HOTFIX: &[(&str, Shape)] = &[
    ("steps", Required(&Array(&Int))),
    ("step_interval", Dur),
    ("min_requests", Int),
];
const ROUTE: &[(&str, Shape)] = &[
    ("name", Required(&Str)),
    ("hosts", Array(&Str)),
    ("path_prefix", Str),
    ("split", Required(&Map(&Int))),
    (
        "sticky",
        Table(&[
            ("cookie", Str),
            ("header", Str),
            ("client_ip", Bool),
            // Cookie attributes (issue 20).
            ("max_age", Dur),
            ("secure", Bool),
        ]),
    ),
    (
        "override",
        Table(&[
            ("header", Str),
            ("cookie", Str),
            ("allow_from", Array(&Str)),
            ("secret_env", Str),
        ]),
    ),
    ("fallback", BoolOrWord(&["weighted"])),
    (
        "retry",
        Table(&[
            ("attempts", Int),
            ("backoff", Dur),
            ("idempotent_only", Bool),
            ("budget_percent", Int),
        ]),
    ),
    ("rollout", Table(ROLLOUT)),
    ("mirror", Table(MIRROR)),
];
/// `[routes.mirror]` (SPEC §11).
const MIRROR: &[(&str, Shape)] = &[
    ("to", Required(&Str)),
    ("percent", Float),
    ("methods", Array(&Str)),
    ("compare", Bool),
    ("ignore_headers", Array(&Str)),
    ("max_body", Size),
    ("max_in_flight", Int),
];
/// The whole file.
pub const ROOT: Shape = Table(&[
    (
        "server",
        Table(&[
            ("listen", Array(&Str)),
            ("workers", Int),
            ("tls_listen", Array(&Str)),
            ("header_read_timeout", Dur),
            ("request_timeout", Dur),
            ("body_timeout", Dur),
            ("request_body_timeout", Dur),
            ("request_body_min_rate", Int),
            ("idle_timeout", Dur),
            ("max_header_bytes", Int),
            ("max_connections", Int),
            ("drain_timeout", Dur),
            ("upgrades", Array(&Str)),
            ("state_file", Str),
            // Backends by name (SPEC §9).
            ("dns_servers", Array(&Str)),
        ]),
    ),
    (
        "admin",
        Table(&[
            ("listen", Str),
            ("token_env", Str),
            ("hosts", Array(&Str)),
            // Named tokens (issue 20).
            ("tokens", Map(&Str)),
        ]),
    ),
    // [log] (issue 16).
    (
        "log",
        Table(&[
            ("format", Str),
            ("access", Str),
            ("access_format", Str),
            ("access_sample", Float),
        ]),
    ),
    (
        "tls",
        Table(&[(
            "certificates",
            Array(&Table(&[("cert", Required(&Str)), ("key", Required(&Str))])),
        )]),
    ),
    ("pools", Map(&Table(POOL))),
    ("routes", Array(&Table(ROUTE))),
    // Fleet mode (SPEC §7).
    (
        "cluster",
        Table(&[
            ("etcd", Array(&Str)),
            ("prefix", Str),
            ("node", Str),
            ("lease_ttl", Dur),
            ("username_env", Str),
            ("password_env", Str),
            ("ca", Str),
            ("cert", Str),
            ("key", Str),
        ]),
    ),
]);

/// One problem found by the walk: where it starts and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub offset: usize,
    pub message: String,
    /// For an unknown `key = value`: the bytes from the key to the end of the value, which
    /// validation may blank out to go on and check the rest of the file.
    pub unknown_pair: Option<std::ops::Range<usize>>,
}

/// Collect every unknown key, wrongly typed value and missing required key.
pub fn check(doc: &toml_edit::ImDocument<&str>) -> Vec<SchemaError> {
    let mut w = Walker { out: Vec::new() };
    w.table_like(doc.as_table(), table_fields(&ROOT), "", 0);
    w.out
}

struct Walker {
    out: Vec<SchemaError>,
}

fn table_fields(shape: &Shape) -> &'static [(&'static str, Shape)] {
    match shape {
        Table(f) | StrOrTable(f) | BoolOrTable(f) => f,
        _ => &[],
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// What a value is, for "expected X, found Y".
fn kind_of_value(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

fn kind_of_item(i: &Item) -> &'static str {
    match i {
        Item::None => "nothing",
        Item::Value(v) => kind_of_value(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn expected(shape: &Shape) -> &'static str {
    match shape {
        Table(_) => "a table",
        Map(_) => "a table",
        Array(inner) => match inner {
            Table(_) => "an array of tables",
            Str | Dur => "an array of strings",
            Int => "an array of integers",
            _ => "an array",
        },
        Str => "a string",
        Dur => "a duration string like \"250ms\", \"2s\" or \"1m\"",
        Int => "an integer",
        Bool => "a boolean (true or false)",
        Float => "a number",
        StrOrTable(_) => "a string or a table",
        BoolOrTable(_) => "a boolean or a table",
        // Only `fallback` has this shape.
        BoolOrWord(_) => "true, false or \"weighted\"",
        Required(inner) => expected(inner),
        Size => "a number of bytes or a size string like \"64KiB\"",
        // Only rollout steps have this shape.
        IntOrWord(_) => "a percentage or \"mirror\"",
    }
}

/// The closest known key, when the unknown one looks like a typo of it.
fn suggestion<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Walker {
    fn push(&mut self, offset: usize, message: String) {
        self.out.push(SchemaError {
            offset,
            message,
            unknown_pair: None,
        });
    }

    /// Check the keys of a table against `fields`. `at` locates the table itself (for a
    /// missing required key).
    fn table_like(
        &mut self,
        t: &dyn toml_edit::TableLike,
        fields: &'static [(&'static str, Shape)],
        path: &str,
        at: usize,
    ) {
        for (k, item) in t.iter() {
            let key_offset = t
                .get_key_value(k)
                .and_then(|(key, _)| key.span())
                .map_or(at, |r| r.start);
            match fields.iter().find(|(n, _)| *n == k) {
                Some((_, shape)) => self.item(item, shape, &join(path, k), key_offset),
                None => {
                    let place = if path.is_empty() {
                        "at the top level".to_string()
                    } else {
                        format!("in [{path}]")
                    };
                    let known: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                    let hint = match suggestion(k, &known) {
                        Some(s) => format!("; did you mean {s:?}?"),
                        None => format!("; expected one of: {}", known.join(", ")),
                    };
                    self.push(key_offset, format!("unknown key {k:?} {place}{hint}"));
                    if let (Item::Value(v), Some(last)) = (item, self.out.last_mut()) {
                        last.unknown_pair = v.span().map(|r| key_offset..r.end);
                    }
                }
            }
        }
        for (name, shape) in fields {
            if matches!(shape, Required(_)) && !t.contains_key(name) {
                let place = if path.is_empty() {
                    String::new()
                } else {
                    format!(" in [{path}]")
                };
                self.push(at, format!("missing required key {name:?}{place}"));
            }
        }
    }

    /// Check a map of user-chosen names, each of shape `inner`.
    fn map(&mut self, t: &dyn toml_edit::TableLike, inner: &'static Shape, path: &str) {
        for (k, item) in t.iter() {
            let key_offset = t
                .get_key_value(k)
                .and_then(|(key, _)| key.span())
                .map_or(0, |r| r.start);
            self.item(item, inner, &join(path, k), key_offset);
        }
    }

    /// Check one value found under a key; `key_offset` is where that key stands.
    fn item(&mut self, item: &Item, shape: &'static Shape, path: &str, key_offset: usize) {
        let shape = match shape {
            Required(inner) => inner,
            s => s,
        };
        let here = item.span().map_or(key_offset, |r| r.start);
        match (item, shape) {
            // A `[section]` is the same data as an inline table (TOML), also where a string
            // or a boolean would do.
            (Item::Table(t), Table(f) | StrOrTable(f) | BoolOrTable(f)) => {
                self.table_like(t, f, path, here_or(t.span(), key_offset))
            }
            (Item::Table(t), Map(inner)) => self.map(t, inner, path),
            (Item::ArrayOfTables(a), Array(Table(f) | StrOrTable(f))) => {
                for (i, t) in a.iter().enumerate() {
                    let label = element_label(path, i, t.get("name").and_then(|n| n.as_str()));
                    self.table_like(t, f, &label, here_or(t.span(), key_offset));
                }
            }
            (Item::Value(v), _) => self.value(v, shape, path, here),
            (other, _) => self.push(
                here,
                format!(
                    "{path}: expected {}, found {}",
                    expected(shape),
                    kind_of_item(other)
                ),
            ),
        }
    }

    fn value(&mut self, v: &Value, shape: &'static Shape, path: &str, at: usize) {
        let shape = match shape {
            Required(inner) => inner,
            s => s,
        };
        let ok = match (v, shape) {
            (Value::InlineTable(t), Table(f) | StrOrTable(f) | BoolOrTable(f)) => {
                self.table_like(t, f, path, at);
                true
            }
            (Value::InlineTable(t), Map(inner)) => {
                self.map(t, inner, path);
                true
            }
            (Value::Array(a), Array(inner)) => {
                for (i, e) in a.iter().enumerate() {
                    let name = match e {
                        Value::InlineTable(t) => t.get("name").and_then(|n| n.as_str()),
                        _ => None,
                    };
                    let label = element_label(path, i, name);
                    let at = e.span().map_or(at, |r| r.start);
                    self.value(e, inner, &label, at);
                }
                true
            }
            (Value::String(_), Str | Dur | StrOrTable(_) | Size) => true,
            (Value::Integer(_), Int | Float | Size | IntOrWord(_)) => true,
            (Value::String(s), IntOrWord(words)) => words.contains(&s.value().as_str()),
            (Value::Float(_), Float) => true,
            (Value::Boolean(_), Bool | BoolOrTable(_) | BoolOrWord(_)) => true,
            (Value::String(s), BoolOrWord(words)) => words.contains(&s.value().as_str()),
            _ => false,
        };
        if !ok {
            let found = match (v, shape) {
                // A word that is not one of the allowed ones: name it.
                (Value::String(s), BoolOrWord(_) | IntOrWord(_)) => format!("{:?}", s.value()),
                _ => kind_of_value(v).to_string(),
            };
            self.push(
                at,
                format!("{path}: expected {}, found {found}", expected(shape)),
            );
        }
    }
}

fn here_or(span: Option<std::ops::Range<usize>>, fallback: usize) -> usize {
    span.map_or(fallback, |r| r.start)
}

/// `routes.web` for a named route (as validation names it), else `routes[2]`.
fn element_label(path: &str, i: usize, name: Option<&str>) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("{path}.{n}"),
        _ => format!("{path}[{i}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<(usize, String)> {
        let doc = toml_edit::ImDocument::parse(text).unwrap();
        check(&doc)
            .into_iter()
            .map(|e| (e.offset, e.message))
            .collect()
    }

    #[test]
    fn types_and_required_keys() {
        let e = errs("[server]\nworkers = \"two\"\n[[routes]]\nsplit = { a = \"x\" }\n");
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(
            e[0],
            (
                19,
                "server.workers: expected an integer, found a string".into()
            )
        );
        assert!(
            e[1].1.starts_with("routes[0].split.a: expected an integer"),
            "{e:?}"
        );
        assert_eq!(
            e[2],
            (25, "missing required key \"name\" in [routes[0]]".into())
        );
    }

    #[test]
    fn typo_gets_a_suggestion() {
        let e = errs("[server]\nworkerz = 1\n");
        assert_eq!(
            e[0].1,
            "unknown key \"workerz\" in [server]; did you mean \"workers\"?"
        );
    }

    #[test]
    fn backends_accept_strings_and_tables() {
        let e = errs(
            "[pools.a]\nbackends = [\"x\", { addr = \"y\", weight = 2 }, { weight = \"z\" }, 5]\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].1
                .starts_with("pools.a.backends[2].weight: expected an integer"),
            "{e:?}"
        );
        assert!(e[1].1.starts_with("missing required key \"addr\""), "{e:?}");
        assert!(
            e[2].1
                .starts_with("pools.a.backends[3]: expected a string or a table"),
            "{e:?}"
        );
    }
}
