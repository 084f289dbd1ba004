//! An in-memory [`Provider`] with fault injection: the reference
//! implementation of the provider contract and the simulated cloud that
//! controller tests and the simulator run against.
//!
//! It keeps one record per node id and never forgets it: a deleted or
//! interrupted instance stays as [`InstanceState::Terminated`], so a provider
//! id is never minted twice for a node and a retried `create` cannot silently
//! bring a dead node back. A `create` for a node id whose instance carries
//! another fleet's [`TAG_FLEET`](crate::provider::TAG_FLEET) or
//! [`TAG_NAMESPACE`](crate::provider::TAG_NAMESPACE) is refused with
//! [`ProviderError::AlreadyExists`]: it is not the caller's to adopt.
//!
//! Faults a test can arm (all on a shared handle, so the test keeps a clone
//! while the code under test owns another):
//! - errors: [`MemoryProvider::fail_next`], [`MemoryProvider::fail_every_nth`];
//! - crash points: [`MemoryProvider::fail_after_apply`] applies the effect and
//!   then reports [`ProviderError::Transient`], as if the process died between
//!   the provider's success and the caller recording it;
//! - capacity: [`MemoryProvider::set_capacity`] (instances in all), and
//!   [`MemoryProvider::set_sold_out`] (one instance type in one market);
//! - spot interruptions: [`MemoryProvider::interrupt`];
//! - latency: [`MemoryProvider::set_latency`] with a caller-supplied
//!   [`DelayFn`] (this crate never sleeps; tests pass `tokio::time::sleep`).
//!
//! The provider has no clock: `created_at` and snapshot times are read from a
//! settable value ([`MemoryProvider::set_now`]) a simulator can share.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_core::future::BoxFuture;

use crate::billing::BillingModel;
use crate::ids::{InstanceType, Millis, NodeId};
use crate::money::HourlyPrice;
use crate::protocol::Arch;
use crate::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, SnapshotRef, SpotTerms, TagFilter,
};

/// Waits for a duration. Supplied by the caller because this crate has no
/// runtime: tests pass `Arc::new(|d| Box::pin(tokio::time::sleep(d)))`.
pub type DelayFn = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// One provider operation, for arming faults and counting calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// [`Provider::offerings`].
    Offerings,
    /// [`Provider::create`].
    Create,
    /// [`Provider::start`].
    Start,
    /// [`Provider::stop`].
    Stop,
    /// [`Provider::resize`].
    Resize,
    /// [`Provider::snapshot`].
    Snapshot,
    /// [`Provider::delete`].
    Delete,
    /// [`Provider::list`].
    List,
}

impl OpKind {
    /// Every operation.
    pub const ALL: [OpKind; 8] = [
        OpKind::Offerings,
        OpKind::Create,
        OpKind::Start,
        OpKind::Stop,
        OpKind::Resize,
        OpKind::Snapshot,
        OpKind::Delete,
        OpKind::List,
    ];

    /// The operation's name, as in the trait.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Offerings => "offerings",
            OpKind::Create => "create",
            OpKind::Start => "start",
            OpKind::Stop => "stop",
            OpKind::Resize => "resize",
            OpKind::Snapshot => "snapshot",
            OpKind::Delete => "delete",
            OpKind::List => "list",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Faults armed for one operation.
#[derive(Debug, Default)]
struct OpFaults {
    /// Errors to return, in order, before applying anything.
    next: VecDeque<ProviderError>,
    /// Every `n`th call fails with this error before applying anything.
    every_nth: Option<(u32, ProviderError)>,
    /// Calls left to apply and then report as transient failures.
    after_apply: u32,
    /// Injected latency before the call is handled.
    latency: Option<Duration>,
    /// Calls made, failed ones included.
    calls: u32,
}

/// One node's instance and the spec that created it.
#[derive(Debug)]
struct Record {
    instance: Instance,
    /// Kept to tell a retried `create` from a conflicting one.
    spec: NodeSpec,
}

#[derive(Debug, Default)]
struct State {
    instances: BTreeMap<NodeId, Record>,
    snapshots: BTreeMap<String, SnapshotRef>,
    faults: BTreeMap<OpKind, OpFaults>,
    /// Most live instances before `create` answers `Capacity`.
    capacity: Option<u32>,
    /// Types out of capacity in a market: `create` answers `Capacity`.
    sold_out: BTreeSet<(InstanceType, Market)>,
    interrupted: Vec<Instance>,
    /// Sequence for provider ids and snapshot ids.
    next_id: u64,
}

impl State {
    fn live(&self) -> usize {
        self.instances
            .values()
            .filter(|r| r.instance.state != InstanceState::Terminated)
            .count()
    }

