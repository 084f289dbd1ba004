//! The local provider against the provider conformance suite, with a
//! stand-in for `fleet-agent`: a script that checks it was handed its
//! config, records each start, and idles until SIGTERM — so create, stop,
//! start and delete act on real processes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_core::clock::Clock;
use fleet_core::ids::Millis;
use fleet_core::provider::{InstanceRef, Provider};
use fleet_core::testkit::provider::provider_suite;
use fleet_provider_local::{LocalOptions, LocalProvider};

/// A clock that ticks a second per read, so snapshot ids differ.
#[derive(Default)]
struct Ticking(AtomicU64);

impl Clock for Ticking {
    fn now(&self) -> Millis {
        1_700_000_000_000 + self.0.fetch_add(1_000, Ordering::Relaxed)
    }
}

const FAKE_AGENT: &str = r#"#!/bin/sh
cfg="$FLEET_AGENT_CONFIG"
test -f "$cfg" || exit 3
echo started >> "$(dirname "$cfg")/starts"
trap 'exit 0' TERM
while :; do sleep 0.05; done
"#;

fn provider(dir: &Path, max_nodes: u32) -> LocalProvider {
    let agent = dir.join("fake-agent.sh");
    std::fs::write(&agent, FAKE_AGENT).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    LocalProvider::new(
        LocalOptions {
            base_dir: dir.join("local"),
            agent_bin: agent,
            daemon_url: "wss://127.0.0.1:1/v1/agent".to_owned(),
            ca_file: PathBuf::from("/nonexistent/ca.pem"),
            max_nodes,
            heartbeat_interval_ms: 1_000,
            stop_timeout: Duration::from_secs(5),
        },
        Arc::new(Ticking::default()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_provider_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = provider(dir.path(), 8);
    provider_suite(&p, "local", "local").await;
    let left = std::fs::read_dir(dir.path().join("local/nodes"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "every node directory is removed with its node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_a_process_started_with_its_config() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = provider(dir.path(), 1);
    let offering = p.offerings().await.unwrap_or_else(|e| panic!("{e}"));
    let spec = fleet_core::provider::NodeSpec {
        node: fleet_core::NodeId::new("n-1").unwrap_or_else(|e| panic!("{e}")),
        pool: fleet_core::PoolName::new("local").unwrap_or_else(|e| panic!("{e}")),
        instance_type: offering[0].instance_type.clone(),
        market: fleet_core::provider::Market::OnDemand,
        source: fleet_core::provider::BootSource::Image {
            image: "local".to_owned(),
        },
        tags: Default::default(),
        bootstrap_token: Some(fleet_core::protocol::Secret::new("t0ken".to_owned())),
    };
    let inst = p.create(&spec).await.unwrap_or_else(|e| panic!("{e}"));
    let node_dir = dir.path().join("local/nodes/n-1");
    let starts = node_dir.join("starts");
    wait_for(|| std::fs::read_to_string(&starts).is_ok_and(|s| s.lines().count() == 1)).await;
    let config = std::fs::read_to_string(node_dir.join("agent.toml")).unwrap_or_default();
    assert!(config.contains("node_id = \"n-1\""), "{config}");
    let token = std::fs::read_to_string(node_dir.join("bootstrap.token")).unwrap_or_default();
    assert_eq!(token, "t0ken");
    let mode = std::fs::metadata(node_dir.join("bootstrap.token"))
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600, "the bootstrap token is private to the agent");

    // A second node is over max_nodes.
    let mut second = spec.clone();
    second.node = fleet_core::NodeId::new("n-2").unwrap_or_else(|e| panic!("{e}"));
    let err = p.create(&second).await.err().map(|e| e.kind());
    assert_eq!(err, Some("quota"));

    let r = InstanceRef {
        node: inst.node.clone(),
        provider_id: inst.provider_id.clone(),
    };
    p.stop(&r).await.unwrap_or_else(|e| panic!("{e}"));
    p.start(&r).await.unwrap_or_else(|e| panic!("{e}"));
    wait_for(|| std::fs::read_to_string(&starts).is_ok_and(|s| s.lines().count() == 2)).await;
    p.delete(&r).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!node_dir.exists());
}

async fn wait_for(mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not met within 5 s");
}
