//! Validating `[cluster]` (fleet mode, SPEC §7).

use super::*;

pub(super) fn build_cluster(cx: &mut Ctx<'_>, raw: Spanned<RawCluster>) -> ClusterConfig {
    let whole = raw.span();
    let raw = raw.into_inner();
    let mut etcd = Vec::new();
    match raw.etcd {
        None => cx.err(
            whole.start..whole.start,
            "cluster.etcd: required; list the etcd members, like [\"http://10.0.0.1:2379\"]",
        ),
        Some(list) if list.get_ref().is_empty() => cx.err(
            list.span(),
            "cluster.etcd: must name at least one etcd member",
        ),
        Some(list) => {
            for e in list.into_inner() {
                let s = e.get_ref().trim().trim_end_matches('/');
                let ok = s.parse::<http::Uri>().ok().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some()
                        && matches!(u.path(), "" | "/")
                });
                if ok {
                    etcd.push(s.to_string());
                } else {
                    cx.err(
                        e.span(),
                        format!("cluster.etcd: {:?} is not an etcd member URL like \"http://10.0.0.1:2379\"", e.get_ref()),
                    );
                }
            }
        }
    }
    let prefix = match raw.prefix {
        None => "/veer".to_string(),
        Some(p) => {
            let v = p.get_ref().trim_end_matches('/').to_string();
            if !p.get_ref().starts_with('/') || v.is_empty() || v.contains(char::is_whitespace) {
                cx.err(
                    p.span(),
                    format!("cluster.prefix: {:?} must start with / and name a key prefix, like \"/veer/prod\"", p.get_ref()),
                );
            }
            v
        }
    };
    let node = match raw.node {
        None => String::new(),
        Some(n) => {
            let v = n.get_ref().clone();
            if v.contains('/') || v.contains(char::is_whitespace) {
                cx.err(
                    n.span(),
                    format!("cluster.node: {v:?} must not contain '/' or spaces"),
                );
            }
            v
        }
    };
    let lease_ttl = cx.duration(&raw.lease_ttl, "cluster.lease_ttl", Duration::from_secs(5));
    if let Some(s) = &raw.lease_ttl {
        if lease_ttl < Duration::from_secs(2) || lease_ttl.subsec_nanos() != 0 {
            cx.err(
                s.span(),
                "cluster.lease_ttl: must be whole seconds, at least 2s (etcd leases count in seconds)",
            );
        }
    }
    let env = |cx: &mut Ctx<'_>, v: Option<Spanned<String>>, field: &str| -> Option<String> {
        let v = v?;
        if v.get_ref().is_empty() {
            return None;
        }
        if !valid_env(v.get_ref()) {
            cx.err(
                v.span(),
                format!(
                    "cluster.{field}: {:?} is not an environment variable name",
                    v.get_ref()
                ),
            );
        }
        Some(v.into_inner())
    };
    let username_env = env(cx, raw.username_env, "username_env");
    let password_env = env(cx, raw.password_env, "password_env");
    if username_env.is_some() != password_env.is_some() {
        cx.err(
            whole.start..whole.start,
            "cluster: username_env and password_env go together; set both or neither",
        );
    }
    let path = |cx: &mut Ctx<'_>, v: Option<Spanned<String>>| -> Option<PathBuf> {
        let v = v?;
        if v.get_ref().is_empty() {
            return None;
        }
        Some(resolve(cx.file, Path::new(v.get_ref())))
    };
    let ca = path(cx, raw.ca);
    let cert = path(cx, raw.cert);
    let key = path(cx, raw.key);
    if cert.is_some() != key.is_some() {
        cx.err(
            whole.start..whole.start,
            "cluster: cert and key go together (client-certificate auth to etcd); set both or neither",
        );
    }
    ClusterConfig {
        etcd,
        prefix,
        node,
        lease_ttl,
        username_env,
        password_env,
        ca,
        cert,
        key,
    }
}

fn valid_env(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
