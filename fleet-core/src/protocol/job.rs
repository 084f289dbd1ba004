//! Jobs (tasks): specs, worker events, retry and alert policy, receipts and
//! scorers — the CodeWhale fleet protocol (seed 003) on fleet's ids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Requirements, Secret};
use crate::ids::{JobId, Millis, NodeId, PoolName, Workspace};

/// Retry policy for a task. Defaults (seed 003): 3 attempts, 5 s initial
/// backoff, ×2, at most 300 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    #[serde(default = "d_initial")]
    pub initial_backoff_secs: u64,
    /// Backoff ceiling.
    #[serde(default = "d_max")]
    pub max_backoff_secs: u64,
    /// Backoff growth per attempt.
    #[serde(default = "d_mult")]
    pub backoff_multiplier: u32,
}

fn d_attempts() -> u32 {
    3
}
fn d_initial() -> u64 {
    5
}
fn d_max() -> u64 {
    300
}
fn d_mult() -> u32 {
    2
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: d_attempts(),
            initial_backoff_secs: d_initial(),
            max_backoff_secs: d_max(),
            backoff_multiplier: d_mult(),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 = the first retry), or
    /// `None` when attempts are used up.
    pub fn backoff_before(&self, next_attempt: u32) -> Option<Millis> {
        if next_attempt > self.max_attempts || next_attempt < 2 {
            return None;
        }
        let mut secs = self.initial_backoff_secs;
        for _ in 2..next_attempt {
            secs = secs.saturating_mul(u64::from(self.backoff_multiplier));
            if secs >= self.max_backoff_secs {
                break;
            }
        }
        Some(secs.min(self.max_backoff_secs).saturating_mul(1_000))
    }
}

/// Where an alert goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertChannel {
    /// A Slack incoming webhook.
    Slack {
        /// The webhook URL (a secret).
        webhook_url: Secret,
    },
    /// A generic webhook.
    Webhook {
        /// URL.
        url: String,
        /// HMAC secret, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<Secret>,
    },
    /// PagerDuty Events v2.
    PagerDuty {
        /// Routing key (a secret).
        routing_key: Secret,
        /// Severity.
        severity: String,
    },
}

impl AlertChannel {
    /// The channel's `kind`: `slack`, `webhook` or `pager_duty`.
    pub fn kind(&self) -> &'static str {
        match self {
            AlertChannel::Slack { .. } => "slack",
            AlertChannel::Webhook { .. } => "webhook",
            AlertChannel::PagerDuty { .. } => "pager_duty",
        }
    }
}

/// The JSON body fleet POSTs to a `slack` or `webhook` alert channel when
/// a job escalates. Slack shows `text` and ignores the rest; a program
/// reads the fields (`alert_id` is the same on every retry of a delivery,
/// so a receiver can drop duplicates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Escalation {
    /// One line for people.
    pub text: String,
    /// Unique per job, attempt and cause (`<job>-<attempt>-stale` or
    /// `<job>-<attempt>-attempts`).
    pub alert_id: String,
    /// The job.
    pub job: JobId,
    /// Its workspace.
    pub workspace: Workspace,
    /// Attempts so far.
    pub attempts: u32,
    /// Why: the last failure, or how long the attempt made no progress.
    pub reason: String,
    /// When the control plane escalated (ms since the epoch).
    pub at: Millis,
}

impl Escalation {
    /// The body for one escalation; `text` is made of the rest.
    pub fn new(
        alert_id: String,
        job: JobId,
        workspace: Workspace,
        attempts: u32,
        reason: String,
        at: Millis,
    ) -> Escalation {
        let text = format!(
            "fleet: job {job} ({workspace}) needs a look after {attempts} attempt(s): {reason}"
        );
        Escalation {
            text,
            alert_id,
            job,
            workspace,
            attempts,
            reason,
            at,
        }
    }
}

/// The PagerDuty Events API v2 `trigger` fleet POSTs for a `pager_duty`
/// channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PagerDutyEvent {
    /// The channel's routing key (the integration key).
    pub routing_key: String,
    /// Always `trigger`.
    pub event_action: String,
    /// The escalation's `alert_id`: PagerDuty folds retries into one
    /// incident.
    pub dedup_key: String,
    /// What the incident says.
    pub payload: PagerDutyPayload,
}

