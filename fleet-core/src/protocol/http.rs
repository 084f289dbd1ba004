//! The daemon's HTTP API: what each path answers and takes.
//!
//! | path | method | body |
//! |---|---|---|
//! | [`API_HEALTHZ_PATH`] | GET | `ok` (text) |
//! | [`API_READYZ_PATH`] | GET | `ready` / 503 (text) |
//! | [`API_METRICS_PATH`] | GET | Prometheus text |
//! | [`API_STATUS_PATH`] | GET | [`StatusSummary`] |
//! | [`API_POOLS_PATH`] | GET | `[`[`PoolInfo`]`]` |
//! | [`API_NODES_PATH`] | GET | `[`[`NodeStatus`]`]` |
//! | [`API_CLAIMS_PATH`] | GET | `[`[`ClaimRecord`](super::ClaimRecord)`]`, without credentials |
//! | [`API_JOBS_PATH`] | GET | `[`[`JobRecord`](super::JobRecord)`]` |
//! | [`api_job_artifacts_path`] | GET | `[`[`ArtifactInfo`]`]` |
//! | [`api_job_artifacts_path`]`/<name>` | GET | the file's bytes |
//! | [`API_COSTS_PATH`] | GET `?by=`[`CostGrouping`] | [`CostReport`] |
//! | [`API_TOKENS_PATH`] | POST | [`NewTokenRequest`] → [`NewToken`] |
//!
//! Every `/v1` and `/metrics` path needs `Authorization: Bearer <operator
//! token>`; a refusal (401, 403) and every other error carry an
//! [`ApiErrorBody`]. The bodies are plain JSON (no envelope: the API is
//! versioned by its `/v1` prefix). The answers' decoders ignore fields they
//! do not know, and the summaries default what is missing, so a daemon and
//! a `fleetctl` of neighbouring versions still read each other; the one
//! request, [`NewTokenRequest`], is strict.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Market, NodeRecord, NodeState, Secret};
use crate::ids::{ClaimId, Epoch, FleetId, InstanceType, JobId, Millis, PoolName, Workspace};
use crate::money::Money;
use crate::schedule::PeriodSpec;

/// Liveness: answers while the process runs.
pub const API_HEALTHZ_PATH: &str = "/healthz";
/// Readiness: 200 once this daemon leads and its control loop runs.
pub const API_READYZ_PATH: &str = "/readyz";
/// Prometheus metrics.
pub const API_METRICS_PATH: &str = "/metrics";
/// [`StatusSummary`].
pub const API_STATUS_PATH: &str = "/v1/status";
/// The pools, as [`PoolInfo`]s.
pub const API_POOLS_PATH: &str = "/v1/pools";
/// The nodes, as [`NodeStatus`]es.
pub const API_NODES_PATH: &str = "/v1/nodes";
/// The stored claims, as [`ClaimRecord`](super::ClaimRecord)s.
pub const API_CLAIMS_PATH: &str = "/v1/claims";
/// The jobs, as [`JobRecord`](super::JobRecord)s.
pub const API_JOBS_PATH: &str = "/v1/jobs";
/// `/v1/jobs/<workspace>/<job>/artifacts`: the files a job's latest
/// attempt uploaded, as [`ArtifactInfo`]s; one file's bytes at
/// `…/artifacts/<name>`.
pub fn api_job_artifacts_path(ws: &Workspace, job: &JobId) -> String {
    format!("{API_JOBS_PATH}/{ws}/{job}/artifacts")
}

/// One file of `GET /v1/jobs/<workspace>/<job>/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ArtifactInfo {
    /// The file's name (download it at `…/artifacts/<name>`).
    pub name: String,
    /// Its size.
    pub size_bytes: u64,
    /// The attempt that made it.
    pub attempt: u32,
}

/// The runs, as [`RunInfo`](super::RunInfo)s; POST a
/// [`RunSpec`](super::RunSpec) to submit one.
pub const API_RUNS_PATH: &str = "/v1/runs";
/// `/v1/runs/<workspace>/<run>`: one run ([`RunInfo`](super::RunInfo));
/// POST to `…/pause`, `…/resume` or `…/cancel` to act on it.
pub fn api_run_path(ws: &Workspace, run: &crate::ids::RunId) -> String {
    format!("{API_RUNS_PATH}/{ws}/{run}")
}

