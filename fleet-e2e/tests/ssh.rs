//! Bring-your-own machines: the real daemon with the `ssh` provider over a
//! real OpenSSH server on loopback. The daemon installs the real
//! `fleet-agent` on a host over SSH, the agent joins with its bootstrap
//! token, a program claims the node and runs a command there; after a
//! `kill -9` of the daemon the restarted one adopts the running agent
//! (same process, same node) and serves the next claim on it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, free_port, request};
use fleet_client::{ClientConfig, ExecRequest, FleetClient};
use fleet_provider_ssh::sshd::Sshd;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// The `[provider]` body: two hosts on the loopback sshd, each with a
/// fleet directory and a gateway port of its own.
fn provider(sshd: &Sshd, hosts: &Path, ws_port: u16) -> String {
    let agent = common::bin("fleet-agent");
    let mut text = format!(
        "kind = \"ssh\"\ndaemon_url = \"wss://127.0.0.1:{ws_port}\"\nagent_bin = {agent:?}\n\
         host_keys = \"strict\"\nknown_hosts_file = {kh:?}\n",
        agent = agent.display().to_string(),
        kh = sshd.known_hosts.display().to_string(),
    );
    for name in ["h1", "h2"] {
        text.push_str(&format!(
            "[[provider.hosts]]\nhost = \"127.0.0.1\"\nport = {port}\nuser = {user:?}\n\
             identity = {id:?}\nname = \"{name}\"\ndir = {dir:?}\ngateway_port = {gw}\n\
             pools = [\"default\"]\n",
            port = sshd.port,
            user = sshd.user,
            id = sshd.identity.display().to_string(),
            dir = hosts.join(name).display().to_string(),
            gw = free_port(),
        ));
    }
    text
}

/// The pid of the agent on each host that runs one.
fn agents(hosts: &Path) -> Vec<(String, i32)> {
    ["h1", "h2"]
        .into_iter()
        .filter_map(|h| {
            let pid = std::fs::read_to_string(hosts.join(h).join("node/agent.pid")).ok()?;
            let pid: i32 = pid.trim().parse().ok()?;
            std::path::Path::new(&format!("/proc/{pid}"))
                .exists()
                .then(|| (h.to_owned(), pid))
        })
        .collect()
}

async fn client(d: &Daemon) -> FleetClient {
    let cfg = must(ClientConfig::from_discovery(&d.discovery)).token(d.token.clone());
    must(FleetClient::connect(cfg).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byo_host_over_ssh_serves_a_claim_and_is_adopted_after_a_daemon_crash() {
    let dir = must(tempfile::tempdir());
    let sshd = must(Sshd::start(&dir.path().join("sshd")));
    let hosts: PathBuf = dir.path().join("hosts");
    let mut daemon = Daemon::start_with(dir.path(), |ws| provider(&sshd, &hosts, ws), "");
    let _cleanup = KillAgents(hosts.clone());

    let fleet = client(&daemon).await;
    let claim = tokio::time::timeout(Duration::from_secs(120), fleet.claim(request("s1", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant; see {}", dir.path().join("daemon.log").display()));
    let claim = must(claim);
    let out = must(
        claim
            .exec(&ExecRequest::new(["sh", "-c", "echo on-$(pwd)"]))
            .await,
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.code, Some(0));
    // The command ran in the node's work dir, on a host of the list.
    let running = agents(&hosts);
    assert_eq!(
        running.len(),
        1,
        "one host serves the one node: {running:?}"
    );
    let (host, pid) = running[0].clone();
    assert!(
        text.contains(&format!(
            "{}/{host}/node/work",
            must(hosts.canonicalize()).display()
        )),
        "{text}"
    );
    let node = claim.node().clone();
    must(claim.release().await);

    // kill -9 and restart: the agent on the host is adopted, not replaced.
    daemon.crash_and_restart();
    let fleet = client(&daemon).await;
    let claim = tokio::time::timeout(Duration::from_secs(120), fleet.claim(request("s2", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant after the restart"));
    let claim = must(claim);
    assert_eq!(claim.node(), &node, "the same node serves the next claim");
    assert_eq!(agents(&hosts), vec![(host, pid)], "the same agent process");
    let out = must(claim.exec(&ExecRequest::new(["true"])).await);
    assert_eq!(out.code, Some(0));
    must(claim.release().await);
    daemon.stop();
}

/// Agents started on the hosts outlive the daemon; the test ends them.
struct KillAgents(PathBuf);

impl Drop for KillAgents {
    fn drop(&mut self) {
        for (_, pid) in agents(&self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
