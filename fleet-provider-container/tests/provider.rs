//! The container provider against a real engine on this host (Podman, or
//! Docker): the provider conformance suite, a node's container and files,
//! adoption by a new provider, and another fleet's containers left alone.
//!
//! The agent in these containers is a stand-in script (it stays up until
//! killed): the provider's contract is the container's life. The real
//! agent serving a claim from a container is fleet-e2e's `container`
//! test.
#![cfg(feature = "test-engine")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_core::clock::Clock;
use fleet_core::ids::{InstanceType, Millis, NodeId, PoolName};
use fleet_core::provider::{
    BootSource, InstanceState, Market, NodeSpec, Provider, ProviderError, TAG_FLEET, TAG_NAMESPACE,
    TAG_NODE, TagFilter,
};
use fleet_provider_container::{
    CONTAINER_TYPE, ContainerConfig, ContainerContext, ContainerProvider, testing,
};

struct Fixed;

impl Clock for Fixed {
    fn now(&self) -> Millis {
        1_767_225_600_000
    }
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A stand-in for fleet-agent: runs until stopped (it exits on SIGTERM,
/// as the agent drains and exits).
fn fake_agent(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("fleet-agent");
    must(std::fs::write(
        &path,
        "#!/bin/sh\ntrap 'exit 0' TERM\necho \"config $FLEET_AGENT_CONFIG\"\nwhile :; do sleep 1 & wait $!; done\n",
    ));
    must(std::fs::set_permissions(
        &path,
        std::fs::Permissions::from_mode(0o755),
    ));
    path
}

fn provider(cfg: &ContainerConfig, dir: &Path) -> ContainerProvider {
    let ctx = ContainerContext {
        base_dir: dir.join("base"),
        agent_bin: fake_agent(dir),
        daemon_url: "wss://127.0.0.1:9/v1/agent".to_owned(),
        ca_pem: "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n".to_owned(),
        heartbeat_interval_ms: 1_000,
    };
    must(ContainerProvider::new(cfg.clone(), ctx, Arc::new(Fixed)))
}

fn spec(node: &str, namespace: &str, fleet: &str) -> NodeSpec {
    let node = must(NodeId::new(node));
    NodeSpec {
        node: node.clone(),
        pool: must(PoolName::new("boxes")),
        instance_type: must(InstanceType::new(CONTAINER_TYPE)),
        market: Market::OnDemand,
        source: BootSource::Image {
            image: "default".to_owned(),
        },
        tags: BTreeMap::from([
            (TAG_NODE.to_owned(), node.as_str().to_owned()),
            (TAG_NAMESPACE.to_owned(), namespace.to_owned()),
            (TAG_FLEET.to_owned(), fleet.to_owned()),
            ("team".to_owned(), "builds".to_owned()),
        ]),
        bootstrap_token: Some(fleet_core::protocol::Secret::new("tok-9")),
    }
}

/// The engine config, or the test fails saying why.
fn engine(dir: &Path) -> ContainerConfig {
    testing::engine(&dir.join("engine")).unwrap_or_else(|e| panic!("{e}"))
}

/// A namespace unique to this test run: the engine is shared.
fn namespace(case: &str) -> String {
    format!("fleet-test-{case}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_provider_conformance_suite_against_a_real_engine() {
    let dir = must(tempfile::tempdir());
    let cfg = engine(dir.path());
    let p = provider(&cfg, dir.path());
    let run = format!("ct{}", std::process::id());
    fleet_core::testkit::provider::provider_suite(&p, &run, "default").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_a_container_with_its_files_and_a_new_provider_adopts_it() {
    let dir = must(tempfile::tempdir());
    let cfg = engine(dir.path());
    let ns = namespace("node");
    let node = format!("c1-{}", std::process::id());
    let p = provider(&cfg, dir.path());
    let inst = must(p.create(&spec(&node, &ns, "fleet-a")).await);
    assert_eq!(inst.state, InstanceState::Running);
    assert_eq!(inst.tags.get("team").map(String::as_str), Some("builds"));
    let files = dir.path().join("base/nodes").join(&node);
    let config = must(std::fs::read_to_string(files.join("agent.toml")));
    assert!(
        config.contains("ca_file = \"/fleet/node/ca.pem\""),
        "{config}"
    );
    assert!(
        config.contains("gateway_listen = \"127.0.0.1:0\""),
        "{config}"
    );
    assert!(config.contains("\"team\" = \"builds\""), "{config}");
    assert_eq!(
        must(std::fs::read_to_string(files.join("bootstrap.token"))),
        "tok-9"
    );
    // The stand-in agent started with its config, inside the container.
    let logs = must(
        std::process::Command::new(&cfg.engine)
            .args(&cfg.engine_args)
            .envs(&cfg.engine_env)
            .args(["logs", inst.provider_id.as_str()])
            .output(),
    );
    let logs = String::from_utf8_lossy(&logs.stdout).to_string();
    assert!(logs.contains("config /fleet/node/agent.toml"), "{logs}");

    // A provider made anew (a restarted daemon) lists and adopts it.
    let again = provider(&cfg, dir.path());
    let filter = TagFilter(BTreeMap::from([(TAG_NAMESPACE.to_owned(), ns.clone())]));
    let seen = must(again.list(&filter).await);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].provider_id, inst.provider_id);
    let same = must(again.create(&spec(&node, &ns, "fleet-a")).await);
    assert_eq!(same.provider_id, inst.provider_id, "create is idempotent");

    // Another fleet asking for the same node id gets no container of ours.
    match again.create(&spec(&node, &ns, "fleet-b")).await {
        Err(ProviderError::AlreadyExists(_)) => {}
        other => panic!("another fleet's create must not adopt ours: {other:?}"),
    }
    // Nor may it delete ours by naming it with another node.
    let mut wrong = inst.as_ref();
    wrong.node = must(NodeId::new("someone-else"));
    must(again.delete(&wrong).await);
    assert_eq!(must(again.list(&filter).await).len(), 1);

    let stopped = must(again.stop(&inst.as_ref()).await);
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert!(
        files.join("agent.toml").exists(),
        "stop keeps the node's files"
    );
    let started = must(again.start(&inst.as_ref()).await);
    assert_eq!(started.state, InstanceState::Running);
    must(again.delete(&inst.as_ref()).await);
    assert!(must(again.list(&filter).await).is_empty());
    assert!(!files.exists());
    must(again.delete(&inst.as_ref()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_and_a_missing_engine_is_a_clear_error() {
    let dir = must(tempfile::tempdir());
    let base = ContainerConfig {
        engine: "/nonexistent/podman".to_owned(),
        engine_args: Vec::new(),
        engine_env: BTreeMap::new(),
        image: "img".to_owned(),
        run_args: Vec::new(),
        max_nodes: 2,
        gateway_host: "127.0.0.1".to_owned(),
        agent_bin: None,
        stop_timeout_secs: 1,
        call_timeout_secs: 5,
    };
    let ctx = |d: &Path| ContainerContext {
        base_dir: d.join("base"),
        agent_bin: d.join("fleet-agent"),
        daemon_url: "wss://127.0.0.1:9/v1/agent".to_owned(),
        ca_pem: String::new(),
        heartbeat_interval_ms: 1_000,
    };
    for (change, needle) in [
        (
            (|c: &mut ContainerConfig| c.image = String::new()) as fn(&mut ContainerConfig),
            "image",
        ),
        (|c: &mut ContainerConfig| c.max_nodes = 0, "max_nodes"),
        (
            |c: &mut ContainerConfig| c.gateway_host = "localhost".into(),
            "gateway_host",
        ),
    ] {
        let mut cfg = base.clone();
        change(&mut cfg);
        let err = ContainerProvider::new(cfg, ctx(dir.path()), Arc::new(Fixed))
            .err()
            .unwrap_or_default();
        assert!(err.contains(needle), "{err}");
    }
    let p = must(ContainerProvider::new(
        base,
        ctx(dir.path()),
        Arc::new(Fixed),
    ));
    match p.list(&TagFilter::default()).await {
        Err(ProviderError::Permanent(why)) => assert!(why.contains("cannot run"), "{why}"),
        other => panic!("{other:?}"),
    }
}
