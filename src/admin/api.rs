//! The admin API's control endpoints (SPEC §3): bearer-token auth for `/api/*`, route splits,
//! slot swaps, backend drain/undrain and reloads. Changes go through [`control::change()`](crate::control::change()):
//! written first (into the config file, or the state file), then applied, or nothing
//! changes; `?force=true` applies a change that cannot be written in memory only.

use super::{error, json, AdminResponse};
use crate::cluster::FleetError;
use crate::config::state::Change;
use crate::config::writeback::WritebackError;
use crate::config::ConfigErrors;
use crate::control::Control;
use crate::control::{
    self as reload, ChangeError, Origin, ReloadError, ReloadReport, Trigger, Unwritable,
};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest request body the API reads (a split is a few bytes).
const MAX_BODY: usize = 64 * 1024;
/// Largest weight a split accepts (as the config does).
const MAX_WEIGHT: u64 = 1_000_000;

/// Check the bearer token of an `/api/*` call: who made it (the token's name, `"admin"` for
/// the single `token_env` token), or why it is refused (for [`unauthorized`]). Tokens are read from the environment
/// variables the live config names, so a reload that changes them takes effect. The given
/// token is compared with every configured one in constant time (no early exit, so the time
/// taken tells neither which token nor how much of a guess was right). Without any token the
/// API is open only on a loopback admin listener (startup refuses the rest; this covers a
/// token variable changed by reload).
pub fn authorize(
    rt: &Control,
    headers: &HeaderMap,
    admin_loopback: bool,
) -> Result<String, String> {
    let config = rt.config();
    let admin = &config.admin;
    let tokens: Vec<(&str, String)> = std::iter::once((WHO, admin.token_env.as_str()))
        .chain(
            admin
                .tokens
                .iter()
                .map(|t| (t.name.as_str(), t.env.as_str())),
        )
        .filter_map(|(who, env)| {
            let t = std::env::var(env).ok().filter(|t| !t.is_empty())?;
            Some((who, t))
        })
        .collect();
    if tokens.is_empty() {
        if admin_loopback {
            return Ok(WHO.to_string());
        }
        return Err(format!(
            "the admin API is locked: no token in the {} environment variable (nor any [admin] tokens variable) and the admin listener is not loopback",
            admin.token_env
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(given) = given else {
        return Err("missing bearer token (Authorization: Bearer <token>)".into());
    };
    let mut who = None;
    for (name, token) in &tokens {
        if constant_time_eq(given.as_bytes(), token.as_bytes()) && who.is_none() {
            who = Some(name.to_string());
        }
    }
    who.ok_or_else(|| "wrong bearer token".into())
}

/// Who made a change with the single `token_env` token (or on an open loopback API), SPEC §3.
pub const WHO: &str = "admin";

/// 404 for a route name that is not in the config, listing the routes (as a wrong pool
/// name lists the pools).
pub fn no_route(config: &crate::config::Config, route: &str) -> AdminResponse {
    let known: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    error(
        StatusCode::NOT_FOUND,
        format!("no route named {route:?} (routes: {})", known.join(", ")),
    )
}

pub fn unauthorized(msg: impl std::fmt::Display) -> AdminResponse {
    let mut r = error(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"veer\""),
    );
    r
}

/// Compare without an early exit, so the time taken does not tell how much of a guess was
/// right. It depends only on the secret's length.
pub fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut acc = u8::from(given.len() != secret.len());
    for (i, s) in secret.iter().enumerate() {
        acc |= given.get(i).copied().unwrap_or(0) ^ s;
    }
    std::hint::black_box(acc) == 0
}

/// Decode `%XX` escapes in a path segment (route names and `[v6]:port` addresses).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Is `name` set in the query string (`name`, `name=true`, `name=1`)?
pub fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        k == name && matches!(v, "true" | "1" | "yes" | "")
    })
}

fn errors_json(
    status: StatusCode,
    msg: impl std::fmt::Display,
    errors: &ConfigErrors,
) -> AdminResponse {
    let list: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
    json(status, &json!({ "error": msg.to_string(), "errors": list }))
}

