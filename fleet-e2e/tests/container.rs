//! Nodes as containers: the real daemon with the `container` provider on
//! a real engine (Podman here), the real `fleet-agent` as the container's
//! process. A program claims the node and runs a command inside the
//! container; after a `kill -9` of the daemon the restarted one adopts the
//! same container and serves the next claim on it.

mod common;

use std::time::Duration;

use common::{Daemon, request};
use fleet_client::{ClientConfig, ExecRequest, FleetClient};
use fleet_provider_container::ContainerConfig;

fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The `[provider]` body for `engine`, with the real agent.
fn provider(engine: &ContainerConfig) -> String {
    let env: Vec<String> = engine
        .engine_env
        .iter()
        .map(|(k, v)| format!("{k} = {v:?}"))
        .collect();
    format!(
        "kind = \"container\"\nengine = {engine:?}\nengine_args = {args}\nengine_env = {{ {env} }}\n\
         image = {image:?}\nrun_args = {run}\nagent_bin = {agent:?}\nstop_timeout_secs = 5\n",
        engine = engine.engine,
        args = toml_list(&engine.engine_args),
        env = env.join(", "),
        image = engine.image,
        run = toml_list(&engine.run_args),
        agent = common::bin("fleet-agent").display().to_string(),
    )
}

/// The containers of this daemon's fleet: id, by the engine.
fn containers(engine: &ContainerConfig, fleet_id: &str) -> Vec<String> {
    let out = must(
        std::process::Command::new(&engine.engine)
            .args(&engine.engine_args)
            .envs(&engine.engine_env)
            .args(["ps", "-q", "--no-trunc", "--filter"])
            .arg(format!("label=fleet-id={fleet_id}"))
            .output(),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Removes the fleet's containers when the test ends, however it ends.
struct RemoveContainers(ContainerConfig, String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        for id in containers(&self.0, &self.1) {
            let _ = std::process::Command::new(&self.0.engine)
                .args(&self.0.engine_args)
                .envs(&self.0.engine_env)
                .args(["rm", "-f", id.as_str()])
                .output();
        }
    }
}

async fn client(d: &Daemon) -> FleetClient {
    let cfg = must(ClientConfig::from_discovery(&d.discovery)).token(d.token.clone());
    must(FleetClient::connect(cfg).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_node_serves_a_claim_and_is_adopted_after_a_daemon_crash() {
    let dir = must(tempfile::tempdir());
    let engine = fleet_provider_container::testing::engine(&dir.path().join("engine"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start_with(dir.path(), |_| provider(&engine), "");
    let (_, status) = daemon.get("/v1/status").await;
    let fleet_id = serde_json::from_str::<serde_json::Value>(
        status
            .split_once("\r\n\r\n")
            .map_or(status.as_str(), |(_, b)| b),
    )
    .ok()
    .and_then(|v| v["fleet_id"].as_str().map(str::to_owned))
    .unwrap_or_else(|| panic!("no fleet id in {status}"));
    let _cleanup = RemoveContainers(engine.clone(), fleet_id.clone());

    let fleet = client(&daemon).await;
    let claim = tokio::time::timeout(Duration::from_secs(120), fleet.claim(request("k1", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant; see {}", dir.path().join("daemon.log").display()));
    let claim = must(claim);
    // The command runs inside the container: the test image's own
    // /etc/passwd, in the node's mounted work dir.
    let out = must(
        claim
            .exec(&ExecRequest::new(["sh", "-c", "pwd; cat /etc/passwd"]))
            .await,
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.code, Some(0), "{text}");
    assert_eq!(
        text, "/fleet/node/work/claims/k1\nroot:x:0:0:root:/root:/bin/sh\n",
        "not in the container"
    );
    let running = containers(&engine, &fleet_id);
    assert_eq!(running.len(), 1, "{running:?}");
    let node = claim.node().clone();
    must(claim.release().await);

    daemon.crash_and_restart();
    let fleet = client(&daemon).await;
    let claim = tokio::time::timeout(Duration::from_secs(120), fleet.claim(request("k2", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant after the restart"));
    let claim = must(claim);
    assert_eq!(claim.node(), &node, "the same node serves the next claim");
    assert_eq!(
        containers(&engine, &fleet_id),
        running,
        "the same container"
    );
    must(claim.release().await);
    daemon.stop();
}
