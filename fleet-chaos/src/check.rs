//! The invariants, checked after every step of a schedule against a mirror
//! of the store (every write the daemon made, decoded), what the daemon sent
//! (before the network touched it) and what reached the provider:
//!
//! - **no double grant**: a claim is granted on one node only, never after
//!   it ended, and no node holds more stored grants than it has slots;
//! - **nothing accepted is lost**: a claim acknowledged (`Pending` or
//!   `Granted`) or a job accepted stays in the store until it has ended,
//!   and, once the world settles, its caller has heard how it ended;
//! - **write-ahead**: a grant, an acknowledgement, an `Activate`, a `Run`
//!   or a provider `create` leaves the daemon only once the record it rests
//!   on is stored;
//! - **no node is pulled from under its work**: no stop, resize or delete
//!   reaches the provider for a node that a stored claim holds or a stored
//!   job runs on;
//! - **settled**: with the faults off and time advanced, every live instance
//!   is tracked by exactly one node record, and nothing is left waiting.

use std::collections::{BTreeMap, BTreeSet};

use fleet_core::ids::{ClaimId, JobId, NodeId};
use fleet_core::protocol::{ClaimReply, DaemonMsg, JobReply, JobState, Record, RunStatus};
use fleet_core::provider::{Instance, InstanceState};
use fleet_core::store::Key;
use fleet_core::transport::{Outbound, Peer};

/// What a caller finally learnt of its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimView {
    /// Still asking (or never acknowledged).
    Asking,
    /// Granted on a node and not yet ended.
    Held(NodeId),
    /// Ended, and how.
    Ended(String),
}

/// What a submitter finally learnt of its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobView {
    /// Submitting or waiting for the receipt.
    Waiting,
    /// The receipt arrived.
    Finished(String),
}

/// The checker's memory of a schedule.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    pub(crate) slots: u32,
    /// The store as the daemon wrote it.
    pub(crate) records: BTreeMap<Key, Record>,
    accepted_claims: BTreeMap<ClaimId, Key>,
    ended_claims: BTreeSet<ClaimId>,
    claim_node: BTreeMap<ClaimId, NodeId>,
    accepted_jobs: BTreeMap<JobId, Key>,
    done_jobs: BTreeSet<JobId>,
}

impl Checker {
    pub(crate) fn new(slots: u32) -> Checker {
        Checker {
            slots,
            ..Checker::default()
        }
    }

    /// A write landed in the store (`None`: a delete).
    pub(crate) fn store_write(&mut self, key: &Key, record: Option<Record>) -> Vec<String> {
        let mut bad = Vec::new();
        match &record {
            Some(Record::Claim(c)) => {
                let id = &c.request.claim_id;
                if c.state.is_terminal() {
                    self.ended_claims.insert(id.clone());
                } else if self.ended_claims.contains(id) {
                    bad.push(format!(
                        "claim {id} is {} in the store after it ended",
                        c.state.name()
                    ));
                }
                if let Some(n) = &c.node {
                    match self.claim_node.get(id) {
                        Some(first) if first != n => bad.push(format!(
                            "double grant: claim {id} stored on {n} after {first}"
                        )),
                        Some(_) => {}
                        None => {
                            self.claim_node.insert(id.clone(), n.clone());
                        }
                    }
                }
            }
            Some(Record::Run(run))
                if matches!(run.status, RunStatus::Completed | RunStatus::Failed) =>
            {
                // A run ends only after every task's receipt is stored.
                for t in &run.spec.tasks {
                    let key = fleet_core::subjects::Subjects::job_key(&t.workspace, &t.id);
                    match self.records.get(&key) {
                        Some(Record::Job(j)) if j.state == JobState::Done => {}
                        other => bad.push(format!(
                            "run {} stored {} while task {} is {}",
                            run.spec.id,
                            run.status,
                            t.id,
                            other.map_or("not stored".to_owned(), |r| match r {
                                Record::Job(j) => j.state.name().to_owned(),
                                _ => "another record".to_owned(),
                            })
                        )),
                    }
                }
            }
            Some(Record::Job(j)) => {
                let id = &j.spec.id;
                if matches!(j.state, JobState::Done | JobState::Cancelled) {
                    self.done_jobs.insert(id.clone());
                } else if self.done_jobs.contains(id) {
                    bad.push(format!(
                        "job {id} is {} in the store after it finished",
                        j.state.name()
                    ));
                }
            }
            _ => {}
        }
        match record {
            Some(r) => {
                self.records.insert(key.clone(), r);
            }
            None => {
                self.records.remove(key);
            }
        }
        bad.extend(self.check_store());
        bad
    }

