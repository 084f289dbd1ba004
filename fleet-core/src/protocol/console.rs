//! The operator console: the page the daemon serves at [`CONSOLE_PATH`]
//! and the two reads it is built from, both open to any API token and cut
//! to what the token may see.
//!
//! - `GET /v1/console/state[?workspace=W]` answers a [`ConsoleState`];
//! - `GET /v1/console/events[?workspace=W]` is a server-sent event stream
//!   (`text/event-stream`) whose `state` events carry the same
//!   [`ConsoleState`] as JSON: one at once, then one after each change of
//!   the control plane (at most every [`CONSOLE_MIN_INTERVAL_MS`]), and at
//!   least every [`CONSOLE_REFRESH_MS`] while costs accrue.
//!
//! An operator's token sees the whole fleet. A token limited to workspaces
//! sees the pools (their strategies and node counts), the nodes that hold
//! its claims or jobs, and its workspaces' claims, jobs, runs and costs; a
//! `workspace` it is not limited to is refused with 403. Sealed credentials
//! never appear: every claim's `credentials` is absent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, FleetId, InstanceType, JobId, Millis, PoolName, Workspace};
use crate::money::Money;
use crate::protocol::{
    ClaimRecord, CostReport, Diagnosis, JobRecord, NodeStatus, OutputStream, RunInfo, WorkerEvent,
};

/// Where the daemon serves the console's page (its assets below it).
pub const CONSOLE_PATH: &str = "/ui";

/// `GET` answers a [`ConsoleState`].
pub const API_CONSOLE_STATE_PATH: &str = "/v1/console/state";

/// `GET` opens the console's event stream of [`ConsoleState`]s.
pub const API_CONSOLE_EVENTS_PATH: &str = "/v1/console/events";

/// The name of the event stream's events that carry a [`ConsoleState`].
pub const CONSOLE_STATE_EVENT: &str = "state";

/// The stream's states come at most this often, however busy the fleet.
pub const CONSOLE_MIN_INTERVAL_MS: u64 = 250;

/// With no change, the stream still sends a state this often (costs grow).
pub const CONSOLE_REFRESH_MS: u64 = 10_000;

/// Ended claims, and ended jobs, a [`ConsoleState`] carries at most (the
/// newest): live ones are all there; a busy fleet's history stays out of
/// every event of the stream (`omitted` counts what was left out).
pub const CONSOLE_ENDED_SHOWN: usize = 200;

/// Cost samples the daemon keeps for the console's charts (a day at one a
/// minute).
pub const CONSOLE_COST_SAMPLES: usize = 1_440;

/// Jobs whose log the daemon keeps (the newest first to go when more
/// start; a job's log also goes with its record).
pub const JOB_LOG_JOBS: usize = 256;

/// Output a job's log keeps, in bytes (the oldest chunks go first).
pub const JOB_LOG_OUTPUT_BYTES: usize = 64 * 1024;

/// Entries a job's log keeps.
pub const JOB_LOG_ENTRIES: usize = 512;

/// `GET` here answers the [`JobLog`] of `job` in `workspace`, for any token
/// that may see the workspace.
pub fn api_console_job_log_path(workspace: &Workspace, job: &JobId) -> String {
    format!("/v1/console/jobs/{workspace}/{job}/log")
}

/// `POST` here releases `claim` of `workspace` for an operator: answers
/// the [`ClaimReply`](crate::protocol::ClaimReply) the control plane gave.
pub fn api_claim_release_path(workspace: &Workspace, claim: &crate::ids::ClaimId) -> String {
    format!("/v1/claims/{workspace}/{claim}/release")
}

/// `POST` here cancels `job` of `workspace` for an operator: answers the
/// [`JobReply`](crate::protocol::JobReply) the control plane gave.
pub fn api_job_cancel_path(workspace: &Workspace, job: &crate::ids::JobId) -> String {
    format!("/v1/jobs/{workspace}/{job}/cancel")
}

/// Everything the console shows, as the presented token may see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConsoleState {
    /// When it was read.
    pub at: Millis,
    /// The fleet.
    pub fleet_id: FleetId,
    /// The leader's epoch.
    pub epoch: Epoch,
    /// Whose token it was read with.
    pub viewer: ConsoleViewer,
    /// The one workspace asked for, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Workspace>,
    /// Every pool: its strategy, what it declares an idle pool costs, its
    /// nodes by state.
    pub pools: Vec<ConsolePool>,
    /// The nodes (for a limited token, those holding its claims or jobs).
    pub nodes: Vec<NodeStatus>,
    /// The claims: every live one and the newest [`CONSOLE_ENDED_SHOWN`]
    /// ended ones; never with credentials.
    pub claims: Vec<ClaimRecord>,
    /// The jobs: every queued or running one and the newest
    /// [`CONSOLE_ENDED_SHOWN`] that ended.
    pub jobs: Vec<JobRecord>,
    /// Ended claims and jobs left out to stay within
    /// [`CONSOLE_ENDED_SHOWN`].
    #[serde(default, skip_serializing_if = "ConsoleOmitted::is_empty")]
    pub omitted: ConsoleOmitted,
    /// The runs, with where each task is.
    pub runs: Vec<RunInfo>,
    /// Costs so far, per pool, workspace, claim and job (for a limited
    /// token: its workspaces, claims and jobs only, no pool's).
    pub costs: CostReport,
    /// The costs over time, oldest first.
    pub cost_series: Vec<CostSample>,
    /// What needs a look (operators only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
}

