//! `fleetctl doctor` against a real daemon's data dir: it passes on a
//! healthy one, and each failure it checks for is reported as its `✗` line
//! with exit code 1 — the daemon down, a bad config, an unreachable NATS
//! store, a record that does not decode, a damaged store file, loose
//! permissions, a damaged CA certificate, a refused token.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// `fleetctl --data-dir <data> doctor` with `env`; (exit code, stdout).
fn doctor(data: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out: Output = Command::new(bin("fleetctl"))
        .arg("--data-dir")
        .arg(data)
        .arg("doctor")
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_DAEMON_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("fleetctl doctor: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Each check's report: its `✓`/`✗` line and the indented lines under it.
fn checks(report: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in report.lines() {
        match out.last_mut() {
            Some(last) if l.starts_with("  ") => {
                last.push('\n');
                last.push_str(l);
            }
            _ => out.push(l.to_owned()),
        }
    }
    out
}

/// The failed check of `report` with `needle` in it.
fn failed_with(report: &str, needle: &str) -> String {
    checks(report)
        .into_iter()
        .find(|c| c.starts_with("✗ ") && c.contains(needle))
        .unwrap_or_else(|| panic!("no ✗ check with {needle:?} in:\n{report}"))
}

fn failures(report: &str) -> usize {
    report.lines().filter(|l| l.starts_with("✗ ")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_healthy_daemon_and_names_each_failure() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let data = dir.path().join("data");
    let config = daemon.config.display().to_string();
    let with_config = [("FLEET_DAEMON_CONFIG", config.as_str())];

    // Healthy: every check passes, the store is the daemon's.
    let (code, report) = doctor(&data, &with_config);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(failures(&report), 0, "{report}");
    let last = report.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("all ") && last.ends_with(" checks passed"),
        "{report}"
    );
    for needle in [
        "data dir",
        "key files are owner-only",
        &format!("pid {}", daemon.pid().unwrap_or_default()),
        "CA certificate",
        "signer key",
        "parses",
        "held by the running daemon",
        "/healthz: alive",
        "/readyz: ready",
        "API token accepted",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("✓ ") && l.contains(needle)),
            "no ✓ line with {needle:?}:\n{report}"
        );
    }

    // A token the daemon does not know.
    let mut env = with_config.to_vec();
    env.push(("FLEET_TOKEN", "not-a-token"));
    let (code, report) = doctor(&data, &env);
    assert_eq!(code, Some(1), "{report}");
    failed_with(&report, "API token refused (401)");
    assert_eq!(failures(&report), 1, "{report}");

    // A config that does not parse names the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "namespce = \"x\"\n").unwrap_or_else(|e| panic!("{e}"));
    let bad = bad.display().to_string();
    let (code, report) = doctor(&data, &[("FLEET_DAEMON_CONFIG", bad.as_str())]);
    assert_eq!(code, Some(1), "{report}");
    let line = failed_with(&report, "FLEET_DAEMON_CONFIG=");
    assert!(line.contains("unknown field `namespce`"), "{line}");
    assert!(
        checks(&report)
            .iter()
            .all(|c| c.starts_with("✓ ") || c.starts_with("✗ ") || c.ends_with(" checks failed")),
        "every line belongs to a check:\n{report}"
    );

    // A JetStream store no NATS server answers for.
    let nats = dir.path().join("nats.toml");
    let port = free_port();
    std::fs::write(
        &nats,
        format!(
            "[transport.nats]\nurls = [\"nats://fleet:s3cret@127.0.0.1:{port}\"]\n[store.nats]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let nats = nats.display().to_string();
    let (code, report) = doctor(&data, &[("FLEET_DAEMON_CONFIG", nats.as_str())]);
    assert_eq!(code, Some(1), "{report}");
    let line = failed_with(&report, "JetStream KV unreachable");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(!report.contains("s3cret"), "a password leaked: {report}");

    // The daemon stopped: daemon.json names a dead pid, the API is down;
    // the store is free, so its records are read — all of them decode.
    assert_eq!(daemon.stop(), Some(0));
    let (code, report) = doctor(&data, &with_config);
    assert_eq!(code, Some(1), "{report}");
    failed_with(&report, "is not running; start fleet-daemon");
    failed_with(&report, "/healthz");
    let decoded = report
        .lines()
        .find(|l| l.starts_with("✓ store ") && l.contains(" records decode"))
        .unwrap_or_else(|| panic!("the store was not read:\n{report}"));
    assert!(!decoded.contains(": 0 records"), "{decoded}");

    // A record that does not decode: named, with what to do.
    {
        use fleet_core::store::{Key, Store as _};
        let store = fleet_store_redb::RedbStore::open(&data).unwrap_or_else(|e| panic!("{e}"));
        let key = Key::new("nodes.default.broken").unwrap_or_else(|e| panic!("{e}"));
        store
            .create(
                &key,
                bytes::Bytes::from_static(b"{\"v\":1,\"msg\":{\"kind\":\"?\"}}"),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let (code, report) = doctor(&data, &with_config);
    assert_eq!(code, Some(1), "{report}");
    let line = failed_with(&report, "record nodes.default.broken does not decode");
    assert!(line.contains("the daemon will not start with it"), "{line}");

    // A store file that is not a database.
    let store_file = data.join("fleet.redb");
    std::fs::write(&store_file, b"this is not a redb file, not even close")
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, report) = doctor(&data, &with_config);
    assert_eq!(code, Some(1), "{report}");
    let line = failed_with(&report, "fleet.redb");
    assert!(line.contains("corrupt"), "{line}");

    // Loose permissions and a damaged CA certificate.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(
        data.join("ca.key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(data.join("ca.cert.pem"), "not a certificate\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, report) = doctor(&data, &with_config);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        failed_with(&report, "data dir").contains("mode 0755"),
        "{report}"
    );
    assert!(failed_with(&report, "secret files readable by others").contains("ca.key.pem (0644)"));
    assert!(
        failed_with(&report, "CA certificate").contains("not PEM"),
        "{report}"
    );
    let last = report.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" checks failed") && last.starts_with(&failures(&report).to_string()),
        "{report}"
    );
}
