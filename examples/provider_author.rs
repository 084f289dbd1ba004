//! The template a provider author copies: a small [`Provider`] and the
//! conformance suite every provider must pass.
//!
//! `cargo run -p fleet-examples --example provider_author`
//!
//! `RackProvider` keeps its "machines" as entries in a `Mutex<BTreeMap>`;
//! a real backend makes API calls where it touches the map. Everything the
//! control plane and the strategies need to know about it is data:
//! [`Capabilities`] (what it can do: here stop/start and snapshots, no
//! resize, no spot) and a [`BillingModel`] (how it bills). Nothing else in
//! fleet matches on a provider's name.
//!
//! In your crate, depend on `fleet-core` and run the suite from a test
//! (`fleet-core = { features = ["testkit"] }` in dev-dependencies):
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     let provider = MyProvider::new(/* a sandbox account or a fake API */);
//!     fleet_core::testkit::provider::provider_suite(&provider, "run1", "my-image").await;
//! }
//! ```
//!
//! The suite panics with what is wrong on the first failed check, so this
//! example exits non-zero then.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fleet_core::billing::{
    BillingModel, BootLatency, CallLatency, Granularity, NodeCharges, StoppedBilling,
};
use fleet_core::clock::Clock;
use fleet_core::ids::IdError;
use fleet_core::money::{GbMonthPrice, HourlyPrice, Money};
use fleet_core::protocol::Arch;
use fleet_core::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, SnapshotRef, TagFilter, check_same_fleet,
};
use fleet_core::{InstanceType, Millis, NodeId};

/// Machines in a rack, rented by the second.
struct RackProvider {
    capabilities: Capabilities,
    billing: BillingModel,
    offerings: Vec<Offering>,
    /// Time is handed in (the runtime's clock, or a virtual one in tests).
    clock: Arc<dyn Clock>,
    state: Mutex<Rack>,
}

#[derive(Default)]
struct Rack {
    /// One entry per node id, kept after delete as `Terminated`: node ids
    /// are single-use, so a create retried after a delete must not bring
    /// the node back.
    machines: BTreeMap<NodeId, Machine>,
    snapshots: BTreeMap<String, SnapshotRef>,
    next_id: u64,
}

struct Machine {
    instance: Instance,
    /// What it was created as, to tell a retried create from a conflict.
    spec: NodeSpec,
}

impl RackProvider {
    fn new(clock: Arc<dyn Clock>) -> Result<RackProvider, IdError> {
        let offering = |name: &str, cpus, memory_mb, micros_per_hour| {
            Ok(Offering {
                instance_type: InstanceType::new(name)?,
                cpus,
                memory_mb,
                arch: Arch::X86_64,
                disk_gb: 50,
                on_demand: HourlyPrice::from_micros(micros_per_hour),
                spot: None, // no spot market: `capabilities.spot` is false
            })
        };
        Ok(RackProvider {
            capabilities: Capabilities {
                stop_start: true,
                resize: false,
                resize_requires_stop: false,
                snapshot: true,
                spot: false,
                max_instances: Some(16),
            },
            // How it bills, as data: strategies price their plans with it
            // and the controller's ledger bills with it.
            billing: BillingModel {
                granularity: Granularity::PerSecond { minimum_secs: 60 },
                stopped: StoppedBilling::DiskOnly,
                disk_per_gb_month: GbMonthPrice(Money::from_micros(50_000)),
                snapshot_per_gb_month: GbMonthPrice(Money::from_micros(20_000)),
                boot: BootLatency {
                    image_ms: 90_000,
                    snapshot_ms: 30_000,
                    stopped_ms: 15_000,
                    // Resizes are not supported; the suite checks only the
                    // paths the capabilities allow.
                    resize_ms: 0,
                },
                calls: CallLatency::default(),
                // Charges beside the instance price: this rack's disks are
                // in the price and its nodes get no public address.
                charges: NodeCharges::default(),
            },
            offerings: [
                offering("rack.small", 4, 8_192, 40_000),
                offering("rack.large", 16, 65_536, 150_000),
            ]
            .into_iter()
            .collect::<Result<_, IdError>>()?,
            clock,
            state: Mutex::new(Rack::default()),
        })
    }

    fn rack(&self) -> MutexGuard<'_, Rack> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Rack {
    /// The live machine `r` names: the node's, with the same provider id.
    fn live(&mut self, r: &InstanceRef) -> Result<&mut Machine, ProviderError> {
        self.machines
            .get_mut(&r.node)
            .filter(|m| {
                m.instance.provider_id == r.provider_id
                    && m.instance.state != InstanceState::Terminated
            })
            .ok_or_else(|| ProviderError::NotFound(format!("{} of node {}", r.provider_id, r.node)))
    }
}

fn unsupported(what: &str) -> ProviderError {
    ProviderError::Unsupported(format!("the rack cannot {what}"))
}

