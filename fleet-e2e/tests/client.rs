//! A program links fleet-client and uses a node of the real daemon, with
//! real agents: claim, exec, files, renewal with new credentials, a
//! revocation with its reason, release — and claims that outlive a
//! `kill -9` of the daemon.

mod common;

use std::time::Duration;

use common::{Daemon, request};
use fleet_client::{ClientConfig, ExecRequest, FleetClient};
use fleet_core::protocol::RevokeReason;
use futures_util::StreamExt as _;

async fn client(d: &Daemon) -> FleetClient {
    let cfg = ClientConfig::from_discovery(&d.discovery)
        .unwrap_or_else(|e| panic!("{e}"))
        .token(d.token.clone());
    FleetClient::connect(cfg)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in time"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_exec_renew_revoke_and_release_through_fleet_client() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = Daemon::start(dir.path(), "");
    let fleet = client(&d).await;

    let claim = within("claim", fleet.claim(request("c1", None)))
        .await
        .unwrap_or_else(|e| panic!("claim: {e}"));
    let out = claim
        .exec(&ExecRequest::new([
            "sh",
            "-c",
            "echo hello; echo oops >&2; exit 3",
        ]))
        .await
        .unwrap_or_else(|e| panic!("exec: {e}"));
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.code, Some(3));
    let stored = claim.put("in/data.txt", b"payload").await;
    assert_eq!(stored.ok(), Some(7));
    let back = claim
        .get("in/data.txt")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, b"payload");

    // A renewal brings a new certificate, used by the next connection.
    let first_cert = claim.credentials().cert_pem;
    let first_expiry = claim.lease_expires_at();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewed = claim.renew().await.unwrap_or_else(|e| panic!("renew: {e}"));
    assert!(renewed > first_expiry);
    assert_ne!(claim.credentials().cert_pem, first_cert, "new certificate");
    let again = claim
        .exec(&ExecRequest::new(["echo", "renewed"]))
        .await
        .unwrap_or_else(|e| panic!("exec with the renewed certificate: {e}"));
    assert_eq!(again.stdout, b"renewed\n");

    // A claim whose lease runs out is revoked, and says why.
    let mut short = request("c2", None);
    short.lease_ttl_ms = 2_000;
    let expiring = within("second claim", fleet.claim(short))
        .await
        .unwrap_or_else(|e| panic!("claim: {e}"));
    let mut revocations = expiring
        .revocations()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let revoked = within("revocation", revocations.next())
        .await
        .unwrap_or_else(|| panic!("revocation stream ended"));
    assert_eq!(revoked.claim_id.as_str(), "c2");
    assert_eq!(revoked.reason, RevokeReason::Expired);
    let _ = expiring.detach();

    within("release", claim.release())
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
    assert_eq!(
        d.claim_state("c1").await,
        Some(serde_json::json!("released"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_outlive_a_kill_9_of_the_daemon() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut d = Daemon::start(dir.path(), "");
    let fleet = client(&d).await;
    let granted = within("claim", fleet.claim(request("c1", None)))
        .await
        .unwrap_or_else(|e| panic!("claim: {e}"));

    // The daemon dies; a claim asked for now waits for it to come back.
    d.kill9();
    let waiting = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.claim(request("c2", None)).await })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !waiting.is_finished(),
        "nothing can grant while the daemon is down"
    );
    d.crash_and_restart();

    let second = within("claim across the restart", waiting)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("claim across the restart: {e}"));
    let out = second
        .exec(&ExecRequest::new(["echo", "second"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout, b"second\n");

    // The claim granted before the crash is still ours.
    let out = granted
        .exec(&ExecRequest::new(["echo", "first"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout, b"first\n");
    granted
        .renew()
        .await
        .unwrap_or_else(|e| panic!("renew after restart: {e}"));
    within("release", granted.release())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    within("release", second.release())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
