//! The sans-IO controller: every decision of the control plane, as a state
//! machine `handle(event, now) -> commands`.
//!
//! The controller owns the claim and node state machines, leases, heartbeat
//! and boot timeouts, arbitration rounds and the pools' strategies. It never
//! performs I/O: it asks for it with [`Command`]s and learns the results from
//! [`Event`]s. The daemon drives it with a real store, provider and
//! transports; the simulator with virtual time; the tests with faults.
//!
//! **Write-ahead.** A command with an outside effect (a grant, a provider
//! call, a revocation notice) is emitted only after the store confirmed the
//! record it depends on ([`Event::Persisted`]). Writes to one key are
//! serialized: while one is in flight, later writes coalesce into the next
//! one, each carrying the revision the previous returned (compare-and-swap)
//! and the leader's fencing epoch. A conflict or fencing error means another
//! leader wrote: the controller stops issuing commands and raises
//! [`Alert::Fenced`]; its driver must step down.

mod affinity;
mod budget;
mod capacity;
mod claim_table;
mod claims;
mod cost;
mod drift;
mod history;
mod inventory;
mod jobs;
mod nodes;
mod persist;
mod planning;
mod runs;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

// What the status API shows; defined with the other wire types.
pub use crate::protocol::{CostReport, NodeStatus, PoolCost};

use crate::arbitrate::Quota;
use crate::billing::BillingModel;
use crate::ids::{
    AffinityKey, ClaimId, CommandId, Epoch, FleetId, InstanceType, JobId, Millis, NodeId, OpId,
    PoolName, Workspace,
};
use crate::protocol::{
    AgentMsg, CapacityShortage, ClaimMsg, DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_HEARTBEAT_TIMEOUT_MS, JobMsg, Market, NodeState, Record, SealedCredentials,
};
use crate::provider::{
    Capabilities, Instance, InstanceRef, NodeSpec, Offering, ProviderError, SnapshotRef,
};
use crate::schedule::{Capacity, Schedule};
use crate::store::{Key, Revision, StoreError};
use crate::strategy::{PoolSpec, Strategy};
use crate::transport::{Outbound, Peer, ReplyTo};

use persist::{Effect, TimerKey, Timers, Writes};

/// Timers and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// How often agents heartbeat.
    pub heartbeat_interval_ms: Millis,
    /// Silence after which a node is lost.
    pub heartbeat_timeout_ms: Millis,
    /// How long a node may take from create/start to the agent's hello.
    pub boot_timeout_ms: Millis,
    /// First retry delay of a failed retryable provider call.
    pub provider_retry_initial_ms: Millis,
    /// Retry delay ceiling.
    pub provider_retry_max_ms: Millis,
    /// After a non-retryable create failure, the pool creates nothing for this long.
    pub create_backoff_ms: Millis,
    /// After a create failed for lack of capacity, the pool's new nodes
    /// avoid that instance type in that market for this long (using the
    /// cheapest other type of the pool at least as large), then try it
    /// again.
    pub capacity_cooldown_ms: Millis,
    /// Retry delay of a store write that failed as unavailable.
    pub store_retry_ms: Millis,
    /// Ended claims stay in the store this long (so a retried request still
    /// gets an answer), then are deleted.
    pub claim_retention_ms: Millis,
    /// An untracked instance carrying this fleet's tags (no node record
    /// knows it) is deleted once this long has passed since both its
    /// creation and the first inventory that listed it, unless an
    /// inventory in between no longer listed it or a node of ours took its
    /// id. Instances of another namespace or fleet id are never touched.
    pub orphan_min_age_ms: Millis,
    /// How often a driver tries each start-up step (the provider's
    /// offerings, the fleet identity and records in the store) before giving
    /// up on a failure that may pass; it waits as for a failed provider call (`provider_retry_initial_ms`, doubling up to
    /// `provider_retry_max_ms`) in between.
    pub startup_attempts: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            heartbeat_timeout_ms: DEFAULT_HEARTBEAT_TIMEOUT_MS,
            boot_timeout_ms: 900_000,
            provider_retry_initial_ms: 2_000,
            provider_retry_max_ms: 120_000,
            create_backoff_ms: 60_000,
            capacity_cooldown_ms: 600_000,
            store_retry_ms: 500,
            claim_retention_ms: 3_600_000,
            orphan_min_age_ms: 600_000,
            startup_attempts: 5,
        }
    }
}