#[async_trait]
impl Provider for RackProvider {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn billing(&self) -> &BillingModel {
        &self.billing
    }

    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        Ok(self.offerings.clone())
    }

    async fn create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError> {
        let mut rack = self.rack();
        // Idempotent by node id: the controller retries a create whose
        // answer it never saw (a crash, a timeout). But only for the fleet
        // that made it: fleets sharing an account (even a namespace) tell
        // their machines apart by these tags, and never adopt another's.
        if let Some(m) = rack.machines.get(&spec.node) {
            check_same_fleet(&m.spec.tags, spec)?;
            let same = m.spec.instance_type == spec.instance_type
                && m.spec.market == spec.market
                && m.spec.source == spec.source;
            return match m.instance.state {
                InstanceState::Terminated => Err(ProviderError::AlreadyExists(format!(
                    "node {} was deleted; node ids are single-use",
                    spec.node
                ))),
                _ if !same => Err(ProviderError::AlreadyExists(format!(
                    "node {} exists with another spec",
                    spec.node
                ))),
                _ => Ok(m.instance.clone()),
            };
        }
        if spec.market == Market::Spot {
            return Err(unsupported("sell spot capacity"));
        }
        if !self
            .offerings
            .iter()
            .any(|o| o.instance_type == spec.instance_type)
        {
            return Err(ProviderError::Permanent(format!(
                "no such type {}",
                spec.instance_type
            )));
        }
        if let BootSource::Snapshot(snap) = &spec.source
            && !rack.snapshots.contains_key(&snap.id)
        {
            return Err(ProviderError::NotFound(format!("snapshot {}", snap.id)));
        }
        let live = rack
            .machines
            .values()
            .filter(|m| m.instance.state != InstanceState::Terminated)
            .count();
        if let Some(max) = self.capabilities.max_instances
            && live >= max as usize
        {
            return Err(ProviderError::Quota(format!("{max} machines in use")));
        }
        rack.next_id += 1;
        let instance = Instance {
            node: spec.node.clone(),
            provider_id: format!("rack-{:04}", rack.next_id),
            instance_type: spec.instance_type.clone(),
            market: Market::OnDemand,
            state: InstanceState::Running,
            address: Some(format!("10.0.0.{}", rack.next_id % 250 + 1)),
            // The tags must round-trip: the control plane finds its nodes
            // (and orphans) by them.
            tags: spec.tags.clone(),
            created_at: self.clock.now(),
        };
        let machine = Machine {
            instance: instance.clone(),
            spec: spec.clone(),
        };
        rack.machines.insert(spec.node.clone(), machine);
        Ok(instance)
    }

    async fn start(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let mut rack = self.rack();
        let m = rack.live(r)?;
        m.instance.state = InstanceState::Running;
        Ok(m.instance.clone())
    }

    async fn stop(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let mut rack = self.rack();
        let m = rack.live(r)?;
        m.instance.state = InstanceState::Stopped;
        Ok(m.instance.clone())
    }

    async fn resize(&self, _: &InstanceRef, _: &InstanceType) -> Result<Instance, ProviderError> {
        Err(unsupported("resize machines"))
    }

    async fn snapshot(&self, r: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        let now = self.clock.now();
        let mut rack = self.rack();
        let ty = rack.live(r)?.instance.instance_type.clone();
        let size_gb = self
            .offerings
            .iter()
            .find(|o| o.instance_type == ty)
            .map_or(1, |o| o.disk_gb);
        rack.next_id += 1;
        let snap = SnapshotRef {
            id: format!("rack-snap-{:04}", rack.next_id),
            size_gb,
            created_at: now,
        };
        rack.snapshots.insert(snap.id.clone(), snap.clone());
        Ok(snap)
    }

    async fn delete(&self, r: &InstanceRef) -> Result<(), ProviderError> {
        // Deleting what is already gone succeeds: deletes are retried
        // blindly after a crash.
        if let Ok(m) = self.rack().live(r) {
            m.instance.state = InstanceState::Terminated;
            m.instance.address = None;
        }
        Ok(())
    }

    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        Ok(self
            .rack()
            .machines
            .values()
            .map(|m| &m.instance)
            .filter(|i| i.state != InstanceState::Terminated && tags.matches(&i.tags))
            .cloned()
            .collect())
    }
}

/// The wall clock, in the milliseconds fleet counts in.
struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = RackProvider::new(Arc::new(WallClock))?;
    println!("capabilities: {:?}", provider.capabilities());
    println!(
        "billing: {:?}, stopped machines pay {:?} (stopping saves money: {})",
        provider.billing().granularity,
        provider.billing().stopped,
        provider.billing().stop_saves_money()
    );
    for o in provider.offerings().await? {
        println!(
            "offering {}: {} cpus, {} MiB, {}/h",
            o.instance_type, o.cpus, o.memory_mb, o.on_demand.0
        );
    }

    // `run` tags this run's instances so runs can share an account; the
    // image is one the backend can boot (the rack ignores it).
    let suite = fleet_core::testkit::provider::provider_suite(&provider, "example", "rack-base");
    tokio::time::timeout(Duration::from_secs(30), suite)
        .await
        .map_err(|_| "the conformance suite did not finish in 30 s")?;

    let left = provider.list(&TagFilter::default()).await?;
    if !left.is_empty() {
        return Err(format!("the suite left {} machine(s) running", left.len()).into());
    }
    println!("provider_suite passed: RackProvider conforms to the Provider contract");
    Ok(())
}
