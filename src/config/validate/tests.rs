use super::*;

fn errs(text: &str) -> Vec<String> {
    match validate(Path::new("t.toml"), text) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const OK: &str = r#"
[pools.blue]
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 }]
[pools.green]
backends = ["127.0.0.1:9101"]
[[routes]]
name = "web"
split = { blue = 90, green = 10 }
"#;

#[test]
fn admin_hosts_and_state_file_are_checked() {
    let text = format!(
        "[server]\nstate_file = \"state/veer-state.toml\"\n[admin]\nhosts = [\"Veer.Internal\", \"ops.example:8443\", \"10.0.0.5\"]\n{OK}"
    );
    let c = validate(Path::new("/etc/veer/veer.toml"), &text).unwrap();
    assert_eq!(
        c.server.state_file.as_deref(),
        Some(Path::new("/etc/veer/state/veer-state.toml"))
    );
    let hosts: Vec<(&str, Option<u16>)> = c
        .admin
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.port))
        .collect();
    assert_eq!(
        hosts,
        [
            ("veer.internal", None),
            ("ops.example", Some(8443)),
            ("10.0.0.5", None)
        ]
    );
    let bad = format!(
        "[server]\nstate_file = \"t.toml\"\n[admin]\nhosts = [\"*\", \"http://x\", \"a b\", \"x:99999\"]\n{OK}"
    );
    let e = errs(&bad);
    assert_eq!(e.len(), 5, "{e:#?}");
    assert!(
        e[0].starts_with("t.toml:2:14: server.state_file: must not be the config file"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("t.toml:4:10: admin.hosts: \"*\": wildcards"),
        "{e:#?}"
    );
    assert!(e[2].contains("\"http://x\" is not a host name"), "{e:#?}");
}

#[test]
fn minimal_config_is_valid() {
    let c = validate(Path::new("t.toml"), OK).unwrap();
    assert_eq!(c.pools["blue"].backends[1].weight, 2);
    assert_eq!(
        c.routes[0].split,
        vec![("blue".into(), 90), ("green".into(), 10)]
    );
    assert_eq!(c.routes[0].hosts, vec![HostPattern::Any]);
}

#[test]
fn every_unknown_key_is_reported_with_position() {
    let e = errs(&format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\nbogus = 1\n{OK}\n[admin]\nnope = 2\n"
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:3:1: unknown key \"bogus\""),
        "{e:?}"
    );
    assert!(e[1].contains("unknown key \"nope\""), "{e:?}");
}

#[test]
fn semantic_errors_are_all_reported() {
    let text = r#"
[server]
request_timeout = "3 parsecs"
listen = ["localhost-ish"]
[pools.blue]
backends = ["127.0.0.1:9001"]
[[routes]]
name = "web"
split = { blue = 0, red = 0 }
[[routes]]
name = "web"
split = { blue = 1 }
"#;
    let e = errs(text);
    assert!(
        e.iter()
            .any(|e| e.starts_with("t.toml:3:19:") && e.contains("request_timeout")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("t.toml:4:11:") && e.contains("invalid address")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains("pool \"red\" does not exist")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains("all weights are zero")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains("duplicate route name")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains("is already routed by")),
        "{e:?}"
    );
}

