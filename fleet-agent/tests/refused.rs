//! The `fleet-agent` binary against a real `fleet_transport_ws::WsServer`
//! that refuses it: a definitive refusal (its bootstrap token unknown or
//! used) ends the agent with exit code 3 and one clear line after one
//! attempt; a daemon that is not there yet, or cannot authenticate for now,
//! is retried until the agent joins.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{Ca, TestResult, temp_dir};
use fleet_core::ids::NodeId;
use fleet_core::protocol::{AgentMsg, NodeIdentity, Secret};
use fleet_core::transport::{Inbound, Transport};
use fleet_transport_ws::{
    AgentAuth, AgentHelloInfo, AuthError, ServerTlsConfig, WsConfig, WsServer,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");

/// Refuses the first `undecided` hellos as unavailable; then accepts the
/// bootstrap token `token` for `node` (with `identity`) if given, and
/// refuses every other token for good. Counts the hellos it judged.
struct Scripted {
    undecided: u32,
    accept: Option<(String, NodeId, NodeIdentity)>,
    calls: AtomicU32,
}

#[async_trait]
impl AgentAuth for Scripted {
    async fn authenticate(
        &self,
        hello: &AgentHelloInfo,
    ) -> Result<Option<NodeIdentity>, AuthError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.undecided {
            return Err(AuthError::Unavailable("store unavailable".to_owned()));
        }
        match (&self.accept, &hello.bootstrap_token) {
            (Some((token, node, identity)), Some(t))
                if t.expose() == token && *node == hello.node =>
            {
                Ok(Some(identity.clone()))
            }
            _ => Err(AuthError::BadToken),
        }
    }
}

async fn serve(
    ca: &Ca,
    port: u16,
    auth: Arc<Scripted>,
) -> Result<WsServer, Box<dyn std::error::Error + Send + Sync>> {
    let cert = ca.server_cert(&["localhost", "127.0.0.1"])?;
    let (server, _) = WsServer::bind(
        format!("127.0.0.1:{port}").parse()?,
        &ServerTlsConfig {
            cert_chain_pem: cert.cert_pem,
            key_pem: Secret::new(cert.key_pem),
            client_ca_pem: Some(ca.pem.clone()),
        },
        auth,
        WsConfig::default(),
    )
    .await?;
    Ok(server)
}

/// An agent config dialing `wss://127.0.0.1:<port>` with `token`.
fn agent_toml(dir: &Path, ca: &Ca, port: u16, token: &str) -> std::io::Result<std::path::PathBuf> {
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let token_file = dir.join("bootstrap.token");
    std::fs::write(&token_file, token)?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"n-refused\"\n\
             daemon_url = \"wss://127.0.0.1:{port}\"\n\
             ca_file = {ca:?}\n\
             bootstrap_token_file = {token:?}\n\
             identity_dir = {identity:?}\n\
             work_dir = {work:?}\n\
             reconnect_min_ms = 50\n\
             reconnect_max_ms = 200\n",
            ca = ca_file.display().to_string(),
            token = token_file.display().to_string(),
            identity = dir.join("identity").display().to_string(),
            work = dir.join("work").display().to_string(),
        ),
    )?;
    Ok(config)
}

/// The agent binary on `config`, its stderr piped, killed when dropped.
fn spawn_agent(config: &Path) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new(BIN)
        .env("FLEET_AGENT_CONFIG", config)
        .env_remove("FLEET_AGENT_BOOTSTRAP_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bootstrap_token_ends_the_agent_with_exit_3() -> TestResult {
    let ca = Ca::new("pool ca")?;
    let port = free_port()?;
    let auth = Arc::new(Scripted {
        undecided: 0,
        accept: None,
        calls: AtomicU32::new(0),
    });
    let _server = serve(&ca, port, auth.clone()).await?;
    let dir = temp_dir("refused");
    let config = agent_toml(&dir, &ca, port, "spent-token")?;
    let child = spawn_agent(&config)?;
    let out = timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| "the refused agent is still retrying after 30 s")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("fleet-agent: "), "{stderr}");
    assert!(
        last.contains("refused this agent for good (bad_token)"),
        "{last}"
    );
    assert!(last.contains("unknown or already used"), "{last}");
    assert!(last.contains("not retrying"), "{last}");
    assert!(
        !stderr.contains("spent-token"),
        "the token leaked: {stderr}"
    );
    assert_eq!(auth.calls.load(Ordering::SeqCst), 1, "one attempt only");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_or_undecided_daemon_is_retried_until_the_agent_joins() -> TestResult {
    let ca = Ca::new("pool ca")?;
    let node = NodeId::new("n-refused")?;
    // Nothing listens on the port yet: the agent keeps dialing.
    let port = free_port()?;
    let dir = temp_dir("refused-later");
    let config = agent_toml(&dir, &ca, port, "good-token")?;
    let child = spawn_agent(&config)?;
    let pid = Pid::from_raw(i32::try_from(child.id().unwrap_or(0))?);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Then a daemon that cannot decide three times (1013), then accepts.
    let auth = Arc::new(Scripted {
        undecided: 3,
        accept: Some((
            "good-token".to_owned(),
            node.clone(),
            ca.node_identity(&node)?,
        )),
        calls: AtomicU32::new(0),
    });
    let server = serve(&ca, port, auth.clone()).await?;
    let joined = timeout(Duration::from_secs(30), async {
        loop {
            match server.recv().await {
                Ok(Inbound::Agent {
                    node: n,
                    msg: AgentMsg::Hello { .. },
                }) => return Ok(n),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .map_err(|_| "the agent never joined")??;
    assert_eq!(joined, node);
    assert_eq!(
        auth.calls.load(Ordering::SeqCst),
        4,
        "3 undecided, then accepted"
    );

    kill(pid, Signal::SIGTERM)?;
    let out = timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(
        stderr.contains("cannot connect to the daemon; retrying"),
        "{stderr}"
    );
    assert!(
        stderr.contains("refused the session for now; retrying"),
        "{stderr}"
    );
    assert!(!stderr.contains("not retrying"), "{stderr}");
    Ok(())
}