/// What a [`ConsoleState`] left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConsoleOmitted {
    /// Ended claims left out.
    #[serde(default)]
    pub claims: u64,
    /// Ended jobs left out.
    #[serde(default)]
    pub jobs: u64,
}

impl ConsoleOmitted {
    /// Nothing was left out.
    pub fn is_empty(&self) -> bool {
        self.claims == 0 && self.jobs == 0
    }
}

/// Keeps every item of `items` that `ended` says is live and the newest
/// (by `at`) [`CONSOLE_ENDED_SHOWN`] ended ones, in their order; returns
/// how many it left out.
pub fn keep_newest_ended<T>(
    items: &mut Vec<T>,
    ended: impl Fn(&T) -> bool,
    at: impl Fn(&T) -> Millis,
) -> u64 {
    let mut ended_at: Vec<Millis> = items.iter().filter(|i| ended(i)).map(&at).collect();
    if ended_at.len() <= CONSOLE_ENDED_SHOWN {
        return 0;
    }
    ended_at.sort_unstable_by(|a, b| b.cmp(a));
    let cutoff = ended_at[CONSOLE_ENDED_SHOWN - 1];
    // Ties at the cutoff: keep the first ones met, up to the bound.
    let mut room = ended_at
        .iter()
        .take(CONSOLE_ENDED_SHOWN)
        .filter(|t| **t == cutoff)
        .count();
    let before = items.len();
    items.retain(|i| {
        if !ended(i) {
            return true;
        }
        let t = at(i);
        if t > cutoff {
            true
        } else if t == cutoff && room > 0 {
            room -= 1;
            true
        } else {
            false
        }
    });
    (before - items.len()) as u64
}

/// Whose token a [`ConsoleState`] was read with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConsoleViewer {
    /// The token's name (never the token).
    pub name: String,
    /// Whether it is an operator's: the whole fleet, and the actions.
    pub operator: bool,
    /// The workspaces a limited token may see (empty for an operator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<Workspace>,
}

/// A pool as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConsolePool {
    /// The pool.
    pub name: PoolName,
    /// Its strategy's name.
    pub strategy: String,
    /// What the strategy does, in a line.
    pub summary: String,
    /// What the strategy declares an idle pool costs.
    pub idle_cost: ConsoleIdleCost,
    /// The cost model in words, with this pool's numbers.
    pub cost_model: String,
    /// Instance types, preferred first.
    pub instance_types: Vec<InstanceType>,
    /// Node bounds.
    pub min_nodes: u32,
    /// Node bounds.
    pub max_nodes: u32,
    /// Claims a node serves at once.
    pub slots_per_node: u32,
    /// Its nodes by state name (`busy` for ready nodes that serve a claim).
    pub nodes: BTreeMap<String, u64>,
}

/// What a strategy declares an idle pool costs: `setup` over the first
/// `settle_ms` from a fresh start, then `per_hour`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConsoleIdleCost {
    /// Paid while the pool settles.
    pub setup: Money,
    /// How long it settles.
    pub settle_ms: Millis,
    /// Paid per idle hour after that.
    pub per_hour: Money,
}

/// Costs accrued up to one instant (running totals since the leader
/// started, as in [`CostReport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CostSample {
    /// When.
    pub at: Millis,
    /// Per pool (absent for a limited token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<PoolName, Money>,
    /// Per workspace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workspaces: BTreeMap<Workspace, Money>,
}

impl CostSample {
    /// The sample of `report`: its pools' totals and its workspaces' costs.
    pub fn of(report: &CostReport) -> CostSample {
        CostSample {
            at: report.at,
            pools: report
                .pools
                .iter()
                .map(|(p, c)| (p.clone(), c.total()))
                .collect(),
            workspaces: report
                .workspaces
                .iter()
                .map(|(w, c)| (w.clone(), c.cost))
                .collect(),
        }
    }

