//! A deterministic virtual world for the controller: a revisioned record
//! map standing in for the store, a simulated provider whose calls take the
//! billing model's latencies, agents that boot, heartbeat, get interrupted
//! or vanish, and a virtual clock.
//!
//! It drives the real [`Controller`] the way the daemon does (every command
//! performed, every result fed back), so tests can inject faults — crashes
//! between a store write and its acknowledgement, provider errors, lost
//! agents, spot interruptions — and check invariants after every step, and
//! the simulator can replay a year of load in seconds. Nothing here reads a
//! clock or does I/O.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::billing::BootLatency;
use crate::controller::{
    Alert, Command, Controller, ControllerConfig, Event, ProviderCall, ProviderOutcome,
};
use crate::ids::{ClaimId, CommandId, Epoch, InstanceType, JobId, Millis, NodeId, OpId, Workspace};
use crate::protocol::{
    AgentMsg, Arch, ClaimMsg, ClaimReply, CommandSpec, DaemonMsg, JobMsg, JobReply, NodeResources,
    Record, SealedCredentials, WorkerEvent, decode, encode,
};
use crate::provider::{BootSource, Instance, InstanceState, Market, ProviderError, SnapshotRef};
use crate::store::{Key, Revision, StoreError};
use crate::transport::{Outbound, Peer, ReplyTo};

/// A runaway guard: this many steps at one instant means a livelock.
const MAX_STEPS_PER_INSTANT: u32 = 1_000_000;

/// Faults to inject; each counter is consumed as faults fire.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The next N store writes fail as unavailable (not applied).
    pub store_unavailable: u32,
    /// The next N provider calls fail with this error.
    pub provider_error: Option<(ProviderError, u32)>,
    /// Agents of new nodes never say hello (a bad image).
    pub agents_never_boot: bool,
    /// The next N credential issues fail.
    pub credentials_fail: u32,
    /// Creates of (and resizes to) these types in these markets fail with
    /// [`ProviderError::Capacity`] while listed (a sold-out type).
    pub sold_out: BTreeSet<(InstanceType, Market)>,
}

/// What happened to one claim, as its caller saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimTrace {
    /// When the request was sent.
    pub requested_at: Millis,
    /// When the grant arrived.
    pub granted_at: Option<Millis>,
    /// When it ended (released, expired, revoked) as seen by the caller.
    pub ended_at: Option<Millis>,
    /// How long the caller holds the node before releasing (None: manual).
    pub hold_ms: Option<Millis>,
    /// Times the claim was revoked under the caller.
    pub revoked: bool,
}

#[derive(Debug)]
enum Pending {
    Deliver(Event),
    Boot {
        node: NodeId,
        generation: u64,
    },
    Heartbeat {
        node: NodeId,
        generation: u64,
    },
    Release {
        ws: Workspace,
        claim: ClaimId,
    },
    /// A message from the agent of `node`, delivered only if that agent
    /// (this generation of it) is still alive on a running instance.
    FromAgent {
        node: NodeId,
        generation: u64,
        msg: AgentMsg,
    },
}

/// One thing queued to happen at `at`. Ordered by time, then by `seq`
/// (the order queued); the event is boxed so the heap moves 24 bytes,
/// not 200, as it reorders.
#[derive(Debug)]
struct Queued {
    at: Millis,
    seq: u64,
    what: Box<Pending>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, Clone)]
struct Agent {
    generation: u64,
    alive: bool,
    /// Commands this agent has run (survives reconnects, like the real
    /// agent's ledger in its work dir).
    seen: Vec<CommandId>,
}

/// The virtual world.
#[derive(Debug)]
pub struct World {
    config: ControllerConfig,
    controller: Controller,
    now: Millis,
    epoch: Epoch,
    records: BTreeMap<Key, (Revision, Vec<u8>)>,
    next_revision: u64,
    store_epoch: Epoch,
    instances: BTreeMap<NodeId, Instance>,
    next_instance: u64,
    agents: BTreeMap<NodeId, Agent>,
    /// What will happen, earliest first (then in the order queued).
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    next_reply: u64,
    replies: BTreeMap<ReplyTo, Vec<ClaimReply>>,
    claim_msgs: BTreeMap<ClaimId, Vec<ClaimReply>>,
    traces: BTreeMap<ClaimId, ClaimTrace>,
    agent_inbox: BTreeMap<NodeId, Vec<DaemonMsg>>,
    job_replies: BTreeMap<ReplyTo, Vec<JobReply>>,
    runs: BTreeMap<CommandId, u32>,
    /// Commands whose final event is sent (or that were cancelled): a
    /// cancel finds nothing to kill, a later final event is not sent.
    ended: BTreeSet<CommandId>,
    alerts: Vec<Alert>,
    forgotten_jobs: Vec<JobId>,
    faults: Faults,
    heartbeats: bool,
    steps: u64,
    /// Events delivered at this instant, not yet handled.
    inbox: Vec<Event>,
    /// The controller's commands of the round being performed.
    commands: Vec<Command>,
    rounds: u64,
    lean: bool,
    jitter: Option<Jitter>,
    /// Create calls refused for capacity, per million, with their draws.
    capacity: Option<(u64, Jitter)>,
    /// Create calls refused for capacity so far.
    capacity_refusals: u64,
    /// How long a store write takes to be acknowledged.
    store_latency: Millis,
}

