//! Operator surfaces of the real daemon: what a restart recovered
//! (`fleetctl replay-status`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleet_core::protocol::ReplayStatus;
use fleet_core::transport::ClaimClient as _;

fn replay(daemon: &Daemon) -> ReplayStatus {
    let out = ok(&fleetctl(daemon, &["--json", "replay-status"], 30));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_status_reports_the_adopted_node_and_the_grant_published_again() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let client = daemon.claim_client().await;
    let grant = tokio::time::timeout(Duration::from_secs(60), client.claim(request("c1", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant"))
        .unwrap_or_else(|e| panic!("{e}"));

    // A fresh start recovered nothing.
    let first = replay(&daemon);
    assert_eq!((first.nodes_restored, first.grants_republished), (0, 0));
    assert!(first.records.is_empty(), "{first:?}");

    daemon.crash_and_restart();
    // Until the provider's first inventory answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let r = replay(&daemon);
        if r.first_inventory_at.is_some() {
            break r;
        }
        assert!(Instant::now() < deadline, "no inventory yet: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(after.records.get("claim"), Some(&1), "{after:?}");
    assert_eq!(after.records.get("node"), Some(&1), "{after:?}");
    assert_eq!(
        (
            after.nodes_restored,
            after.nodes_adopted,
            after.nodes_vanished
        ),
        (1, 1, 0),
        "the node's agent was still running: adopted"
    );
    assert_eq!(after.grants_republished, 1, "the granted claim's grant");
    assert_eq!(after.orphans_found, 0);
    assert!(after.epoch > first.epoch);
    let steps: Vec<&str> = after.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "read the provider's offerings",
            "read the fleet identity",
            "load the records",
            "restore the control plane's state",
            "first inventory of the provider",
        ]
    );
    assert!(after.ready_at.is_some_and(|t| t >= after.started_at));
    // The table says the same.
    let text = ok(&fleetctl(&daemon, &["replay-status"], 30));
    assert!(text.contains("1 restored, 1 adopted, 0 gone"), "{text}");
    assert!(text.contains("1 published again"), "{text}");
    // Who leads: this daemon, at the epoch of its restart.
    let out = ok(&fleetctl(&daemon, &["--json", "leader"], 30));
    let info: fleet_core::protocol::LeaderInfo =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(info.leader, "{info:?}");
    let lease = info.lease.unwrap_or_else(|| panic!("no lease: {out}"));
    assert_eq!(lease.holder, info.this_daemon);
    assert_eq!(lease.epoch, after.epoch);
    assert!(info.followers.is_empty(), "a redb store has none: {out}");
    let text = ok(&fleetctl(&daemon, &["leader"], 30));
    assert!(text.contains("(leads)"), "{text}");

    // diagnose: a claim no node can serve is an error that says why (and
    // the command exits 1); the node's agent version is there; nothing
    // secret is.
    let waiting = daemon.claim_client().await;
    let mut huge = request("huge", None);
    huge.requirements.cpus = 4_096;
    let pending = tokio::spawn(async move { waiting.claim(huge).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = fleetctl(&daemon, &["diagnose"], 30);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("claim huge") {
            break out;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error   claim huge (ci): can never be granted"),
        "{text}"
    );
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "the agent's version: {text}"
    );
    let json = fleetctl(&daemon, &["--json", "diagnose"], 30);
    assert_eq!(json.status.code(), Some(1));
    let json = String::from_utf8_lossy(&json.stdout).to_string();
    let d: fleet_core::protocol::Diagnosis =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(d.waiting.len(), 1, "{json}");
    for secret in [daemon.token.as_str(), "BEGIN", "credentials", "bootstrap"] {
        assert!(!json.contains(secret), "{secret:?} in {json}");
        assert!(!text.contains(secret), "{secret:?} in {text}");
    }
    pending.abort();
    let _ = grant;
    daemon.stop();
}
