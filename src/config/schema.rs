//! A walk over the parsed TOML that finds *every* unknown key (serde stops at the first one).

use toml_edit::{Item, Value};

/// The shape of a part of the config.
pub enum Shape {
    /// A table with exactly these keys.
    Table(&'static [(&'static str, Shape)]),
    /// A table whose keys are names chosen by the user, each value of one shape.
    Map(&'static Shape),
    /// An array whose elements have this shape (non-table elements are left to serde).
    Array(&'static Shape),
    /// A scalar, or anything serde will check.
    Leaf,
    /// Either a scalar or a table with these keys.
    LeafOrTable(&'static [(&'static str, Shape)]),
}

use Shape::*;

const HEALTH: &[(&str, Shape)] = &[
    ("path", Leaf),
    ("interval", Leaf),
    ("timeout", Leaf),
    ("healthy_threshold", Leaf),
    ("unhealthy_threshold", Leaf),
    ("expect_status", Leaf),
];
const BREAKER: &[(&str, Shape)] = &[
    ("consecutive_failures", Leaf),
    ("open_for", Leaf),
    ("half_open_requests", Leaf),
    ("max_concurrent_requests", Leaf),
    ("grpc_status_failures", Leaf),
];
const BACKEND: &[(&str, Shape)] = &[("addr", Leaf), ("weight", Leaf)];
const UPSTREAM_TLS: &[(&str, Shape)] = &[("ca", Leaf), ("sni", Leaf), ("insecure_skip_verify", Leaf)];
const POOL: &[(&str, Shape)] = &[
    ("backends", Array(&LeafOrTable(BACKEND))),
    ("lb", Leaf),
    ("connect_timeout", Leaf),
    ("protocol", Leaf),
    ("tls", LeafOrTable(UPSTREAM_TLS)),
    ("ca", Leaf),
    ("sni", Leaf),
    ("insecure_skip_verify", Leaf),
    ("health_check", Table(HEALTH)),
    ("circuit_breaker", Table(BREAKER)),
];
const ROLLOUT: &[(&str, Shape)] = &[
    ("to", Leaf),
    ("steps", Leaf),
    ("step_interval", Leaf),
    ("min_requests", Leaf),
    ("max_error_rate", Leaf),
    ("max_p99", Leaf),
    ("approval", Leaf),
    ("approval_timeout", Leaf),
    ("notify_url", Leaf),
    ("state", Leaf),
    ("step", Leaf),
];
const ROUTE: &[(&str, Shape)] = &[
    ("name", Leaf),
    ("hosts", Leaf),
    ("path_prefix", Leaf),
    ("split", Map(&Leaf)),
    (
        "sticky",
        Table(&[("cookie", Leaf), ("header", Leaf), ("client_ip", Leaf)]),
    ),
    ("override", Table(&[("header", Leaf), ("cookie", Leaf)])),
    ("fallback", Leaf),
    (
        "retry",
        Table(&[
            ("attempts", Leaf),
            ("backoff", Leaf),
            ("idempotent_only", Leaf),
            ("budget_percent", Leaf),
        ]),
    ),
    ("rollout", Table(ROLLOUT)),
];
/// The whole file.
pub const ROOT: Shape = Table(&[
    (
        "server",
        Table(&[
            ("listen", Leaf),
            ("workers", Leaf),
            ("tls_listen", Leaf),
            ("header_read_timeout", Leaf),
            ("request_timeout", Leaf),
            ("idle_timeout", Leaf),
            ("max_header_bytes", Leaf),
            ("max_connections", Leaf),
            ("drain_timeout", Leaf),
        ]),
    ),
    ("admin", Table(&[("listen", Leaf), ("token_env", Leaf)])),
    (
        "tls",
        Table(&[("certificates", Array(&Table(&[("cert", Leaf), ("key", Leaf)])))]),
    ),
    ("pools", Map(&Table(POOL))),
    ("routes", Array(&Table(ROUTE))),
]);

/// An unknown key: its dotted path and byte offset.
pub struct UnknownKey {
    pub path: String,
    pub key: String,
    pub offset: usize,
    pub expected: Vec<&'static str>,
}

/// Collect every key the schema does not know.
pub fn unknown_keys(doc: &toml_edit::ImDocument<&str>) -> Vec<UnknownKey> {
    let mut out = Vec::new();
    walk_table_like(doc.as_table(), &ROOT, "", &mut out);
    out
}

fn walk_table_like(
    t: &dyn toml_edit::TableLike,
    shape: &Shape,
    path: &str,
    out: &mut Vec<UnknownKey>,
) {
    let (fields, map_of): (&[(&str, Shape)], Option<&Shape>) = match shape {
        Table(f) | LeafOrTable(f) => (f, None),
        Map(inner) => (&[], Some(inner)),
        _ => return,
    };
    for (k, item) in t.iter() {
        let child_path = if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        };
        let child_shape = match map_of {
            Some(inner) => Some(inner),
            None => fields.iter().find(|(n, _)| *n == k).map(|(_, s)| s),
        };
        match child_shape {
            Some(s) => walk_item(item, s, &child_path, out),
            None => {
                let offset = t
                    .get_key_value(k)
                    .and_then(|(key, _)| key.span())
                    .map(|r| r.start)
                    .unwrap_or(0);
                out.push(UnknownKey {
                    path: path.to_string(),
                    key: k.to_string(),
                    offset,
                    expected: fields.iter().map(|(n, _)| *n).collect(),
                });
            }
        }
    }
}

fn walk_item(item: &Item, shape: &Shape, path: &str, out: &mut Vec<UnknownKey>) {
    match (item, shape) {
        (Item::Table(t), Table(_) | Map(_) | LeafOrTable(_)) => walk_table_like(t, shape, path, out),
        (Item::ArrayOfTables(a), Array(inner)) => {
            for (i, t) in a.iter().enumerate() {
                walk_table_like(t, inner, &format!("{path}[{i}]"), out);
            }
        }
        (Item::Value(v), _) => walk_value(v, shape, path, out),
        _ => {}
    }
}

fn walk_value(v: &Value, shape: &Shape, path: &str, out: &mut Vec<UnknownKey>) {
    match (v, shape) {
        (Value::InlineTable(t), Table(_) | Map(_) | LeafOrTable(_)) => {
            walk_table_like(t, shape, path, out)
        }
        (Value::Array(a), Array(inner)) => {
            for (i, e) in a.iter().enumerate() {
                walk_value(e, inner, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}
