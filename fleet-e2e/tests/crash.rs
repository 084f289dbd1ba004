//! Crash safety of the real daemon: kill -9 at several points and restart;
//! no accepted claim is lost, no node leaks or doubles, leases continue.
//! Two daemons on one data dir: exactly one leads. A restart on the same
//! data dir leads at once: the dead daemon's lease is not waited out.

mod common;

use std::time::Duration;

use common::*;
use fleet_core::protocol::{ClaimRecord, ClaimState};
use fleet_core::transport::ClaimClient;
use nix::sys::signal::kill;
use nix::unistd::Pid;

async fn claims(d: &Daemon) -> Vec<ClaimRecord> {
    let (status, body) = d.get("/v1/claims").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn claim_state(d: &Daemon, id: &str) -> Option<ClaimRecord> {
    claims(d)
        .await
        .into_iter()
        .find(|c| c.request.claim_id.as_str() == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_grant_keeps_the_claim_the_node_and_the_lease() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut d = Daemon::start(dir.path(), "");
    let client = d.claim_client().await;
    let grant = tokio::time::timeout(Duration::from_secs(60), client.claim(request("k1", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant"))
        .unwrap_or_else(|e| panic!("{e}"));
    let before = claim_state(&d, "k1")
        .await
        .unwrap_or_else(|| panic!("claim missing"));
    d.crash_and_restart();
    let after = claim_state(&d, "k1")
        .await
        .unwrap_or_else(|| panic!("claim lost in the crash"));
    assert_eq!(after.state, ClaimState::Granted);
    assert_eq!(after.node, Some(grant.node.clone()));
    assert!(
        after.expires_at >= before.expires_at,
        "lease continues, never shortened"
    );
    assert_eq!(d.node_dirs(), 1, "no node created twice");
    // The agent reconnects with its mTLS identity and the node is ready again.
    let ready = eventually(30, || async {
        let (_, body) = d.get("/v1/nodes").await;
        body.contains("\"connected\":true").then_some(())
    })
    .await;
    assert!(ready.is_some(), "agent did not reconnect after the restart");
    let client = d.claim_client().await;
    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        claim_state(&d, "k1").await.map(|c| c.state),
        Some(ClaimState::Released)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_claim_waiting_loses_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pool = "[[pool]]\nname = \"default\"\ninstance_types = [\"local.node\"]\nmax_nodes = 1\n";
    let mut d = Daemon::start(dir.path(), pool);
    let client = d.claim_client().await;
    let first = tokio::time::timeout(Duration::from_secs(60), client.claim(request("w1", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant"))
        .unwrap_or_else(|e| panic!("{e}"));
    // The only node is busy: the second claim is accepted (stored: status
    // shows only stored claims) and waits.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.claim(request("w2", None)).await }
    });
    let accepted = eventually(20, || async {
        claim_state(&d, "w2")
            .await
            .filter(|c| c.state == ClaimState::Pending)
            .map(|_| ())
    })
    .await;
    assert!(accepted.is_some(), "second claim never accepted");
    waiting.abort();
    d.crash_and_restart();
    let c = claim_state(&d, "w2").await.unwrap_or_else(|| {
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
        panic!("accepted claim lost\n{log}")
    });
    assert_eq!(c.state, ClaimState::Pending);
    let client = d.claim_client().await;
    client
        .release(&first.workspace, &first.claim_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The caller retries with the same id and gets the grant.
    let grant = tokio::time::timeout(Duration::from_secs(60), client.claim(request("w2", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant after restart"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(grant.node, first.node, "the one node serves it");
    assert_eq!(d.node_dirs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_provision_neither_leaks_nor_doubles() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut d = Daemon::start(dir.path(), "");
    let client = d.claim_client().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.claim(request("p1", None)).await }
    });
    // Crash as soon as the node exists at the provider, before or around
    // its first hello.
    let created = eventually(20, || async { (d.node_dirs() > 0).then_some(()) }).await;
    assert!(created.is_some());
    pending.abort();
    d.crash_and_restart();
    let client = d.claim_client().await;
    let grant = tokio::time::timeout(Duration::from_secs(60), client.claim(request("p1", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant after restart"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.node_dirs(), 1, "the create was idempotent");
    assert!(grant.endpoint.starts_with("127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_data_dir_exactly_one_leads() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut a = Daemon::start(dir.path(), "");
    // A second daemon on the same data dir, its own HTTP port.
    let (mut b, base_b) = a.follower(dir.path()).await;
    let (rz, body) = http(&base_b, "GET", "/readyz", None).await;
    assert_eq!(rz, 503, "the follower is not ready: {body}");
    assert!(body.contains("follower"));
    assert_eq!(
        http(&base_b, "GET", "/v1/status", Some(&a.token)).await.0,
        503
    );
    assert_eq!(a.get("/v1/status").await.0, 200, "the leader serves");

    // The leader dies; the follower takes over with a newer epoch.
    a.kill9();
    let led = eventually(30, || async {
        let (code, body) = http(&base_b, "GET", "/v1/status", Some(&a.token)).await;
        (code == 200).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("follower never took over; see daemon-b.log"));
    let summary: serde_json::Value = serde_json::from_str(&led).unwrap_or_default();
    assert_eq!(summary["leader"], true);
    assert!(summary["epoch"].as_u64().unwrap_or(0) >= 2, "{led}");
    let _ = b.kill();
    let _ = b.wait();
}

/// kill -9 and restart on the same data dir: the new process holds redb's
/// file lock, which proves the old one dead, so it leads at once rather
/// than waiting out a lease of 30 s. The figure (spawn to `/readyz` 200) is
/// printed; the bound only rules out waiting for the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_kill_9_is_ready_without_waiting_out_the_lease() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut d = Daemon::start(dir.path(), "");
    let client = d.claim_client().await;
    let grant = tokio::time::timeout(Duration::from_secs(60), client.claim(request("r1", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant"))
        .unwrap_or_else(|e| panic!("{e}"));
    // From here on the daemon holds 30 s leases.
    let text = std::fs::read_to_string(&d.config).unwrap_or_default();
    assert!(text.contains("lease_ms = 3000\n"), "{text}");
    std::fs::write(
        &d.config,
        text.replace("lease_ms = 3000\n", "lease_ms = 30000\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    d.crash_and_restart();
    let mut figures = Vec::new();
    for _ in 0..3 {
        let ready = d.crash_and_restart_timed().await;
        figures.push(ready);
        assert!(
            ready < Duration::from_secs(10),
            "ready after {ready:?}: the dead daemon's 30 s lease was waited out"
        );
    }
    println!("restart after kill -9 to /readyz 200: {figures:?}");
    let (status, body) = d.get("/v1/status").await;
    assert_eq!(status, 200, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert!(
        summary["epoch"].as_u64().unwrap_or(0) >= 5,
        "one epoch per start: {body}"
    );
    let kept = claim_state(&d, "r1")
        .await
        .unwrap_or_else(|| panic!("claim lost"));
    assert_eq!(kept.node.as_ref(), Some(&grant.node));
}

/// kill -9 while a node boots, ten times: the node created by the dead
/// incarnation joins the restarted one (its bootstrap token was stored
/// before the create), so each waiting claim is served within the node's
/// boot time plus a few seconds — not after `boot_timeout_ms` — on one
/// node per claim; after release and a clean stop no agent is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_boot_ten_rounds_serves_every_claim_on_its_own_node() {
    const ROUNDS: usize = 10;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pool = "[[pool]]\nname = \"default\"\ninstance_types = [\"local.node\"]\n\
                max_nodes = 10\nstrategy = { kind = \"cold_image\", idle_timeout_ms = 500 }\n\
                [timing]\nboot_timeout_ms = 600000\n";
    // Nodes take a second to boot, so the crash lands before the agent's
    // first hello: it presents a token the dead daemon minted.
    let agent = dir.path().join("slow-boot-agent.sh");
    std::fs::write(
        &agent,
        format!("#!/bin/sh\nsleep 1\nexec {:?} \"$@\"\n", bin("fleet-agent")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let agent = agent.display().to_string();
    let mut d = Daemon::start_with(
        dir.path(),
        |_| format!("kind = \"local\"\nagent_bin = {agent:?}\nmax_nodes = {ROUNDS}\n"),
        pool,
    );
    let mut grants = Vec::new();
    let mut waits = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("boot-{round}");
        let client = d.claim_client().await;
        let pending = tokio::spawn({
            let (client, id) = (client.clone(), id.clone());
            async move { client.claim(request(&id, None)).await }
        });
        // Crash as soon as this round's node exists at the provider: its
        // agent is starting and has its token, the daemon has not seen it.
        let created = eventually(30, || async { (d.node_dirs() > round).then_some(()) }).await;
        assert!(created.is_some(), "round {round}: no node created");
        pending.abort();
        d.crash_and_restart();
        let began = std::time::Instant::now();
        let client = d.claim_client().await;
        let grant = tokio::time::timeout(Duration::from_secs(60), client.claim(request(&id, None)))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no grant after restart"))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        waits.push(began.elapsed());
        // Boot time (1 s) + 5 s.
        assert!(
            began.elapsed() < Duration::from_secs(6),
            "round {round}: served after {:?}, not within boot time + 5 s",
            began.elapsed()
        );
        assert_eq!(
            d.node_dirs(),
            round + 1,
            "round {round}: one node per claim"
        );
        grants.push(grant);
    }
    println!("claim served after a kill -9 during boot, per round: {waits:?}");
    let nodes: std::collections::BTreeSet<_> = grants.iter().map(|g| g.node.clone()).collect();
    assert_eq!(nodes.len(), ROUNDS, "every claim on its own node");
    let client = d.claim_client().await;
    for g in &grants {
        client
            .release(&g.workspace, &g.claim_id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let pids = d.agent_pids();
    assert_eq!(pids.len(), ROUNDS);
    // Idle nodes are deleted after 500 ms; their agents exit with them.
    let gone = eventually(60, || async {
        pids.iter()
            .all(|p| kill(Pid::from_raw(*p), None).is_err())
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "agents left behind after release");
    assert_eq!(d.stop(), Some(0), "clean stop");
}
