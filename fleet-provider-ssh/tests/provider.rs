//! The ssh provider against a real OpenSSH server on loopback: the provider
//! conformance suite, host sharing between fleets, stop leaving the
//! machine, and hosts that do not answer.
//!
//! The agent installed here is a stand-in script (it stays up until
//! killed): this is the provider's contract — install, start, stop,
//! remove, list over SSH. The real agent serving a claim through a host of
//! this provider is fleet-e2e's `ssh` test.
#![cfg(feature = "test-sshd")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_core::clock::Clock;
use fleet_core::ids::{InstanceType, Millis, NodeId, PoolName};
use fleet_core::provider::{
    BootSource, InstanceState, Market, NodeSpec, Provider, ProviderError, TAG_FLEET, TAG_NAMESPACE,
    TagFilter,
};
use fleet_provider_ssh::sshd::Sshd;
use fleet_provider_ssh::{HostKeys, SSH_TYPE, SshConfig, SshContext, SshHost, SshProvider};

struct Fixed;

impl Clock for Fixed {
    fn now(&self) -> Millis {
        1_767_225_600_000
    }
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A stand-in for fleet-agent: runs until killed.
fn fake_agent(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("fleet-agent");
    must(std::fs::write(
        &path,
        "#!/bin/sh\necho \"config $FLEET_AGENT_CONFIG\"\nwhile :; do sleep 1; done\n",
    ));
    must(std::fs::set_permissions(
        &path,
        std::fs::Permissions::from_mode(0o755),
    ));
    path
}

fn host(sshd: &Sshd, root: &Path, name: &str) -> SshHost {
    SshHost {
        host: "127.0.0.1".to_owned(),
        port: Some(sshd.port),
        user: Some(sshd.user.clone()),
        identity: Some(sshd.identity.clone()),
        name: Some(name.to_owned()),
        dir: Some(root.join(name).display().to_string()),
        gateway_port: None,
        gateway_host: None,
        pools: Vec::new(),
    }
}

fn provider(sshd: &Sshd, dir: &Path, hosts: Vec<SshHost>) -> SshProvider {
    let cfg = SshConfig {
        hosts,
        daemon_url: "wss://127.0.0.1:9/v1/agent".to_owned(),
        agent_bin: None,
        remote_agent_bin: None,
        host_keys: HostKeys::Strict,
        known_hosts_file: Some(sshd.known_hosts.clone()),
        ssh_config: Some(dir.join("no-ssh-config")),
        connect_timeout_secs: 5,
        stop_timeout_secs: 5,
        hourly_price: None,
    };
    must(std::fs::write(dir.join("no-ssh-config"), ""));
    let ctx = SshContext {
        agent_bin: fake_agent(dir),
        ca_pem: "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n".to_owned(),
        heartbeat_interval_ms: 1_000,
    };
    must(SshProvider::new(cfg, ctx, Arc::new(Fixed)))
}

fn spec(node: &str, fleet: &str) -> NodeSpec {
    NodeSpec {
        node: must(NodeId::new(node)),
        pool: must(PoolName::new("byo")),
        instance_type: must(InstanceType::new(SSH_TYPE)),
        market: Market::OnDemand,
        source: BootSource::Image {
            image: "-".to_owned(),
        },
        tags: BTreeMap::from([
            (TAG_NAMESPACE.to_owned(), "fleet-test".to_owned()),
            (TAG_FLEET.to_owned(), fleet.to_owned()),
        ]),
        bootstrap_token: Some(fleet_core::protocol::Secret::new("tok-123")),
    }
}

/// The agent's pid on a host, if it runs.
fn agent_pid(root: &Path, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(root.join(name).join("node/agent.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("fleet-agent")
        .then_some(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_provider_conformance_suite_against_a_loopback_sshd() {
    let dir = must(tempfile::tempdir());
    let sshd = must(Sshd::start(&dir.path().join("sshd")));
    let root = dir.path().join("hosts");
    let p = provider(
        &sshd,
        dir.path(),
        vec![host(&sshd, &root, "h1"), host(&sshd, &root, "h2")],
    );
    fleet_core::testkit::provider::provider_suite(&p, "ssh1", "-").await;
    // Every agent the suite started is gone, and so are the node files;
    // the agent binary stays installed for the next node.
    for h in ["h1", "h2"] {
        assert_eq!(agent_pid(&root, h), None, "{h}");
        assert!(!root.join(h).join("node").exists(), "{h}");
        assert!(root.join(h).join("bin/fleet-agent").exists(), "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_its_agent_with_its_files_and_stop_leaves_the_machine() {
    let dir = must(tempfile::tempdir());
    let sshd = must(Sshd::start(&dir.path().join("sshd")));
    let root = dir.path().join("hosts");
    let mut h1 = host(&sshd, &root, "h1");
    h1.gateway_port = Some(17443);
    // A host kept for another pool takes none of this one's nodes.
    let mut gpu = host(&sshd, &root, "gpu");
    gpu.pools = vec![must(PoolName::new("gpu"))];
    let p = provider(&sshd, dir.path(), vec![gpu, h1]);

    let offerings = must(p.offerings().await);
    assert_eq!(offerings.len(), 1);
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(offerings[0].cpus as usize, host_cpus, "probed over ssh");

    let inst = must(p.create(&spec("n1", "fleet-a")).await);
    assert_eq!(inst.provider_id, "h1/n1");
    assert_eq!(inst.address.as_deref(), Some("127.0.0.1"));
    let node = root.join("h1/node");
    let config = must(std::fs::read_to_string(node.join("agent.toml")));
    assert!(config.contains("node_id = \"n1\""), "{config}");
    assert!(
        config.contains("daemon_url = \"wss://127.0.0.1:9/v1/agent\""),
        "{config}"
    );
    assert!(
        config.contains("gateway_advertise = \"127.0.0.1:17443\""),
        "{config}"
    );
    assert!(
        !root.join("gpu/instance.json").exists(),
        "the gpu host is kept"
    );
    assert!(
        config.contains(&format!(
            "ca_file = \"{}/ca.pem\"",
            must(node.canonicalize()).display()
        )),
        "absolute paths: {config}"
    );
    assert_eq!(
        must(std::fs::read_to_string(node.join("bootstrap.token"))),
        "tok-123"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = must(std::fs::metadata(node.join("bootstrap.token")))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the token is the login user's only");
    }
    // The host's record is PROTOCOL.md's `SshHostRecord`.
    let record: fleet_core::protocol::SshHostRecord = must(serde_json::from_slice(&must(
        std::fs::read(root.join("h1/instance.json")),
    )));
    assert_eq!(
        (record.node.as_str(), record.provider_id.as_str()),
        ("n1", "h1/n1")
    );
    assert_eq!(
        record.tags.get(TAG_FLEET).map(String::as_str),
        Some("fleet-a")
    );
    let first = agent_pid(&root, "h1").unwrap_or_else(|| panic!("the agent is not running"));
    // The stand-in printed where its config is: started with it.
    let log = must(std::fs::read_to_string(node.join("agent.log")));
    assert!(log.contains("node/agent.toml"), "{log}");

    // Creating again is the same node; nothing restarts.
    let again = must(p.create(&spec("n1", "fleet-a")).await);
    assert_eq!(again.provider_id, inst.provider_id);
    assert_eq!(agent_pid(&root, "h1"), Some(first));

    // Stop = stop the agent: the machine and the node's files stay.
    let stopped = must(p.stop(&inst.as_ref()).await);
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert_eq!(agent_pid(&root, "h1"), None);
    assert!(node.join("agent.toml").exists());
    let listed = must(p.list(&TagFilter::default()).await);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, InstanceState::Stopped);

    let started = must(p.start(&inst.as_ref()).await);
    assert_eq!(started.state, InstanceState::Running);
    let second = agent_pid(&root, "h1").unwrap_or_else(|| panic!("not restarted"));
    assert_ne!(second, first);

    // One host, one node: another create is refused for quota.
    match p.create(&spec("n2", "fleet-a")).await {
        Err(ProviderError::Quota(why)) => assert!(why.contains("take pool byo"), "{why}"),
        other => panic!("{other:?}"),
    }
    must(p.delete(&inst.as_ref()).await);
    assert_eq!(agent_pid(&root, "h1"), None);
    assert!(!node.exists());
    assert!(root.join("h1").exists(), "the fleet dir stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_fleets_host_is_never_taken_nor_cleared() {
    let dir = must(tempfile::tempdir());
    let sshd = must(Sshd::start(&dir.path().join("sshd")));
    let root = dir.path().join("hosts");
    let hosts = vec![host(&sshd, &root, "h1"), host(&sshd, &root, "h2")];
    let a = provider(&sshd, dir.path(), hosts.clone());
    let b = provider(&sshd, dir.path(), hosts);

    let mine = must(a.create(&spec("n1", "fleet-a")).await);
    let theirs = must(b.create(&spec("n1", "fleet-b")).await);
    assert_ne!(
        mine.provider_id, theirs.provider_id,
        "each took its own host"
    );
    match a.create(&spec("n2", "fleet-a")).await {
        Err(ProviderError::Quota(_)) => {}
        other => panic!("the other fleet's host must not be taken: {other:?}"),
    }
    let filter =
        |fleet: &str| TagFilter(BTreeMap::from([(TAG_FLEET.to_owned(), fleet.to_owned())]));
    let seen = must(a.list(&filter("fleet-a")).await);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].provider_id, mine.provider_id);

    // A delete naming the other fleet's host but not its instance removes
    // nothing there.
    let mut wrong = theirs.as_ref();
    wrong.provider_id = format!("{}/n9", theirs.provider_id.split('/').next().unwrap_or(""));
    wrong.node = must(NodeId::new("n9"));
    must(a.delete(&wrong).await);
    let theirs_host = theirs
        .provider_id
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    assert!(agent_pid(&root, &theirs_host).is_some());
    assert!(root.join(&theirs_host).join("instance.json").exists());

    must(a.delete(&mine.as_ref()).await);
    must(b.delete(&theirs.as_ref()).await);
    assert!(must(a.list(&TagFilter::default()).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_answer_fails_list_and_is_passed_over_by_create() {
    let dir = must(tempfile::tempdir());
    let sshd = must(Sshd::start(&dir.path().join("sshd")));
    let root = dir.path().join("hosts");
    let mut dead = host(&sshd, &root, "dead");
    dead.port = Some(
        must(std::net::TcpListener::bind("127.0.0.1:0"))
            .local_addr()
            .map_or(1, |a| a.port()),
    );
    let p = provider(&sshd, dir.path(), vec![dead, host(&sshd, &root, "h1")]);
    match p.list(&TagFilter::default()).await {
        Err(ProviderError::Transient(why)) => assert!(why.contains("ssh dead"), "{why}"),
        other => panic!("a host that does not answer must fail list: {other:?}"),
    }
    let inst = must(p.create(&spec("n1", "fleet-a")).await);
    assert_eq!(inst.provider_id, "h1/n1");
    must(p.delete(&inst.as_ref()).await);
    // Bad settings are refused up front.
    let bad = SshConfig {
        hosts: Vec::new(),
        daemon_url: "wss://x/v1/agent".into(),
        agent_bin: None,
        remote_agent_bin: None,
        host_keys: HostKeys::Strict,
        known_hosts_file: None,
        ssh_config: None,
        connect_timeout_secs: 1,
        stop_timeout_secs: 1,
        hourly_price: None,
    };
    let ctx = SshContext {
        agent_bin: PathBuf::from("/nonexistent"),
        ca_pem: String::new(),
        heartbeat_interval_ms: 1_000,
    };
    let err = SshProvider::new(bad, ctx, Arc::new(Fixed))
        .err()
        .unwrap_or_default();
    assert!(err.contains("at least one"), "{err}");
}