/// Everything the controller is configured with.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Pools.
    pub pools: Vec<PoolSpec>,
    /// Per-workspace limits.
    pub quotas: BTreeMap<Workspace, Quota>,
    /// What the provider sells.
    pub offerings: Vec<Offering>,
    /// What the provider can do.
    pub capabilities: Capabilities,
    /// How it bills.
    pub billing: BillingModel,
    /// This leader's fencing epoch.
    pub epoch: Epoch,
    /// The namespace, written into every instance's tags.
    pub namespace: String,
    /// The fleet's identity, written into every instance's tags and node
    /// id; inventory, adoption and orphan collection see only instances
    /// carrying it.
    pub fleet_id: FleetId,
    /// Timers.
    pub timing: Timing,
}

/// A provider call the controller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderCall {
    /// `Provider::create`.
    Create(NodeSpec),
    /// `Provider::start`.
    Start(InstanceRef),
    /// `Provider::stop`.
    Stop(InstanceRef),
    /// `Provider::resize`.
    Resize(InstanceRef, InstanceType),
    /// `Provider::snapshot`.
    Snapshot(InstanceRef),
    /// `Provider::delete`.
    Delete(InstanceRef),
}

impl ProviderCall {
    /// The node the call is about.
    pub fn node(&self) -> &NodeId {
        match self {
            ProviderCall::Create(s) => &s.node,
            ProviderCall::Start(i)
            | ProviderCall::Stop(i)
            | ProviderCall::Resize(i, _)
            | ProviderCall::Snapshot(i)
            | ProviderCall::Delete(i) => &i.node,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ProviderCall::Create(_) => "create",
            ProviderCall::Start(_) => "start",
            ProviderCall::Stop(_) => "stop",
            ProviderCall::Resize(..) => "resize",
            ProviderCall::Snapshot(_) => "snapshot",
            ProviderCall::Delete(_) => "delete",
        }
    }
}

/// What a successful provider call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderOutcome {
    /// create/start/stop/resize.
    Instance(Instance),
    /// snapshot.
    Snapshot(SnapshotRef),
    /// delete.
    Deleted,
}

/// Something an operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alert", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Alert {
    /// A store write conflicted or was fenced: another leader is writing.
    /// The controller issues no more commands.
    Fenced {
        /// The key.
        key: String,
        /// The store's error.
        error: String,
    },
    /// A provider call failed for good.
    ProviderFailed {
        /// The node.
        node: NodeId,
        /// The call.
        call: String,
        /// The error kind.
        kind: String,
        /// The error.
        error: String,
    },
    /// A node stopped heartbeating or never booted.
    NodeLost {
        /// The node.
        node: NodeId,
        /// Its last state.
        state: NodeState,
    },
    /// A strategy asked for something invalid; it was ignored.
    InvalidAction {
        /// The pool.
        pool: PoolName,
        /// What and why.
        detail: String,
    },
    /// A create or resize failed for lack of capacity: the pool's new nodes
    /// avoid `instance_type` in `market` until `until`, and are of `using`
    /// meanwhile; resizes to it wait until then. A create without `using`
    /// (no other type of the pool fits) is retried as any passing failure
    /// is.
    CapacityShortage {
        /// The pool.
        pool: PoolName,
        /// The node whose create or resize failed.
        node: NodeId,
        /// The type the provider had no capacity for.
        instance_type: InstanceType,
        /// In which market.
        market: Market,
        /// What new nodes get instead, if anything.
        using: Option<InstanceType>,
        /// When the type is tried again.
        until: Millis,
        /// The provider's words.
        error: String,
    },
    /// An agent said hello for a node the controller does not know.
    UnknownAgent {
        /// The node id it claimed.
        node: NodeId,
    },
    /// A job kept failing, or made no progress for too long, and its alert
    /// policy says a person should look: the driver delivers this to the
    /// policy's `channels`.
    JobEscalated {
        /// The job.
        job: JobId,
        /// Its workspace.
        workspace: Workspace,
        /// Attempts so far.
        attempts: u32,
        /// Why: the last failure, or how long it made no progress.
        reason: String,
        /// Unique per job, attempt and cause: a receiver's dedup key.
        alert_id: String,
        /// Where it goes.
        channels: Vec<crate::protocol::AlertChannel>,
        /// When.
        at: Millis,
    },
    /// Credentials could not be issued: for a grant (the claim is revoked)
    /// or for a renewal (the lease is renewed; the previous certificate stays
    /// valid until its own expiry).
    CredentialsFailed {
        /// The claim.
        claim: ClaimId,
        /// Why.
        error: String,
    },
}

