//! Runs (seed 003's `FleetRun`): a group of tasks submitted together, with
//! one lifecycle, labels, and the worker pools that may serve them.
//!
//! A run's tasks are ordinary jobs (their ids are job ids, their events,
//! receipts and artifacts are a job's); the run adds what a group needs:
//! pause and resume (no new attempt starts while paused), cancel (every
//! task not finished is cancelled), a per-pool limit on how many of its
//! tasks run at once, and a status derived from its tasks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{JobRecord, JobState, Score, TaskResult, TaskSpec};
use crate::ids::{Epoch, JobId, Millis, PoolName, RunId, Workspace};

/// The most tasks one run may hold.
pub const MAX_RUN_TASKS: usize = 256;

/// Where a run's tasks may run: one pool, with a limit on how many of the
/// run's tasks run in it at once and labels its nodes must carry.
///
/// The seed's host spec (`local`, `ssh`, `docker`) is how a *pool* gets its
/// nodes in fleet — the provider's configuration (the `ssh` provider's host
/// list, say) — so a worker spec names the pool rather than a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WorkerSpec {
    /// The pool.
    pub pool: PoolName,
    /// At most this many of the run's tasks leased or running in the pool
    /// at once (none: as many as the pool has slots for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_tasks: Option<u32>,
    /// Labels every node serving the run's tasks in this pool must carry;
    /// added to each task's own requirements (a task's own value for a
    /// label wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A run as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunSpec {
    /// Submitter-chosen id (idempotency key).
    pub id: RunId,
    /// The tenant; every task is in it.
    pub workspace: Workspace,
    /// A name for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Free-form labels (who, what, which commit).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The tasks: 1 to [`MAX_RUN_TASKS`], each id unused by any other job.
    pub tasks: Vec<TaskSpec>,
    /// The pools that may serve the tasks; when given, every task's pool
    /// must be one of them. At most one per pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerSpec>,
    /// Submit paused: the tasks are stored and queued but none starts
    /// until the run is resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

impl RunSpec {
    /// The worker spec for `pool`, if the run names one.
    pub fn worker(&self, pool: &PoolName) -> Option<&WorkerSpec> {
        self.workers.iter().find(|w| &w.pool == pool)
    }

