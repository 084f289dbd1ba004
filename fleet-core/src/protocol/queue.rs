//! Queue mode's objects (seed 001): what agents write under
//! `<prefix>[/<queue>]/` in a bucket or directory, and read back from each
//! other — `claimed/<id>.json` ([`QueueClaim`], a spec with its lease) and
//! `completed/<id>.json`, `failed/<id>.json` ([`QueueRecord`]) — and the
//! environment a supervisor is started with. `pending/<id>.json` is the
//! submitter's spec as is, not a fleet type.

use serde::{Deserialize, Serialize};

use crate::ids::Millis;

/// The largest spec (a `pending/` object) queue mode runs; a larger one is
/// filed under `failed/` without its body.
pub const MAX_QUEUE_SPEC_BYTES: usize = 1 << 20;

/// The largest queue record read (claimed, completed, failed): a spec of
/// [`MAX_QUEUE_SPEC_BYTES`] kept as an escaped JSON string still fits.
pub const MAX_QUEUE_RECORD_BYTES: usize = 8 << 20;

/// The supervisor's environment: the spec's id (its object name without
/// `.json`).
pub const QUEUE_SPEC_ID_ENV: &str = "FLEET_QUEUE_SPEC_ID";
/// The supervisor's environment: the agent's node id.
pub const QUEUE_NODE_ID_ENV: &str = "FLEET_QUEUE_NODE_ID";
/// The supervisor's environment: the lease's fencing number
/// ([`QueueLease::fencing`]); a run of the same spec with a lower number
/// was taken over and its result is not recorded.
pub const QUEUE_FENCING_ENV: &str = "FLEET_QUEUE_FENCING";
/// The supervisor's environment: the agent holding the lease
/// ([`QueueLease::agent`]).
pub const QUEUE_AGENT_ID_ENV: &str = "FLEET_QUEUE_AGENT_ID";

/// `claimed/<id>.json`: a spec taken out of `pending/`, the lease of the
/// agent running it, and — once it ran — its result, waiting to be filed
/// under `completed/` or `failed/`.
///
/// Every change after the create is a conditional write on the version the
/// writer read (S3 `If-Match` on the ETag; a compare-and-swap in a
/// directory), so of two agents acting on one version only one succeeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct QueueClaim {
    /// The spec's id: its object name without `.json`.
    pub spec_id: String,
    /// The spec as submitted (JSON); a string holding the submitted text
    /// when that was not JSON, `null` when it was over
    /// [`MAX_QUEUE_SPEC_BYTES`] (such a claim is created with a `result`).
    pub spec: serde_json::Value,
    /// Who runs it, and until when.
    pub lease: QueueLease,
    /// Set once by the lease holder when the run ended; the claim is then
    /// settled: never taken over, only filed (by any agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<QueueResult>,
}

/// An agent's hold on a claimed spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct QueueLease {
    /// The holder: `<node id>/<process id>`.
    pub agent: String,
    /// 1 for the first claim, one more at each take-over; the supervisor
    /// gets it as `FLEET_QUEUE_FENCING`.
    pub fencing: u64,
    /// When this holder got it (ms since the Unix epoch, as all times here).
    pub acquired_at: Millis,
    /// Its last renewal.
    pub renewed_at: Millis,
    /// When another agent may take it over unless renewed before.
    pub expires_at: Millis,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct QueueResult {
    /// Completed or failed, and why.
    pub outcome: QueueOutcome,
    /// When the supervisor was started (for a spec never run: when it was
    /// refused).
    pub started_at: Millis,
    /// When it ended.
    pub ended_at: Millis,
}

/// Completed or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum QueueOutcome {
    /// The supervisor exited 0.
    Completed {
        /// Its exit code (0).
        exit_code: i32,
    },
    /// It exited otherwise or was killed, could not start, the spec was
    /// not runnable, or its lease lapsed too often.
    Failed {
        /// The supervisor's exit code, if it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// Why, for an operator.
        reason: String,
    },
}

impl QueueOutcome {
    /// The directory the spec is filed in: `completed` or `failed`.
    pub fn dir(&self) -> &'static str {
        match self {
            QueueOutcome::Completed { .. } => "completed",
            QueueOutcome::Failed { .. } => "failed",
        }
    }
}

/// `completed/<id>.json` or `failed/<id>.json`: a spec's final record,
/// created once (only if absent), so a spec is filed at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct QueueRecord {
    /// The spec's id.
    pub spec_id: String,
    /// The agent whose lease the result was recorded under.
    pub agent: String,
    /// That lease's fencing number: the run the result is from.
    pub fencing: u64,
    /// Completed or failed, and why.
    pub outcome: QueueOutcome,
    /// When the supervisor was started.
    pub started_at: Millis,
    /// When it ended.
    pub ended_at: Millis,
    /// The spec, as in the claim.
    pub spec: serde_json::Value,
}

impl QueueClaim {
    /// The final record of a settled claim; `None` while it runs.
    pub fn record(&self) -> Option<QueueRecord> {
        let result = self.result.as_ref()?;
        Some(QueueRecord {
            spec_id: self.spec_id.clone(),
            agent: self.lease.agent.clone(),
            fencing: self.lease.fencing,
            outcome: result.outcome.clone(),
            started_at: result.started_at,
            ended_at: result.ended_at,
            spec: self.spec.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_claim_becomes_its_record() {
        let mut claim = QueueClaim {
            spec_id: "s1".into(),
            spec: serde_json::json!({"spec": {}}),
            lease: QueueLease {
                agent: "a/1".into(),
                fencing: 2,
                acquired_at: 10,
                renewed_at: 20,
                expires_at: 30,
            },
            result: None,
        };
        assert_eq!(claim.record(), None);
        claim.result = Some(QueueResult {
            outcome: QueueOutcome::Failed {
                exit_code: Some(3),
                reason: "exited with 3".into(),
            },
            started_at: 11,
            ended_at: 25,
        });
        let record = claim.record().unwrap_or_else(|| panic!("settled"));
        assert_eq!((record.agent.as_str(), record.fencing), ("a/1", 2));
        assert_eq!(record.outcome.dir(), "failed");
        assert_eq!((record.started_at, record.ended_at), (11, 25));
    }
}
