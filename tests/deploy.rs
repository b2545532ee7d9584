//! The deployment files in deploy/ (issue 16): the Kubernetes manifests' embedded config
//! passes `veer check`, the grace period outlasts the preStop sleep and `drain_timeout`, the
//! probes point at the admin endpoints, and `kubectl kustomize` renders every object. (A
//! `kubectl apply --dry-run=client` needs an API server for discovery, which CI has not.)
//! The systemd and logrotate files say what veer's signals do.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

fn deploy(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The `veer.toml: |` block of the ConfigMap, dedented.
fn embedded_config() -> String {
    let cm = deploy("kubernetes/configmap.yaml");
    let mut lines = cm
        .lines()
        .skip_while(|l| l.trim() != "veer.toml: |")
        .skip(1);
    let first = lines.next().expect("configmap.yaml has a veer.toml block");
    let indent = first.len() - first.trim_start().len();
    let mut out = format!("{}\n", &first[indent..]);
    for l in lines {
        if l.trim().is_empty() {
            out.push('\n');
            continue;
        }
        if l.len() - l.trim_start().len() < indent {
            break;
        }
        out.push_str(&l[indent..]);
        out.push('\n');
    }
    out
}

/// The number after `key:` on the first line that has it.
fn number(yaml: &str, key: &str) -> u64 {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in manifest"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("veer.toml");
    std::fs::write(&path, embedded_config()).unwrap();
    path
}

#[test]
fn the_configmap_config_passes_veer_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path());
    let out = std::process::Command::new(support::veer_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": ok: "),
        "veer check failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_grace_period_outlasts_pre_stop_and_drain() {
    let dir = tempfile::tempdir().unwrap();
    let config = veer::config::Config::load(&write_config(dir.path())).unwrap();
    let d = deploy("kubernetes/deployment.yaml");
    let grace = Duration::from_secs(number(&d, "terminationGracePeriodSeconds"));
    let pre_stop: u64 = d
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("command: [\"sleep\", \"")?
                .strip_suffix("\"]")
        })
        .expect("a preStop sleep")
        .parse()
        .unwrap();
    let needed = config.server.drain_timeout + Duration::from_secs(pre_stop);
    assert!(
        grace > needed,
        "grace {grace:?} <= preStop + drain_timeout {needed:?}"
    );
    assert_eq!(number(&d, "replicas"), 3);
    // Liveness on /healthz, readiness on /readyz, both on the admin port.
    let live = d.split("livenessProbe:").nth(1).unwrap();
    assert!(live
        .split("Probe:")
        .next()
        .unwrap()
        .contains("path: /healthz"));
    let ready = d.split("readinessProbe:").nth(1).unwrap();
    assert!(ready
        .split("lifecycle:")
        .next()
        .unwrap()
        .contains("path: /readyz"));
    assert_eq!(config.admin.listen.port(), 9901);
    assert!(d.contains("containerPort: 9901"));
    // The config comes from the ConfigMap as a volume.
    assert!(d.contains("name: veer-config") && d.contains("mountPath: /etc/veer"));
}

#[test]
fn kubectl_renders_every_object() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs kubectl ({e}): install Debian's kubernetes-client \
                 (scripts/test does)"
            )
        });
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in [
        "kind: ConfigMap",
        "kind: Deployment",
        "kind: Service",
        "kind: PodDisruptionBudget",
    ] {
        assert!(yaml.contains(kind), "{kind} missing from:\n{yaml}");
    }
}

#[test]
fn systemd_and_logrotate_use_veers_signals() {
    let unit = deploy("veer.service");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("Type=notify") && unit.contains("NotifyAccess=all"));
    assert!(
        unit.contains("--signal=SIGUSR2"),
        "documented upgrade command"
    );
    let rotate = deploy("veer.logrotate");
    assert!(rotate.contains("postrotate") && rotate.contains("SIGUSR1"));
}
