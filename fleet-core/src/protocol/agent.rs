//! Agent ↔ daemon messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{NodeResources, Secret, WorkerEvent};
use crate::ids::{ClaimId, CommandId, JobId, Millis, NodeId};

/// Default agent heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: Millis = 5_000;
/// Default heartbeat timeout before a node is declared lost (seed 003: 120 s).
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: Millis = 120_000;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The mTLS identity the daemon gives an agent after bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeIdentity {
    /// The node's certificate (PEM), signed by the pool CA.
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: Secret,
    /// The pool CA certificate (PEM), for verifying claim certificates.
    pub ca_pem: String,
}

/// A command the daemon asks an agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CommandSpec {
    /// Unique id; the agent never runs the same id twice.
    pub id: CommandId,
    /// The job it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// Command line.
    pub argv: Vec<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill the process group after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Millis>,
    /// Strings to redact from its output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<Secret>,
}

/// Messages an agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentMsg {
    /// First message of every session.
    Hello {
        /// The node.
        node: NodeId,
        /// Agent version.
        agent_version: String,
        /// Single-use token on first contact; absent once the agent has its
        /// mTLS identity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bootstrap_token: Option<Secret>,
        /// What the node offers.
        resources: NodeResources,
        /// The agent's mTLS gateway address (`host:port`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<String>,
        /// Commands this agent already ran or is running (resume after
        /// reconnect).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        seen_commands: Vec<CommandId>,
    },
    /// Liveness and load.
    Heartbeat {
        /// CPU use.
        cpu_percent: f32,
        /// Memory in use.
        memory_mb: u64,
        /// Commands in flight.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        running: Vec<CommandId>,
    },
    /// A worker event for a command.
    Event {
        /// The command.
        command: CommandId,
        /// Per-command sequence number.
        seq: u64,
        /// The event.
        event: WorkerEvent,
    },
    /// A chunk of output (already redacted).
    Output {
        /// The command.
        command: CommandId,
        /// Which stream.
        stream: OutputStream,
        /// Per-command sequence number.
        seq: u64,
        /// UTF-8 text (lossy).
        data: String,
    },
    /// The provider is reclaiming this node (spot).
    Interrupted {
        /// When (ms since epoch).
        deadline: Millis,
    },
    /// The agent is shutting down.
    Draining {
        /// Commands still running.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        in_flight: Vec<CommandId>,
    },
}

/// Messages the daemon sends to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DaemonMsg {
    /// Session accepted.
    Welcome {
        /// The node.
        node: NodeId,
        /// The node's mTLS identity, on bootstrap.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<NodeIdentity>,
        /// Heartbeat interval.
        heartbeat_interval_ms: Millis,
    },
    /// Run a command.
    Run(CommandSpec),
    /// Cancel a command.
    Cancel {
        /// The command.
        command: CommandId,
    },
    /// Accept this claim's certificate at the gateway until `expires_at`.
    Activate {
        /// The claim.
        claim_id: ClaimId,
        /// Lease end.
        expires_at: Millis,
    },
    /// Stop accepting this claim and close its connections.
    Deactivate {
        /// The claim.
        claim_id: ClaimId,
    },
    /// Finish up and shut down.
    Drain,
}