/// An input to the controller.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A claim-plane message.
    Claim {
        /// The message.
        msg: ClaimMsg,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// A job-plane message.
    Job {
        /// The message.
        msg: JobMsg,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// A message from an agent (the driver authenticated the session).
    Agent {
        /// The node.
        node: NodeId,
        /// The message.
        msg: AgentMsg,
    },
    /// An agent session closed.
    AgentGone {
        /// The node.
        node: NodeId,
    },
    /// A provider call finished.
    ProviderDone {
        /// The op id from [`Command::Provider`].
        op: OpId,
        /// Its result.
        result: Result<ProviderOutcome, ProviderError>,
    },
    /// A store write finished.
    Persisted {
        /// The key of the [`Command::Persist`].
        key: Key,
        /// The new revision (for a delete: the deleted revision).
        result: Result<Revision, StoreError>,
    },
    /// Credentials for a grant are ready (or failed).
    CredentialsIssued {
        /// The claim.
        claim: ClaimId,
        /// The sealed bundle.
        result: Result<SealedCredentials, String>,
    },
    /// What the provider runs with this fleet's tags (after a restart, and
    /// periodically): drives adoption and orphan collection.
    Inventory {
        /// The instances.
        instances: Vec<Instance>,
    },
    /// The provider's offerings read again (periodically: spot prices
    /// move). Prices of the types the pools use are updated; the set of
    /// types a pool runs is fixed when the fleet starts.
    Offerings {
        /// The offerings.
        offerings: Vec<Offering>,
    },
    /// Time passed (send at [`Controller::next_deadline`]).
    Tick,
}

/// An output of the controller: I/O for the driver to perform.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "commands are consumed at once by the driver; boxing would add an allocation per write"
)]
#[non_exhaustive]
pub enum Command {
    /// Write (or, with `value: None`, delete) a record: create when
    /// `expected` is `None`, else compare-and-swap on `expected`. Answer with
    /// [`Event::Persisted`].
    Persist {
        /// The key.
        key: Key,
        /// The record, or `None` to delete.
        value: Option<Record>,
        /// The revision the write is conditional on.
        expected: Option<Revision>,
    },
    /// Call the provider. Answer with [`Event::ProviderDone`].
    Provider {
        /// The op id.
        op: OpId,
        /// The call.
        call: ProviderCall,
    },
    /// Send a message on a transport.
    Send {
        /// To whom.
        to: Peer,
        /// What.
        msg: Outbound,
    },
    /// Mint per-claim credentials (client cert with the claim id in its SAN,
    /// valid until `expires_at`), seal them to `recipient`, and answer with
    /// [`Event::CredentialsIssued`].
    IssueCredentials {
        /// The claim.
        claim: ClaimId,
        /// Its workspace.
        workspace: Workspace,
        /// The node it is granted on.
        node: NodeId,
        /// The node's gateway endpoint (`host:port`), sealed into the bundle.
        endpoint: String,
        /// The caller's age recipient.
        recipient: String,
        /// Lease end.
        expires_at: Millis,
    },
    /// Tell an operator.
    Alert(Alert),
    /// A finished job's record was deleted (its retention ended): what
    /// the driver keeps for it outside the store (its artifacts) can go.
    /// Needs no answer.
    JobForgotten {
        /// Its workspace.
        workspace: Workspace,
        /// The job.
        job: JobId,
    },
}

/// A claim as the controller tracks it.
#[derive(Debug, Clone)]
struct Claim {
    rec: crate::protocol::ClaimRecord,
    /// The record is in the store (a pending claim is arbitrated only then).
    durable: bool,
    /// A node reserved while credentials are minted (not yet persisted).
    reserved: Option<NodeId>,
    /// Waiting for a busy node that served its affinity key until then:
    /// not offered other nodes, and no node is bought for it meanwhile.
    affinity_until: Option<Millis>,
    /// Its workspace is over budget: not offered nodes, none bought for it.
    budget_held: bool,
    /// Renewals waiting for credentials that cover their lease: the reply
    /// and the expiry it asked for.
    renewing: Vec<(ReplyTo, Millis)>,
    /// The request this claim was granted in the round that accepted it:
    /// it was not told `pending`, so the grant answers it too.
    unanswered: Option<ReplyTo>,
    /// Accepted in this round and not written yet: arbitrated at once, and
    /// stored after the round — `pending` if it waits, or straight as
    /// `granted` (one write) if the round reserved a node for it.
    fresh: bool,
    /// Its last transition in the history (`history.rs`).
    noted: Option<history::Noted>,
}

