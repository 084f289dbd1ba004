//! Agent ↔ daemon messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{NodeResources, Scorer, Secret, WorkerEvent};
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
    /// Judges the result once the process has exited; the verdict goes
    /// with the `completed` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorer: Option<Scorer>,
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
    /// A piece of a file the command left in `$FLEET_ARTIFACT_DIR`, sent
    /// after the command ended and before its `artifact` event: the daemon
    /// stores it for download. Pieces of one file come in order from
    /// offset 0; `last` ends the file.
    ArtifactChunk {
        /// The command.
        command: CommandId,
        /// The file's name in the artifact directory.
        name: String,
        /// Where `data` goes in the file.
        offset: u64,
        /// The bytes, base64 (standard alphabet, padded).
        data: String,
        /// The file ends with this piece.
        last: bool,
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

/// WebSocket close code of an agent session refused for good: the same
/// credentials will never be accepted; the close reason is an
/// [`AgentRefusal`] that [`AgentRefusal::is_definitive`].
pub const CLOSE_AGENT_REFUSED: u16 = 4003;

/// WebSocket close code of an agent session the daemon could not
/// authenticate now (RFC 6455's "Try Again Later"): the close reason is
/// [`AgentRefusal::Unavailable`]; the agent retries with the same
/// credentials.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Why the daemon refused an agent's session before `welcome`: the reason
/// text of the WebSocket close frame (`bad_token`, …), under the close code
/// [`AgentRefusal::close_code`] gives. An agent stops on a definitive
/// refusal and keeps retrying on anything else (an unknown reason
/// included: a newer daemon may add reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentRefusal {
    /// The bootstrap token is unknown or already used.
    BadToken,
    /// The bootstrap token was issued for another node.
    TokenForOtherNode,
    /// The client certificate names another node than the `hello`.
    NodeMismatch,
    /// Neither a bootstrap token nor a client certificate.
    NoCredentials,
    /// The daemon cannot decide now (its store or CA is unavailable).
    Unavailable,
}

impl AgentRefusal {
    /// Every refusal.
    pub const ALL: [AgentRefusal; 5] = [
        AgentRefusal::BadToken,
        AgentRefusal::TokenForOtherNode,
        AgentRefusal::NodeMismatch,
        AgentRefusal::NoCredentials,
        AgentRefusal::Unavailable,
    ];

    /// The close reason text.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentRefusal::BadToken => "bad_token",
            AgentRefusal::TokenForOtherNode => "token_for_other_node",
            AgentRefusal::NodeMismatch => "node_mismatch",
            AgentRefusal::NoCredentials => "no_credentials",
            AgentRefusal::Unavailable => "unavailable",
        }
    }

    /// The refusal a close reason names; `None` for any other text.
    pub fn parse(reason: &str) -> Option<AgentRefusal> {
        AgentRefusal::ALL.into_iter().find(|r| r.as_str() == reason)
    }

    /// Whether the same credentials can never be accepted: the agent must
    /// not retry with them.
    pub fn is_definitive(self) -> bool {
        !matches!(self, AgentRefusal::Unavailable)
    }

    /// The close code it is sent with: [`CLOSE_AGENT_REFUSED`] when
    /// definitive, else [`CLOSE_TRY_AGAIN_LATER`].
    pub fn close_code(self) -> u16 {
        if self.is_definitive() {
            CLOSE_AGENT_REFUSED
        } else {
            CLOSE_TRY_AGAIN_LATER
        }
    }

    /// What it means, for an operator reading the agent's log.
    pub fn explain(self) -> &'static str {
        match self {
            AgentRefusal::BadToken => {
                "the bootstrap token is unknown or already used: the daemon no longer wants \
                 this node, or it joined before and lost the identity in its identity_dir"
            }
            AgentRefusal::TokenForOtherNode => {
                "the bootstrap token was issued for another node (check node_id)"
            }
            AgentRefusal::NodeMismatch => {
                "the node identity in identity_dir is another node's (check node_id)"
            }
            AgentRefusal::NoCredentials => {
                "the agent has neither a bootstrap token nor a node identity"
            }
            AgentRefusal::Unavailable => "the daemon cannot authenticate agents right now",
        }
    }
}

impl std::fmt::Display for AgentRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