    fn check_store(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let mut held: BTreeMap<&NodeId, Vec<&ClaimId>> = BTreeMap::new();
        for r in self.records.values() {
            if let Record::Claim(c) = r
                && c.state.holds_node()
                && let Some(n) = &c.node
            {
                held.entry(n).or_default().push(&c.request.claim_id);
            }
        }
        for (node, claims) in held {
            if claims.len() > self.slots as usize {
                bad.push(format!(
                    "double grant: node {node} holds {claims:?} in the store; it has {} slot(s)",
                    self.slots
                ));
            }
        }
        for (id, key) in &self.accepted_claims {
            if !self.ended_claims.contains(id) && !self.records.contains_key(key) {
                bad.push(format!(
                    "claim {id} was acknowledged and is gone from the store before it ended"
                ));
            }
        }
        for (id, key) in &self.accepted_jobs {
            if !self.done_jobs.contains(id) && !self.records.contains_key(key) {
                bad.push(format!(
                    "job {id} was accepted and is gone from the store before it finished"
                ));
            }
        }
        bad
    }

    fn claim_record(&self, id: &ClaimId) -> Option<(&Key, &fleet_core::protocol::ClaimRecord)> {
        self.records.iter().find_map(|(k, r)| match r {
            Record::Claim(c) if &c.request.claim_id == id => Some((k, c)),
            _ => None,
        })
    }

    fn job_record(&self, id: &JobId) -> Option<(&Key, &fleet_core::protocol::JobRecord)> {
        self.records.iter().find_map(|(k, r)| match r {
            Record::Job(j) if &j.spec.id == id => Some((k, j)),
            _ => None,
        })
    }

    /// Whether a stored node record tracks `node`.
    pub(crate) fn tracks(&self, node: &NodeId) -> bool {
        self.records
            .values()
            .any(|r| matches!(r, Record::Node(n) if &n.node == node))
    }

    /// The daemon sent `msg` to `to` (before the network decides its fate).
    pub(crate) fn daemon_send(&mut self, to: &Peer, msg: &Outbound) -> Vec<String> {
        let mut bad = Vec::new();
        match msg {
            Outbound::Claim(ClaimReply::Granted(g)) => {
                let id = &g.claim_id;
                match self.claim_record(id) {
                    Some((key, c)) if c.state.holds_node() && c.node.as_ref() == Some(&g.node) => {
                        let key = key.clone();
                        self.accepted_claims.insert(id.clone(), key);
                    }
                    Some((_, c)) => bad.push(format!(
                        "grant of {id} on {} sent while the store says {} on {:?}",
                        g.node,
                        c.state.name(),
                        c.node
                    )),
                    None => bad.push(format!("grant of {id} sent before it was stored")),
                }
                if let Some(first) = self.claim_node.get(id)
                    && first != &g.node
                {
                    bad.push(format!(
                        "double grant: {id} granted on {} after {first}",
                        g.node
                    ));
                }
            }
            Outbound::Claim(ClaimReply::Pending { claim_id, .. }) => {
                match self.claim_record(claim_id) {
                    Some((key, _)) => {
                        let key = key.clone();
                        self.accepted_claims.insert(claim_id.clone(), key);
                    }
                    None => bad.push(format!(
                        "claim {claim_id} acknowledged before it was stored"
                    )),
                }
            }
            Outbound::Job(JobReply::Accepted { job }) => match self.job_record(job) {
                Some((key, _)) => {
                    let key = key.clone();
                    self.accepted_jobs.insert(job.clone(), key);
                }
                None => bad.push(format!("job {job} accepted before it was stored")),
            },
            Outbound::Agent(DaemonMsg::Activate { claim_id, .. }) => {
                let Peer::Node(node) = to else {
                    return bad;
                };
                match self.claim_record(claim_id) {
                    Some((_, c)) if c.state.holds_node() && c.node.as_ref() == Some(node) => {}
                    other => bad.push(format!(
                        "Activate of {claim_id} sent to {node} while the store says {:?}",
                        other.map(|(_, c)| (c.state.name(), c.node.clone()))
                    )),
                }
            }
            Outbound::Agent(DaemonMsg::Run(spec)) => {
                let (Peer::Node(node), Some(job)) = (to, &spec.job) else {
                    return bad;
                };
                match self.job_record(job) {
                    Some((_, j))
                        if matches!(&j.state,
                            JobState::Leased { node: n, command } | JobState::Running { node: n, command }
                            if n == node && command == &spec.id) => {}
                    other => bad.push(format!(
                        "Run of {job} ({}) sent to {node} while the store says {:?}",
                        spec.id,
                        other.map(|(_, j)| j.state.clone())
                    )),
                }
            }
            _ => {}
        }
        bad
    }