/// The `payload` of a [`PagerDutyEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PagerDutyPayload {
    /// The escalation's `text`.
    pub summary: String,
    /// `fleet/<workspace>`.
    pub source: String,
    /// The channel's `severity` (`critical`, `error`, `warning`, `info`).
    pub severity: String,
    /// The whole escalation.
    pub custom_details: Escalation,
}

impl PagerDutyEvent {
    /// The trigger for `escalation` on a channel with this key and severity.
    pub fn trigger(routing_key: &str, severity: &str, escalation: Escalation) -> PagerDutyEvent {
        PagerDutyEvent {
            routing_key: routing_key.to_owned(),
            event_action: "trigger".to_owned(),
            dedup_key: escalation.alert_id.clone(),
            payload: PagerDutyPayload {
                summary: escalation.text.clone(),
                source: format!("fleet/{}", escalation.workspace),
                severity: severity.to_owned(),
                custom_details: escalation,
            },
        }
    }
}

/// When a task escalates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AlertPolicy {
    /// Where alerts go.
    #[serde(default)]
    pub channels: Vec<AlertChannel>,
    /// Escalate after this many failed attempts.
    #[serde(default)]
    pub after_attempts: Option<u32>,
    /// Escalate when a running attempt makes no progress (no output and
    /// no event but heartbeats) for this many minutes.
    #[serde(default)]
    pub after_minutes_stale: Option<u64>,
}

/// How a task's result is judged. The agent runs the scorer on the node
/// once the task's process has exited (whatever its exit code), in the
/// task's working directory, and sends the [`Verdict`] with the
/// `completed` event. Paths are relative to that directory unless absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Scorer {
    /// Exit code 0 passes (the default judgement without a scorer).
    ExitCode,
    /// Passes if the file exists.
    FileExists {
        /// Path on the node.
        path: String,
    },
    /// Passes if the file's text matches the regular expression (Rust
    /// `regex` syntax).
    RegexMatch {
        /// Path on the node.
        path: String,
        /// Regular expression.
        pattern: String,
    },
    /// Evaluates a JSONPath (RFC 9535) over the file: passes if every value
    /// it selects is truthy (not `null`, `false`, `0`, `""`, `[]` or `{}`),
    /// is `partial` if only some are, fails if none is or nothing matched.
    /// The score is the truthy fraction.
    JsonPath {
        /// Path on the node.
        path: String,
        /// JSONPath expression, e.g. `$.tests[*].passed`.
        expression: String,
    },
    /// Runs a command: exit 0 passes, anything else fails. If its last line
    /// of standard output is a score — `0.8` (out of 1) or `8/10` — that is
    /// the score, and a passing score below its maximum is `partial`.
    Command {
        /// Command line.
        argv: Vec<String>,
    },
    /// A person decides: the job waits in `awaiting_verdict` for
    /// [`JobMsg::Verdict`].
    Manual,
}

/// A scorer's judgement of one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Verdict {
    /// `pass`, `partial`, `fail` or `skip`.
    pub result: TaskResult,
    /// The score, with what the scorer saw in `notes`.
    pub score: Score,
}

impl Verdict {
    /// A pass/fail verdict scored 1 or 0 out of 1.
    pub fn binary(passed: bool, notes: impl Into<String>) -> Verdict {
        Verdict {
            result: if passed {
                TaskResult::Pass
            } else {
                TaskResult::Fail
            },
            score: Score {
                value: if passed { 1.0 } else { 0.0 },
                max: Some(1.0),
                notes: Some(notes.into()),
            },
        }
    }

    /// A verdict from a score out of `max`: all of it passes, none of it
    /// fails, anything between is `partial`.
    pub fn graded(value: f64, max: f64, notes: impl Into<String>) -> Verdict {
        let result = if value >= max {
            TaskResult::Pass
        } else if value > 0.0 {
            TaskResult::Partial
        } else {
            TaskResult::Fail
        };
        Verdict {
            result,
            score: Score {
                value,
                max: Some(max),
                notes: Some(notes.into()),
            },
        }
    }

