//! `GET /v1/diagnose`: what needs an operator's look, with the context to
//! act on it — per node its last sign of life and agent version, failing
//! provider calls by kind, claims waiting and why, alerts raised and how
//! their deliveries went. Built by [`Diagnosis::build`] from the status
//! the daemon already has; it never carries a secret (no token, no
//! credentials, no webhook URL).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{ClaimRecord, ClaimState, NodeState, NodeStatus, PendingReason};
use crate::ids::{ClaimId, Epoch, Millis, NodeId, PoolName, Workspace};

/// Where `GET` answers with a [`Diagnosis`].
pub const API_DIAGNOSE_PATH: &str = "/v1/diagnose";

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Severity {
    /// Something does not work and will not mend itself.
    Error,
    /// Worth a look; may mend itself.
    Warning,
}

/// One thing that needs a look, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What it is about (`node linux-…`, `claim c1`, `provider create`).
    pub subject: String,
    /// What is wrong.
    pub what: String,
}

/// A node's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeHealth {
    /// The node.
    pub node: NodeId,
    /// Its pool.
    pub pool: PoolName,
    /// Its live state.
    pub state: NodeState,
    /// Whether its agent session is open.
    pub connected: bool,
    /// Its agent's last message.
    pub last_seen: Millis,
    /// How long ago that was.
    pub silent_ms: Millis,
    /// What its agent said it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Claims it holds.
    pub claims: u32,
}

/// A claim waiting for a node, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WaitingClaim {
    /// The claim.
    pub claim: ClaimId,
    /// Its workspace.
    pub workspace: Workspace,
    /// Its pool.
    pub pool: PoolName,
    /// How long it has waited.
    pub waiting_ms: Millis,
    /// Why (as its `pending` reply said).
    pub reason: PendingReason,
}

/// `GET /v1/diagnose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Diagnosis {
    /// When it was made.
    pub at: Millis,
    /// The leader's epoch.
    pub epoch: Epoch,
    /// What needs a look, errors first.
    pub findings: Vec<Finding>,
    /// Every node.
    pub nodes: Vec<NodeHealth>,
    /// Claims waiting, longest first.
    pub waiting: Vec<WaitingClaim>,
    /// Failed provider calls since the start, by `call,kind`.
    pub provider_errors: BTreeMap<String, u64>,
    /// Alerts raised since the start, by kind.
    pub alerts: BTreeMap<String, u64>,
    /// Job escalation deliveries, by outcome (`delivered`, `failed`,
    /// `dropped`).
    pub alert_deliveries: BTreeMap<String, u64>,
}

/// What [`Diagnosis::build`] reads.
#[derive(Debug, Clone, Copy)]
pub struct DiagnosisInputs<'a> {
    /// Now.
    pub now: Millis,
    /// The leader's epoch.
    pub epoch: Epoch,
    /// The nodes.
    pub nodes: &'a [NodeStatus],
    /// The claims.
    pub claims: &'a [ClaimRecord],
    /// Failed provider calls by `call,kind`.
    pub provider_errors: &'a BTreeMap<String, u64>,
    /// Alerts by kind.
    pub alerts: &'a BTreeMap<String, u64>,
    /// Escalation deliveries by outcome.
    pub alert_deliveries: &'a BTreeMap<String, u64>,
    /// How long a node may go without a message before it is lost.
    pub heartbeat_timeout_ms: Millis,
}

/// A claim waiting this long for capacity is worth a look.
const LONG_WAIT_MS: Millis = 5 * 60_000;