    /// Why the run cannot be accepted as it stands (pool existence and job
    /// id collisions are the control plane's to check), if it cannot.
    pub fn invalid(&self) -> Option<String> {
        if self.tasks.is_empty() {
            return Some("a run needs at least one task".to_owned());
        }
        if self.tasks.len() > MAX_RUN_TASKS {
            return Some(format!(
                "a run holds at most {MAX_RUN_TASKS} tasks; this one has {}",
                self.tasks.len()
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for t in &self.tasks {
            if t.workspace != self.workspace {
                return Some(format!(
                    "task {} is in workspace {}, the run in {}",
                    t.id, t.workspace, self.workspace
                ));
            }
            if !ids.insert(&t.id) {
                return Some(format!("task id {} appears twice", t.id));
            }
            if !self.workers.is_empty() && self.worker(&t.pool).is_none() {
                return Some(format!(
                    "task {} runs in pool {}, which the run's workers do not name",
                    t.id, t.pool
                ));
            }
        }
        let mut pools = std::collections::BTreeSet::new();
        for w in &self.workers {
            if !pools.insert(&w.pool) {
                return Some(format!("pool {} has two worker specs", w.pool));
            }
            if w.max_concurrent_tasks == Some(0) {
                return Some(format!(
                    "worker {}: max_concurrent_tasks must be at least 1",
                    w.pool
                ));
            }
        }
        None
    }

    /// The task as the run runs it: the worker spec's labels added to its
    /// requirements.
    pub fn task_as_run(&self, task: &TaskSpec) -> TaskSpec {
        let mut t = task.clone();
        if let Some(w) = self.worker(&t.pool) {
            for (k, v) in &w.labels {
                t.requirements
                    .labels
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
        }
        t
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStatus {
    /// Accepted; its tasks are not all stored yet.
    Pending,
    /// Every task is stored and waits for a node; none has started.
    Queued,
    /// At least one task has started and not every task has finished.
    Running,
    /// No new attempt starts (attempts already on nodes go on).
    Paused,
    /// Every task finished, none failed or timed out.
    Completed,
    /// Every task finished and at least one failed or timed out.
    Failed,
    /// Cancelled: its unfinished tasks were cancelled.
    Cancelled,
}

impl RunStatus {
    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an operator or submitter does to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunAction {
    /// Start no new attempt until resumed.
    Pause,
    /// Start attempts again.
    Resume,
    /// Cancel every unfinished task; the run ends `cancelled`.
    Cancel,
}

impl RunAction {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            RunAction::Pause => "pause",
            RunAction::Resume => "resume",
            RunAction::Cancel => "cancel",
        }
    }
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunRecord {
    /// The run as submitted.
    pub spec: RunSpec,
    /// Where it is.
    pub status: RunStatus,
    /// Whether it is paused (its status says so unless it is over).
    #[serde(default)]
    pub paused: bool,
    /// When it was submitted.
    pub submitted_at: Millis,
    /// When its status last changed.
    pub updated_at: Millis,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Millis>,
    /// The epoch that last wrote it.
    pub epoch: Epoch,
}

/// One task of a run, as `GET /v1/runs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunTask {
    /// The task's job id.
    pub job: JobId,
    /// The pool.
    pub pool: PoolName,
    /// Its job's state ([`JobState::name`]); `pending` before its job is
    /// stored.
    pub state: String,
    /// Attempts started.
    #[serde(default)]
    pub attempts: u32,
    /// Its result, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    /// Its score, once judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<Score>,
}

/// `GET /v1/runs`: a run and where each of its tasks is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunInfo {
    /// The run.
    pub id: RunId,
    /// The tenant.
    pub workspace: Workspace,
    /// Its name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Where it is.
    pub status: RunStatus,
    /// When it was submitted.
    pub submitted_at: Millis,
    /// When its status last changed.
    pub updated_at: Millis,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Millis>,
    /// Its tasks, in the order submitted.
    pub tasks: Vec<RunTask>,
}

impl RunInfo {
    /// The view of `run`, its tasks looked up in `job`.
    pub fn new<'a>(run: &RunRecord, job: impl Fn(&JobId) -> Option<&'a JobRecord>) -> RunInfo {
        let tasks = run
            .spec
            .tasks
            .iter()
            .map(|t| match job(&t.id) {
                Some(j) => RunTask {
                    job: t.id.clone(),
                    pool: t.pool.clone(),
                    state: j.state.name().to_owned(),
                    attempts: j.attempts,
                    result: j.receipt.as_ref().map(|r| r.result),
                    score: j.receipt.as_ref().and_then(|r| r.score.clone()),
                },
                None => RunTask {
                    job: t.id.clone(),
                    pool: t.pool.clone(),
                    state: "pending".to_owned(),
                    attempts: 0,
                    result: None,
                    score: None,
                },
            })
            .collect();
        RunInfo {
            id: run.spec.id.clone(),
            workspace: run.spec.workspace.clone(),
            name: run.spec.name.clone(),
            labels: run.spec.labels.clone(),
            status: run.status,
            submitted_at: run.submitted_at,
            updated_at: run.updated_at,
            completed_at: run.completed_at,
            tasks,
        }
    }
}

/// The status of a run not cancelled, from whether it is paused and its
/// tasks' jobs (`None`: the task's job is not stored yet). A cancelled run
/// stays `cancelled` whatever its tasks do.
pub fn run_status<'a>(
    paused: bool,
    jobs: impl IntoIterator<Item = Option<&'a JobRecord>>,
) -> RunStatus {
    let (mut pending, mut started, mut open, mut failed) = (false, false, false, false);
    for j in jobs {
        let Some(j) = j else {
            pending = true;
            open = true;
            continue;
        };
        match &j.state {
            JobState::Done | JobState::Cancelled => {
                started = true;
                let r = j.receipt.as_ref().map(|r| r.result);
                failed |= matches!(r, Some(TaskResult::Fail | TaskResult::Timeout));
            }
            JobState::Queued { .. } => {
                open = true;
                started |= j.attempts > 0;
            }
            _ => {
                open = true;
                started = true;
            }
        }
    }
    match () {
        () if !open && failed => RunStatus::Failed,
        () if !open => RunStatus::Completed,
        () if paused => RunStatus::Paused,
        () if pending => RunStatus::Pending,
        () if started => RunStatus::Running,
        () => RunStatus::Queued,
    }
}
