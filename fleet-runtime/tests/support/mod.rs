//! Test support: in-process agents for nodes the memory provider creates.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fleet_core::ids::{CommandId, NodeId};
use fleet_core::memory::provider::MemoryProvider;
use fleet_core::protocol::{AgentMsg, Arch, NodeResources};
use fleet_core::provider::{InstanceState, TAG_FLEET};
use fleet_core::strategy::{PoolSpec, StrategyConfig};
use fleet_core::{InstanceType, PoolName};
use fleet_runtime::Fleet;

/// A claim `id` in workspace `ci`, pool `linux`, leased `lease_ttl_ms`.
pub(crate) fn request_for(id: &str, lease_ttl_ms: u64) -> fleet_core::protocol::ClaimRequest {
    fleet_core::protocol::ClaimRequest {
        claim_id: fleet_core::ClaimId::new(id).unwrap_or_else(|e| panic!("{e}")),
        workspace: fleet_core::Workspace::new("ci").unwrap_or_else(|e| panic!("{e}")),
        pool: PoolName::new("linux").unwrap_or_else(|e| panic!("{e}")),
        requirements: fleet_core::protocol::Requirements::default(),
        priority: 0,
        lease_ttl_ms,
        max_wait_ms: None,
        recipient: None,
        affinity: None,
    }
}

pub(crate) fn pool(slots: u32, max_nodes: u32) -> PoolSpec {
    PoolSpec {
        name: PoolName::new("linux").unwrap_or_else(|e| panic!("{e}")),
        strategy: StrategyConfig::default(),
        instance_types: vec![InstanceType::new("c7i.large").unwrap_or_else(|e| panic!("{e}"))],
        image: "ami-test".to_owned(),
        labels: BTreeMap::new(),
        min_nodes: 0,
        max_nodes,
        slots_per_node: slots,
        max_uses: None,
        schedule: Vec::new(),
        affinity_wait_ms: 0,
        revision: String::new(),
        drift_replacements: 1,
    }
}

/// An in-process agent's hello: a 2-CPU, 4 GiB x86-64 node with its
/// gateway at `gateway`, having seen `seen`.
pub(crate) fn hello(node: &NodeId, gateway: &str, seen: Vec<CommandId>) -> AgentMsg {
    AgentMsg::Hello {
        node: node.clone(),
        agent_version: "test".to_owned(),
        bootstrap_token: None,
        resources: NodeResources {
            cpus: 2,
            memory_mb: 4096,
            arch: Arch::X86_64,
            labels: BTreeMap::new(),
        },
        gateway: Some(gateway.to_owned()),
        seen_commands: seen,
    }
}

/// Boots an in-process agent for every running instance of this fleet
/// (tagged with its fleet id) the provider has: hello, then a heartbeat
/// every 50 ms. Stops with the fleet.
pub(crate) fn boot_agents(fleet: &Arc<Fleet>, provider: MemoryProvider) {
    let fleet = Arc::downgrade(fleet);
    tokio::spawn(async move {
        let mut up = BTreeSet::new();
        let mut sessions = Vec::new();
        loop {
            let Some(f) = fleet.upgrade() else { return };
            for i in provider.instances() {
                let ours = i.tags.get(TAG_FLEET).map(String::as_str) == Some(f.fleet_id().as_str());
                if ours && i.state == InstanceState::Running && up.insert(i.node.clone()) {
                    let agent = f.connect_agent(i.node.clone());
                    let gateway = format!("127.0.0.1:{}", 40_000 + up.len());
                    let hello = hello(&i.node, &gateway, Vec::new());
                    let _ = agent.send(hello).await;
                    sessions.push(agent);
                }
            }
            for a in &sessions {
                let _ = a
                    .send(AgentMsg::Heartbeat {
                        cpu_percent: 1.0,
                        memory_mb: 64,
                        running: Vec::new(),
                    })
                    .await;
            }
            drop(f);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