impl Claim {
    /// Whether an arbitration round offers it a node: pending, fresh or
    /// stored, not reserved, and held for neither an affine node nor a
    /// budget.
    fn arbitrable(&self) -> bool {
        (self.durable || self.fresh)
            && self.reserved.is_none()
            && self.rec.state == crate::protocol::ClaimState::Pending
            && self.affinity_until.is_none()
            && !self.budget_held
    }

    /// What arbitration reads of it.
    fn pending_claim(&self) -> crate::arbitrate::PendingClaim {
        let req = &self.rec.request;
        crate::arbitrate::PendingClaim {
            id: req.claim_id.clone(),
            workspace: req.workspace.clone(),
            pool: req.pool.clone(),
            requirements: req.requirements.clone(),
            priority: req.priority,
            enqueued_at: self.rec.enqueued_at,
        }
    }

    /// A claim whose record is read back from the store: nothing reserved,
    /// held or waiting for an answer.
    fn stored_record(rec: crate::protocol::ClaimRecord) -> Claim {
        Claim {
            rec,
            durable: true,
            reserved: None,
            affinity_until: None,
            budget_held: false,
            renewing: Vec::new(),
            unanswered: None,
            fresh: false,
            noted: None,
        }
    }

    /// Its record is stored (the write just committed may be its first,
    /// a grant made at once): the request still waiting for an answer.
    fn stored(&mut self) -> Option<ReplyTo> {
        self.durable = true;
        self.fresh = false;
        self.unanswered.take()
    }
}

/// A job as the controller tracks it.
#[derive(Debug, Clone)]
struct Job {
    rec: crate::protocol::JobRecord,
    /// The record is in the store.
    durable: bool,
    /// Where its events go (the latest submitter).
    reply: Option<ReplyTo>,
    /// Artifacts reported by the current attempt.
    artifacts: Vec<crate::protocol::ArtifactRef>,
    /// The current attempt's last sign of progress: an event other than a
    /// heartbeat, or output (this leader's; from its start after a restore).
    progress_at: Millis,
    /// The current attempt was found stale (escalated once per attempt).
    stale: bool,
}

/// A run as the controller tracks it.
#[derive(Debug, Clone)]
struct Run {
    rec: crate::protocol::RunRecord,
    /// The record is in the store.
    durable: bool,
    /// Where its status changes go (the latest submitter).
    reply: Option<ReplyTo>,
}

/// A node as the controller tracks it.
#[derive(Debug, Clone)]
struct Node {
    rec: crate::protocol::NodeRecord,
    claims: BTreeSet<ClaimId>,
    jobs: BTreeSet<JobId>,
    last_seen: Millis,
    connected: bool,
    /// What its agent said it is at its last hello.
    agent_version: Option<String>,
    idle_since: Option<Millis>,
    /// The provider call in flight, if any.
    op: Option<OpId>,
    /// A failed retryable call waiting to be retried.
    retry: Option<(Millis, ProviderCall, u32)>,
    /// The type before a resize in flight (restored if it fails).
    prev_type: Option<InstanceType>,
    /// The type the strategy asked for, when a capacity shortage made the
    /// node another (not persisted: it only steers the next fallback).
    wanted: Option<InstanceType>,
    /// The affinity key of the last claim it was given (not persisted: a
    /// new leader starts with cold hints, which costs hits, not safety).
    last_affinity: Option<AffinityKey>,
    /// The pool would launch it differently now (`drift.rs`).
    drifted: bool,
    /// `drifted` must be judged again: what it depends on in the record
    /// (type, boot source, revision) is new or changed since.
    drift_stale: bool,
    /// The record is in the store.
    durable: bool,
}

#[derive(Debug)]
struct Pool {
    spec: PoolSpec,
    strategy: Box<dyn Strategy>,
    offerings: Vec<Offering>,
    snapshot: Option<SnapshotRef>,
    wake_at: Option<Millis>,
    create_backoff_until: Millis,
    next_seq: u64,
    /// Types out of capacity in a market (see `capacity.rs`).
    shortages: capacity::Shortages,
    /// The schedule's policy in force, and until when (none: no schedule).
    capacity: (Capacity, Option<Millis>),
    /// The first end of a claim's wait for an affine node.
    affinity_wake: Option<Millis>,
    /// What its strategy saw in the last round (`planning.rs`).
    views: Vec<crate::strategy::NodeView>,
    demand: Vec<crate::strategy::Demand>,
    /// When its strategy asked to plan again ([`crate::strategy::Plan::wake_at`]).
    plan_wake: Option<Millis>,
}