/// Seeded extra boot latency (see [`World::set_boot_jitter`]).
#[derive(Debug, Clone)]
struct Jitter {
    spread: BootLatency,
    state: u64,
}

impl Jitter {
    /// SplitMix64: a uniform draw in `0..=spread`.
    fn draw(&mut self, spread: Millis) -> Millis {
        if spread == 0 {
            return 0;
        }
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % spread.saturating_add(1)
    }
}

impl World {
    /// A world around a fresh controller at time `start`. With
    /// `heartbeats`, agents heartbeat at the configured interval (tests);
    /// without, the heartbeat timeout should be set beyond the horizon
    /// (the simulator, where heartbeats would only cost time).
    pub fn new(config: ControllerConfig, start: Millis, heartbeats: bool) -> World {
        let controller = Controller::new(config.clone(), start);
        World {
            epoch: config.epoch,
            store_epoch: config.epoch,
            config,
            controller,
            now: start,
            records: BTreeMap::new(),
            next_revision: 1,
            instances: BTreeMap::new(),
            next_instance: 1,
            agents: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            next_reply: 1,
            replies: BTreeMap::new(),
            claim_msgs: BTreeMap::new(),
            traces: BTreeMap::new(),
            agent_inbox: BTreeMap::new(),
            job_replies: BTreeMap::new(),
            runs: BTreeMap::new(),
            ended: BTreeSet::new(),
            alerts: Vec::new(),
            forgotten_jobs: Vec::new(),
            faults: Faults::default(),
            heartbeats,
            steps: 0,
            inbox: Vec::new(),
            commands: Vec::new(),
            rounds: 0,
            lean: false,
            jitter: None,
            capacity: None,
            capacity_refusals: 0,
            store_latency: 0,
        }
    }

    /// Lean mode, for long simulations: the world keeps no copies of the
    /// messages it sends (replies, claim and agent messages stay empty) and
    /// stores record revisions without encoding the records, so
    /// [`World::records`] is empty and [`World::crash_and_restart`] must not
    /// be used. The controller sees exactly the same events either way.
    pub fn set_lean(&mut self, lean: bool) {
        self.lean = lean;
    }

    /// Store writes are acknowledged `ms` after they are issued (applied at
    /// once, in order), as a store on a slow disk or across a network
    /// answers: other events reach the controller in between.
    pub fn set_store_latency(&mut self, ms: Millis) {
        self.store_latency = ms;
    }

    /// Boots take longer by a seeded uniform draw in `0..=spread.of(path)`
    /// on top of the billing model's latency (create from image or
    /// snapshot, start of a stopped node), so boot times vary as they do
    /// at a real provider. Same seed, same draws.
    pub fn set_boot_jitter(&mut self, spread: BootLatency, seed: u64) {
        self.jitter = Some(Jitter {
            spread,
            state: seed,
        });
    }

    /// Each create call fails with [`ProviderError::Capacity`] with
    /// probability `per_million / 1e6` (a seeded draw; same seed, same
    /// failures), as a provider out of a type's capacity does.
    pub fn set_capacity_errors(&mut self, per_million: u64, seed: u64) {
        let draws = Jitter {
            spread: BootLatency {
                image_ms: 0,
                snapshot_ms: 0,
                stopped_ms: 0,
                resize_ms: 0,
            },
            state: seed,
        };
        self.capacity = (per_million > 0).then_some((per_million, draws));
    }

    /// Create calls refused for capacity so far (see
    /// [`World::set_capacity_errors`]).
    pub fn capacity_refusals(&self) -> u64 {
        self.capacity_refusals
    }

    /// Removes and returns a claim's trace (a long simulation drops the
    /// traces of claims it is done with, to keep memory flat).
    pub fn take_trace(&mut self, id: &ClaimId) -> Option<ClaimTrace> {
        self.traces.remove(id)
    }

