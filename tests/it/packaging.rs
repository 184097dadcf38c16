//! What ships around the binary: the systemd unit (systemd-analyze verify, security exposure
//! at most 2.0, the directives operators rely on), the Kubernetes manifests (validated against
//! the Kubernetes schemas, then checked for mounts, probes and grace period), the Prometheus
//! alert rules (promtool check and unit tests), shell completions and man pages.

use std::process::Command;

use crate::support::*;

/// `cmd`'s stdout and stderr; it must succeed.
fn run(cmd: &mut Command) -> String {
    let out = output_ok(cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo().join("systemd/perapera.service")).unwrap();
    for directive in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "ExecStartPre=/usr/bin/perapera check -c /etc/perapera/perapera.toml",
        "User=perapera",
        "SupplementaryGroups=systemd-journal adm",
        "StateDirectory=perapera",
        "ConfigurationDirectory=perapera",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=65536",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    // TimeoutStopSec must leave room for shutdown_timeout (25s by default).
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec=");
    assert!(stop > 25);
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perapera.service");
    std::fs::write(&path, unit.replace("/usr/bin/perapera", bin())).unwrap();
    run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let text = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path));
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for perapera.service:")
                .nth(1)
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
}

#[test]
fn kubernetes_manifests_validate_and_mount_what_perapera_needs() {
    run(Command::new("python3")
        .arg(repo().join("tests/py/check_kubernetes.py"))
        .arg(repo().join("packaging/kubernetes")));
}

#[test]
fn kubernetes_configmap_is_a_valid_perapera_config() {
    let text = std::fs::read_to_string(repo().join("packaging/kubernetes/perapera.yaml")).unwrap();
    // The ConfigMap's perapera.toml block: the lines indented under `perapera.toml: |`.
    let mut lines = text.lines().skip_while(|l| !l.contains("perapera.toml: |"));
    lines.next();
    let config: String = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(config.contains("[sink]"), "{config}");
    let c = perapera::config::Config::parse(&config, std::path::Path::new("configmap"))
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    assert_eq!(c.metrics.address.as_deref(), Some("0.0.0.0:9810"));
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("packaging/prometheus");
    let text = run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    assert!(text.contains("SUCCESS"), "{text}");
    let text = run(Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir));
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef perapera"),
        ("fish", "complete -c perapera"),
    ] {
        let out = perapera(&["completions", shell]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(text.contains("cursor"), "{shell} completes subcommands");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = perapera(&["man", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "perapera.1",
        "perapera-run.1",
        "perapera-check.1",
        "perapera-cursor.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let main = std::fs::read_to_string(dir.path().join("perapera.1")).unwrap();
    assert!(
        main.contains("log\\-format") || main.contains("log-format"),
        "{main}"
    );
}
