//! Decisions an operator can read: what each pool's strategy asked for and
//! why, and each claim's life, kept by the controller in bounded memory
//! (the newest [`HISTORY_DECISIONS`] decisions and
//! [`HISTORY_TRANSITIONS`] claim transitions; a restarted leader starts
//! with none).
//!
//! `GET /v1/pools/<pool>/explain` answers a [`PoolExplain`],
//! `GET /v1/claims/<claim>/history` a [`ClaimHistory`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ClaimId, InstanceType, Millis, NodeId, PoolName, Workspace};
use crate::strategy::Reason;

/// Strategy decisions kept (all pools together).
pub const HISTORY_DECISIONS: usize = 2_048;

/// Claim transitions kept (all claims together).
pub const HISTORY_TRANSITIONS: usize = 8_192;

/// `GET` here answers the [`PoolExplain`] of `pool`.
pub fn api_pool_explain_path(pool: &PoolName) -> String {
    format!("/v1/pools/{pool}/explain")
}

/// `GET` here answers the [`ClaimHistory`] of `claim` (in any workspace).
pub fn api_claim_history_path(claim: &ClaimId) -> String {
    format!("/v1/claims/{claim}/history")
}

/// What a strategy saw when it planned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PlanInputs {
    /// Claims and jobs waiting for a node of the pool.
    pub waiting: u32,
    /// How long the oldest of them has waited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_wait_ms: Option<Millis>,
    /// The pool's nodes by state.
    pub nodes: BTreeMap<String, u64>,
    /// Free slots on ready nodes.
    pub free_slots: u32,
    /// Instance types the provider reported short of capacity, in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub short_of: Vec<InstanceType>,
    /// Creates wait until then after a failed create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_backoff_until: Option<Millis>,
}

/// One action a strategy asked for, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Decision {
    /// When.
    pub at: Millis,
    /// The pool.
    pub pool: PoolName,
    /// Its strategy.
    pub strategy: String,
    /// `create`, `start`, `stop`, `resize`, `snapshot` or `delete`.
    pub action: String,
    /// The node acted on, or made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// The instance type made or resized to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<InstanceType>,
    /// Its price per hour in micro-dollars, for creates and resizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_micros: Option<i64>,
    /// Why the strategy asked.
    pub reason: Reason,
    /// The same, in words.
    pub why: String,
    /// Set when the controller refused the action: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// What the strategy saw.
    pub inputs: PlanInputs,
}

/// `GET /v1/pools/<pool>/explain`: a pool's strategy, its last plan that
/// asked for something, and its recent decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PoolExplain {
    /// The pool.
    pub pool: PoolName,
    /// Its strategy.
    pub strategy: String,
    /// What the strategy does, in a line.
    pub summary: String,
    /// Its parameters, as set.
    pub parameters: BTreeMap<String, String>,
    /// When it last planned (whether or not it asked for anything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_at: Option<Millis>,
    /// What it saw then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<PlanInputs>,
    /// When it asked to plan again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<Millis>,
    /// The pool's decisions still kept, oldest first.
    pub decisions: Vec<Decision>,
}

/// One step of a claim's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClaimTransition {
    /// When.
    pub at: Millis,
    /// The claim.
    pub claim: ClaimId,
    /// Its workspace.
    pub workspace: Workspace,
    /// Its pool.
    pub pool: PoolName,
    /// The state it entered (`pending`, `granted`, …).
    pub state: String,
    /// Its node, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// Why, in words.
    pub reason: String,
}

/// `GET /v1/claims/<claim>/history`: a claim's transitions still kept,
/// oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClaimHistory {
    /// The claim.
    pub claim: ClaimId,
    /// Its transitions.
    pub transitions: Vec<ClaimTransition>,
}