    fn mint(&mut self) -> u64 {
        self.next_id = self.next_id.saturating_add(1);
        self.next_id
    }

    /// The live instance `r` names, or `NotFound`.
    fn live_mut(&mut self, r: &InstanceRef) -> Result<&mut Instance, ProviderError> {
        match self.instances.get_mut(&r.node) {
            Some(rec)
                if rec.instance.provider_id == r.provider_id
                    && rec.instance.state != InstanceState::Terminated =>
            {
                Ok(&mut rec.instance)
            }
            _ => Err(ProviderError::NotFound(format!(
                "instance {} of node {}",
                r.provider_id, r.node
            ))),
        }
    }
}

/// A simulated cloud provider held in memory.
///
/// Capabilities, billing and offerings are fixed at build time; instances,
/// faults and the clock live behind shared handles, so clones act on one
/// cloud.
#[derive(Clone)]
pub struct MemoryProvider {
    capabilities: Capabilities,
    billing: BillingModel,
    offerings: Arc<[Offering]>,
    state: Arc<Mutex<State>>,
    clock: Arc<AtomicU64>,
    delay: Option<DelayFn>,
}

impl fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryProvider")
            .field("capabilities", &self.capabilities)
            .field("billing", &self.billing)
            .field("offerings", &self.offerings.len())
            .field("now", &self.now())
            .field("delay", &self.delay.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryProvider {
    fn default() -> MemoryProvider {
        MemoryProvider::builder().build()
    }
}

/// Builds a [`MemoryProvider`]; see [`MemoryProvider::builder`].
pub struct MemoryProviderBuilder {
    capabilities: Capabilities,
    billing: BillingModel,
    offerings: Vec<Offering>,
    clock: Arc<AtomicU64>,
    delay: Option<DelayFn>,
}

impl fmt::Debug for MemoryProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryProviderBuilder")
            .field("capabilities", &self.capabilities)
            .field("offerings", &self.offerings.len())
            .finish_non_exhaustive()
    }
}

impl MemoryProviderBuilder {
    /// What the provider claims it can do; operations outside it answer
    /// [`ProviderError::Unsupported`].
    pub fn capabilities(mut self, capabilities: Capabilities) -> MemoryProviderBuilder {
        self.capabilities = capabilities;
        self
    }

    /// How the provider bills.
    pub fn billing(mut self, billing: BillingModel) -> MemoryProviderBuilder {
        self.billing = billing;
        self
    }

    /// The instance types for sale; `create` and `resize` accept only these.
    pub fn offerings(mut self, offerings: Vec<Offering>) -> MemoryProviderBuilder {
        self.offerings = offerings;
        self
    }

    /// Shares a clock (milliseconds since the Unix epoch) with the caller,
    /// e.g. a simulator's virtual time.
    pub fn clock(mut self, clock: Arc<AtomicU64>) -> MemoryProviderBuilder {
        self.clock = clock;
        self
    }

    /// How to wait when latency is injected; without it latency is ignored.
    pub fn delay(mut self, delay: DelayFn) -> MemoryProviderBuilder {
        self.delay = Some(delay);
        self
    }

    /// The provider.
    pub fn build(self) -> MemoryProvider {
        MemoryProvider {
            capabilities: self.capabilities,
            billing: self.billing,
            offerings: self.offerings.into(),
            state: Arc::default(),
            clock: self.clock,
            delay: self.delay,
        }
    }
}

fn offering(
    name: &str,
    cpus: u32,
    memory_mb: u64,
    arch: Arch,
    disk_gb: u32,
    on_demand_micros: i64,
    spot: Option<(i64, u32)>,
) -> Option<Offering> {
    Some(Offering {
        instance_type: InstanceType::new(name).ok()?,
        cpus,
        memory_mb,
        arch,
        disk_gb,
        on_demand: HourlyPrice::from_micros(on_demand_micros),
        spot: spot.map(|(micros, interruptions_per_1000h)| SpotTerms {
            price: HourlyPrice::from_micros(micros),
            interruptions_per_1000h,
        }),
    })
}

