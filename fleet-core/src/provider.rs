//! The provider trait: how the control plane gets machines.
//!
//! A provider declares what it can do ([`Capabilities`]) and how it bills
//! ([`BillingModel`]) as data; strategies read those instead of matching on
//! provider names. `create` is idempotent by node id: calling it twice for the
//! same [`NodeSpec::node`] returns the same instance.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::billing::BillingModel;
use crate::ids::{InstanceType, Millis, NodeId, PoolName};
use crate::money::HourlyPrice;
use crate::protocol::{Arch, NodeResources, Requirements, Secret};

// Node and pool records store these, so they are defined with the records in
// `protocol`; a provider author finds them here, where the trait uses them.
pub use crate::protocol::{BootSource, Market, SnapshotRef};

/// The tag every fleet-created instance carries with its node id.
pub const TAG_NODE: &str = "fleet-node";
/// The tag with the pool name.
pub const TAG_POOL: &str = "fleet-pool";
/// The tag with the fleet namespace (so two fleets can share an account).
pub const TAG_NAMESPACE: &str = "fleet-namespace";
/// The tag with the fleet's identity: generated at the fleet's first start,
/// persisted in its store. A fleet lists, adopts, stops and deletes only
/// instances carrying its own identity, so two fleets sharing an account
/// (even with the same namespace and pool names) never touch each other's.
pub const TAG_FLEET: &str = "fleet-id";

/// What a provider can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Instances can be stopped and started again.
    pub stop_start: bool,
    /// Instances can change type.
    pub resize: bool,
    /// A resize needs the instance stopped first.
    pub resize_requires_stop: bool,
    /// Instances can be snapshotted and booted from a snapshot.
    pub snapshot: bool,
    /// Spot (preemptible) capacity is sold.
    pub spot: bool,
    /// Most instances this provider account may run at once, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
}

impl Capabilities {
    /// Everything supported.
    pub fn all() -> Capabilities {
        Capabilities {
            stop_start: true,
            resize: true,
            resize_requires_stop: false,
            snapshot: true,
            spot: true,
            max_instances: None,
        }
    }
}

/// Spot pricing for an offering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpotTerms {
    /// Spot price.
    pub price: HourlyPrice,
    /// Expected interruptions per 1000 instance-hours.
    pub interruptions_per_1000h: u32,
}

/// An instance type for sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offering {
    /// The type name.
    pub instance_type: InstanceType,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Architecture.
    pub arch: Arch,
    /// Root disk in GB (priced while stopped on disk-only providers).
    pub disk_gb: u32,
    /// On-demand price.
    pub on_demand: HourlyPrice,
    /// Spot terms, if sold as spot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<SpotTerms>,
}

impl Offering {
    /// The resources a node of this type offers (labels come from the pool).
    pub fn resources(&self, labels: &BTreeMap<String, String>) -> NodeResources {
        NodeResources {
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            arch: self.arch,
            labels: labels.clone(),
        }
    }

    /// Whether a node of this offering carrying `labels` meets `req` (as
    /// `req.satisfied_by(&self.resources(labels))`, without copying the
    /// labels: asked per claim in every decision round).
    pub fn serves(&self, req: &Requirements, labels: &BTreeMap<String, String>) -> bool {
        req.satisfied_by_parts(self.cpus, self.memory_mb, self.arch, labels)
    }

    /// The price in `market`, if sold there.
    pub fn price(&self, market: Market) -> Option<HourlyPrice> {
        match market {
            Market::OnDemand => Some(self.on_demand),
            Market::Spot => self.spot.as_ref().map(|s| s.price),
        }
    }
}

/// What the controller asks a provider to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The idempotency key.
    pub node: NodeId,
    /// The pool.
    pub pool: PoolName,
    /// Type to run.
    pub instance_type: InstanceType,
    /// Market.
    pub market: Market,
    /// Boot source.
    pub source: BootSource,
    /// Tags (always include [`TAG_NODE`], [`TAG_POOL`], [`TAG_NAMESPACE`],
    /// [`TAG_FLEET`]). `create` adopts an existing instance only if it
    /// carries the same node, namespace and fleet tags.
    pub tags: BTreeMap<String, String>,
    /// Single-use agent bootstrap token, passed via user data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<Secret>,
}