impl Pool {
    /// The schedule's policy in force at `now`; the schedule is read again
    /// only when its period may have changed.
    fn capacity_at(&mut self, now: Millis) -> Capacity {
        if self.spec.schedule.is_empty() {
            return Capacity::default();
        }
        if self.capacity.1.is_none_or(|until| until <= now) {
            self.capacity = Schedule(&self.spec.schedule).at(now);
        }
        self.capacity.0
    }
}

#[derive(Debug, Clone)]
struct Op {
    call: ProviderCall,
    attempt: u32,
}

#[derive(Debug, Clone)]
struct Orphan {
    instance: Instance,
    first_seen: Millis,
    deleting: bool,
}

/// The control plane's state machine.
#[derive(Debug)]
pub struct Controller {
    epoch: Epoch,
    namespace: String,
    fleet_id: FleetId,
    timing: Timing,
    capabilities: Capabilities,
    billing: BillingModel,
    quotas: BTreeMap<Workspace, Quota>,
    pools: BTreeMap<PoolName, Pool>,
    claims: claim_table::ClaimTable,
    nodes: BTreeMap<NodeId, Node>,
    jobs: BTreeMap<JobId, Job>,
    runs: BTreeMap<crate::ids::RunId, Run>,
    /// Jobs in state queued.
    queued: BTreeSet<JobId>,
    /// Command id → the job whose attempt it is.
    commands: BTreeMap<CommandId, JobId>,
    next_command_seq: u64,
    /// Jobs restored on a node that no longer exists.
    orphaned_jobs: Vec<JobId>,
    /// Runs restored unfinished, mended on the first tick.
    runs_to_mend: Vec<crate::ids::RunId>,
    /// What this controller recovered at its start (the driver adds the
    /// steps' timings).
    replay: crate::protocol::ReplayStatus,
    /// The nodes restored from records, until the first inventory says
    /// which still run.
    restored_nodes: Option<BTreeSet<NodeId>>,
    ops: BTreeMap<OpId, Op>,
    next_op: u64,
    orphans: BTreeMap<NodeId, Orphan>,
    writes: Writes,
    timers: Timers,
    next_node_seq: u64,
    fenced: bool,
    /// Effects to run on the first event after a restore.
    startup: Vec<Effect>,
    /// Something changed that arbitration (and job scheduling) should
    /// look at in the next round.
    arbitrate_due: bool,
    /// Something changed that the pools' strategies should look at in the
    /// next round (a round whose arbitration grants plans too).
    plan_due: bool,
    /// Claims accepted in this round, acknowledged after it
    /// ([`Controller::send_acks`]).
    acks: Vec<(ClaimId, ReplyTo)>,
    /// Claims requested in this round, not yet written
    /// ([`Controller::store_fresh`]).
    fresh: Vec<ClaimId>,
    ledger: cost::Ledger,
    affinity: AffinityStats,
    /// Per workspace with a budget: where its windows began (`budget.rs`).
    budgets: BTreeMap<Workspace, budget::Windows>,
    /// When budget windows next begin.
    budget_wake: Option<Millis>,
    /// Decisions and claim transitions an operator reads (`history.rs`).
    history: history::History,
}

/// Grants of claims that carried an affinity key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinityStats {
    /// Granted on a node whose last claim had the same key.
    pub hits: u64,
    /// Granted on another node.
    pub misses: u64,
}

impl Controller {
    /// A controller with no state (a fresh store).
    pub fn new(config: ControllerConfig, now: Millis) -> Controller {
        Controller::restore(config, Vec::new(), now)
    }

