//! The real controller, arbitration and a strategy serving claims in a
//! virtual world: a simulated EC2-like provider, agents that boot with EC2's
//! latencies, a store with compare-and-swap. Prints each claim's wait and
//! the pool's bill.
//!
//! `cargo run -p fleet-core --example embedded --release`

use std::collections::BTreeMap;

use fleet_core::billing::BillingModel;
use fleet_core::controller::{ControllerConfig, Timing};
use fleet_core::harness::World;
use fleet_core::money::HourlyPrice;
use fleet_core::protocol::{Arch, ClaimRequest, Requirements};
use fleet_core::provider::{Capabilities, Offering};
use fleet_core::strategy::{PoolSpec, StrategyConfig};
use fleet_core::{ClaimId, Epoch, FleetId, InstanceType, PoolName, Workspace};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = PoolName::new("linux-x64")?;
    let offering = Offering {
        instance_type: InstanceType::new("c7i.xlarge")?,
        cpus: 4,
        memory_mb: 8192,
        arch: Arch::X86_64,
        disk_gb: 40,
        on_demand: HourlyPrice::from_micros(178_500),
        spot: None,
    };
    for strategy in StrategyConfig::all_defaults() {
        let config = ControllerConfig {
            pools: vec![PoolSpec {
                name: pool.clone(),
                strategy: strategy.clone(),
                instance_types: vec![offering.instance_type.clone()],
                image: "ami-build-base".to_owned(),
                labels: BTreeMap::new(),
                min_nodes: 0,
                max_nodes: 4,
                slots_per_node: 1,
                max_uses: None,
                schedule: Vec::new(),
                affinity_wait_ms: 0,
                revision: String::new(),
                drift_replacements: 1,
            }],
            quotas: BTreeMap::new(),
            offerings: vec![offering.clone()],
            capabilities: Capabilities::all(),
            billing: BillingModel::ec2(),
            epoch: Epoch(1),
            namespace: "fleet".to_owned(),
            fleet_id: FleetId::new("embedded").unwrap_or_else(|e| panic!("{e}")),
            timing: Timing::default(),
        };
        let start = 1_767_225_600_000; // 2026-01-01T00:00Z
        let mut world = World::new(config, start, true);
        // A build every 10 minutes for two hours, each holding its node 6 min.
        for i in 0..12u64 {
            world.run_until(start + i * 600_000)?;
            world.claim_for(
                ClaimRequest {
                    claim_id: ClaimId::new(format!("build-{i}"))?,
                    workspace: Workspace::new("ci")?,
                    pool: pool.clone(),
                    requirements: Requirements::default(),
                    priority: 0,
                    lease_ttl_ms: 1_800_000,
                    max_wait_ms: None,
                    recipient: None,
                    affinity: None,
                },
                360_000,
            );
        }
        world.run_until(start + 3 * 3_600_000)?;
        let waits: Vec<u64> = world
            .traces()
            .values()
            .filter_map(|t| t.granted_at.map(|g| (g - t.requested_at) / 1_000))
            .collect();
        let cost = world.controller().costs(world.now());
        println!(
            "{:<18} served {:>2}/12  wait s: min {:>3} max {:>3}  bill {}  ({} controller steps)",
            strategy.name(),
            waits.len(),
            waits.iter().min().copied().unwrap_or(0),
            waits.iter().max().copied().unwrap_or(0),
            cost.total(),
            world.steps(),
        );
    }
    Ok(())
}
