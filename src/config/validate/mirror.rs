//! Validating `[routes.mirror]` (SPEC §11).
//!
//! Decisions: `to` must be a pool; it may be in the route's split (the usual dark launch:
//! green at weight 0 beside blue), but not the split's only pool (nothing would ever be
//! copied: a request whose pool is `to` itself is never copied, since it would compare a pool
//! with itself and double its load). Methods are upper-cased; CONNECT cannot be copied.

use super::*;
use crate::config::mirror::{parse_size, DEFAULT_MAX_BODY, DEFAULT_MAX_IN_FLIGHT};
use crate::config::MirrorConfig;

pub(super) fn build_mirror(
    cx: &mut Ctx<'_>,
    route: &str,
    raw: Spanned<RawMirror>,
    split: &[(String, u32)],
    pools: &BTreeMap<String, Arc<PoolConfig>>,
) -> MirrorConfig {
    let field = |f: &str| format!("routes.{route}.mirror.{f}");
    let raw = raw.into_inner();
    let to = raw.to.get_ref().clone();
    if !pools.contains_key(&to) {
        let known: Vec<&str> = pools.keys().map(|s| s.as_str()).collect();
        cx.err(
            raw.to.span(),
            format!(
                "{}: pool {to:?} does not exist (pools: {})",
                field("to"),
                known.join(", ")
            ),
        );
    } else if !split.is_empty() && split.iter().all(|(p, _)| *p == to) {
        cx.err(
            raw.to.span(),
            format!(
                "{}: {to:?} is the route's only pool; a copy never goes to the pool that answered, so nothing would be mirrored",
                field("to")
            ),
        );
    }
    let percent_bp = match &raw.percent {
        None => 10_000,
        Some(p) if (0.0..=100.0).contains(p.get_ref()) => (p.get_ref() * 100.0).round() as u32,
        Some(p) => {
            cx.err(
                p.span(),
                format!(
                    "{}: {} is not a percentage 0..=100",
                    field("percent"),
                    p.get_ref()
                ),
            );
            10_000
        }
    };
    let methods = match raw.methods {
        None => vec![http::Method::GET, http::Method::HEAD],
        Some(list) => {
            if list.get_ref().is_empty() {
                cx.err(
                    list.span(),
                    format!(
                        "{}: lists no method (leave it out for GET and HEAD)",
                        field("methods")
                    ),
                );
            }
            let mut out: Vec<http::Method> = Vec::new();
            for m in list.into_inner() {
                let upper = m.get_ref().trim().to_ascii_uppercase();
                match http::Method::from_bytes(upper.as_bytes()) {
                    Ok(x) if !upper.is_empty() && x != http::Method::CONNECT => {
                        if !out.contains(&x) {
                            out.push(x);
                        }
                    }
                    Ok(_) if !upper.is_empty() => cx.err(
                        m.span(),
                        format!("{}: CONNECT cannot be mirrored", field("methods")),
                    ),
                    _ => cx.err(
                        m.span(),
                        format!(
                            "{}: invalid method {:?}; expected a method like \"GET\" or \"POST\"",
                            field("methods"),
                            m.get_ref()
                        ),
                    ),
                }
            }
            out
        }
    };
    let ignore_headers = match raw.ignore_headers {
        None => Vec::new(),
        Some(list) => list
            .into_inner()
            .into_iter()
            .filter_map(
                |h| match http::HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        cx.err(
                            h.span(),
                            format!(
                                "{}: invalid header name {:?}",
                                field("ignore_headers"),
                                h.get_ref()
                            ),
                        );
                        None
                    }
                },
            )
            .collect(),
    };
    let max_body = match &raw.max_body {
        None => DEFAULT_MAX_BODY,
        Some(v) => {
            let parsed = match v.get_ref() {
                RawSize::Bytes(n) if *n >= 0 => Ok(*n as u64),
                RawSize::Bytes(n) => Err(format!("{n} is negative")),
                RawSize::Text(t) => parse_size(t),
            };
            match parsed {
                Ok(n) => n,
                Err(e) => {
                    cx.err(v.span(), format!("{}: {e}", field("max_body")));
                    DEFAULT_MAX_BODY
                }
            }
        }
    };
    let max_in_flight = cx.int(
        &raw.max_in_flight,
        &field("max_in_flight"),
        1,
        1_000_000,
        u64::from(DEFAULT_MAX_IN_FLIGHT),
    ) as u32;
    MirrorConfig {
        to,
        percent_bp,
        methods,
        compare: raw.compare.unwrap_or(false),
        ignore_headers,
        max_body,
        max_in_flight,
    }
}