    /// A controller rebuilt from the store's records after a restart.
    ///
    /// Leases resume with fresh timers (a lease never ends sooner than one
    /// TTL after the restart, so downtime does not expire every claim), nodes
    /// get a fresh heartbeat deadline, and interrupted provider calls are
    /// issued again on the first [`Event::Tick`] (they are idempotent).
    pub fn restore(
        config: ControllerConfig,
        records: Vec<(Key, Revision, Record)>,
        now: Millis,
    ) -> Controller {
        let mut c = Controller {
            epoch: config.epoch,
            namespace: config.namespace,
            fleet_id: config.fleet_id,
            timing: config.timing,
            capabilities: config.capabilities,
            billing: config.billing,
            quotas: config.quotas,
            pools: BTreeMap::new(),
            claims: claim_table::ClaimTable::default(),
            nodes: BTreeMap::new(),
            jobs: BTreeMap::new(),
            runs: BTreeMap::new(),
            queued: BTreeSet::new(),
            commands: BTreeMap::new(),
            next_command_seq: 1,
            orphaned_jobs: Vec::new(),
            runs_to_mend: Vec::new(),
            replay: crate::protocol::ReplayStatus::default(),
            restored_nodes: None,
            ops: BTreeMap::new(),
            next_op: 1,
            orphans: BTreeMap::new(),
            writes: Writes::default(),
            timers: Timers::default(),
            next_node_seq: 1,
            fenced: false,
            startup: Vec::new(),
            arbitrate_due: true,
            plan_due: true,
            acks: Vec::new(),
            fresh: Vec::new(),
            ledger: cost::Ledger::default(),
            affinity: AffinityStats::default(),
            budgets: BTreeMap::new(),
            budget_wake: None,
            history: history::History::default(),
        };
        for spec in config.pools {
            let offerings = spec
                .instance_types
                .iter()
                .filter_map(|t| config.offerings.iter().find(|o| &o.instance_type == t))
                .cloned()
                .collect();
            let pool = Pool {
                strategy: spec.strategy.build(),
                spec,
                offerings,
                snapshot: None,
                wake_at: Some(now),
                create_backoff_until: 0,
                next_seq: 1,
                shortages: BTreeMap::new(),
                capacity: (Capacity::default(), None),
                affinity_wake: None,
                views: Vec::new(),
                demand: Vec::new(),
                plan_wake: None,
            };
            c.pools.insert(pool.spec.name.clone(), pool);
        }
        for (key, rev, record) in records {
            c.writes.known(key, rev);
            *c.replay
                .records
                .entry(record.kind().to_owned())
                .or_default() += 1;
            match record {
                Record::Claim(rec) => c.restore_claim(rec, now),
                Record::Node(rec) => c.restore_node(rec, now),
                Record::Pool(rec) => {
                    if let Some(pool) = c.pools.get_mut(&rec.pool) {
                        pool.snapshot = rec.snapshot;
                        pool.next_seq = pool.next_seq.max(rec.next_node_seq);
                    }
                }
                Record::Job(rec) => c.restore_job(rec, now),
                Record::Run(rec) => c.restore_run(rec),
            }
        }
        c.relink_claims(now);
        c.relink_jobs(now);
        c.relink_runs();
        c.replay.epoch = c.epoch;
        c.replay.started_at = now;
        c.replay.nodes_restored = c.nodes.len() as u64;
        c.replay.jobs_requeued = c.orphaned_jobs.len() as u64;
        c.replay.grants_republished = c
            .startup
            .iter()
            .filter(|e| matches!(e, Effect::Grant { .. }))
            .count() as u64;
        c.restored_nodes = Some(c.nodes.keys().cloned().collect());
        c.refresh_pool_drift(None);
        c.roll_budget_windows(now);
        c.budget_wake = c.next_budget_window(now);
        c
    }

    /// What this controller recovered at its start: records, nodes adopted
    /// or gone by the first inventory, orphans, grants published again,
    /// jobs requeued (the steps' timings are the driver's to add).
    pub fn replay(&self) -> &crate::protocol::ReplayStatus {
        &self.replay
    }

    /// Grants of claims with an affinity key so far, by this controller.
    pub fn affinity_stats(&self) -> AffinityStats {
        self.affinity
    }

    /// The leader epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The fleet's identity.
    pub fn fleet_id(&self) -> &FleetId {
        &self.fleet_id
    }

