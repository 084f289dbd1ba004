//! Fixtures shared by the controller tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;

use fleet_core::billing::BillingModel;
use fleet_core::controller::{ControllerConfig, Timing};
use fleet_core::harness::World;
use fleet_core::money::HourlyPrice;
use fleet_core::protocol::{Arch, ClaimRequest, Requirements};
use fleet_core::provider::{Capabilities, Offering, SpotTerms};
use fleet_core::strategy::{PoolSpec, StrategyConfig};
use fleet_core::{ClaimId, Epoch, FleetId, InstanceType, PoolName, Workspace};

pub(crate) const T0: u64 = 1_700_000_000_000;

pub(crate) fn it(s: &str) -> InstanceType {
    InstanceType::new(s).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn offerings() -> Vec<Offering> {
    vec![
        Offering {
            instance_type: it("c7.large"),
            cpus: 2,
            memory_mb: 4096,
            arch: Arch::X86_64,
            disk_gb: 30,
            on_demand: HourlyPrice::from_micros(85_000),
            spot: Some(SpotTerms {
                price: HourlyPrice::from_micros(30_000),
                interruptions_per_1000h: 50,
            }),
        },
        Offering {
            instance_type: it("c7.2xlarge"),
            cpus: 8,
            memory_mb: 16384,
            arch: Arch::X86_64,
            disk_gb: 30,
            on_demand: HourlyPrice::from_micros(340_000),
            spot: None,
        },
    ]
}

pub(crate) fn pool(strategy: StrategyConfig, max_nodes: u32) -> PoolSpec {
    PoolSpec {
        name: PoolName::new("linux").unwrap_or_else(|e| panic!("{e}")),
        strategy,
        instance_types: vec![it("c7.large"), it("c7.2xlarge")],
        image: "ami-base".to_owned(),
        labels: BTreeMap::new(),
        min_nodes: 0,
        max_nodes,
        slots_per_node: 1,
        max_uses: None,
        schedule: Vec::new(),
        affinity_wait_ms: 0,
        revision: String::new(),
        drift_replacements: 1,
    }
}

pub(crate) fn config(pool: PoolSpec) -> ControllerConfig {
    ControllerConfig {
        pools: vec![pool],
        quotas: BTreeMap::new(),
        offerings: offerings(),
        capabilities: Capabilities::all(),
        billing: BillingModel::ec2(),
        epoch: Epoch(1),
        namespace: "fleet".to_owned(),
        fleet_id: FleetId::new("f1").unwrap_or_else(|e| panic!("{e}")),
        timing: Timing {
            heartbeat_interval_ms: 5_000,
            heartbeat_timeout_ms: 30_000,
            claim_retention_ms: 86_400_000,
            ..Timing::default()
        },
    }
}

pub(crate) fn world() -> World {
    World::new(config(pool(StrategyConfig::default(), 4)), T0, true)
}

/// A well-formed age X25519 recipient (Bech32 of 32 bytes under `age`).
pub(crate) const RECIPIENT: &str = "age166j880zym4c8emmhegj987f0qa96pa7qyz9wza337kpftnytqk7qg3zd0u";

pub(crate) fn request(id: &str) -> ClaimRequest {
    ClaimRequest {
        claim_id: ClaimId::new(id).unwrap_or_else(|e| panic!("{e}")),
        workspace: Workspace::new("team-a").unwrap_or_else(|e| panic!("{e}")),
        pool: PoolName::new("linux").unwrap_or_else(|e| panic!("{e}")),
        requirements: Requirements::default(),
        priority: 0,
        lease_ttl_ms: 600_000,
        max_wait_ms: None,
        recipient: Some(RECIPIENT.to_owned()),
        affinity: None,
    }
}

pub(crate) fn cid(s: &str) -> ClaimId {
    ClaimId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn ws() -> Workspace {
    Workspace::new("team-a").unwrap_or_else(|e| panic!("{e}"))
}

/// A task in the `linux` pool of [`ws`], run by the harness's simulated
/// agent (`sleep N`, `exit N`, `flaky`).
pub(crate) fn task(id: &str, argv: &[&str]) -> fleet_core::protocol::TaskSpec {
    fleet_core::protocol::TaskSpec {
        id: fleet_core::JobId::new(id).unwrap_or_else(|e| panic!("{e}")),
        workspace: ws(),
        pool: PoolName::new("linux").unwrap_or_else(|e| panic!("{e}")),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        retry: fleet_core::protocol::RetryPolicy::default(),
        alert: None,
        scorer: None,
        priority: 0,
        requirements: Requirements::default(),
    }
}