    /// Why a verdict cannot end a job, if it cannot: only `pass`,
    /// `partial`, `fail` and `skip` judge a result (`timeout` is the
    /// control plane's), and the score must be a finite number no larger
    /// than its maximum.
    pub fn invalid(&self) -> Option<String> {
        if !matches!(
            self.result,
            TaskResult::Pass | TaskResult::Partial | TaskResult::Fail | TaskResult::Skip
        ) {
            return Some(format!(
                "a verdict is pass, partial, fail or skip, not {:?}",
                self.result
            ));
        }
        let Score { value, max, .. } = &self.score;
        if !value.is_finite() || max.is_some_and(|m| !m.is_finite()) {
            return Some("the score must be a finite number".to_owned());
        }
        if max.is_some_and(|m| *value > m) {
            return Some("the score exceeds its maximum".to_owned());
        }
        None
    }
}

/// A unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskSpec {
    /// Submitter-chosen id (idempotency key).
    pub id: JobId,
    /// The tenant.
    pub workspace: Workspace,
    /// The pool to run in.
    pub pool: PoolName,
    /// Command line.
    pub argv: Vec<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Millis>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Escalation policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertPolicy>,
    /// How the result is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorer: Option<Scorer>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// What the node must offer.
    #[serde(default)]
    pub requirements: Requirements,
}

/// The kind of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ArtifactKind {
    /// A log.
    Log,
    /// A patch.
    Patch,
    /// Test results.
    TestResult,
    /// A report.
    Report,
    /// A checkpoint.
    Checkpoint,
    /// A receipt.
    Receipt,
    /// Anything else.
    Other,
}

/// An artifact a task produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ArtifactRef {
    /// Kind.
    pub kind: ArtifactKind,
    /// Where it is (path on the node or URI).
    pub uri: String,
    /// `sha256:…`, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Size, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// One state a worker reports for a task; the 15 states of the CodeWhale
/// fleet protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerEvent {
    /// In the queue.
    Queued,
    /// Leased to a worker.
    Leased {
        /// Lease end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_expires_at: Option<Millis>,
    },
    /// Process being started.
    Starting,
    /// Process running.
    Running,
    /// Waiting on a model (agentic tasks).
    ModelWait {
        /// Which model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// Running a tool (agentic tasks).
    RunningTool {
        /// Tool name.
        tool: String,
        /// Call id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
    },
    /// Still alive.
    Heartbeat {
        /// CPU use.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_percent: Option<f32>,
        /// Resident memory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory_mb: Option<u64>,
    },
    /// An artifact was produced.
    Artifact(ArtifactRef),
    /// Finished.
    Completed {
        /// Exit code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// Summary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
        /// The task's scorer's judgement, when it has one the agent runs
        /// (every scorer but `manual`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<Verdict>,
    },
    /// Failed.
    Failed {
        /// Why.
        reason: String,
        /// Whether a retry may succeed.
        #[serde(default)]
        recoverable: bool,
    },
    /// Cancelled.
    Cancelled {
        /// By whom.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancelled_by: Option<String>,
    },
    /// Killed by a signal or interruption.
    Interrupted {
        /// Signal name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    /// No heartbeat for too long.
    Stale {
        /// Last heartbeat.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_heartbeat_at: Option<Millis>,
    },
    /// Requeued for another attempt.
    Restarted {
        /// Attempts so far.
        #[serde(default)]
        restart_count: u32,
    },
    /// Escalated to a person.
    Escalated {
        /// Alert channel.
        channel: String,
        /// Alert id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alert_id: Option<String>,
    },
}

impl WorkerEvent {
    /// Whether the event ends an attempt.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            WorkerEvent::Completed { .. }
                | WorkerEvent::Failed { .. }
                | WorkerEvent::Cancelled { .. }
                | WorkerEvent::Interrupted { .. }
        )
    }
}

/// The verdict of a finished task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskResult {
    /// Passed.
    Pass,
    /// Partly passed.
    Partial,
    /// Failed.
    Fail,
    /// Skipped.
    Skip,
    /// Timed out.
    Timeout,
}