    /// Whether a store conflict fenced this controller off.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Handles one event at time `now` and returns the I/O to perform.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Command> {
        self.handle_all([event], now)
    }

    /// Handles every event that arrived by `now`, in order, then decides
    /// once: timers, arbitration, job scheduling and pool planning run after
    /// the last event, not after each. A driver that has several events at
    /// hand (store writes committed together, a burst of claims) passes
    /// them here; the outcome is what [`Controller::handle`] one at a time
    /// would reach, with fewer rounds (a round sees every event of the
    /// batch).
    pub fn handle_all(
        &mut self,
        events: impl IntoIterator<Item = Event>,
        now: Millis,
    ) -> Vec<Command> {
        // Most events answer with a few commands: growing the vector one
        // at a time moved these large values three times (measured: 5 % of
        // a simulation's time).
        let mut out = Vec::with_capacity(4);
        self.handle_all_into(events, now, &mut out);
        out
    }

    /// [`Controller::handle_all`], appending the commands to `out`: a
    /// driver that runs millions of rounds (the simulator) keeps one
    /// buffer instead of allocating one per round.
    pub fn handle_all_into(
        &mut self,
        events: impl IntoIterator<Item = Event>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        if self.fenced {
            return;
        }
        let first = out.len();
        let startup = std::mem::take(&mut self.startup);
        self.run_effects(startup, now, out);
        for event in events {
            if self.fenced {
                break;
            }
            self.absorb(event, now, out);
        }
        if !self.fenced {
            self.on_timers(now, out);
            self.decide(now, out);
            self.store_fresh(now, out);
            self.send_acks(now, out);
        }
        if self.fenced {
            // Whatever was decided after the fence must not leave the
            // process (what `out` held before this call is the caller's).
            let mut seen = 0;
            out.retain(|c| {
                seen += 1;
                seen <= first || matches!(c, Command::Alert(_))
            });
        }
    }

    /// Takes one event into the state; decisions wait for the round.
    fn absorb(&mut self, event: Event, now: Millis, out: &mut Vec<Command>) {
        match event {
            Event::Claim { msg, reply } => self.on_claim(msg, reply, now, out),
            Event::Job { msg, reply } => self.on_job(msg, reply, now, out),
            Event::Agent { node, msg } => self.on_agent(node, msg, now, out),
            Event::AgentGone { node } => self.on_agent_gone(&node),
            Event::ProviderDone { op, result } => self.on_provider_done(op, result, now, out),
            Event::Persisted { key, result } => self.on_persisted(key, result, now, out),
            Event::CredentialsIssued { claim, result } => {
                self.on_credentials(claim, result, now, out)
            }
            Event::Inventory { instances } => self.on_inventory(instances, now, out),
            Event::Offerings { offerings } => self.on_offerings(&offerings),
            Event::Tick => {}
        }
    }

    /// When the driver must next send [`Event::Tick`], if ever.
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.fenced {
            return None;
        }
        let mut next = self.timers.first();
        let mut at = |t: Millis| next = Some(next.map_or(t, |n| n.min(t)));
        for pool in self.pools.values() {
            if let Some(t) = pool.wake_at {
                at(t);
            }
        }
        for orphan in self.orphans.values() {
            if !orphan.deleting {
                at(self.orphan_due(orphan));
            }
        }
        if let Some(t) = self.writes.next_retry() {
            at(t);
        }
        if let Some(t) = self.budget_wake {
            at(t);
        }
        next
    }

    fn next_op_id(&mut self) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        op
    }

    /// The round's decisions, each only if something it reads changed:
    /// arbitration and job scheduling, then the pools' plans (also when
    /// arbitration granted or held a claim), then when each pool wakes.
    fn decide(&mut self, now: Millis, out: &mut Vec<Command>) {
        let arbitrate = std::mem::take(&mut self.arbitrate_due);
        let mut plan = std::mem::take(&mut self.plan_due);
        if arbitrate {
            plan |= self.arbitrate_round(now, out);
            plan |= self.schedule_jobs(now, out);
        }
        if plan {
            self.plan_pools(now, out);
        }
        if arbitrate || plan {
            self.refresh_wakes(now);
        }
    }

    /// Has the next round arbitrate and plan again.
    fn decide_again(&mut self) {
        self.arbitrate_due = true;
        self.plan_due = true;
    }

    fn on_timers(&mut self, now: Millis, out: &mut Vec<Command>) {
        for key in self.timers.due(now) {
            match key {
                TimerKey::Claim(id) => self.claim_timer(&id, now, out),
                TimerKey::Node(id) => self.node_timer(&id, now, out),
                TimerKey::Job(id) => self.job_timer(&id, now, out),
                TimerKey::Run(id) => self.run_timer(&id, now, out),
            }
        }
        if self.budget_wake.is_some_and(|t| t <= now) {
            // A window began: take its base, and look at what waited for it.
            self.roll_budget_windows(now);
            self.budget_wake = self.next_budget_window(now);
            self.decide_again();
        }
        self.requeue_orphaned_jobs(now, out);
        self.mend_restored_runs(now, out);
        self.orphan_timers(now, out);
        for pool in self.pools.values_mut() {
            capacity::forget_past(&mut pool.shortages, now);
            if pool.wake_at.is_some_and(|t| t <= now) {
                pool.wake_at = None;
                self.plan_due = true;
                // A claim's wait for an affine node ended: it may take
                // any node now.
                if pool.affinity_wake.is_some_and(|t| t <= now) {
                    self.arbitrate_due = true;
                }
            }
        }
        self.writes.retry_due(now, out);
    }
}