fn change_error(e: ChangeError) -> AdminResponse {
    match &e {
        ChangeError::Cluster(FleetError::Unreachable(why)) => {
            tracing::warn!("admin API change refused: cluster store unreachable ({why})");
            error(StatusCode::SERVICE_UNAVAILABLE, "cluster store unreachable")
        }
        ChangeError::Cluster(FleetError::Invalid(errors) | FleetError::DocumentInvalid(errors)) => {
            errors_json(StatusCode::CONFLICT, &e, errors)
        }
        ChangeError::Cluster(FleetError::Store(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; nothing was changed"),
        ),
        ChangeError::Cluster(_) => error(StatusCode::CONFLICT, format!("{e}; nothing was changed")),
        ChangeError::Invalid(errors) => errors_json(StatusCode::BAD_REQUEST, &e, errors),
        ChangeError::FileInvalid(errors) => errors_json(StatusCode::CONFLICT, &e, errors),
        ChangeError::File(WritebackError::Invalid(errors)) => {
            errors_json(StatusCode::BAD_REQUEST, &e, errors)
        }
        ChangeError::File(WritebackError::Edit(_)) | ChangeError::Apply(_) => {
            tracing::warn!("admin API change refused: {e}");
            error(StatusCode::CONFLICT, format!("{e}; nothing was changed"))
        }
        ChangeError::File(_) | ChangeError::State(_) => {
            tracing::warn!("admin API change refused: {e}");
            error(
                StatusCode::CONFLICT,
                format!("{e}; nothing was changed (?force=true applies it in memory only, until the next reload)"),
            )
        }
    }
}

/// `?force=true`: a change that cannot be written is applied in memory only.
fn unwritable(query: &str) -> Unwritable {
    if query_flag(query, "force") {
        Unwritable::Force
    } else {
        Unwritable::Refuse
    }
}

fn split_json(split: &[(String, u32)]) -> Value {
    Value::Object(
        split
            .iter()
            .map(|(p, w)| (p.clone(), json!(w)))
            .collect::<Map<_, _>>(),
    )
}

/// The route's split as it is live now.
fn split_answer(rt: &Control, route: &str, r: &ReloadReport) -> AdminResponse {
    let snap = rt.snapshot();
    let split = snap
        .config
        .route(route)
        .map(|r| split_json(&r.split))
        .unwrap_or(Value::Null);
    json(
        StatusCode::OK,
        &json!({
            "route": route,
            "split": split,
            "changed": r.changed,
            "persisted": r.persisted,
            "version": snap.version,
        }),
    )
}

/// The body as JSON, or why not (for a 400). A key repeated in an object is refused: which
/// of `{"blue": 10, "blue": 90}` was meant cannot be known.
async fn read_json(body: Incoming) -> Result<Value, String> {
    let bytes: Bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(format!("cannot read the request body: {e}")),
    };
    parse_json(&bytes)
}

/// Parse JSON, refusing duplicate object keys at any depth.
pub fn parse_json(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| format!("invalid JSON body: {e}"))
}

/// A JSON value read through a map visitor that refuses a repeated key (serde_json's
/// `Value` silently keeps the last one).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Strict(Value::Object(out)))
    }
}

/// A manual split or swap on a route whose rollout is moving traffic (progressing or
/// awaiting approval) would fight the rollout: 409, unless `?force=true`, which pauses the
/// rollout first, saying who and why (SPEC §10). `Err` is the answer to give.
async fn hold_rollout(
    rt: &Arc<Control>,
    route: &str,
    query: &str,
    what: &str,
    who: &str,
) -> Result<(), AdminResponse> {
    use crate::config::RolloutState;
    let Some(s) = rt.rollouts.status(route) else {
        return Ok(());
    };
    if !matches!(
        s.state,
        RolloutState::Progressing | RolloutState::AwaitingApproval
    ) {
        return Ok(());
    }
    if !query_flag(query, "force") {
        return Err(error(
            StatusCode::CONFLICT,
            format!(
                "route {route:?} has a rollout {} ({}, {} at {}%); a manual {what} would fight it: pause or abort the rollout first, or use ?force=true to pause it and {what} anyway",
                s.state.as_str(),
                crate::rollout::step_text(s.step, s.def.steps.len()),
                s.def.to,
                s.target_weight().unwrap_or(0)
            ),
        ));
    }
    let opts = crate::rollout::ActOptions {
        force: true,
        hotfix: false,
        who: Some(who.to_string()),
        why: Some(format!("for a manual {what} (?force=true)")),
        cascaded: false,
    };
    match rt.rollouts.act_opts(rt, route, "pause", opts).await {
        Ok(_) => {
            tracing::warn!(route, who, "rollout paused for a forced manual {what}");
            Ok(())
        }
        // Finished or paused meanwhile: nothing to hold.
        Err(crate::rollout::ActionError::Conflict(_)) => Ok(()),
        Err(e) => Err(error(e.status(), e)),
    }
}

