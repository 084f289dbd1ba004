//! A fleet inside your own program: claim a node, renew, release, and see
//! what the pool has cost — with no daemon, no network and no database.
//!
//! `cargo run -p fleet-examples --example embedded`
//!
//! What is real here: `fleet-runtime`'s driver, the controller, the pool's
//! strategy (`cold_image`), arbitration, the cost ledger, and the in-memory
//! store (`MemoryStore`, a real `Store` that lives as long as the process).
//!
//! What is not: **the nodes are not machines.** The provider is fleet-core's
//! in-memory `MemoryProvider` (feature `harness`): it "creates" an instance
//! by adding a record and bills it like EC2 (per second, 60 s minimum, its
//! c7i/m7i price list). The node's agent is a task in this process that
//! says hello and heartbeats over the in-process agent plane, so the grant's
//! endpoint has nobody listening behind it. In your program, pass a real
//! provider instead — `fleet-provider-local` (nodes are `fleet-agent`
//! processes), `-aws`, `-hetzner`, or your own (see `provider_author.rs`) —
//! and give its agents a transport to dial, as `fleet-daemon` does;
//! `claim_and_exec.rs` shows real agents running commands.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fleet_core::memory::provider::MemoryProvider;
use fleet_core::memory::store::MemoryStore;
use fleet_core::protocol::{AgentMsg, Arch, ClaimRequest, ClaimState, NodeResources, Requirements};
use fleet_core::provider::InstanceState;
use fleet_core::strategy::PoolSpec;
use fleet_core::time::Utc;
use fleet_core::transport::ClaimClient as _;
use fleet_core::{ClaimId, PoolName, Workspace};
use fleet_runtime::Fleet;

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Everything below must finish in 30 s; a stuck claim fails the example.
    tokio::time::timeout(Duration::from_secs(30), run())
        .await
        .map_err(|_| "timed out after 30 s")?
}

async fn run() -> Result<(), Error> {
    let provider = MemoryProvider::ec2_like();
    let store = MemoryStore::new();

    // One pool with the defaults: strategy `cold_image` (boot a node per
    // waiting claim, delete it after 60 s idle), at most 4 nodes, and — no
    // instance type named — the provider's cheapest on-demand offering.
    let pool = PoolSpec {
        name: PoolName::new("builds")?,
        ..PoolSpec::default()
    };
    let fleet = Arc::new(
        Fleet::builder()
            .store(Arc::new(store.clone()))
            .provider(Arc::new(provider.clone()))
            .pool(pool)
            .start()
            .await?,
    );
    play_agents(&fleet, provider);

    // The in-process claim client: the same `ClaimClient` trait the
    // WebSocket and NATS clients implement, without a network hop.
    let client = fleet.client();
    let request = ClaimRequest {
        claim_id: ClaimId::new("build-1")?, // chosen by the caller: a retry gets the same grant
        workspace: Workspace::new("ci")?,
        pool: PoolName::new("builds")?,
        requirements: Requirements::default(),
        priority: 0,
        lease_ttl_ms: 60_000,
        max_wait_ms: None,
        recipient: None, // no age key: this grant carries no credentials
        affinity: None,
    };
    let grant = client.claim(request.clone()).await?;
    println!(
        "granted {} on node {} (endpoint {}), lease until {}",
        grant.claim_id,
        grant.node,
        grant.endpoint,
        Utc::from_millis(grant.lease.expires_at)
    );
    let again = client.claim(request).await?;
    check(
        again == grant,
        "a retry of the same claim id gets the same grant",
    )?;

    // A second later, so the renewal visibly moves the lease.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let renewed = client.renew(&grant.workspace, &grant.claim_id).await?;
    println!(
        "renewed: lease now until {}",
        Utc::from_millis(renewed.expires_at)
    );
    check(
        renewed.expires_at > grant.lease.expires_at,
        "a renewal extends the lease",
    )?;

    client.release(&grant.workspace, &grant.claim_id).await?;
    let status = fleet.status().await?;
    let claim = status
        .claims
        .iter()
        .find(|c| c.request.claim_id == grant.claim_id)
        .ok_or("the released claim is not in the status")?;
    check(claim.state == ClaimState::Released, "the claim is released")?;
    println!("released; claim state {:?}", claim.state);
    check(store.len() >= 2, "claim and node records are in the store")?;

    // What the pool has cost so far, priced with the provider's billing
    // model: the node bills from its create, at least 60 s (EC2's minimum).
    for (pool, cost) in &status.costs.pools {
        println!(
            "pool {pool}: {} so far ({} ms of node time, boots {:?})",
            cost.total(),
            cost.running_ms,
            cost.boots
        );
    }
    check(
        status.costs.total().micros() > 0,
        "a node that ran has cost something",
    )?;
    for n in &status.nodes {
        println!(
            "node {} ({}): {:?}",
            n.record.node, n.record.instance_type, n.state
        );
    }

    // Dropping the last handle stops the control loop (and the agents'
    // task with it); `Fleet::shutdown` does the same and waits for it.
    drop(fleet);
    println!("ok");
    Ok(())
}

/// Plays the agent of every node the provider runs: connect over the
/// in-process agent plane, say hello, heartbeat. A real node runs
/// `fleet-agent`, which does this over TLS WebSocket (and runs commands).
fn play_agents(fleet: &Arc<Fleet>, provider: MemoryProvider) {
    let fleet = Arc::downgrade(fleet);
    tokio::spawn(async move {
        let mut up = BTreeSet::new();
        let mut sessions = Vec::new();
        // Ends when the fleet is dropped.
        while let Some(fleet) = fleet.upgrade() {
            for i in provider.instances() {
                if i.state == InstanceState::Running && up.insert(i.node.clone()) {
                    let agent = fleet.connect_agent(i.node.clone());
                    let hello = AgentMsg::Hello {
                        node: i.node.clone(),
                        agent_version: "in-process".to_owned(),
                        bootstrap_token: None,
                        resources: NodeResources {
                            cpus: 2,
                            memory_mb: 4096,
                            arch: Arch::X86_64,
                            labels: BTreeMap::new(),
                        },
                        // Where a claimant would connect; nothing listens here.
                        gateway: Some(format!("127.0.0.1:{}", 40_000 + up.len())),
                        seen_commands: Vec::new(),
                    };
                    if agent.send(hello).await.is_ok() {
                        sessions.push(agent);
                    }
                }
            }
            for agent in &sessions {
                let beat = AgentMsg::Heartbeat {
                    cpu_percent: 1.0,
                    memory_mb: 64,
                    running: Vec::new(),
                };
                let _ = agent.send(beat).await;
            }
            drop(fleet);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}
