//! `veer --help` and every subcommand's help (issue 20 item 4): every argument and option
//! has a description, and the top-level help names the environment variables.

mod support;

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(support::veer_bin())
        .args(args)
        .arg("--help")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The entries of the Arguments: and Options: sections that have no description.
fn undescribed(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut in_list = false;
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with(' ') {
            in_list = matches!(l.trim_end(), "Arguments:" | "Options:");
            continue;
        }
        let t = l.trim_start();
        let entry = t.starts_with('-')
            || t.starts_with('<')
            || (t.starts_with('[') && !t.starts_with("[default") && !t.starts_with("[env"));
        if !in_list || !entry {
            continue;
        }
        let described = t
            .split_once("  ")
            .is_some_and(|(_, d)| !d.trim().is_empty());
        // A long name puts its description on the next, deeper-indented line.
        let next_describes = lines.get(i + 1).is_some_and(|n| {
            let nt = n.trim_start();
            n.len() - nt.len() >= l.len() - t.len() + 2 && !nt.starts_with('-')
        });
        if !described && !next_describes {
            out.push(l.to_string());
        }
    }
    out
}

#[test]
fn every_argument_and_option_has_a_description() {
    let commands: &[&[&str]] = &[
        &[],
        &["run"],
        &["check"],
        &["demo"],
        &["status"],
        &["split"],
        &["swap"],
        &["drain"],
        &["undrain"],
        &["reload"],
        &["rollout"],
        &["cluster"],
        &["cluster", "push"],
        &["cluster", "pull"],
        &["cluster", "status"],
        &["override-token"],
    ];
    let mut missing = Vec::new();
    for c in commands {
        let text = help(c);
        for l in undescribed(&text) {
            missing.push(format!("veer {}: {l}", c.join(" ")));
        }
    }
    assert!(
        missing.is_empty(),
        "without a description:\n{}",
        missing.join("\n")
    );
}

#[test]
fn top_level_help_names_the_environment_variables() {
    let text = help(&[]);
    for var in [
        "VEER_ADMIN_TOKEN",
        "VEER_ADMIN ",
        "VEER_LOG",
        "RUST_LOG",
        "NO_COLOR",
        "VEER_WORKERS",
        "VEER_OVERRIDE_SECRET",
    ] {
        assert!(
            text.contains(var),
            "{var} missing from veer --help:\n{text}"
        );
    }
    // Off a terminal, help has no colour codes.
    assert!(!text.contains('\u{1b}'), "{text}");
}