#[test]
fn request_body_limits_default_parse_and_are_checked() {
    let d = validate(Path::new("t.toml"), OK).unwrap().server;
    assert_eq!(d.request_body_timeout, Duration::from_secs(10));
    assert_eq!(d.request_body_min_rate, 500);
    let c = validate(
        Path::new("t.toml"),
        &format!("[server]\nrequest_body_timeout = \"0s\"\nrequest_body_min_rate = 0\n{OK}"),
    )
    .unwrap()
    .server;
    assert_eq!(c.request_body_timeout, Duration::ZERO);
    assert_eq!(c.request_body_min_rate, 0);
    let e = errs(&format!(
        "[server]\nrequest_body_timeout = \"soon\"\nrequest_body_min_rate = -1\n{OK}"
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:2:24: server.request_body_timeout: invalid duration"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("t.toml:3:25: server.request_body_min_rate: -1 is out of range"),
        "{e:?}"
    );
    let e = errs(&format!("[server]\nrequest_body_min_rate = \"fast\"\n{OK}"));
    assert!(
        e.iter()
            .any(|e| e.starts_with("t.toml:2:25:") && e.contains("request_body_min_rate")),
        "{e:?}"
    );
}

#[test]
fn host_patterns_match() {
    assert!(HostPattern::Suffix(".example.com".into()).matches("a.example.com"));
    assert!(!HostPattern::Suffix(".example.com".into()).matches("example.com"));
    assert!(HostPattern::Exact("a.com".into()).matches("A.com"));
}

#[test]
fn fallback_is_a_boolean_or_weighted() {
    let route = |f: &str| format!("{OK}{f}\n");
    let c = validate(Path::new("t.toml"), OK).unwrap();
    assert_eq!(c.routes[0].fallback, Fallback::All, "the default");
    for (f, want) in [
        ("fallback = true", Fallback::All),
        ("fallback = false", Fallback::Off),
        ("fallback = \"weighted\"", Fallback::Weighted),
    ] {
        let c = validate(Path::new("t.toml"), &route(f)).unwrap();
        assert_eq!(c.routes[0].fallback, want, "{f}");
    }
    // The route table ends on line 8 of OK; the value starts at column 12.
    assert_eq!(
        errs(&route("fallback = \"idle\"")),
        vec!["t.toml:9:12: routes.web.fallback: expected true, false or \"weighted\", found \"idle\""]
    );
    assert_eq!(
        errs(&route("fallback = 1")),
        vec!["t.toml:9:12: routes.web.fallback: expected true, false or \"weighted\", found an integer"]
    );
}

#[test]
fn override_allow_from_and_secret_env_are_checked_where_written() {
    let with = |o: &str| format!("{OK}override = {{ header = \"x-veer-pool\", {o} }}\n");
    let c = validate(
        Path::new("t.toml"),
        &with("allow_from = [\"10.0.0.0/8\", \"::1\"]"),
    )
    .unwrap();
    let o = c.routes[0].override_.as_ref().unwrap();
    assert_eq!(o.allow_from.len(), 2);
    assert_eq!(o.tokens, None);
    let e = errs(&with("allow_from = [\"10.0.0.0/8\", \"10.1.0.0/16x\"]"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:9:66: routes.web.override.allow_from: \"10.1.0.0/16x\""),
        "{e:?}"
    );
    let e = errs(&with("allow_from = []"));
    assert!(
        e[0].starts_with("t.toml:9:51: routes.web.override.allow_from: lists no address block"),
        "{e:?}"
    );

    // Only this test uses these variables.
    std::env::remove_var("VEER_TEST_VALIDATE_UNSET");
    std::env::set_var("VEER_TEST_VALIDATE_EMPTY", "");
    std::env::set_var("VEER_TEST_VALIDATE_SECRET", "s3cret");
    assert_eq!(
        errs(&with("secret_env = \"VEER_TEST_VALIDATE_UNSET\"")),
        vec!["t.toml:9:51: routes.web.override.secret_env: environment variable \"VEER_TEST_VALIDATE_UNSET\" is not set"]
    );
    assert_eq!(
        errs(&with("secret_env = \"VEER_TEST_VALIDATE_EMPTY\"")),
        vec!["t.toml:9:51: routes.web.override.secret_env: environment variable \"VEER_TEST_VALIDATE_EMPTY\" is empty"]
    );
    assert_eq!(
        errs(&with("secret_env = \"\"")),
        vec!["t.toml:9:51: routes.web.override.secret_env: must not be empty"]
    );
    let c = validate(
        Path::new("t.toml"),
        &with("secret_env = \"VEER_TEST_VALIDATE_SECRET\""),
    )
    .unwrap();
    let o = c.routes[0].override_.as_ref().unwrap();
    assert_eq!(o.secret_env.as_deref(), Some("VEER_TEST_VALIDATE_SECRET"));
    let tokens = o.tokens.as_ref().unwrap();
    let green = crate::config::pool_override::token(b"s3cret", "green");
    assert!(tokens.matches("green", &green));
    // The secret never shows in the config's debug output.
    assert!(!format!("{c:?}").contains(&green[6..]));
}

#[test]
fn backends_by_name_ipv6_dns_refresh_and_slow_start() {
    let text = r#"
[server]
dns_servers = ["127.0.0.1:5353", "[::1]:53"]
[pools.blue]
backends = ["API.Internal.:8080", "[::1]:9001", { addr = "green.internal:8080", weight = 3 }]
dns_refresh = "10s"
slow_start = "30s"
[[routes]]
name = "web"
split = { blue = 1 }
"#;
    let c = validate(Path::new("t.toml"), text).unwrap();
    assert_eq!(c.server.dns_servers.len(), 2);
    let p = &c.pools["blue"];
    let addrs: Vec<String> = p.backends.iter().map(|b| b.addr.to_string()).collect();
    assert_eq!(
        addrs,
        ["api.internal:8080", "[::1]:9001", "green.internal:8080"]
    );
    assert!(matches!(p.backends[1].addr, BackendAddr::Ip(_)));
    assert_eq!(p.dns_refresh, Duration::from_secs(10));
    assert_eq!(p.slow_start, Some(Duration::from_secs(30)));
    // Defaults: 30 s between lookups at most; no slow start.
    let c = validate(Path::new("t.toml"), OK).unwrap();
    assert_eq!(c.pools["blue"].dns_refresh, DEFAULT_DNS_REFRESH);
    assert_eq!(c.pools["blue"].slow_start, None);
}

#[test]
fn bad_names_and_refresh_are_errors() {
    for (backend, why) in [
        ("\"api.internal\"", "invalid address"),
        ("\"api.internal:0\"", "invalid address"),
        ("\"api_internal:99999\"", "invalid address"),
        ("\"-api.internal:80\"", "invalid address"),
        ("\"api..internal:80\"", "invalid address"),
        ("\"1.2.3:80\"", "invalid address"),
        ("\"::1:80\"", "invalid address"),
        ("\"a.internal:80\", \"A.internal:80\"", "listed twice"),
    ] {
        let text = OK.replace("\"127.0.0.1:9101\"", backend);
        let e = errs(&text);
        assert!(e.iter().any(|e| e.contains(why)), "{backend}: {e:?}");
    }
    let text = OK.replace(
        "[pools.green]\n",
        "[pools.green]\ndns_refresh = \"500ms\"\n",
    );
    let e = errs(&text);
    assert!(
        e.iter()
            .any(|e| e.contains("pools.green.dns_refresh: must be at least 1s")),
        "{e:?}"
    );
}