/// Who leads, as a [`LeaderInfo`] (any daemon answers, a follower too).
pub const API_LEADER_PATH: &str = "/v1/leader";

/// `GET /v1/leader`: the lease as the store holds it, whether the
/// answering daemon holds it, and the followers that lately looked at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LeaderInfo {
    /// The answering daemon's name (`<host>-<pid>`).
    pub this_daemon: String,
    /// Whether the answering daemon leads.
    pub leader: bool,
    /// The lease record (holder, epoch, expiry); absent when the answering
    /// daemon cannot read the store (a follower waiting on a local
    /// store's file lock) or no daemon ever led.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<super::LeaderRecord>,
    /// Daemons waiting to lead that looked at the lease within the last
    /// three leases (a shared store only: on a local redb store a second
    /// daemon waits for the file lock and writes nothing).
    #[serde(default)]
    pub followers: Vec<super::FollowerRecord>,
}

/// What the leader recovered when it started, as a [`ReplayStatus`].
pub const API_REPLAY_STATUS_PATH: &str = "/v1/replay-status";

/// One step of a daemon's start and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReplayStep {
    /// What it did.
    pub step: String,
    /// How long it took.
    pub ms: Millis,
}

/// `GET /v1/replay-status`: what the leading daemon recovered at its
/// start — records loaded, nodes adopted or found gone, orphans found
/// and collected, grants published again, jobs requeued — and how long
/// each step took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct ReplayStatus {
    /// The leader's epoch (this start's).
    pub epoch: Epoch,
    /// When the start began.
    pub started_at: Millis,
    /// When it served its first request (the control loop ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Millis>,
    /// The steps, in order.
    pub steps: Vec<ReplayStep>,
    /// Records loaded, per kind (`claim`, `node`, `job`, `run`, `pool`).
    pub records: BTreeMap<String, u64>,
    /// Nodes restored from their records.
    pub nodes_restored: u64,
    /// Restored nodes the provider's first inventory still showed.
    pub nodes_adopted: u64,
    /// Restored nodes the first inventory no longer showed.
    pub nodes_vanished: u64,
    /// Instances of this fleet with no record, in the first inventory.
    pub orphans_found: u64,
    /// Orphans deleted since the start.
    pub orphans_collected: u64,
    /// Granted claims whose grant was published again (it may never have
    /// reached its caller before the restart).
    pub grants_republished: u64,
    /// Jobs that were on nodes gone by the restart, queued again.
    pub jobs_requeued: u64,
    /// When the first inventory was taken (none yet: the provider has not
    /// answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_inventory_at: Option<Millis>,
}

/// [`CostReport`], grouped as its query's `by` ([`CostGrouping`]) says.
pub const API_COSTS_PATH: &str = "/v1/costs";
/// POST a [`NewTokenRequest`], get a [`NewToken`].
pub const API_TOKENS_PATH: &str = "/v1/tokens";

/// `GET /v1/status`: counts of what the control plane holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct StatusSummary {
    /// The fleet's identity (in every instance's tags and node id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<FleetId>,
    /// The leader's epoch.
    pub epoch: Epoch,
    /// Whether the answering daemon leads.
    pub leader: bool,
    /// How many pools are configured.
    pub pools: u64,
    /// Nodes per state name ([`NodeState::name`]).
    pub nodes: BTreeMap<String, u64>,
    /// Stored claims per state name
    /// ([`ClaimState::name`](super::ClaimState::name)).
    pub claims: BTreeMap<String, u64>,
    /// Jobs per state name.
    pub jobs: BTreeMap<String, u64>,
    /// What every pool has cost so far.
    pub cost_micros: Money,
}

