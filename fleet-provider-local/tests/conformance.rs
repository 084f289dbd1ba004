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
use fleet_provider_local::{KeptLogs, LocalOptions, LocalProvider};

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
echo "agent of $(dirname "$cfg") up" >&2
trap 'exit 0' TERM
while :; do sleep 0.05; done
"#;

fn provider(dir: &Path, max_nodes: u32) -> LocalProvider {
    provider_with(dir, max_nodes, None, Arc::new(Ticking::default()))
}

fn provider_with(
    dir: &Path,
    max_nodes: u32,
    kept_logs: Option<KeptLogs>,
    clock: Arc<dyn Clock>,
) -> LocalProvider {
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
            kept_logs,
            hourly_price: fleet_core::money::HourlyPrice(fleet_core::money::Money::ZERO),
        },
        clock,
    )
}

/// The wall clock: kept logs are aged by their files' modification times.
struct Wall;

impl Clock for Wall {
    fn now(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

fn spec(node: &str) -> fleet_core::provider::NodeSpec {
    fleet_core::provider::NodeSpec {
        node: fleet_core::NodeId::new(node).unwrap_or_else(|e| panic!("{e}")),
        pool: fleet_core::PoolName::new("local").unwrap_or_else(|e| panic!("{e}")),
        instance_type: fleet_core::InstanceType::new(fleet_provider_local::LOCAL_TYPE)
            .unwrap_or_else(|e| panic!("{e}")),
        market: fleet_core::provider::Market::OnDemand,
        source: fleet_core::provider::BootSource::Image {
            image: "local".to_owned(),
        },
        tags: Default::default(),
        bootstrap_token: None,
    }
}

/// A file in `dir` last written `ago` before now, `len` bytes long.
fn old_file(dir: &Path, name: &str, ago: Duration, len: usize) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![b'x'; len]).unwrap_or_else(|e| panic!("{e}"));
    let f = std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    f.set_modified(std::time::SystemTime::now() - ago)
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A deleted node's agent log outlives its directory, in the kept-logs
/// directory, until it is too old or too many or too large are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_nodes_agent_log_is_kept_within_bounds() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kept_dir = dir.path().join("logs/agents");
    std::fs::create_dir_all(&kept_dir).unwrap_or_else(|e| panic!("{e}"));
    let hour = Duration::from_secs(3_600);
    // Before the provider is made: one log past the age, one not a log.
    let stale = old_file(&kept_dir, "gone-1.1.log", 25 * hour, 10);
    let other = old_file(&kept_dir, "notes.txt", 25 * hour, 10);
    let kept = KeptLogs {
        dir: kept_dir.clone(),
        max_age: 24 * hour,
        max_files: 3,
        max_bytes: 4_096,
    };
    let p = provider_with(dir.path(), 4, Some(kept.clone()), Arc::new(Wall));
    assert!(!stale.exists(), "pruned when the provider is made");
    assert!(other.exists(), "only logs are pruned");

    // Two older logs, then three nodes deleted: the three newest stay.
    old_file(&kept_dir, "gone-2.2.log", 2 * hour, 10);
    old_file(&kept_dir, "gone-3.3.log", hour, 10);
    for n in ["n-1", "n-2", "n-3"] {
        let inst = p.create(&spec(n)).await.unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("local/nodes").join(n).join("agent.log");
        wait_for(|| std::fs::read_to_string(&log).is_ok_and(|s| s.contains(" up"))).await;
        p.delete(&inst.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!dir.path().join("local/nodes").join(n).exists());
    }
    let left = names(&kept_dir);
    assert_eq!(left.len(), 4, "{left:?}");
    assert_eq!(left[3], "notes.txt");
    for (name, node) in left[..3].iter().zip(["n-1", "n-2", "n-3"]) {
        assert!(name.starts_with(&format!("{node}.")), "{left:?}");
        let text = std::fs::read_to_string(kept_dir.join(name)).unwrap_or_default();
        assert!(
            text.contains(&format!("nodes/{node} up")),
            "{name} is {node}'s log: {text:?}"
        );
    }

    // The byte bound: a large recent log pushes the older ones out.
    let big = old_file(&kept_dir, "big.9.log", Duration::ZERO, 4_090);
    let removed = kept.prune(Wall.now()).unwrap_or_else(|e| panic!("{e}"));
    assert!(big.exists());
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert_eq!(names(&kept_dir), vec!["big.9.log", "notes.txt"]);
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
