//! What `veer check` says beyond validation (issue 20 item 5): what `veer run` would refuse
//! with this file in this environment, and what is valid but likely a mistake.

use crate::config::Config;

/// Warnings for `veer check`: a non-loopback admin listener with no token set (`veer run`
/// refuses to start then), and pools no route sends traffic to.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let admin = &config.admin;
    if !admin.listen.ip().is_loopback() && !crate::app::has_admin_token(admin) {
        let named: Vec<&str> = admin.tokens.iter().map(|t| t.env.as_str()).collect();
        let also = if named.is_empty() {
            String::new()
        } else {
            format!(" or {}", named.join(", "))
        };
        out.push(format!(
            "admin.listen {} is not loopback and no admin token is set here: `veer run` refuses to start unless {}{also} holds a token in its environment",
            admin.listen, admin.token_env
        ));
    }
    out.extend(unused_pools(config));
    out
}

/// Pools that no route's split names: they get no traffic (a typo, or a leftover).
pub fn unused_pools(config: &Config) -> Vec<String> {
    // Fleet mode: pools and routes may come from the store instead.
    if config.routes.is_empty() {
        return Vec::new();
    }
    config
        .pools
        .keys()
        .filter(|p| {
            !config.routes.iter().any(|r| {
                r.split.iter().any(|(name, _)| name == *p)
                    || r.mirror.as_ref().is_some_and(|m| m.to == **p)
            })
        })
        .map(|p| {
            format!("pool {p:?} is not used by any route (no split or mirror names it); it gets no traffic")
        })
        .collect()
}