/// `PUT /api/routes/{route}/split[?force=true]`: body `{pool: weight, …}` replaces the
/// route's split.
pub async fn put_split(
    rt: &Arc<Control>,
    route: &str,
    query: &str,
    body: Incoming,
    who: &str,
) -> AdminResponse {
    let config = rt.config();
    if config.route(route).is_none() {
        return no_route(&config, route);
    }
    let v = match read_json(body).await {
        Ok(v) => v,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let Some(obj) = v.as_object() else {
        return error(StatusCode::BAD_REQUEST, "the body must be a JSON object of pool name to weight, like {\"blue\": 90, \"green\": 10}");
    };
    let mut split = Vec::with_capacity(obj.len());
    for (pool, w) in obj {
        if !config.pools.contains_key(pool) {
            let known: Vec<&str> = config.pools.keys().map(String::as_str).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("pool {pool:?} does not exist (pools: {})", known.join(", ")),
            );
        }
        match w.as_u64() {
            Some(w) if w <= MAX_WEIGHT => split.push((pool.clone(), w as u32)),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "weight of {pool:?} must be a non-negative integer up to {MAX_WEIGHT}, not {w}"
                ),
                )
            }
        }
    }
    if split.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the split names no pool");
    }
    if split.iter().all(|(_, w)| *w == 0) {
        return error(
            StatusCode::BAD_REQUEST,
            "all weights are zero; at least one pool needs a positive weight",
        );
    }
    // The typed config keeps splits sorted by pool name.
    split.sort();
    if let Err(answer) = hold_rollout(rt, route, query, "split", who).await {
        return answer;
    }
    let change = Change::Split {
        route: route.to_string(),
        split,
    };
    match reload::change(rt, &change, unwritable(query), &Origin::api(who)).await {
        Ok(r) => split_answer(rt, route, &r),
        Err(e) => change_error(e),
    }
}

/// `POST /api/routes/{route}/swap[?force=true]`: exchange the weights of the route's two
/// pools. Refused when the pool that gains traffic has no healthy backend, unless forced.
pub async fn swap(rt: &Arc<Control>, route: &str, query: &str, who: &str) -> AdminResponse {
    let force = query_flag(query, "force");
    if rt.config().route(route).is_some() {
        if let Err(answer) = hold_rollout(rt, route, query, "swap", who).await {
            return answer;
        }
    }
    // Decide under the change lock, so two swaps in a row never read the same weights.
    let lock = rt.change_lock.lock().await;
    let snap = rt.snapshot();
    let Some(rc) = snap.config.route(route) else {
        return no_route(&snap.config, route);
    };
    let [(a, wa), (b, wb)] = rc.split.as_slice() else {
        return error(
            StatusCode::CONFLICT,
            format!(
                "route {route:?} splits over {} pool(s); a swap needs exactly two",
                rc.split.len()
            ),
        );
    };
    if wa == wb {
        let r = ReloadReport {
            changed: false,
            persisted: rt.state.persisted(),
            applied: Default::default(),
            listeners: Default::default(),
        };
        return split_answer(rt, route, &r);
    }
    let gaining = if wb > wa { a } else { b };
    let healthy = snap
        .pools
        .get(gaining.as_str())
        .is_some_and(|p| p.has_healthy());
    if !healthy && !force {
        return error(
            StatusCode::CONFLICT,
            format!("pool {gaining:?} has no healthy backend to take the traffic; use ?force=true to swap anyway"),
        );
    }
    let change = Change::Split {
        route: route.to_string(),
        split: vec![(a.clone(), *wb), (b.clone(), *wa)],
    };
    let gaining = gaining.clone();
    let result = if rt.cluster.get().is_some() {
        // Fleet mode: a compare-and-swap of the store's document, which takes the lock
        // itself to apply it.
        drop(lock);
        reload::change(rt, &change, unwritable(query), &Origin::api(who)).await
    } else {
        let r = reload::change_locked(rt, &lock, &change, unwritable(query), &Origin::api(who));
        drop(lock);
        r
    };
    match result {
        Ok(r) => {
            tracing::debug!(route, gaining = %gaining, force, "slots swapped through the admin API");
            split_answer(rt, route, &r)
        }
        Err(e) => change_error(e),
    }
}