/// `GET /v1/pools`: one pool as the daemon runs it (its configured
/// `PoolSpec`, with the instance types resolved, and the types its new
/// nodes avoid for now).
///
/// The strategy's parameters differ per strategy and a newer daemon may run
/// one this build does not know, so they travel as [`StrategyParams`]
/// rather than as the typed `StrategyConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PoolInfo {
    /// The pool.
    pub name: PoolName,
    /// How its nodes live.
    pub strategy: StrategyParams,
    /// Instance types it may run, the baseline first.
    #[serde(default)]
    pub instance_types: Vec<InstanceType>,
    /// The base image new nodes boot from.
    #[serde(default)]
    pub image: String,
    /// Labels every node of the pool carries.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Nodes never fewer than this.
    #[serde(default)]
    pub min_nodes: u32,
    /// Nodes never more than this.
    #[serde(default)]
    pub max_nodes: u32,
    /// Claims one node serves at once.
    #[serde(default)]
    pub slots_per_node: u32,
    /// Claims a node serves in its life before it is recycled (none: no
    /// limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    /// The revision of the nodes' launch configuration.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// Drifted nodes replaced at once, at most.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub drift_replacements: u32,
    /// How long a claim may wait for a busy node that served its affinity
    /// key.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub affinity_wait_ms: Millis,
    /// Scheduled capacity, as configured (see the daemon's `[[pool.schedule]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<PeriodSpec>,
    /// Instance types the provider had no capacity for lately: new nodes
    /// use another type of the pool until the shortage's `until`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shortages: Vec<CapacityShortage>,
}

/// An instance type a pool's new nodes avoid for now: a create of (or a
/// resize to) it in `market` failed for lack of capacity. New nodes that
/// would have been of this type are of `using` instead (the cheapest other
/// type of the pool that is at least as large, in the same market), and
/// resizes to it wait, until `until`, when the type is tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CapacityShortage {
    /// The type the provider had no capacity for.
    pub instance_type: InstanceType,
    /// In which market.
    pub market: Market,
    /// When a call first failed for capacity (of this run of failures).
    pub since: Millis,
    /// When new nodes try the type again.
    pub until: Millis,
    /// What new nodes get meanwhile; none when the pool has no other type
    /// that is large enough and not short too (the create is retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub using: Option<InstanceType>,
    /// The provider's words.
    #[serde(default)]
    pub error: String,
}

/// A pool's strategy: its `kind` (`cold_image`, `spot`, …) and the
/// parameters of that kind, as written in the daemon's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StrategyParams {
    /// The strategy's name.
    pub kind: String,
    /// Its parameters.
    #[serde(flatten)]
    pub params: BTreeMap<String, serde_json::Value>,
}

/// `GET /v1/nodes`: a node's stored record with its live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeStatus {
    /// The stored record.
    pub record: NodeRecord,
    /// The live state (`busy` when it holds claims; the record says
    /// `ready`).
    pub state: NodeState,
    /// Claims it holds (granted, active, or being granted).
    #[serde(default)]
    pub claims: Vec<ClaimId>,
    /// Whether its agent session is open.
    #[serde(default)]
    pub connected: bool,
    /// Last message from its agent.
    #[serde(default)]
    pub last_seen: Millis,
    /// The version its agent gave at its last hello (this leader's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// The source a node boots from; each has its own latency and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BootPath {
    /// A fresh node from the base image: provisioning plus full set-up.
    Image,
    /// A fresh node from a pre-baked snapshot.
    Snapshot,
    /// A stopped node powered on again.
    Stopped,
    /// A running node resized in place (downtime of the resize).
    Resize,
}

/// What one pool has cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct PoolCost {
    /// Running time billed, with what a running node pays beside its
    /// instance price (EC2: its root volume and public IPv4 address).
    pub running: Money,
    /// Stopped time billed: the disk where stopping saves (EC2), the full
    /// price where it does not (Hetzner), and an address a stopped node
    /// keeps.
    pub stopped: Money,
    /// Snapshot storage billed.
    pub snapshots: Money,
    /// The part of `running` attributed to the claims and jobs the nodes
    /// held: the sum of this pool's share of every [`WorkspaceCost`].
    pub attributed: Money,
    /// The part of `running` attributed to no one: nodes holding nothing
    /// (booting, idle, draining) and what billing rounds up (per-start
    /// minimums, started hours, sub-micro-dollar remainders). `running ==
    /// attributed + idle`.
    pub idle: Money,
    /// Node-milliseconds spent running (billed states).
    pub running_ms: u64,
    /// Node-milliseconds spent stopped.
    pub stopped_ms: u64,
    /// Nodes brought up, per boot path.
    pub boots: BTreeMap<BootPath, u64>,
    /// Spot interruptions.
    pub interruptions: u64,
    /// Nodes lost (heartbeat or boot timeout).
    pub lost: u64,
}

impl PoolCost {
    /// Everything billed.
    pub fn total(&self) -> Money {
        self.running + self.stopped + self.snapshots
    }
}