impl Diagnosis {
    /// The diagnosis of `inputs`.
    pub fn build(inputs: DiagnosisInputs<'_>) -> Diagnosis {
        let now = inputs.now;
        let mut findings = Vec::new();
        let mut finding = |severity, subject: String, what: String| {
            findings.push(Finding {
                severity,
                subject,
                what,
            });
        };
        let mut versions = BTreeSet::new();
        let nodes: Vec<NodeHealth> = inputs
            .nodes
            .iter()
            .map(|n| NodeHealth {
                node: n.record.node.clone(),
                pool: n.record.pool.clone(),
                state: n.state,
                connected: n.connected,
                last_seen: n.last_seen,
                silent_ms: now.saturating_sub(n.last_seen),
                agent_version: n.agent_version.clone(),
                claims: u32::try_from(n.claims.len()).unwrap_or(u32::MAX),
            })
            .collect();
        for n in &nodes {
            let up = matches!(n.state, NodeState::Ready | NodeState::Busy);
            let subject = format!("node {}", n.node);
            if up && !n.connected {
                finding(
                    Severity::Error,
                    subject,
                    format!("no agent session; last heard {} s ago", n.silent_ms / 1_000),
                );
            } else if up && n.silent_ms > inputs.heartbeat_timeout_ms / 2 {
                finding(
                    Severity::Warning,
                    subject,
                    format!(
                        "no heartbeat for {} s (lost after {} s)",
                        n.silent_ms / 1_000,
                        inputs.heartbeat_timeout_ms / 1_000
                    ),
                );
            } else if n.state == NodeState::Lost {
                finding(
                    Severity::Error,
                    subject,
                    "lost: its agent went silent".to_owned(),
                );
            }
            if let Some(v) = &n.agent_version {
                versions.insert(v.clone());
            }
        }
        if versions.len() > 1 {
            let list: Vec<String> = versions.into_iter().collect();
            finding(
                Severity::Warning,
                "agents".to_owned(),
                format!("{} versions run: {}", list.len(), list.join(", ")),
            );
        }
        let mut waiting: Vec<WaitingClaim> = inputs
            .claims
            .iter()
            .filter(|c| c.state == ClaimState::Pending)
            .map(|c| WaitingClaim {
                claim: c.request.claim_id.clone(),
                workspace: c.request.workspace.clone(),
                pool: c.request.pool.clone(),
                waiting_ms: now.saturating_sub(c.enqueued_at),
                reason: c
                    .pending_reason
                    .clone()
                    .unwrap_or(PendingReason::WaitingForCapacity),
            })
            .collect();
        waiting.sort_by_key(|w| std::cmp::Reverse(w.waiting_ms));
        for w in &waiting {
            let subject = format!("claim {} ({})", w.claim, w.workspace);
            let secs = w.waiting_ms / 1_000;
            match &w.reason {
                PendingReason::Unsatisfiable { why } => finding(
                    Severity::Error,
                    subject,
                    format!("can never be granted in pool {}: {why}", w.pool),
                ),
                PendingReason::QuotaExceeded { max_claims } => finding(
                    Severity::Warning,
                    subject,
                    format!("waits {secs} s: workspace quota of {max_claims} claims"),
                ),
                PendingReason::DollarCapExceeded {
                    cap_micros_per_hour,
                } => finding(
                    Severity::Warning,
                    subject,
                    format!(
                        "waits {secs} s: workspace cap of ${:.2}/h",
                        *cap_micros_per_hour as f64 / 1e6
                    ),
                ),
                PendingReason::PoolAtCapacity { max_nodes } => finding(
                    Severity::Warning,
                    subject,
                    format!(
                        "waits {secs} s: pool {} is at its {max_nodes} nodes",
                        w.pool
                    ),
                ),
                other if w.waiting_ms > LONG_WAIT_MS => finding(
                    Severity::Warning,
                    subject,
                    format!("waits {secs} s: {}", pending_words(other)),
                ),
                _ => {}
            }
        }
        for (call_kind, n) in inputs.provider_errors {
            let (call, kind) = call_kind.split_once(',').unwrap_or((call_kind, "error"));
            finding(
                Severity::Warning,
                format!("provider {call}"),
                format!("failed {n} time(s): {kind}"),
            );
        }
        for outcome in ["failed", "dropped"] {
            if let Some(n) = inputs.alert_deliveries.get(outcome).filter(|n| **n > 0) {
                finding(
                    Severity::Warning,
                    "alerts".to_owned(),
                    format!("{n} escalation deliveries {outcome}"),
                );
            }
        }
        findings.sort_by_key(|f| f.severity);
        Diagnosis {
            at: now,
            epoch: inputs.epoch,
            findings,
            nodes,
            waiting,
            provider_errors: inputs.provider_errors.clone(),
            alerts: inputs.alerts.clone(),
            alert_deliveries: inputs.alert_deliveries.clone(),
        }
    }
}

/// A waiting reason in words.
pub(crate) fn pending_words(r: &PendingReason) -> String {
    match r {
        PendingReason::WaitingForCapacity => "for capacity being added".to_owned(),
        PendingReason::WaitingForAffinity { .. } => {
            "for the node its affinity key prefers".to_owned()
        }
        other => format!("{other:?}"),
    }
}