/// `POST /api/pools/{pool}/backends/{addr}/drain` (or `undrain`)`[?force=true]`. Drain
/// state survives reloads for backends that stay; a restart only with a state file, which
/// keeps it (the config file has no place for it).
pub async fn drain(
    rt: &Arc<Control>,
    pool: &str,
    addr: &str,
    on: bool,
    query: &str,
    who: &str,
) -> AdminResponse {
    let config = rt.config();
    if !config.pools.contains_key(pool) {
        let known: Vec<&str> = config.pools.keys().map(String::as_str).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!("no pool named {pool:?} (pools: {})", known.join(", ")),
        );
    }
    let Ok(sa) = addr.parse::<SocketAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{addr:?} is not a backend address (IP:PORT)"),
        );
    };
    if rt.registry.get(pool, sa).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("pool {pool:?} has no backend {sa}"),
        );
    }
    let change = Change::Drain {
        pool: pool.to_string(),
        addr: sa,
        on,
    };
    match reload::change(rt, &change, unwritable(query), &Origin::api(who)).await {
        Ok(r) => {
            tracing::debug!(pool, backend = %sa, draining = on, "backend {} through the admin API", if on { "draining" } else { "restored" });
            json(
                StatusCode::ACCEPTED,
                &json!({ "pool": pool, "backend": sa.to_string(), "draining": on, "persisted": r.persisted }),
            )
        }
        Err(e) => change_error(e),
    }
}

/// `POST /api/reload`: reload the config file now.
pub async fn reload(rt: &Arc<Control>, who: &str) -> AdminResponse {
    match reload::reload_as(rt, Trigger::Api, &Origin::api(who)).await {
        Ok(r) => json(
            StatusCode::OK,
            &serde_json::to_value(&r).unwrap_or(Value::Null),
        ),
        Err(e) => {
            let errors: Vec<String> = match &e {
                ReloadError::Invalid(errors) | ReloadError::State(errors) => {
                    errors.0.iter().map(|x| x.to_string()).collect()
                }
                other => vec![other.to_string()],
            };
            let status = match e {
                ReloadError::NoFile => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            json(status, &json!({ "error": e.to_string(), "errors": errors }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-and-more", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%5B%3A%3A1%5D:80"), "[::1]:80");
        assert_eq!(percent_decode("web"), "web");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let e = parse_json(br#"{"blue": 10, "blue": 90}"#).unwrap_err();
        assert!(e.contains("duplicate key \"blue\""), "{e}");
        let e = parse_json(br#"[{"a": {"x": 1, "x": 2}}]"#).unwrap_err();
        assert!(e.contains("duplicate key \"x\""), "{e}");
        assert_eq!(
            parse_json(br#"{"blue": 10, "green": [1, 2.5, null, true, "s"]}"#).unwrap(),
            json!({"blue": 10, "green": [1, 2.5, null, true, "s"]})
        );
        assert!(parse_json(b"{not json").is_err());
    }

    #[test]
    fn force_flag() {
        assert!(query_flag("force=true", "force"));
        assert!(query_flag("a=b&force", "force"));
        assert!(query_flag("force=1", "force"));
        assert!(!query_flag("force=false", "force"));
        assert!(!query_flag("", "force"));
    }
}