    fn jittered(&mut self, base: Millis, spread: impl Fn(&BootLatency) -> Millis) -> Millis {
        match &mut self.jitter {
            Some(j) => {
                let s = spread(&j.spread);
                base.saturating_add(j.draw(s))
            }
            None => base,
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The controller.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// Keeps the controller's decision history, or not
    /// ([`Controller::keep_history`]; a simulation has no operator).
    pub fn keep_history(&mut self, on: bool) {
        self.controller.keep_history(on);
    }

    /// Faults to inject.
    pub fn faults(&mut self) -> &mut Faults {
        &mut self.faults
    }

    /// Alerts raised so far.
    pub fn alerts(&self) -> &[Alert] {
        &self.alerts
    }

    /// Controller events handled so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Rounds the controller ran: batches of events handled at once.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Every claim's trace as its caller saw it.
    pub fn traces(&self) -> &BTreeMap<ClaimId, ClaimTrace> {
        &self.traces
    }

    /// Replies sent to one reply address.
    pub fn replies(&self, reply: &ReplyTo) -> &[ClaimReply] {
        self.replies.get(reply).map_or(&[], Vec::as_slice)
    }

    /// Messages published on a claim's subjects (grants, revocations).
    pub fn claim_messages(&self, claim: &ClaimId) -> &[ClaimReply] {
        self.claim_msgs.get(claim).map_or(&[], Vec::as_slice)
    }

    /// Messages sent to a node's agent.
    pub fn agent_messages(&self, node: &NodeId) -> &[DaemonMsg] {
        self.agent_inbox.get(node).map_or(&[], Vec::as_slice)
    }

    /// The provider's instances (terminated ones are removed).
    pub fn instances(&self) -> &BTreeMap<NodeId, Instance> {
        &self.instances
    }

    /// Decoded store records, in key order.
    pub fn records(&self) -> Vec<(Key, Revision, Record)> {
        self.records
            .iter()
            .filter_map(|(k, (rev, bytes))| {
                decode::<Record>(bytes).ok().map(|r| (k.clone(), *rev, r))
            })
            .collect()
    }

    /// Sends a claim-plane message now; returns its reply address.
    pub fn send_claim(&mut self, msg: ClaimMsg) -> ReplyTo {
        let reply = ReplyTo(format!("r{}", self.next_reply));
        self.next_reply += 1;
        if let ClaimMsg::Request(req) = &msg {
            self.traces
                .entry(req.claim_id.clone())
                .or_insert(ClaimTrace {
                    requested_at: self.now,
                    ..ClaimTrace::default()
                });
        }
        if !self.lean {
            self.replies.entry(reply.clone()).or_default();
        }
        self.push(
            self.now,
            Pending::Deliver(Event::Claim {
                msg,
                reply: reply.clone(),
            }),
        );
        reply
    }

    /// Submits a job now; returns the submitter's reply address. The
    /// simulated agent understands `["sleep", "<secs>"]` (exit 0 after that
    /// long), `["exit", "<code>"]` and `["flaky"]` (a recoverable failure).
    pub fn submit_job(&mut self, spec: crate::protocol::TaskSpec) -> ReplyTo {
        self.send_job(JobMsg::Submit(Box::new(spec)))
    }

    /// Sends a job message now (a cancel, a verdict); its answers are
    /// under the returned reply.
    pub fn send_job(&mut self, msg: JobMsg) -> ReplyTo {
        let reply = ReplyTo(format!("j{}", self.next_reply));
        self.next_reply += 1;
        self.job_replies.entry(reply.clone()).or_default();
        self.push(
            self.now,
            Pending::Deliver(Event::Job {
                msg,
                reply: reply.clone(),
            }),
        );
        reply
    }

    /// Replies and events sent to a job submitter.
    pub fn job_replies(&self, reply: &ReplyTo) -> &[JobReply] {
        self.job_replies.get(reply).map_or(&[], Vec::as_slice)
    }

    /// How many times each command was started by an agent.
    pub fn runs(&self) -> &BTreeMap<CommandId, u32> {
        &self.runs
    }

    /// Requests a claim that its caller releases `hold_ms` after the grant.
    pub fn claim_for(&mut self, req: crate::protocol::ClaimRequest, hold_ms: Millis) -> ReplyTo {
        let id = req.claim_id.clone();
        let reply = self.send_claim(ClaimMsg::Request(req));
        if let Some(t) = self.traces.get_mut(&id) {
            t.hold_ms = Some(hold_ms);
        }
        reply
    }

    /// The spot provider reclaims `node`: its agent reports the notice now
    /// and the instance is gone two minutes later.
    pub fn interrupt(&mut self, node: &NodeId) {
        let deadline = self.now + 120_000;
        self.push(
            self.now,
            Pending::Deliver(Event::Agent {
                node: node.clone(),
                msg: AgentMsg::Interrupted { deadline },
            }),
        );
    }

    /// The node's agent dies silently (no more heartbeats; session closes).
    pub fn kill_agent(&mut self, node: &NodeId) {
        if let Some(a) = self.agents.get_mut(node) {
            a.alive = false;
            a.generation += 1;
        }
        self.push(
            self.now,
            Pending::Deliver(Event::AgentGone { node: node.clone() }),
        );
    }

    /// An instance appears at the provider behind the controller's back (a
    /// create of a store since rolled back, one made by hand, another
    /// fleet's): running, with no agent. A later [`World::inventory`] shows
    /// it to the controller.
    pub fn add_instance(&mut self, instance: Instance) {
        self.instances.insert(instance.node.clone(), instance);
    }

    /// An instance is deleted behind the controller's back (by hand, by
    /// another tool); returns it.
    pub fn remove_instance(&mut self, node: &NodeId) -> Option<Instance> {
        self.instances.remove(node)
    }

    /// The driver reads the provider's inventory now (the daemon does it at
    /// start and periodically): every instance, whoever's, as a provider
    /// ignoring the tag filter would list them.
    pub fn inventory(&mut self) {
        let instances: Vec<Instance> = self.instances.values().cloned().collect();
        self.push(self.now, Pending::Deliver(Event::Inventory { instances }));
    }

    /// The operator changes the configuration (`change`) and restarts the
    /// daemon: [`World::crash_and_restart`] under the new configuration.
    pub fn restart_with(&mut self, change: impl FnOnce(&mut ControllerConfig)) {
        change(&mut self.config);
        self.crash_and_restart();
    }

    /// The daemon crashes and restarts: every event in flight to it is
    /// lost (store writes already applied stay applied), a new controller
    /// is restored from the store with the next epoch, and it is told the
    /// provider's inventory. Agents reconnect.
    pub fn crash_and_restart(&mut self) {
        self.queue
            .retain(|Reverse(q)| !matches!(*q.what, Pending::Deliver(_)));
        self.epoch = self.epoch.next();
        self.store_epoch = self.epoch;
        let mut config = self.config.clone();
        config.epoch = self.epoch;
        let records = self.records();
        self.controller = Controller::restore(config, records, self.now);
        let instances: Vec<Instance> = self.instances.values().cloned().collect();
        self.push(self.now, Pending::Deliver(Event::Inventory { instances }));
        let up: Vec<NodeId> = self
            .agents
            .iter()
            .filter(|(n, a)| a.alive && self.is_running(n))
            .map(|(n, _)| n.clone())
            .collect();
        for node in up {
            let generation = self.agents.get(&node).map_or(0, |a| a.generation);
            self.push(self.now, Pending::Boot { node, generation });
        }
    }

    fn is_running(&self, node: &NodeId) -> bool {
        self.instances
            .get(node)
            .is_some_and(|i| i.state == InstanceState::Running)
    }

    fn push(&mut self, at: Millis, p: Pending) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            what: Box::new(p),
        }));
    }

    /// The time of the next thing that will happen, if anything will.
    pub fn next_event_at(&self) -> Option<Millis> {
        let queued = self.queue.peek().map(|Reverse(q)| q.at);
        match (queued, self.controller.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Performs the next thing that happens (a queued event, or a tick at
    /// the controller's deadline), advancing time to it. Returns false when
    /// nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let Some(next) = self.next_event_at() else {
            return false;
        };
        self.now = self.now.max(next);
        // Everything due at this instant reaches the controller as one
        // batch, as a driver hands it what arrived while it was busy.
        while self.queue.peek().is_some_and(|Reverse(q)| q.at <= next) {
            if let Some(Reverse(q)) = self.queue.pop() {
                self.perform(*q.what);
            }
        }
        if self.inbox.is_empty() {
            self.inbox.push(Event::Tick);
        }
        self.flush();
        true
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Millis) -> Result<(), String> {
        let mut same_instant = 0u32;
        let mut last = self.now;
        while self.next_event_at().is_some_and(|t| t <= until) {
            self.step();
            if self.now == last {
                same_instant += 1;
                if same_instant > MAX_STEPS_PER_INSTANT {
                    return Err(format!(
                        "livelock at t={}: the controller never settles",
                        self.now
                    ));
                }
            } else {
                same_instant = 0;
                last = self.now;
            }
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// Runs for `ms` of virtual time.
    pub fn run_for(&mut self, ms: Millis) -> Result<(), String> {
        self.run_until(self.now.saturating_add(ms))
    }

    fn perform(&mut self, p: Pending) {
        match p {
            Pending::Deliver(e) => self.deliver(e),
            Pending::Boot { node, generation } => {
                if self.agent_up(&node, generation) {
                    let hello = self.hello(&node);
                    self.deliver(Event::Agent {
                        node: node.clone(),
                        msg: hello,
                    });
                    if self.heartbeats {
                        let at = self.now + self.config.timing.heartbeat_interval_ms;
                        self.push(at, Pending::Heartbeat { node, generation });
                    }
                }
            }
            Pending::Heartbeat { node, generation } => {
                if self.agent_up(&node, generation) {
                    self.deliver(Event::Agent {
                        node: node.clone(),
                        msg: AgentMsg::Heartbeat {
                            cpu_percent: 1.0,
                            memory_mb: 100,
                            running: Vec::new(),
                        },
                    });
                    let at = self.now + self.config.timing.heartbeat_interval_ms;
                    self.push(at, Pending::Heartbeat { node, generation });
                }
            }
            Pending::Release { ws, claim } => {
                self.send_claim(ClaimMsg::Release {
                    workspace: ws,
                    claim_id: claim,
                });
            }
            Pending::FromAgent {
                node,
                generation,
                msg,
            } => {
                if let AgentMsg::Event { command, event, .. } = &msg
                    && event.is_terminal()
                    && !self.ended.insert(command.clone())
                {
                    return; // killed by a cancel before it ended
                }
                if self.agent_up(&node, generation) {
                    self.deliver(Event::Agent { node, msg });
                }
            }
        }
    }

    /// Whether this generation of the node's agent is alive on a running
    /// instance (a stopped, deleted or killed agent says nothing more).
    fn agent_up(&self, node: &NodeId, generation: u64) -> bool {
        self.agents
            .get(node)
            .is_some_and(|a| a.alive && a.generation == generation)
            && self.is_running(node)
    }

    /// The simulated agent kills a command it runs: `cancelled` now, and
    /// its own end is never sent.
    fn cancel_command(&mut self, node: &NodeId, command: &CommandId) {
        let Some(agent) = self.agents.get(node) else {
            return;
        };
        if !agent.seen.contains(command) || self.ended.contains(command) {
            return;
        }
        let generation = agent.generation;
        self.push(
            self.now,
            Pending::FromAgent {
                node: node.clone(),
                generation,
                msg: AgentMsg::Event {
                    command: command.clone(),
                    seq: 3,
                    event: WorkerEvent::Cancelled {
                        cancelled_by: Some("request".to_owned()),
                    },
                },
            },
        );
    }

    /// The simulated agent runs a command: events at start and at the end.
    fn run_command(&mut self, node: &NodeId, spec: CommandSpec) {
        let Some(agent) = self.agents.get_mut(node) else {
            return;
        };
        if !agent.alive || agent.seen.contains(&spec.id) {
            return; // never run the same command twice
        }
        agent.seen.push(spec.id.clone());
        let generation = agent.generation;
        *self.runs.entry(spec.id.clone()).or_default() += 1;
        let arg = |i: usize| spec.argv.get(i).map(String::as_str);
        let (after, end) = match (arg(0), arg(1)) {
            (Some("sleep"), Some(secs)) => (
                secs.parse::<u64>().unwrap_or(0) * 1_000,
                WorkerEvent::Completed {
                    exit_code: Some(0),
                    summary: None,
                    verdict: None,
                },
            ),
            (Some("exit"), Some(code)) => (
                1_000,
                WorkerEvent::Completed {
                    exit_code: code.parse().ok(),
                    summary: None,
                    verdict: None,
                },
            ),
            (Some("flaky"), _) => (
                1_000,
                WorkerEvent::Failed {
                    reason: "flaky".to_owned(),
                    recoverable: true,
                },
            ),
            _ => (
                0,
                WorkerEvent::Failed {
                    reason: "unknown command".to_owned(),
                    recoverable: false,
                },
            ),
        };
        // Of the scorers only `exit_code` needs no files: the simulated
        // agent runs it and sends no verdict for the others.
        let mut end = end;
        if let WorkerEvent::Completed {
            exit_code: Some(code),
            verdict,
            ..
        } = &mut end
            && spec.scorer == Some(crate::protocol::Scorer::ExitCode)
        {
            *verdict = Some(crate::protocol::Verdict::binary(
                *code == 0,
                format!("exit code {code}"),
            ));
        }
        // The command echoes its command line, like a shell trace.
        self.push(
            self.now,
            Pending::FromAgent {
                node: node.clone(),
                generation,
                msg: AgentMsg::Output {
                    command: spec.id.clone(),
                    stream: crate::protocol::OutputStream::Stdout,
                    seq: 0,
                    data: format!("+ {}\n", spec.argv.join(" ")),
                },
            },
        );
        for (seq, at, event) in [
            (1, self.now, WorkerEvent::Starting),
            (2, self.now, WorkerEvent::Running),
            (3, self.now + after, end),
        ] {
            self.push(
                at,
                Pending::FromAgent {
                    node: node.clone(),
                    generation,
                    msg: AgentMsg::Event {
                        command: spec.id.clone(),
                        seq,
                        event,
                    },
                },
            );
        }
    }

    fn hello(&self, node: &NodeId) -> AgentMsg {
        AgentMsg::Hello {
            node: node.clone(),
            agent_version: "world".to_owned(),
            bootstrap_token: None,
            resources: NodeResources {
                cpus: 0,
                memory_mb: 0,
                arch: Arch::X86_64,
                labels: BTreeMap::new(),
            },
            gateway: Some(format!("{node}.world:7443")),
            seen_commands: self
                .agents
                .get(node)
                .map(|a| a.seen.clone())
                .unwrap_or_default(),
        }
    }

    fn deliver(&mut self, event: Event) {
        self.inbox.push(event);
    }

    /// Hands the controller the events delivered so far, and performs
    /// what it commands.
    fn flush(&mut self) {
        self.steps += self.inbox.len() as u64;
        self.rounds += 1;
        // Both buffers are kept from round to round (millions of rounds in
        // a simulated year).
        let mut commands = std::mem::take(&mut self.commands);
        self.controller
            .handle_all_into(self.inbox.drain(..), self.now, &mut commands);
        for c in commands.drain(..) {
            self.command(c);
        }
        self.commands = commands;
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Persist {
                key,
                value,
                expected,
            } => {
                // The real store is fenced at the writer's epoch: so is this one.
                let epoch = self.controller.epoch();
                let result = self.persist(&key, value, expected, epoch);
                let at = self.now + self.store_latency;
                self.push(at, Pending::Deliver(Event::Persisted { key, result }));
            }
            Command::Provider { op, call } => self.provider(op, call),
            Command::Send { to, msg } => self.send(to, msg),
            Command::IssueCredentials {
                claim,
                endpoint,
                recipient,
                expires_at,
                ..
            } => {
                let result = if self.faults.credentials_fail > 0 {
                    self.faults.credentials_fail -= 1;
                    Err("the issuer is down".to_owned())
                } else {
                    Ok(SealedCredentials {
                        format: "world".to_owned(),
                        ciphertext: format!(
                            "sealed-for-{recipient}-at-{endpoint}-until-{expires_at}"
                        ),
                        signature: String::new(),
                        signer: String::new(),
                        expires_at,
                    })
                };
                self.push(
                    self.now,
                    Pending::Deliver(Event::CredentialsIssued { claim, result }),
                );
            }
            Command::Alert(a) => self.alerts.push(a),
            Command::JobForgotten { job, .. } => self.forgotten_jobs.push(job),
        }
    }

    /// Jobs whose records the controller deleted, in order.
    pub fn forgotten_jobs(&self) -> &[JobId] {
        &self.forgotten_jobs
    }

    /// The store: CAS on revisions, fencing on epochs, values through the
    /// real codec.
    fn persist(
        &mut self,
        key: &Key,
        value: Option<Record>,
        expected: Option<Revision>,
        epoch: Epoch,
    ) -> Result<Revision, StoreError> {
        if self.faults.store_unavailable > 0 {
            self.faults.store_unavailable -= 1;
            return Err(StoreError::Unavailable("injected".to_owned()));
        }
        if epoch < self.store_epoch {
            return Err(StoreError::Fenced {
                writer: epoch.0,
                current: self.store_epoch.0,
            });
        }
        // One search of the map per write: an update (most writes) replaces
        // the value in place, without a copy of the key.
        let slot = self.records.get_mut(key);
        let current = slot.as_ref().map(|(r, _)| *r);
        match (expected, current) {
            (None, Some(cur)) => {
                return Err(StoreError::AlreadyExists {
                    key: key.clone(),
                    current: cur,
                });
            }
            (Some(_), None) => return Err(StoreError::NotFound { key: key.clone() }),
            (Some(e), Some(cur)) if e != cur => {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: e,
                    current: cur,
                });
            }
            _ => {}
        }
        let rev = Revision(self.next_revision);
        self.next_revision += 1;
        let Some(v) = value else {
            self.records.remove(key);
            return Ok(expected.unwrap_or(rev));
        };
        let bytes = if self.lean {
            Vec::new()
        } else {
            encode(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?
        };
        match slot {
            Some(slot) => *slot = (rev, bytes),
            None => {
                self.records.insert(key.clone(), (rev, bytes));
            }
        }
        Ok(rev)
    }

    fn send(&mut self, to: Peer, msg: Outbound) {
        match (to, msg) {
            (Peer::Reply(_), _) if self.lean => {}
            (Peer::Reply(r), Outbound::Claim(reply)) => {
                self.replies.entry(r).or_default().push(reply);
            }
            (Peer::Claim(ws, id), Outbound::Claim(reply)) => {
                match &reply {
                    ClaimReply::Granted(_) => {
                        if let Some(t) = self.traces.get_mut(&id)
                            && t.granted_at.is_none()
                        {
                            t.granted_at = Some(self.now);
                            if let Some(hold) = t.hold_ms {
                                let at = self.now + hold;
                                self.push(
                                    at,
                                    Pending::Release {
                                        ws,
                                        claim: id.clone(),
                                    },
                                );
                            }
                        }
                    }
                    ClaimReply::Revoked(_) => {
                        if let Some(t) = self.traces.get_mut(&id) {
                            t.revoked = true;
                            t.ended_at.get_or_insert(self.now);
                        }
                    }
                    _ => {}
                }
                if !self.lean {
                    self.claim_msgs.entry(id).or_default().push(reply);
                }
            }
            (Peer::Node(_), _) if self.lean => {}
            (Peer::Node(n), Outbound::Agent(m)) => {
                match &m {
                    DaemonMsg::Run(spec) => self.run_command(&n, spec.clone()),
                    DaemonMsg::Cancel { command } => self.cancel_command(&n, command),
                    _ => {}
                }
                self.agent_inbox.entry(n).or_default().push(m);
            }
            (Peer::Reply(r), Outbound::Job(reply)) => {
                self.job_replies.entry(r).or_default().push(reply);
            }
            _ => {}
        }
    }

    fn provider(&mut self, op: OpId, call: ProviderCall) {
        let api_ms = self.config.billing.calls.api_ms;
        if let Some((err, n)) = &mut self.faults.provider_error
            && *n > 0
        {
            *n -= 1;
            let e = err.clone();
            self.push(
                self.now + api_ms,
                Pending::Deliver(Event::ProviderDone { op, result: Err(e) }),
            );
            return;
        }
        if let ProviderCall::Create(spec) = &call
            && self
                .faults
                .sold_out
                .contains(&(spec.instance_type.clone(), spec.market))
        {
            let e = ProviderError::Capacity(format!(
                "insufficient capacity for {} ({:?})",
                spec.instance_type, spec.market
            ));
            self.capacity_refusals += 1;
            self.push(
                self.now + api_ms,
                Pending::Deliver(Event::ProviderDone { op, result: Err(e) }),
            );
            return;
        }
        if let (ProviderCall::Create(spec), Some((per_million, draws))) =
            (&call, &mut self.capacity)
            && draws.draw(999_999) < *per_million
        {
            let e = ProviderError::Capacity(format!("no {} capacity", spec.instance_type));
            self.capacity_refusals += 1;
            self.push(
                self.now + api_ms,
                Pending::Deliver(Event::ProviderDone { op, result: Err(e) }),
            );
            return;
        }
        let boot = self.config.billing.boot;
        let (delay, result) = match call {
            ProviderCall::Create(spec) => {
                let latency = match spec.source {
                    BootSource::Snapshot(_) => self.jittered(boot.snapshot_ms, |s| s.snapshot_ms),
                    _ => self.jittered(boot.image_ms, |s| s.image_ms),
                };
                let instance = match self.instances.get(&spec.node) {
                    Some(i) => i.clone(),
                    None => {
                        let i = Instance {
                            node: spec.node.clone(),
                            provider_id: format!("i-{:06}", self.next_instance),
                            instance_type: spec.instance_type.clone(),
                            market: spec.market,
                            state: InstanceState::Running,
                            address: None,
                            tags: spec.tags.clone(),
                            created_at: self.now,
                        };
                        self.next_instance += 1;
                        self.instances.insert(spec.node.clone(), i.clone());
                        self.boot_agent(&spec.node, latency);
                        i
                    }
                };
                (api_ms.min(latency), Ok(ProviderOutcome::Instance(instance)))
            }
            ProviderCall::Start(r) => match self.instances.get_mut(&r.node) {
                Some(i) => {
                    let was_stopped = i.state != InstanceState::Running;
                    i.state = InstanceState::Running;
                    let i = i.clone();
                    if was_stopped {
                        let latency = self.jittered(boot.stopped_ms, |s| s.stopped_ms);
                        self.boot_agent(&r.node, latency);
                    }
                    (api_ms, Ok(ProviderOutcome::Instance(i)))
                }
                None => (api_ms, Err(ProviderError::NotFound(r.provider_id))),
            },
            ProviderCall::Stop(r) => match self.instances.get_mut(&r.node) {
                Some(i) => {
                    i.state = InstanceState::Stopped;
                    let i = i.clone();
                    self.stop_agent(&r.node);
                    (api_ms, Ok(ProviderOutcome::Instance(i)))
                }
                None => (api_ms, Err(ProviderError::NotFound(r.provider_id))),
            },
            ProviderCall::Resize(r, to) => match self.instances.get_mut(&r.node) {
                Some(i) if self.faults.sold_out.contains(&(to.clone(), i.market)) => (
                    api_ms,
                    Err(ProviderError::Capacity(format!(
                        "insufficient capacity for {to} ({:?})",
                        i.market
                    ))),
                ),
                Some(i) => {
                    i.instance_type = to;
                    (boot.resize_ms, Ok(ProviderOutcome::Instance(i.clone())))
                }
                None => (api_ms, Err(ProviderError::NotFound(r.provider_id))),
            },
            ProviderCall::Snapshot(r) => {
                let size = self
                    .config
                    .offerings
                    .iter()
                    .find(|o| {
                        self.instances
                            .get(&r.node)
                            .is_some_and(|i| i.instance_type == o.instance_type)
                    })
                    .map_or(20, |o| o.disk_gb);
                let snap = SnapshotRef {
                    id: format!("snap-{}-{}", r.node, self.now),
                    size_gb: size,
                    created_at: self.now,
                };
                (
                    self.config.billing.calls.snapshot_ms,
                    Ok(ProviderOutcome::Snapshot(snap)),
                )
            }
            ProviderCall::Delete(r) => {
                self.instances.remove(&r.node);
                self.stop_agent(&r.node);
                (api_ms, Ok(ProviderOutcome::Deleted))
            }
        };
        self.push(
            self.now + delay,
            Pending::Deliver(Event::ProviderDone { op, result }),
        );
    }

    fn boot_agent(&mut self, node: &NodeId, latency: Millis) {
        let agent = self.agents.entry(node.clone()).or_insert(Agent {
            generation: 0,
            alive: true,
            seen: Vec::new(),
        });
        agent.generation += 1;
        agent.alive = !self.faults.agents_never_boot;
        let generation = agent.generation;
        self.push(
            self.now + latency,
            Pending::Boot {
                node: node.clone(),
                generation,
            },
        );
    }

    fn stop_agent(&mut self, node: &NodeId) {
        if let Some(a) = self.agents.get_mut(node) {
            a.generation += 1;
            self.push(
                self.now,
                Pending::Deliver(Event::AgentGone { node: node.clone() }),
            );
        }
    }

    /// Checks the invariants that must hold after every step; returns the
    /// first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        // No node holds more stored grants than it has slots.
        let slots: BTreeMap<_, _> = self
            .controller
            .pools()
            .map(|p| (p.name.clone(), p.slots_per_node))
            .collect();
        let mut held: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut node_pool = BTreeMap::new();
        let mut stored_claims = BTreeSet::new();
        for (_, _, r) in self.records() {
            match r {
                Record::Claim(c) => {
                    stored_claims.insert(c.request.claim_id.clone());
                    if c.state.holds_node()
                        && let Some(n) = c.node
                    {
                        *held.entry(n).or_default() += 1;
                    }
                }
                Record::Node(n) => {
                    node_pool.insert(n.node.clone(), n.pool.clone());
                }
                _ => {}
            }
        }
        for (node, count) in &held {
            let max = node_pool
                .get(node)
                .and_then(|p| slots.get(p))
                .copied()
                .unwrap_or(u32::MAX);
            if *count > max {
                return Err(format!(
                    "node {node} holds {count} stored grants; it has {max} slots"
                ));
            }
        }
        // Every claim the caller was told about is in the store (retention
        // is assumed longer than the test) or known to the controller.
        for reply in self.replies.values().flatten() {
            if let ClaimReply::Pending { claim_id, .. } = reply
                && !stored_claims.contains(claim_id)
                && self.controller.claim(claim_id).is_none()
            {
                return Err(format!("claim {claim_id} was acknowledged but is lost"));
            }
        }
        // Every grant the caller saw was stored as granted on that node.
        for (id, msgs) in &self.claim_msgs {
            for m in msgs {
                if let ClaimReply::Granted(g) = m
                    && let Some(creds) = &g.credentials
                    && (!creds
                        .ciphertext
                        .ends_with(&format!("-until-{}", creds.expires_at))
                        || creds.expires_at > g.lease.expires_at)
                {
                    return Err(format!(
                        "claim {id}: credentials outlive the lease or name another expiry"
                    ));
                }
                if let ClaimReply::Granted(g) = m
                    && let Some(c) = self.controller.claim(id)
                    && c.state.holds_node()
                    && c.node.as_ref() != Some(&g.node)
                {
                    return Err(format!(
                        "claim {id} granted on {} but holds {:?}",
                        g.node, c.node
                    ));
                }
            }
        }
        // Controller occupancy never exceeds slots either.
        for n in self.controller.nodes() {
            let max = slots.get(&n.record.pool).copied().unwrap_or(u32::MAX) as usize;
            if n.claims.len() > max {
                return Err(format!(
                    "node {} holds {} claims in memory",
                    n.record.node,
                    n.claims.len()
                ));
            }
        }
        Ok(())
    }
}