impl Controller {
    fn run_effects(&mut self, effects: Vec<Effect>, now: Millis, out: &mut Vec<Command>) {
        for effect in effects {
            match effect {
                Effect::NodeCall { .. } | Effect::NodeForgotten { .. } => {
                    self.node_effect(effect, now, out)
                }
                Effect::JobAccepted { .. }
                | Effect::JobDispatch { .. }
                | Effect::JobFinished { .. }
                | Effect::JobSlotFreed { .. }
                | Effect::JobForgotten { .. } => self.job_effect(effect, now, out),
                Effect::RunAccepted { .. }
                | Effect::RunForgotten { .. }
                | Effect::RunRefresh { .. } => self.run_effect(effect, now, out),
                _ => self.claim_effect(effect, now, out),
            }
        }
    }

    fn on_persisted(
        &mut self,
        key: Key,
        result: Result<Revision, StoreError>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let retry = self.timing.store_retry_ms;
        match self.writes.persisted(&key, result, now, retry, out) {
            Ok(effects) => self.run_effects(effects, now, out),
            Err(error) => {
                // Someone else wrote this key: another leader. Stop here.
                self.fenced = true;
                out.push(Command::Alert(Alert::Fenced {
                    key: key.to_string(),
                    error: error.to_string(),
                }));
            }
        }
    }
}

/// Read-only views for status APIs, the simulator and tests.
impl Controller {
    /// A claim's stored record, if known.
    pub fn claim(&self, id: &ClaimId) -> Option<&crate::protocol::ClaimRecord> {
        self.claims.get(id).map(|c| &c.rec)
    }

    /// Every known claim record, by claim id (including requests whose
    /// first write is still in flight).
    pub fn claims(&self) -> impl Iterator<Item = &crate::protocol::ClaimRecord> {
        self.claims.values().map(|c| &c.rec)
    }

    /// Claims the store has accepted: what a status API should show, since
    /// a caller is only told about a claim once it is stored.
    pub fn accepted_claims(&self) -> impl Iterator<Item = &crate::protocol::ClaimRecord> {
        self.claims.values().filter(|c| c.durable).map(|c| &c.rec)
    }

    /// A node's record with its live state (busy is derived from claims).
    pub fn node(&self, id: &NodeId) -> Option<NodeStatus> {
        self.nodes.get(id).map(|n| self.node_status(n))
    }

    /// Every known node.
    pub fn nodes(&self) -> impl Iterator<Item = NodeStatus> + '_ {
        self.nodes.values().map(|n| self.node_status(n))
    }

    /// Pool names.
    pub fn pools(&self) -> impl Iterator<Item = &PoolSpec> {
        self.pools.values().map(|p| &p.spec)
    }

    /// The offerings (types and current prices) a pool runs on.
    pub fn pool_offerings(&self, pool: &PoolName) -> &[Offering] {
        self.pools.get(pool).map_or(&[], |p| p.offerings.as_slice())
    }

    /// The instance types a pool's new nodes avoid at `now` for lack of
    /// capacity, and what they use instead.
    pub fn capacity_shortages(&self, pool: &PoolName, now: Millis) -> Vec<CapacityShortage> {
        self.pools
            .get(pool)
            .map(|p| capacity::shortages(&p.offerings, &p.shortages, now))
            .unwrap_or_default()
    }

    /// Claims currently waiting for a node.
    pub fn pending_count(&self) -> usize {
        self.claims.pending_len()
    }

    /// Provider calls in flight.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Store writes in flight or queued.
    pub fn writes_in_flight(&self) -> usize {
        self.writes.in_flight()
    }

    fn node_status(&self, n: &Node) -> NodeStatus {
        NodeStatus {
            record: n.rec.clone(),
            state: live_state(n),
            claims: n.claims.iter().cloned().collect(),
            connected: n.connected,
            last_seen: n.last_seen,
            agent_version: n.agent_version.clone(),
        }
    }
}

impl Node {
    /// A node with no claims, no agent session and no call in flight.
    fn new(rec: crate::protocol::NodeRecord, now: Millis, durable: bool) -> Node {
        Node {
            rec,
            claims: BTreeSet::new(),
            jobs: BTreeSet::new(),
            last_seen: now,
            connected: false,
            idle_since: None,
            op: None,
            retry: None,
            prev_type: None,
            wanted: None,
            last_affinity: None,
            drifted: false,
            drift_stale: true,
            durable,
            agent_version: None,
        }
    }

    /// Claims and job attempts it holds.
    fn occupied(&self) -> usize {
        self.claims.len() + self.jobs.len()
    }
}

fn live_state(n: &Node) -> NodeState {
    if n.rec.state == NodeState::Ready && n.occupied() > 0 {
        NodeState::Busy
    } else {
        n.rec.state
    }
}
