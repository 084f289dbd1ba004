//! A client in another language, written from PROTOCOL.md alone
//! (`clients/python/fleet_claim.py`: nats-py, pyrage, cryptography, ssl),
//! against the real daemon and agent: claim over NATS, verify and decrypt
//! the credentials, run a command through the node's mTLS gateway, release.
//!
//! The interpreter is `$FLEET_TEST_PYTHON` (`./scripts/test` points it at a
//! venv with `.ci/requirements.txt`), else `python3`.

mod common;
#[path = "../../fleet-transport-nats/tests/common/server.rs"]
mod nats_server;

use std::path::PathBuf;
use std::process::Command;

use common::Daemon;

fn python() -> String {
    std::env::var("FLEET_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/python/fleet_claim.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_from_protocol_md_claims_execs_and_releases() {
    let modules = Command::new(python())
        .args(["-c", "import nats, pyrage, cryptography"])
        .output();
    assert!(
        modules.as_ref().is_ok_and(|o| o.status.success()),
        "{} lacks nats-py, pyrage or cryptography: run ./scripts/test, which installs \
         .ci/requirements.txt into a venv, or set FLEET_TEST_PYTHON ({modules:?})",
        python()
    );
    let nats = nats_server::NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = Daemon::start(
        dir.path(),
        &format!("[transport.nats]\nurls = [{:?}]\n", nats.url()),
    );
    let script = client_script();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(&script)
            .args(["--nats", &nats.url()])
            .args([
                "--signer-file",
                &d.discovery.signer_file.display().to_string(),
            ])
            .args([
                "--workspace",
                "ci",
                "--pool",
                "default",
                "--claim-id",
                "py-1",
            ])
            .args(["--timeout", "60", "--"])
            .args(["sh", "-c", "echo from-python; uname -s; exit 7"])
            .output()
            .map(|o| (o, d))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("running {}: {e}", python()));
    let (out, d) = out;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "the command's exit code comes back\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("from-python"), "{stdout}");
    assert!(stderr.contains("\"released\": \"py-1\""), "{stderr}");

    assert_eq!(
        d.claim_state("py-1").await,
        Some(serde_json::json!("released"))
    );
}