    /// The sample with only `keep`'s workspaces and no pool.
    pub fn only(&self, keep: impl Fn(&Workspace) -> bool) -> CostSample {
        CostSample {
            at: self.at,
            pools: BTreeMap::new(),
            workspaces: self
                .workspaces
                .iter()
                .filter(|(w, _)| keep(w))
                .map(|(w, c)| (w.clone(), *c))
                .collect(),
        }
    }
}

/// What a job's attempts reported and printed, as the daemon keeps it: in
/// memory, bounded ([`JOB_LOG_ENTRIES`] entries, [`JOB_LOG_OUTPUT_BYTES`]
/// of output, the oldest dropped first), whether or not a submitter was
/// listening. Output is as the agent sent it: already redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobLog {
    /// The job's workspace.
    pub workspace: Workspace,
    /// The job.
    pub job: JobId,
    /// Oldest first.
    pub entries: Vec<JobLogEntry>,
    /// Entries dropped from the front to stay in bounds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One thing a job's attempt reported or printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobLogEntry {
    /// When the daemon received it.
    pub at: Millis,
    /// The attempt.
    pub attempt: u32,
    /// What it was.
    #[serde(flatten)]
    pub what: JobLogWhat,
}

/// An event of the worker, or a chunk of output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobLogWhat {
    /// A worker event (started, artifact, completed, failed, …).
    Event {
        /// The event.
        event: WorkerEvent,
    },
    /// A chunk of output.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// UTF-8 text (lossy).
        data: String,
    },
}

impl JobLogEntry {
    /// The bytes of output it holds.
    pub fn output_bytes(&self) -> usize {
        match &self.what {
            JobLogWhat::Output { data, .. } => data.len(),
            JobLogWhat::Event { .. } => 0,
        }
    }
}

impl JobLog {
    /// An empty log of `job`.
    pub fn new(workspace: Workspace, job: JobId) -> JobLog {
        JobLog {
            workspace,
            job,
            entries: Vec::new(),
            dropped: 0,
        }
    }

    /// Appends `entry`, dropping the oldest entries past the bounds.
    pub fn push(&mut self, entry: JobLogEntry) {
        self.entries.push(entry);
        let mut bytes: usize = self.entries.iter().map(JobLogEntry::output_bytes).sum();
        let mut drop = 0;
        while self.entries.len() - drop > JOB_LOG_ENTRIES
            || (bytes > JOB_LOG_OUTPUT_BYTES && drop + 1 < self.entries.len())
        {
            bytes -= self.entries[drop].output_bytes();
            drop += 1;
        }
        if drop > 0 {
            self.entries.drain(..drop);
            self.dropped += drop as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(n: usize) -> JobLogEntry {
        JobLogEntry {
            at: 0,
            attempt: 1,
            what: JobLogWhat::Output {
                stream: OutputStream::Stdout,
                data: "x".repeat(n),
            },
        }
    }

    #[test]
    fn the_newest_ended_items_are_kept_and_every_live_one() {
        // (ended, at)
        let mut items: Vec<(bool, Millis)> = (0..500).map(|i| (i % 2 == 0, i)).collect();
        let left_out = keep_newest_ended(&mut items, |i| i.0, |i| i.1);
        assert_eq!(left_out, 50);
        assert_eq!(items.iter().filter(|i| !i.0).count(), 250, "every live one");
        let ended: Vec<Millis> = items.iter().filter(|i| i.0).map(|i| i.1).collect();
        assert_eq!(ended.len(), CONSOLE_ENDED_SHOWN);
        assert_eq!(ended.first(), Some(&100), "the oldest kept");
        // Ties at the cutoff stay within the bound.
        let mut same: Vec<(bool, Millis)> = vec![(true, 7); CONSOLE_ENDED_SHOWN + 5];
        assert_eq!(keep_newest_ended(&mut same, |i| i.0, |i| i.1), 5);
        assert_eq!(same.len(), CONSOLE_ENDED_SHOWN);
    }

    #[test]
    fn a_log_keeps_its_newest_entries_within_its_bounds() -> Result<(), crate::ids::IdError> {
        let mut log = JobLog::new(Workspace::new("ci")?, JobId::new("j")?);
        for _ in 0..(JOB_LOG_ENTRIES + 10) {
            log.push(output(1));
        }
        assert_eq!(log.entries.len(), JOB_LOG_ENTRIES);
        assert_eq!(log.dropped, 10);
        for _ in 0..3 {
            log.push(output(JOB_LOG_OUTPUT_BYTES / 2));
        }
        let bytes: usize = log.entries.iter().map(JobLogEntry::output_bytes).sum();
        assert!(bytes <= JOB_LOG_OUTPUT_BYTES, "{bytes}");
        // One chunk larger than the bound is still kept, alone.
        log.push(output(JOB_LOG_OUTPUT_BYTES * 2));
        assert_eq!(log.entries.len(), 1);
        Ok(())
    }
}
