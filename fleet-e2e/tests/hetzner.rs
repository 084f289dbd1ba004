//! The daemon on the Hetzner provider, end to end except for the virtual
//! machine itself: the daemon (a real process) creates a server through a
//! fake of the Hetzner Cloud API on loopback, with user data rendered from
//! its template; this test plays the server's first boot — it reads that
//! user data from the fake and starts a real `fleet-agent` with it — and the
//! node then serves a claim through its mTLS gateway.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use fleet_agent::exec_api::{Client, ExecRequest};
use fleet_core::transport::ClaimClient;
use fleet_core::{ClaimId, PoolName};
use fleet_provider_hetzner::fake::FakeHetzner;

/// The part of the user data before this line is the pool CA, the rest the
/// agent's config (a real template would be a cloud-init script writing
/// both; see fleet-provider-hetzner/examples/cloud-init.sh).
const SPLIT: &str = "----- agent.toml -----\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hetzner_server_boots_an_agent_that_serves_a_claim() {
    let fake = FakeHetzner::start("hz-token").await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let node_dir = dir.path().join("server");
    std::fs::create_dir_all(&node_dir).unwrap_or_else(|e| panic!("{e}"));
    let template = format!(
        "{{{{ca_pem}}}}\n{SPLIT}\
         node_id = \"{{{{node}}}}\"\n\
         daemon_url = \"{{{{daemon_url}}}}\"\n\
         ca_file = {ca:?}\n\
         bootstrap_token_file = {token:?}\n\
         identity_dir = {identity:?}\n\
         work_dir = {work:?}\n\
         gateway_listen = \"127.0.0.1:0\"\n\
         reconnect_min_ms = 100\n\
         reconnect_max_ms = 1000\n\
         [labels]\npool = \"{{{{pool}}}}\"\n\
         # token: {{{{bootstrap_token}}}}\n",
        ca = node_dir.join("ca.pem").display().to_string(),
        token = node_dir.join("bootstrap.token").display().to_string(),
        identity = node_dir.join("identity").display().to_string(),
        work = node_dir.join("work").display().to_string(),
    );
    let template_file = dir.path().join("user-data");
    std::fs::write(&template_file, template).unwrap_or_else(|e| panic!("{e}"));
    let token_file = dir.path().join("hcloud.token");
    std::fs::write(&token_file, "hz-token\n").unwrap_or_else(|e| panic!("{e}"));
    let url = fake.url();
    let mut daemon = Daemon::start_with(
        dir.path(),
        |ws| {
            format!(
                "kind = \"hetzner\"\nlocation = \"fsn1\"\napi_url = {url:?}\n\
                 token_file = {token:?}\ndaemon_url = \"wss://127.0.0.1:{ws}\"\n\
                 user_data = {template:?}\nserver_types = [\"cx22\", \"cx32\"]\n",
                token = token_file.display().to_string(),
                template = template_file.display().to_string(),
            )
        },
        "[[pool]]\nname = \"hz\"\ninstance_types = [\"cx22\"]\nimage = \"ubuntu-24.04\"\n\
         strategy = { kind = \"cold_image\", idle_timeout_ms = 600000 }\n",
    );

    // A claim makes the daemon create a server.
    let client = daemon.claim_client().await;
    let identity = age::x25519::Identity::generate();
    let mut req = request("hz-1", Some(identity.to_public().to_string()));
    req.pool = PoolName::new("hz").unwrap_or_else(|e| panic!("{e}"));
    let claiming = tokio::spawn({
        let client = client.clone();
        async move { client.claim(req).await }
    });
    let server = eventually(30, || async { fake.servers().into_iter().next() })
        .await
        .unwrap_or_else(|| panic!("no server created; see {}/daemon.log", dir.path().display()));
    assert_eq!(server.server_type, "cx22");
    assert_eq!(server.image, "ubuntu-24.04");
    assert_eq!(
        server.labels.get("fleet-pool").map(String::as_str),
        Some("hz")
    );

    // The server's first boot: what cloud-init would do with the user data.
    let user_data = server.user_data.unwrap_or_else(|| panic!("no user data"));
    let (ca_pem, agent_toml) = user_data
        .split_once(SPLIT)
        .unwrap_or_else(|| panic!("user data: {user_data}"));
    assert!(
        ca_pem.contains("BEGIN CERTIFICATE"),
        "the pool CA is filled in"
    );
    let token = agent_toml
        .lines()
        .find_map(|l| l.strip_prefix("# token: "))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| panic!("no bootstrap token in the user data"));
    std::fs::write(node_dir.join("ca.pem"), ca_pem).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(node_dir.join("bootstrap.token"), token).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(node_dir.join("agent.toml"), agent_toml).unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::File::create(node_dir.join("agent.log")).unwrap_or_else(|e| panic!("{e}"));
    let mut agent = Command::new(bin("fleet-agent", "fleet-agent"))
        .env("FLEET_AGENT_CONFIG", node_dir.join("agent.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting the agent: {e}"));

    let grant = tokio::time::timeout(Duration::from_secs(60), claiming)
        .await
        .unwrap_or_else(|_| panic!("no grant; see {}", dir.path().display()))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("claim: {e}"));
    assert_eq!(
        grant.claim_id,
        ClaimId::new("hz-1").unwrap_or_else(|e| panic!("{e}"))
    );
    let bundle = open_grant(&daemon.discovery, &grant, &identity);
    let tls = gateway(&bundle)
        .await
        .unwrap_or_else(|e| panic!("gateway: {e}"));
    let out = Client::new(tls)
        .exec(&ExecRequest {
            argv: vec!["echo".into(), "on hetzner".into()],
            env: Default::default(),
            cwd: None,
            timeout_ms: Some(10_000),
        })
        .await
        .unwrap_or_else(|e| panic!("exec: {e}"));
    assert_eq!(out.code, Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "on hetzner");

    // The daemon knows the node as the fake's server and prices it as Hetzner does.
    let (_, nodes) = daemon.get("/v1/nodes").await;
    assert!(nodes.contains("cx22"), "{nodes}");
    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(daemon.stop(), Some(0), "clean exit on SIGTERM");
}