/// What one workspace's claims and jobs have cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct WorkspaceCost {
    /// Everything attributed to the workspace (the sum of `pools`).
    pub cost: Money,
    /// Per pool.
    pub pools: BTreeMap<PoolName, Money>,
    /// Milliseconds its claims and jobs held running nodes, each counted
    /// whole (two claims sharing a node for a minute count two minutes).
    pub held_ms: u64,
    /// Claims that held a node.
    pub claims: u64,
    /// Job attempts that held a node.
    pub jobs: u64,
}

/// What one claim or job has cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HeldCost {
    /// Whose it is.
    pub workspace: Workspace,
    /// The pool of the nodes it held.
    pub pool: PoolName,
    /// Its share of the running time of the nodes it held.
    #[serde(default)]
    pub cost: Money,
    /// Milliseconds it held a running node.
    #[serde(default)]
    pub held_ms: u64,
    /// Whether it holds a node now (its cost still grows).
    #[serde(default)]
    pub holding: bool,
}

/// `GET /v1/costs`: what every pool, workspace, claim and job has cost,
/// at one instant.
///
/// For every pool, `attributed` is the sum of that pool's entry over
/// `workspaces`, and `attributed + idle + stopped + snapshots` is its
/// total, to the micro-dollar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct CostReport {
    /// When.
    pub at: Millis,
    /// Per pool.
    pub pools: BTreeMap<PoolName, PoolCost>,
    /// Per workspace, every claim and job it ever had since the leader
    /// started, ended ones included (absent with `by=pool`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub workspaces: BTreeMap<Workspace, WorkspaceCost>,
    /// Per claim the control plane still keeps (ended claims are kept for
    /// `claim_retention_ms`); only with `by=claim`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<ClaimId, HeldCost>,
    /// Per job the control plane still keeps; only with `by=claim`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub jobs: BTreeMap<JobId, HeldCost>,
}

impl CostReport {
    /// All pools together.
    pub fn total(&self) -> Money {
        self.pools.values().map(PoolCost::total).sum()
    }

    /// The report with only what `by` asks for: the pools always, the
    /// workspaces from [`CostGrouping::Workspace`] on, claims and jobs only
    /// for [`CostGrouping::Claim`] (they are the long lists).
    pub fn grouped(mut self, by: CostGrouping) -> CostReport {
        if by < CostGrouping::Workspace {
            self.workspaces.clear();
        }
        if by < CostGrouping::Claim {
            self.claims.clear();
            self.jobs.clear();
        }
        self
    }
}

/// The `by` parameter of `GET /v1/costs`: how finely the report is broken
/// down. Each level includes the coarser ones.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CostGrouping {
    /// Per pool only.
    Pool,
    /// Per pool and per workspace (the default).
    #[default]
    Workspace,
    /// Per pool, workspace, claim and job.
    Claim,
}

impl CostGrouping {
    /// Every grouping, coarsest first.
    pub const ALL: [CostGrouping; 3] = [
        CostGrouping::Pool,
        CostGrouping::Workspace,
        CostGrouping::Claim,
    ];

    /// The value of the query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            CostGrouping::Pool => "pool",
            CostGrouping::Workspace => "workspace",
            CostGrouping::Claim => "claim",
        }
    }
}

impl std::fmt::Display for CostGrouping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `by` value that is none of [`CostGrouping`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cost grouping {0:?}: expected pool, workspace or claim")]
pub struct UnknownCostGrouping(pub String);

impl std::str::FromStr for CostGrouping {
    type Err = UnknownCostGrouping;

    fn from_str(s: &str) -> Result<CostGrouping, UnknownCostGrouping> {
        CostGrouping::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| UnknownCostGrouping(s.to_owned()))
    }
}

/// `POST /v1/tokens`: mint an API token.
///
/// Unlike the answers, it refuses a field it does not know: a daemon that
/// ignored a restriction added later would mint a broader token than was
/// asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// A name for the token (1..=64 characters), shown in logs.
    pub name: String,
    /// Limit the token to these workspaces (their claim plane and their part of the console); absent:
    /// an operator's token, which also opens this API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspaces: Option<Vec<Workspace>>,
}

