//! The real daemon's local nodes after they are gone: a deleted node's
//! agent log is kept in the daemon's log dir, and an orphan (a node
//! directory of this fleet no record knows, its agent still running) is
//! collected after `orphan_min_age_ms` — its process ended, its directory
//! removed, its log kept — while another namespace's or fleet's is left
//! alone.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use fleet_core::provider::{TAG_FLEET, TAG_NAMESPACE, TAG_NODE, TAG_POOL};
use fleet_core::transport::ClaimClient;

/// Kept agent logs whose name starts with `<node>.`.
fn kept_logs(data: &Path, node: &str) -> Vec<PathBuf> {
    let dir = data.join("logs/agents");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{node}.")) && n.ends_with(".log"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_nodes_agent_log_is_kept_in_the_log_dir() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(
        dir.path(),
        "[[pool]]\nname = \"default\"\n\
         strategy = { kind = \"cold_image\", idle_timeout_ms = 500 }\n",
    );
    let data = dir.path().join("data");
    let client = daemon.claim_client().await;
    let grant = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        client.claim(request("logged-1", None)),
    )
    .await
    .unwrap_or_else(|_| panic!("no grant; see {}", dir.path().display()))
    .unwrap_or_else(|e| panic!("claim: {e}"));
    let node = grant.node.to_string();
    let node_dir = data.join("local/nodes").join(&node);
    assert!(node_dir.join("agent.log").exists());
    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));

    // Idle for 500 ms, the node is deleted; its log stays, readable.
    let kept = eventually(30, || async {
        let k = kept_logs(&data, &node);
        (!node_dir.exists() && k.len() == 1).then(|| k[0].clone())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{node} not deleted with its log kept; see {}",
            dir.path().display()
        )
    });
    let text = std::fs::read_to_string(&kept).unwrap_or_default();
    assert!(text.contains("connected to the daemon"), "{text}");
    assert_eq!(daemon.stop(), Some(0));
}

/// An instance directory as the local provider writes it, for a process
/// that is not an agent (`sleep`), with a log.
fn plant(data: &Path, node: &str, namespace: &str, fleet: &str) -> Child {
    let node_dir = data.join("local/nodes").join(node);
    std::fs::create_dir_all(&node_dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(node_dir.join("agent.log"), format!("{node} was here\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("sleep: {e}"));
    let tags = BTreeMap::from([
        (TAG_NODE, node),
        (TAG_POOL, "default"),
        (TAG_NAMESPACE, namespace),
        (TAG_FLEET, fleet),
    ]);
    let instance = serde_json::json!({
        "node": node,
        "provider_id": format!("local-{node}"),
        "instance_type": "local.node",
        "state": "running",
        "pid": child.id(),
        "tags": tags,
        "created_at": 1_700_000_000_000_u64,
    });
    std::fs::write(node_dir.join("instance.json"), instance.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_of_this_fleet_is_collected_with_its_log_kept() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "[timing]\norphan_min_age_ms = 1500\n");
    let data = dir.path().join("data");
    let (_, status) = daemon.get("/v1/status").await;
    let status: serde_json::Value =
        serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
    let fleet = status["fleet_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no fleet id: {status}"))
        .to_owned();
    assert_eq!(daemon.stop(), Some(0));

    // While the daemon is down, instances appear that it has no record of.
    let ours = format!("default-{fleet}-99-1");
    let other_ns = format!("default-{fleet}-99-2");
    let other_fleet = "default-0f0f0f0f-99-1".to_owned();
    let mut ours_p = plant(&data, &ours, "fleet", &fleet);
    let mut other_ns_p = plant(&data, &other_ns, "fleet.other", &fleet);
    let mut other_fleet_p = plant(&data, &other_fleet, "fleet", "0f0f0f0f");
    daemon.crash_and_restart();

    // Its start-up inventory finds ours; 1.5 s later it is gone.
    let collected = eventually(30, || {
        let exited = ours_p.try_wait().ok().flatten().is_some();
        let gone = !data.join("local/nodes").join(&ours).exists();
        async move { (exited && gone).then_some(()) }
    })
    .await;
    assert!(
        collected.is_some(),
        "the orphan was not collected; see {}",
        dir.path().display()
    );
    let kept = kept_logs(&data, &ours);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let text = std::fs::read_to_string(&kept[0]).unwrap_or_default();
    assert_eq!(text, format!("{ours} was here\n"));

    // The others are not this fleet's: running, directories in place.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for (node, p) in [
        (&other_ns, &mut other_ns_p),
        (&other_fleet, &mut other_fleet_p),
    ] {
        assert!(p.try_wait().ok().flatten().is_none(), "{node} was stopped");
        assert!(
            data.join("local/nodes")
                .join(node)
                .join("instance.json")
                .exists()
        );
        assert!(kept_logs(&data, node).is_empty());
        let _ = p.kill();
        let _ = p.wait();
    }
    let (_, nodes) = daemon.get("/v1/nodes").await;
    assert_eq!(nodes.trim(), "[]", "nothing was adopted");
    assert_eq!(daemon.stop(), Some(0));
}