/// EC2-like offerings: us-east-1 on-demand list prices, spot at roughly 40%.
fn ec2_offerings() -> Vec<Offering> {
    [
        offering(
            "c7g.large",
            2,
            4_096,
            Arch::Aarch64,
            20,
            72_500,
            Some((29_000, 2)),
        ),
        offering(
            "c7g.2xlarge",
            8,
            16_384,
            Arch::Aarch64,
            20,
            290_000,
            Some((116_000, 3)),
        ),
        offering(
            "c7i.large",
            2,
            4_096,
            Arch::X86_64,
            20,
            89_250,
            Some((35_700, 3)),
        ),
        offering(
            "c7i.4xlarge",
            16,
            32_768,
            Arch::X86_64,
            20,
            714_000,
            Some((285_600, 5)),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Hetzner-like offerings: list prices converted to dollars; no spot market.
fn hetzner_offerings() -> Vec<Offering> {
    [
        offering("cx22", 2, 4_096, Arch::X86_64, 40, 6_500, None),
        offering("cx32", 4, 8_192, Arch::X86_64, 80, 11_300, None),
        offering("cax21", 4, 8_192, Arch::Aarch64, 80, 10_400, None),
        offering("ccx33", 8, 32_768, Arch::X86_64, 240, 86_600, None),
    ]
    .into_iter()
    .flatten()
    .collect()
}

impl MemoryProvider {
    /// A builder defaulting to EC2-like capabilities, billing and offerings,
    /// clock at 0, no latency.
    pub fn builder() -> MemoryProviderBuilder {
        MemoryProviderBuilder {
            capabilities: ec2_capabilities(),
            billing: BillingModel::ec2(),
            offerings: ec2_offerings(),
            clock: Arc::default(),
            delay: None,
        }
    }

    /// EC2-like: stop/start, resize only while stopped, snapshots, spot;
    /// per-second billing, stopped instances pay for their disk only.
    pub fn ec2_like() -> MemoryProvider {
        MemoryProvider::builder().build()
    }

    /// Hetzner-like: stop/start, resize only while powered off, snapshots, no
    /// spot; per-started-hour billing, stopped servers billed in full.
    pub fn hetzner_like() -> MemoryProvider {
        MemoryProvider::builder()
            .capabilities(Capabilities {
                stop_start: true,
                resize: true,
                resize_requires_stop: true,
                snapshot: true,
                spot: false,
                max_instances: None,
            })
            .billing(BillingModel::hetzner())
            .offerings(hetzner_offerings())
            .build()
    }

    /// Sets the provider's clock.
    pub fn set_now(&self, now: Millis) {
        self.clock.store(now, Ordering::SeqCst);
    }

    /// The provider's clock.
    pub fn now(&self) -> Millis {
        self.clock.load(Ordering::SeqCst)
    }

    /// The shared clock, to advance from elsewhere.
    pub fn clock(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.clock)
    }

    /// The next `times` calls of `op` fail with `err`, without effect.
    /// Repeated calls queue up: earlier arms fail first.
    pub fn fail_next(&self, op: OpKind, err: ProviderError, times: u32) {
        let mut state = self.lock();
        let faults = state.faults.entry(op).or_default();
        faults.next.extend(std::iter::repeat_n(err, times as usize));
    }

    /// Every `n`th call of `op` (counting all calls of `op` since the
    /// provider was built) fails with `err`, without effect. `n == 0` clears.
    pub fn fail_every_nth(&self, op: OpKind, n: u32, err: ProviderError) {
        let mut state = self.lock();
        state.faults.entry(op).or_default().every_nth = (n > 0).then_some((n, err));
    }

    /// A crash point: the next `times` calls of `op` take effect and then
    /// answer [`ProviderError::Transient`], as when the caller dies or times
    /// out between the provider's success and recording it.
    pub fn fail_after_apply(&self, op: OpKind, times: u32) {
        let mut state = self.lock();
        let faults = state.faults.entry(op).or_default();
        faults.after_apply = faults.after_apply.saturating_add(times);
    }

    /// Delays every call of `op` by `latency` through the [`DelayFn`] given
    /// at build time (ignored without one). `None` clears.
    pub fn set_latency(&self, op: OpKind, latency: Option<Duration>) {
        self.lock().faults.entry(op).or_default().latency = latency;
    }

    /// At most `max` live (not terminated) instances; `create` beyond it
    /// answers [`ProviderError::Capacity`]. `None` lifts the limit.
    pub fn set_capacity(&self, max: Option<u32>) {
        self.lock().capacity = max;
    }

    /// While `sold_out`, `create` of `instance_type` in `market` answers
    /// [`ProviderError::Capacity`], as a cloud out of one type in one zone
    /// does; other types and the other market are unaffected.
    pub fn set_sold_out(&self, instance_type: &InstanceType, market: Market, sold_out: bool) {
        let mut state = self.lock();
        let key = (instance_type.clone(), market);
        if sold_out {
            state.sold_out.insert(key);
        } else {
            state.sold_out.remove(&key);
        }
    }

    /// Disarms every fault and latency; call counts are kept.
    pub fn clear_faults(&self) {
        let mut state = self.lock();
        for faults in state.faults.values_mut() {
            faults.next.clear();
            faults.every_nth = None;
            faults.after_apply = 0;
            faults.latency = None;
        }
        state.capacity = None;
        state.sold_out.clear();
    }

    /// How many times `op` was called, failed calls included.
    pub fn calls(&self, op: OpKind) -> u32 {
        self.lock().faults.get(&op).map_or(0, |f| f.calls)
    }

    /// Reclaims a spot instance, as the cloud would: it becomes
    /// [`InstanceState::Terminated`] and is queued for
    /// [`MemoryProvider::take_interruptions`] so a harness can deliver the
    /// notice to the node's agent. Fails with `NotFound` for an unknown or
    /// terminated node and `Permanent` for an on-demand one.
    pub fn interrupt(&self, node: &NodeId) -> Result<Instance, ProviderError> {
        let mut state = self.lock();
        let instance = match state.instances.get_mut(node) {
            Some(rec) if rec.instance.state != InstanceState::Terminated => &mut rec.instance,
            _ => return Err(ProviderError::NotFound(format!("node {node}"))),
        };
        if instance.market != Market::Spot {
            return Err(ProviderError::Permanent(format!(
                "node {node} is on-demand; only spot instances are interrupted"
            )));
        }
        instance.state = InstanceState::Terminated;
        instance.address = None;
        let instance = instance.clone();
        state.interrupted.push(instance.clone());
        Ok(instance)
    }

    /// The instances interrupted since the last call, oldest first.
    pub fn take_interruptions(&self) -> Vec<Instance> {
        std::mem::take(&mut self.lock().interrupted)
    }

    /// A node's instance in any state, terminated included.
    pub fn instance(&self, node: &NodeId) -> Option<Instance> {
        self.lock().instances.get(node).map(|r| r.instance.clone())
    }

    /// Every instance ever created, terminated included, by node id.
    pub fn instances(&self) -> Vec<Instance> {
        self.lock()
            .instances
            .values()
            .map(|r| r.instance.clone())
            .collect()
    }

    /// Every snapshot taken, by id.
    pub fn snapshots(&self) -> Vec<SnapshotRef> {
        self.lock().snapshots.values().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Mutations finish before the guard drops and do not panic midway,
        // so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn offering(&self, ty: &InstanceType) -> Option<&Offering> {
        self.offerings.iter().find(|o| &o.instance_type == ty)
    }

    fn unsupported(&self, what: &str) -> ProviderError {
        ProviderError::Unsupported(format!("this provider cannot {what}"))
    }

    /// Counts the call, waits out injected latency and fails it if a fault
    /// is armed. Must run before the operation touches state.
    async fn enter(&self, op: OpKind) -> Result<(), ProviderError> {
        let latency = {
            let mut state = self.lock();
            let faults = state.faults.entry(op).or_default();
            faults.calls = faults.calls.saturating_add(1);
            faults.latency
        };
        // Sleep without the lock so concurrent calls overlap as on a cloud.
        if let (Some(latency), Some(delay)) = (latency, &self.delay) {
            delay(latency).await;
        }
        let mut state = self.lock();
        let faults = state.faults.entry(op).or_default();
        if let Some(err) = faults.next.pop_front() {
            return Err(err);
        }
        if let Some((n, err)) = &faults.every_nth
            && faults.calls.is_multiple_of(*n)
        {
            return Err(err.clone());
        }
        Ok(())
    }

    /// Turns a successful result into the crash-point failure if armed.
    fn exit<T>(&self, op: OpKind, result: Result<T, ProviderError>) -> Result<T, ProviderError> {
        // Only an applied operation can crash after applying.
        let value = result?;
        let mut state = self.lock();
        let faults = state.faults.entry(op).or_default();
        if faults.after_apply > 0 {
            faults.after_apply -= 1;
            return Err(ProviderError::Transient(format!(
                "injected crash after {op} was applied"
            )));
        }
        Ok(value)
    }

    fn do_create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError> {
        let mut state = self.lock();
        if let Some(rec) = state.instances.get(&spec.node) {
            return existing_for_create(rec, spec);
        }
        let offering = self.offering(&spec.instance_type).ok_or_else(|| {
            ProviderError::Permanent(format!("unknown instance type {}", spec.instance_type))
        })?;
        if spec.market == Market::Spot {
            if !self.capabilities.spot {
                return Err(self.unsupported("sell spot capacity"));
            }
            if offering.spot.is_none() {
                return Err(ProviderError::Permanent(format!(
                    "{} is not sold as spot",
                    spec.instance_type
                )));
            }
        }
        if let BootSource::Snapshot(snap) = &spec.source {
            if !self.capabilities.snapshot {
                return Err(self.unsupported("boot from a snapshot"));
            }
            if !state.snapshots.contains_key(&snap.id) {
                return Err(ProviderError::NotFound(format!("snapshot {}", snap.id)));
            }
        }
        let live = state.live();
        if let Some(max) = self.capabilities.max_instances
            && live >= max as usize
        {
            return Err(ProviderError::Quota(format!(
                "account limit of {max} instances reached"
            )));
        }
        if state
            .sold_out
            .contains(&(spec.instance_type.clone(), spec.market))
        {
            return Err(ProviderError::Capacity(format!(
                "insufficient capacity for {} ({:?})",
                spec.instance_type, spec.market
            )));
        }
        if let Some(max) = state.capacity
            && live >= max as usize
        {
            return Err(ProviderError::Capacity(format!(
                "no capacity for {} ({} {:?})",
                spec.instance_type, max, spec.market
            )));
        }
        let seq = state.mint();
        let instance = Instance {
            node: spec.node.clone(),
            provider_id: format!("i-{seq:06}"),
            instance_type: spec.instance_type.clone(),
            market: spec.market,
            state: InstanceState::Running,
            address: Some(address(seq)),
            tags: spec.tags.clone(),
            created_at: self.now(),
        };
        state.instances.insert(
            spec.node.clone(),
            Record {
                instance: instance.clone(),
                spec: spec.clone(),
            },
        );
        Ok(instance)
    }

    fn do_power(&self, r: &InstanceRef, on: bool) -> Result<Instance, ProviderError> {
        if !self.capabilities.stop_start {
            return Err(self.unsupported(if on {
                "start instances"
            } else {
                "stop instances"
            }));
        }
        let mut state = self.lock();
        let instance = state.live_mut(r)?;
        // Repeating a start or stop is a no-op, as on EC2, so retries are safe.
        if on {
            if instance.state != InstanceState::Running {
                instance.state = InstanceState::Running;
                instance.address = Some(address(port_seq(&instance.provider_id)));
            }
        } else {
            instance.state = InstanceState::Stopped;
            instance.address = None;
        }
        Ok(instance.clone())
    }

    fn do_resize(&self, r: &InstanceRef, to: &InstanceType) -> Result<Instance, ProviderError> {
        if !self.capabilities.resize {
            return Err(self.unsupported("resize instances"));
        }
        let offering = self
            .offering(to)
            .ok_or_else(|| ProviderError::Permanent(format!("unknown instance type {to}")))?;
        let requires_stop = self.capabilities.resize_requires_stop;
        let mut state = self.lock();
        let instance = state.live_mut(r)?;
        if requires_stop && instance.state != InstanceState::Stopped {
            return Err(ProviderError::Permanent(format!(
                "node {} must be stopped before a resize",
                r.node
            )));
        }
        if instance.market == Market::Spot && offering.spot.is_none() {
            return Err(ProviderError::Permanent(format!(
                "{to} is not sold as spot"
            )));
        }
        instance.instance_type = to.clone();
        Ok(instance.clone())
    }

    fn do_snapshot(&self, r: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        if !self.capabilities.snapshot {
            return Err(self.unsupported("snapshot instances"));
        }
        let mut state = self.lock();
        let ty = state.live_mut(r)?.instance_type.clone();
        let size_gb = self.offering(&ty).map_or(0, |o| o.disk_gb);
        let seq = state.mint();
        let snap = SnapshotRef {
            id: format!("snap-{seq:06}"),
            size_gb,
            created_at: self.now(),
        };
        state.snapshots.insert(snap.id.clone(), snap.clone());
        Ok(snap)
    }

    fn do_delete(&self, r: &InstanceRef) {
        let mut state = self.lock();
        // Deleting what is gone, or was never created, succeeds: the
        // controller retries deletes blindly after crashes. A ref whose
        // provider id is not the node's instance names nothing that exists,
        // so it must not touch the node's real instance.
        if let Some(rec) = state.instances.get_mut(&r.node)
            && rec.instance.provider_id == r.provider_id
        {
            rec.instance.state = InstanceState::Terminated;
            rec.instance.address = None;
        }
    }

    fn do_list(&self, tags: &TagFilter) -> Vec<Instance> {
        self.lock()
            .instances
            .values()
            .filter(|r| r.instance.state != InstanceState::Terminated)
            .filter(|r| tags.matches(&r.instance.tags))
            .map(|r| r.instance.clone())
            .collect()
    }
}

fn ec2_capabilities() -> Capabilities {
    Capabilities {
        stop_start: true,
        resize: true,
        resize_requires_stop: true,
        snapshot: true,
        spot: true,
        max_instances: None,
    }
}

/// The answer to a `create` for a node that already has a record.
fn existing_for_create(rec: &Record, spec: &NodeSpec) -> Result<Instance, ProviderError> {
    // Another fleet's instance under the same node id is not ours to adopt.
    let old = &rec.spec;
    crate::provider::check_same_fleet(&old.tags, spec)?;
    // Other tags and the bootstrap token are not compared: a retry after a
    // crash may carry a fresh token. What the instance *is* must match, as
    // EC2's client token refuses a retry with different parameters.
    if old.pool != spec.pool
        || old.instance_type != spec.instance_type
        || old.market != spec.market
        || old.source != spec.source
    {
        return Err(ProviderError::AlreadyExists(format!(
            "node {} exists with a different spec",
            spec.node
        )));
    }
    if rec.instance.state == InstanceState::Terminated {
        // Node ids are single-use: a new node needs a new id.
        return Err(ProviderError::AlreadyExists(format!(
            "node {} was terminated; node ids are not reused",
            spec.node
        )));
    }
    Ok(rec.instance.clone())
}

/// A loopback address unique per instance; nothing listens there.
fn address(seq: u64) -> String {
    format!("127.0.0.1:{}", 20_000 + seq % 40_000)
}

/// The sequence number inside a provider id minted by `create`.
fn port_seq(provider_id: &str) -> u64 {
    provider_id
        .strip_prefix("i-")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[async_trait]
impl Provider for MemoryProvider {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn billing(&self) -> &BillingModel {
        &self.billing
    }

    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        self.enter(OpKind::Offerings).await?;
        self.exit(OpKind::Offerings, Ok(self.offerings.to_vec()))
    }

    async fn create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError> {
        self.enter(OpKind::Create).await?;
        let result = self.do_create(spec);
        self.exit(OpKind::Create, result)
    }

    async fn start(&self, instance: &InstanceRef) -> Result<Instance, ProviderError> {
        self.enter(OpKind::Start).await?;
        let result = self.do_power(instance, true);
        self.exit(OpKind::Start, result)
    }

    async fn stop(&self, instance: &InstanceRef) -> Result<Instance, ProviderError> {
        self.enter(OpKind::Stop).await?;
        let result = self.do_power(instance, false);
        self.exit(OpKind::Stop, result)
    }

    async fn resize(
        &self,
        instance: &InstanceRef,
        to: &InstanceType,
    ) -> Result<Instance, ProviderError> {
        self.enter(OpKind::Resize).await?;
        let result = self.do_resize(instance, to);
        self.exit(OpKind::Resize, result)
    }

    async fn snapshot(&self, instance: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        self.enter(OpKind::Snapshot).await?;
        let result = self.do_snapshot(instance);
        self.exit(OpKind::Snapshot, result)
    }

    async fn delete(&self, instance: &InstanceRef) -> Result<(), ProviderError> {
        self.enter(OpKind::Delete).await?;
        self.do_delete(instance);
        self.exit(OpKind::Delete, Ok(()))
    }

    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        self.enter(OpKind::List).await?;
        let result = Ok(self.do_list(tags));
        self.exit(OpKind::List, result)
    }
}