/// The answer to [`NewTokenRequest`]: the token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NewToken {
    /// The name it was given.
    pub name: String,
    /// The bearer token.
    pub token: Secret,
    /// The workspaces it is limited to; `None` for an operator's token.
    #[serde(default)]
    pub workspaces: Option<BTreeSet<Workspace>>,
}

/// The body of every error answer (4xx, 5xx) of the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct ApiErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

impl ApiErrorBody {
    /// An error body saying `why`.
    pub fn new(why: impl Into<String>) -> ApiErrorBody {
        ApiErrorBody { error: why.into() }
    }
}

fn is_zero(ms: &Millis) -> bool {
    *ms == 0
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn summaries_ignore_unknown_fields_and_default_missing_ones() -> TestResult {
        let s: StatusSummary = serde_json::from_str(
            r#"{"epoch":3,"leader":true,"nodes":{"ready":2},"added_later":{"x":1}}"#,
        )?;
        assert_eq!(s.epoch, Epoch(3));
        assert_eq!(s.nodes.get("ready"), Some(&2));
        assert_eq!(s.cost_micros, Money::ZERO);

        let c: CostReport = serde_json::from_str(
            r#"{"at":5,"pools":{"p":{"running":7,"boots":{"image":1},"new":0}}}"#,
        )?;
        assert_eq!(c.total(), Money::from_micros(7));
        Ok(())
    }

    #[test]
    fn a_cost_grouping_keeps_the_coarser_levels_and_drops_the_finer() -> TestResult {
        let c: CostReport = serde_json::from_str(
            r#"{"at":5,"pools":{"p":{"running":7,"attributed":4,"idle":3}},
                "workspaces":{"w":{"cost":4,"pools":{"p":4},"held_ms":9,"claims":1}},
                "claims":{"c1":{"workspace":"w","pool":"p","cost":4,"held_ms":9}}}"#,
        )?;
        assert_eq!(c.clone().grouped(CostGrouping::Claim), c);
        let w = c.clone().grouped(CostGrouping::Workspace);
        assert!(w.claims.is_empty() && w.workspaces.len() == 1 && w.pools.len() == 1);
        let p = c.grouped(CostGrouping::Pool);
        assert!(p.workspaces.is_empty() && p.claims.is_empty() && p.pools.len() == 1);
        assert_eq!(
            serde_json::to_string(&p)?,
            r#"{"at":5,"pools":{"p":{"running":7,"stopped":0,"snapshots":0,"attributed":4,"idle":3,"running_ms":0,"stopped_ms":0,"boots":{},"interruptions":0,"lost":0}}}"#
        );
        for g in CostGrouping::ALL {
            assert_eq!(g.as_str().parse::<CostGrouping>(), Ok(g));
            assert_eq!(serde_json::to_value(g)?, serde_json::json!(g.as_str()));
        }
        assert!("node".parse::<CostGrouping>().is_err());
        assert!("".parse::<CostGrouping>().is_err());
        Ok(())
    }

    #[test]
    fn pool_info_keeps_the_strategy_parameters_flat() -> TestResult {
        let text = r#"{"name":"p","strategy":{"kind":"spot","fallback":true},"instance_types":["t3.micro"],"image":"img","labels":{},"min_nodes":0,"max_nodes":4,"slots_per_node":1}"#;
        let p: PoolInfo = serde_json::from_str(text)?;
        assert_eq!(p.strategy.kind, "spot");
        assert_eq!(
            p.strategy.params.get("fallback"),
            Some(&serde_json::json!(true))
        );
        assert_eq!(
            serde_json::to_value(&p)?,
            serde_json::from_str::<serde_json::Value>(text)?
        );
        Ok(())
    }

    #[test]
    fn a_new_token_shows_its_secret_on_the_wire_only() -> TestResult {
        let t: NewToken =
            serde_json::from_str(r#"{"name":"ci","token":"s3cret","workspaces":["w"]}"#)?;
        assert_eq!(t.token.expose(), "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        let op: NewToken = serde_json::from_str(r#"{"name":"op","token":"x"}"#)?;
        assert_eq!(op.workspaces, None);
        let req = NewTokenRequest {
            name: "op".to_owned(),
            workspaces: None,
        };
        assert_eq!(serde_json::to_string(&req)?, r#"{"name":"op"}"#);
        assert!(serde_json::from_str::<NewTokenRequest>(r#"{"nmae":"x"}"#).is_err());
        Ok(())
    }
}