/// A score from a scorer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Score {
    /// Value.
    pub value: f64,
    /// Maximum, if bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// The durable outcome of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Receipt {
    /// The job.
    pub job: JobId,
    /// The node it ran on last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// Attempts used.
    pub attempts: u32,
    /// When it finished.
    pub completed_at: Millis,
    /// Verdict.
    pub result: TaskResult,
    /// Exit code of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Artifacts.
    #[serde(default)]
    pub artifacts: Vec<ArtifactRef>,
    /// Score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<Score>,
}

/// Messages a submitter sends on the job plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobMsg {
    /// Submit a task.
    Submit(Box<TaskSpec>),
    /// Cancel a task.
    Cancel {
        /// The workspace.
        workspace: Workspace,
        /// The job.
        job: JobId,
    },
    /// A person's verdict on a task whose scorer is `manual` (the job is
    /// `awaiting_verdict`): ends it with this result and score.
    Verdict {
        /// The workspace.
        workspace: Workspace,
        /// The job.
        job: JobId,
        /// The judgement.
        verdict: Verdict,
    },
    /// Submit a run: its tasks become jobs that share its lifecycle. The
    /// answer is `run` (its status, again at each change) then, per task,
    /// what a job's submitter hears.
    SubmitRun(Box<super::RunSpec>),
    /// Pause, resume or cancel a run.
    Run {
        /// The workspace.
        workspace: Workspace,
        /// The run.
        run: crate::ids::RunId,
        /// What to do.
        action: super::RunAction,
    },
}

impl JobMsg {
    /// The workspace the message is in and the job or run it is about (the
    /// last token of its NATS subject).
    pub fn target(&self) -> (&Workspace, &str) {
        match self {
            JobMsg::Submit(spec) => (&spec.workspace, spec.id.as_str()),
            JobMsg::Cancel { workspace, job } | JobMsg::Verdict { workspace, job, .. } => {
                (workspace, job.as_str())
            }
            JobMsg::SubmitRun(spec) => (&spec.workspace, spec.id.as_str()),
            JobMsg::Run { workspace, run, .. } => (workspace, run.as_str()),
        }
    }

    /// The job the message is about; `None` for a run's messages.
    pub fn job(&self) -> Option<&JobId> {
        match self {
            JobMsg::Submit(spec) => Some(&spec.id),
            JobMsg::Cancel { job, .. } | JobMsg::Verdict { job, .. } => Some(job),
            JobMsg::SubmitRun(_) | JobMsg::Run { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_defaults_and_backoff() {
        let p: RetryPolicy = serde_json::from_str("{}").unwrap_or_default();
        assert_eq!(p, RetryPolicy::default());
        assert_eq!(p.backoff_before(1), None);
        assert_eq!(p.backoff_before(2), Some(5_000));
        assert_eq!(p.backoff_before(3), Some(10_000));
        assert_eq!(p.backoff_before(4), None);
        let long = RetryPolicy {
            max_attempts: 20,
            ..RetryPolicy::default()
        };
        assert_eq!(long.backoff_before(20), Some(300_000));
    }
}

/// Messages the control plane sends to a submitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobReply {
    /// Accepted (or already known: submits are idempotent by id).
    Accepted {
        /// The job.
        job: JobId,
    },
    /// A worker event for the job.
    Event {
        /// The job.
        job: JobId,
        /// Attempt number.
        attempt: u32,
        /// The event.
        event: WorkerEvent,
    },
    /// A chunk of the attempt's output (already redacted by the agent).
    Output {
        /// The job.
        job: JobId,
        /// Attempt number.
        attempt: u32,
        /// Which stream.
        stream: super::OutputStream,
        /// UTF-8 text (lossy).
        data: String,
    },
    /// The job finished.
    Finished(Receipt),
    /// A run's status: when its submit (or an action on it) is accepted,
    /// and each time the status changes.
    Run {
        /// The run.
        run: crate::ids::RunId,
        /// Where it is.
        status: super::RunStatus,
    },
    /// Refused.
    Rejected {
        /// The job, when the message named one that parsed (absent for a
        /// run's messages: `why` names the run).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobId>,
        /// Why.
        why: String,
    },
}
