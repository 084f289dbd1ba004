//! Operator surfaces of the real daemon: what a restart recovered
//! (`fleetctl replay-status`), why nodes were made (`explain`), a claim's
//! life (`history`), and backup and restore into a new data dir.

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

fn failed_with(out: &std::process::Output, words: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(words), "{words:?} not in {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_new_data_dir_keeps_the_claim_and_its_node() {
    let dir_a = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut a = Daemon::start(dir_a.path(), "");
    let client = a.claim_client().await;
    let grant = tokio::time::timeout(Duration::from_secs(60), client.claim(request("c1", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant"))
        .unwrap_or_else(|e| panic!("{e}"));

    // Why the node exists, and the claim's life so far.
    let text = ok(&fleetctl(&a, &["explain", "pool", "default"], 30));
    assert!(
        text.contains("claim c1 waits and no node can take it"),
        "{text}"
    );
    assert!(text.contains(grant.node.as_str()), "{text}");
    let text = ok(&fleetctl(&a, &["history", "c1"], 30));
    assert!(
        text.contains("pending") && text.contains("granted after"),
        "{text}"
    );
    let missing = fleetctl(&a, &["history", "nope"], 30);
    assert_eq!(missing.status.code(), Some(1));

    let keys = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = keys.path().join("backup.key");
    let other = keys.path().join("other.key");
    let file = keys.path().join("fleet.age");
    let path = |p: &std::path::Path| p.display().to_string();
    let recipient = ok(&fleetctl(&a, &["backup-key", &path(&key)], 30))
        .trim()
        .to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    ok(&fleetctl(&a, &["backup-key", &path(&other)], 30));
    let out = ok(&fleetctl(
        &a,
        &["backup", "--recipient", &recipient, "--out", &path(&file)],
        60,
    ));
    assert!(out.contains("backup written to"), "{out}");
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
    for secret in ["BEGIN", "tokens", "fleet.id"] {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{secret} in clear text"
        );
    }

    // Refused: over the live data dir, with another key, tampered.
    let data_a = path(&dir_a.path().join("data"));
    let args = |dir: &str, id: &std::path::Path, f: &std::path::Path| {
        vec![
            "--data-dir".to_owned(),
            dir.to_owned(),
            "restore".to_owned(),
            "--identity".to_owned(),
            path(id),
            path(f),
        ]
    };
    let run = |a: Vec<String>| fleetctl_offline(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let fresh = path(&keys.path().join("never-used"));
    failed_with(&run(args(&data_a, &key, &file)), "it is not empty");
    failed_with(
        &run(args(&fresh, &other, &file)),
        "not encrypted to the identity",
    );
    let tampered = keys.path().join("tampered.age");
    let mut t = bytes.clone();
    let mid = t.len() / 2;
    t[mid] ^= 0x40;
    std::fs::write(&tampered, t).unwrap_or_else(|e| panic!("{e}"));
    failed_with(
        &run(args(&fresh, &key, &tampered)),
        "damaged or was modified",
    );
    assert!(!keys.path().join("never-used").exists(), "nothing written");

    // The old host dies; the backup goes into a new data dir.
    a.kill9();
    let dir_b = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data_b = path(&dir_b.path().join("data"));
    let out = ok(&run(args(&data_b, &key, &file)));
    assert!(
        out.contains("restored fleet") && out.contains("1 claim"),
        "{out}"
    );
    // Same ports (the agents know the address) and the same local
    // "cloud account": the nodes live in the old dir; the old token.
    let mut b = a.restored(dir_b.path(), &[]);
    let state = eventually(30, || async { b.claim_state("c1").await }).await;
    assert_eq!(state, Some(serde_json::json!("granted")));
    let connected = eventually(60, || async {
        let (_, body) = b.get("/v1/nodes").await;
        let nodes: Vec<fleet_core::protocol::NodeStatus> = serde_json::from_str(&body).ok()?;
        nodes
            .iter()
            .find(|n| n.record.node == grant.node && n.connected)
            .map(|_| ())
    })
    .await;
    assert!(connected.is_some(), "the node's agent never reconnected");
    let r = b.get("/v1/replay-status").await.1;
    assert!(r.contains("\"claim\":1"), "{r}");
    let client_b = b.claim_client().await;
    client_b
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let released = eventually(30, || async {
        (b.claim_state("c1").await? == "released").then_some(())
    })
    .await;
    assert!(released.is_some());
    let data_b = dir_b.path().join("data");
    assert!(data_b.join("restored.json").exists());
    assert!(!data_b.join("restore.pending.json").exists());
    b.stop();
}