/// Instance power state as the provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InstanceState {
    /// Being created or started.
    Pending,
    /// Running.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped.
    Stopped,
    /// Being deleted or deleted.
    Terminated,
}

/// A provider instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The fleet node id (from its tag).
    pub node: NodeId,
    /// The provider's id.
    pub provider_id: String,
    /// Current type.
    pub instance_type: InstanceType,
    /// Market.
    pub market: Market,
    /// Power state.
    pub state: InstanceState,
    /// Reachable address, when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// When the provider created it.
    pub created_at: Millis,
}

impl Instance {
    /// A reference to it.
    pub fn as_ref(&self) -> InstanceRef {
        InstanceRef {
            node: self.node.clone(),
            provider_id: self.provider_id.clone(),
        }
    }
}

/// How the controller names an existing instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRef {
    /// The fleet node id.
    pub node: NodeId,
    /// The provider's id.
    pub provider_id: String,
}

/// `e` and its causes on one line, each cause once (cloud SDK and HTTP
/// client errors put the useful part in their sources, and some repeat it
/// in their own message).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// Whether an existing instance with `tags`, found under `spec`'s node id,
/// is `spec`'s fleet's to adopt: its namespace and fleet tags must be
/// `spec`'s. The error (`AlreadyExists`) is what `create` answers when they
/// are not — another fleet's instance is never adopted.
pub fn check_same_fleet(
    tags: &BTreeMap<String, String>,
    spec: &NodeSpec,
) -> Result<(), ProviderError> {
    for tag in [TAG_NAMESPACE, TAG_FLEET] {
        if tags.get(tag) != spec.tags.get(tag) {
            return Err(ProviderError::AlreadyExists(format!(
                "node {} is another fleet's instance ({tag} {:?}, not {:?})",
                spec.node,
                tags.get(tag).map_or("", String::as_str),
                spec.tags.get(tag).map_or("", String::as_str),
            )));
        }
    }
    Ok(())
}

/// Instances whose tags include all of these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagFilter(pub BTreeMap<String, String>);

impl TagFilter {
    /// Whether `tags` match.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

/// A provider failure, classified so the controller knows what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProviderError {
    /// The instance or snapshot does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// It exists already (and is not ours to adopt).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// No capacity for this type/market right now.
    #[error("insufficient capacity: {0}")]
    Capacity(String),
    /// An account limit was hit.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// Throttled; retry after the hint.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// A passing failure (network, 5xx).
    #[error("transient failure: {0}")]
    Transient(String),
    /// A failure retrying cannot fix (bad credentials, invalid request).
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// The provider cannot do this (see [`Capabilities`]).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl ProviderError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::NotFound(_) => "not_found",
            ProviderError::AlreadyExists(_) => "already_exists",
            ProviderError::Capacity(_) => "capacity",
            ProviderError::Quota(_) => "quota",
            ProviderError::RateLimited(_) => "rate_limited",
            ProviderError::Transient(_) => "transient",
            ProviderError::Permanent(_) => "permanent",
            ProviderError::Unsupported(_) => "unsupported",
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Capacity(_)
                | ProviderError::RateLimited(_)
                | ProviderError::Transient(_)
        )
    }
}

/// A compute provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// What it can do.
    fn capabilities(&self) -> &Capabilities;
    /// How it bills.
    fn billing(&self) -> &BillingModel;
    /// Instance types for sale.
    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError>;
    /// Creates an instance; idempotent by `spec.node`.
    async fn create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError>;
    /// Starts a stopped instance.
    async fn start(&self, instance: &InstanceRef) -> Result<Instance, ProviderError>;
    /// Stops a running instance.
    async fn stop(&self, instance: &InstanceRef) -> Result<Instance, ProviderError>;
    /// Changes an instance's type.
    async fn resize(
        &self,
        instance: &InstanceRef,
        to: &InstanceType,
    ) -> Result<Instance, ProviderError>;
    /// Snapshots an instance's disk.
    async fn snapshot(&self, instance: &InstanceRef) -> Result<SnapshotRef, ProviderError>;
    /// Deletes an instance; deleting a deleted instance succeeds.
    async fn delete(&self, instance: &InstanceRef) -> Result<(), ProviderError>;
    /// Instances whose tags match.
    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError>;
}