    /// A provider call is about to take effect on `node`.
    pub(crate) fn provider_call(&self, call: &str, node: &NodeId) -> Vec<String> {
        let mut bad = Vec::new();
        match call {
            "create" if !self.tracks(node) => {
                bad.push(format!("create of {node} before its record was stored"));
            }
            "stop" | "resize" | "delete" => {
                for r in self.records.values() {
                    match r {
                        Record::Claim(c)
                            if c.state.holds_node() && c.node.as_ref() == Some(node) =>
                        {
                            bad.push(format!(
                                "{call} of {node} while claim {} holds it",
                                c.request.claim_id
                            ));
                        }
                        Record::Job(j) => {
                            if let JobState::Leased { node: n, .. }
                            | JobState::Running { node: n, .. } = &j.state
                                && n == node
                            {
                                bad.push(format!(
                                    "{call} of {node} while job {} is {} on it",
                                    j.spec.id,
                                    j.state.name()
                                ));
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        bad
    }

    /// The checks of a settled world: faults off for long enough that every
    /// caller has its answer and every instance is reconciled.
    pub(crate) fn settled(
        &self,
        instances: &[Instance],
        claims: &BTreeMap<ClaimId, ClaimView>,
        jobs: &BTreeMap<JobId, JobView>,
        runs: &BTreeMap<fleet_core::RunId, JobView>,
    ) -> Vec<String> {
        let mut bad = Vec::new();
        for (id, view) in claims {
            let accepted = self.accepted_claims.contains_key(id);
            match view {
                ClaimView::Ended(_) => {}
                ClaimView::Asking if accepted => bad.push(format!(
                    "claim {id} was acknowledged and its caller never heard how it ended"
                )),
                ClaimView::Asking => bad.push(format!("claim {id} was never answered")),
                ClaimView::Held(n) => {
                    bad.push(format!("claim {id} on {n}: its release never went through"))
                }
            }
        }
        for (id, view) in jobs {
            if *view == JobView::Waiting {
                bad.push(format!("job {id}: its submitter never got a receipt"));
            }
        }
        for (id, view) in runs {
            if *view == JobView::Waiting {
                bad.push(format!("run {id}: its submitter never heard it end"));
            }
        }
        for r in self.records.values() {
            match r {
                Record::Claim(c) if !c.state.is_terminal() => bad.push(format!(
                    "claim {} is still {} in the settled store",
                    c.request.claim_id,
                    c.state.name()
                )),
                Record::Job(j) if !matches!(j.state, JobState::Done | JobState::Cancelled) => bad
                    .push(format!(
                        "job {} is still {} in the settled store",
                        j.spec.id,
                        j.state.name()
                    )),
                Record::Run(run) if !run.status.is_terminal() => bad.push(format!(
                    "run {} is still {} in the settled store",
                    run.spec.id, run.status
                )),
                _ => {}
            }
        }
        let mut by_pid: BTreeMap<&str, Vec<&NodeId>> = BTreeMap::new();
        let mut tracked: BTreeMap<&NodeId, Option<&str>> = BTreeMap::new();
        for r in self.records.values() {
            if let Record::Node(n) = r {
                tracked.insert(&n.node, n.provider_id.as_deref());
                if let Some(pid) = &n.provider_id {
                    by_pid.entry(pid).or_default().push(&n.node);
                }
            }
        }
        for (pid, nodes) in by_pid {
            if nodes.len() > 1 {
                bad.push(format!("duplicate: instance {pid} is tracked as {nodes:?}"));
            }
        }
        for i in instances {
            if i.state == InstanceState::Terminated {
                continue;
            }
            match tracked.get(&i.node) {
                None => bad.push(format!(
                    "orphan: instance {} of {} runs and no node record tracks it",
                    i.provider_id, i.node
                )),
                Some(Some(pid)) if *pid != i.provider_id => bad.push(format!(
                    "duplicate: node {} is tracked as {pid} but {} runs",
                    i.node, i.provider_id
                )),
                Some(_) => {}
            }
        }
        bad
    }
}
