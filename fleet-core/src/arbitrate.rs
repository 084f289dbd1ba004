//! Arbitration: which pending claim gets which node.
//!
//! [`arbitrate`] is a pure, deterministic function of its inputs: no clock,
//! no I/O, no randomness, and the same result whatever order the inputs come
//! in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ClaimId, Millis, NodeId, PoolName, Workspace};
use crate::money::{HourlyPrice, Money};
use crate::protocol::{NodeResources, PendingReason, Requirements};

/// A claim waiting for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingClaim {
    /// The claim.
    pub id: ClaimId,
    /// Its workspace.
    pub workspace: Workspace,
    /// Its pool.
    pub pool: PoolName,
    /// What it needs.
    pub requirements: Requirements,
    /// Higher first.
    pub priority: i32,
    /// When it arrived.
    pub enqueued_at: Millis,
}

/// A node that can take claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// The node.
    pub id: NodeId,
    /// Its pool.
    pub pool: PoolName,
    /// What it offers.
    pub resources: NodeResources,
    /// Claims it can serve at once.
    pub slots: u32,
    /// Free slots now.
    pub free_slots: u32,
    /// Its hourly price (a claim is charged `price / slots`).
    pub price: HourlyPrice,
}

/// Limits of one workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Most claims held at once.
    #[serde(default)]
    pub max_claims: Option<u32>,
    /// Most spend per hour across held claims.
    #[serde(default)]
    pub max_hourly_spend: Option<Money>,
}

/// What a workspace holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Claims held.
    pub claims: u32,
    /// Hourly spend of the claims held.
    pub hourly_spend: Money,
}

/// Inputs of one arbitration round.
#[derive(Debug, Clone, Copy)]
pub struct ArbitrationInput<'a> {
    /// Pending claims (any order).
    pub claims: &'a [PendingClaim],
    /// Nodes (any order).
    pub nodes: &'a [NodeCapacity],
    /// Per-workspace limits; absent means unlimited.
    pub quotas: &'a BTreeMap<Workspace, Quota>,
    /// Per-workspace current holdings; absent means none.
    pub usage: &'a BTreeMap<Workspace, Usage>,
}

/// One grant decided.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Assignment {
    /// The claim.
    pub claim: ClaimId,
    /// The node.
    pub node: NodeId,
}

/// The result of a round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Grants, in service order.
    pub grants: Vec<Assignment>,
    /// Claims left waiting, with why, in service order.
    pub waiting: Vec<(ClaimId, PendingReason)>,
}

/// Assigns pending claims to free node slots.
pub fn arbitrate(input: ArbitrationInput<'_>) -> Outcome {
    let _ = input;
    Outcome::default()
}
