//! The shared state of one schedule: the durable store and the cloud (which
//! outlive every daemon), the seeded generator, the trace, the checker, the
//! network, and which daemon incarnation is alive.
//!
//! Everything runs on one current-thread tokio runtime with its clock
//! paused, so tasks interleave in one order per seed. The state sits behind
//! one mutex that is never held across an `.await`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fleet_core::clock::Clock;
use fleet_core::ids::{ClaimId, CommandId, JobId, Millis, NodeId};
use fleet_core::memory::provider::MemoryProvider;
use fleet_core::memory::store::MemoryStore;
use fleet_core::protocol::{AgentMsg, DaemonMsg, WorkerEvent};
use fleet_core::transport::{Inbound, Outbound, Peer, TransportError};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::check::{Checker, ClaimView, JobView};
use crate::plan::Plan;
use crate::rng::Rng;
use crate::trace::Trace;

/// Wall-clock time at the start of every schedule (virtual).
pub(crate) const T0: Millis = 1_700_000_000_000;

/// The world of one schedule.
pub(crate) struct Sim {
    pub(crate) plan: Plan,
    pub(crate) start: Instant,
    pub(crate) store: MemoryStore,
    pub(crate) provider: MemoryProvider,
    /// Woken when the live daemon crashes.
    pub(crate) crashed: Notify,
    state: Mutex<State>,
}

/// Which daemon runs.
#[derive(Debug, Default)]
pub(crate) struct Life {
    /// The current (or last) incarnation; its epoch.
    pub(crate) incarnation: u64,
    /// The incarnation's process is alive (starting or running).
    pub(crate) up: bool,
    /// It finished starting: crashes may hit it.
    pub(crate) running: bool,
    pub(crate) crashes: u32,
}

/// One agent connection (daemon incarnation × node).
#[derive(Debug)]
struct Session {
    id: u64,
    incarnation: u64,
    down: mpsc::UnboundedSender<DaemonMsg>,
    /// Last scheduled delivery each way: a connection keeps its order.
    up_at: Millis,
    down_at: Millis,
}

/// The network between callers, agents and the daemon.
#[derive(Debug, Default)]
pub(crate) struct Net {
    daemon: Option<(u64, mpsc::UnboundedSender<Inbound>)>,
    mailboxes: BTreeMap<String, mpsc::UnboundedSender<Outbound>>,
    subscriptions: BTreeMap<ClaimId, String>,
    sessions: BTreeMap<NodeId, Session>,
    next_session: u64,
}

/// How an agent's send went, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Written to the connection.
    Ok,
    /// Written, and then the connection broke: the agent believes it sent
    /// it; it may or may not have arrived.
    Broke,
    /// The write failed: the agent keeps it to send again first.
    Failed,
}

pub(crate) struct State {
    pub(crate) rng: Rng,
    pub(crate) trace: Trace,
    pub(crate) life: Life,
    pub(crate) check: Checker,
    pub(crate) violations: Vec<String>,
    pub(crate) net: Net,
    /// Per node: the generation of its agent and whether it has power.
    pub(crate) power: BTreeMap<NodeId, (u64, bool)>,
    /// Per node: the agent's ledger of commands and their last event (its
    /// work dir: it survives reconnects and reboots).
    pub(crate) ledgers: BTreeMap<NodeId, BTreeMap<CommandId, Option<(u64, WorkerEvent)>>>,
    /// Per node: the running agent's generation and its note channel.
    pub(crate) agents: BTreeMap<NodeId, (u64, mpsc::UnboundedSender<crate::agent::Note>)>,
    pub(crate) claims: BTreeMap<ClaimId, ClaimView>,
    pub(crate) jobs: BTreeMap<JobId, JobView>,
    pub(crate) runs: BTreeMap<fleet_core::RunId, JobView>,
    faults_until: Millis,
    max_crashes: u32,
    /// How often each kind of event happened (what a schedule exercised).
    pub(crate) counts: BTreeMap<&'static str, u64>,
}

impl State {
    /// When the copies of one caller-plane message sent at `at` arrive:
    /// none if it is lost (traced as `lost`), two if it is duplicated, each
    /// after its own delay while faults are on.
    fn caller_plane_deliveries(
        &mut self,
        at: Millis,
        f: &crate::plan::Faults,
        lost: std::fmt::Arguments<'_>,
    ) -> Vec<Millis> {
        let faults = self.faults(at);
        if faults && self.rng.chance(f.msg_loss) {
            self.step(at, lost);
            self.count("caller-plane messages lost");
            return Vec::new();
        }
        let copies = if faults && self.rng.chance(f.msg_dup) {
            self.count("caller-plane messages duplicated");
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                at + if faults {
                    self.rng.range(1, f.msg_delay_ms)
                } else {
                    1
                }
            })
            .collect()
    }

    /// Faults are on at `at` (ms since the start).
    pub(crate) fn faults(&self, at: Millis) -> bool {
        at < self.faults_until
    }

    pub(crate) fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    pub(crate) fn step(&mut self, at: Millis, what: std::fmt::Arguments<'_>) {
        self.trace.step(at, what);
    }

    pub(crate) fn violations(&mut self, at: Millis, found: Vec<String>) {
        for v in found {
            self.trace.step(at, format_args!("VIOLATION {v}"));
            self.violations
                .push(format!("[{}.{:03}s] {v}", at / 1000, at % 1000));
        }
    }

    /// Whether `incarnation` is the live daemon.
    pub(crate) fn alive(&self, incarnation: u64) -> bool {
        self.life.up && self.life.incarnation == incarnation
    }

    /// Crashes the live daemon if it is `incarnation`, running, and the
    /// schedule's crash budget allows. Whether it crashed.
    pub(crate) fn crash(
        &mut self,
        at: Millis,
        incarnation: u64,
        kind: &'static str,
        why: std::fmt::Arguments<'_>,
    ) -> bool {
        if !(self.alive(incarnation) && self.life.running && self.life.crashes < self.max_crashes) {
            return false;
        }
        self.life.crashes += 1;
        self.count(kind);
        self.kill(at, format_args!("CRASH {why}"));
        true
    }

    /// Ends the live incarnation: its process is gone, with every
    /// connection it had.
    pub(crate) fn kill(&mut self, at: Millis, why: std::fmt::Arguments<'_>) {
        self.trace.step(
            at,
            format_args!("daemon {} down: {why}", self.life.incarnation),
        );
        self.life.up = false;
        self.life.running = false;
        self.net.daemon = None;
        let nodes: Vec<NodeId> = self.net.sessions.keys().cloned().collect();
        for n in nodes {
            self.net.sessions.remove(&n);
        }
    }

    pub(crate) fn powered(&self, node: &NodeId, generation: u64) -> bool {
        self.power.get(node) == Some(&(generation, true))
    }

    /// Cuts a node's power: its agent dies and its connection with it.
    pub(crate) fn power_off(&mut self, at: Millis, node: &NodeId) {
        let Some((generation, on)) = self.power.get_mut(node) else {
            return;
        };
        if !*on {
            return;
        }
        *on = false;
        *generation += 1;
        self.trace
            .step(at, format_args!("agent {node} powered off"));
        self.break_session(at, node, None);
    }

    /// Ends a node's connection (if `id` is given, only that one); the
    /// daemon hears `AgentGone` after what the agent sent before.
    fn break_session(
        &mut self,
        at: Millis,
        node: &NodeId,
        id: Option<u64>,
    ) -> Option<(u64, u64, Millis)> {
        let current = self.net.sessions.get(node)?;
        if id.is_some_and(|i| i != current.id) {
            return None;
        }
        let s = self.net.sessions.remove(node)?;
        self.count("agent connections broken");
        self.trace
            .step(at, format_args!("link {node}#{} broken", s.id));
        Some((s.id, s.incarnation, s.up_at.max(at) + 1))
    }
}

/// An agent's connection to the daemon.
pub(crate) struct Link {
    pub(crate) node: NodeId,
    pub(crate) id: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<DaemonMsg>,
}

impl Sim {
    pub(crate) fn new(plan: Plan, keep_trace: bool) -> Arc<Sim> {
        let faults_until = plan.active_ms;
        let provider = MemoryProvider::ec2_like();
        provider.set_now(T0);
        let state = State {
            // Another stream than the plan's draws, from the same seed.
            rng: Rng::new(plan.seed ^ 0x9e37_79b9_7f4a_7c15),
            trace: Trace::new(keep_trace),
            life: Life::default(),
            check: Checker::new(plan.pool.slots_per_node),
            violations: Vec::new(),
            net: Net::default(),
            power: BTreeMap::new(),
            ledgers: BTreeMap::new(),
            agents: BTreeMap::new(),
            claims: BTreeMap::new(),
            jobs: BTreeMap::new(),
            runs: BTreeMap::new(),
            faults_until,
            max_crashes: plan.faults.max_crashes,
            counts: BTreeMap::new(),
        };
        Arc::new(Sim {
            plan,
            start: Instant::now(),
            store: MemoryStore::new(),
            provider,
            crashed: Notify::new(),
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Milliseconds since the schedule began.
    pub(crate) fn at(&self) -> Millis {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `f` on the state at the current virtual time.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, Millis) -> R) -> R {
        let at = self.at();
        f(&mut self.lock(), at)
    }

    /// Sleeps until `at` (ms since the start).
    pub(crate) async fn until(&self, at: Millis) {
        tokio::time::sleep_until(self.start + Duration::from_millis(at)).await;
    }

    /// Never returns while `incarnation` is dead: a dead process does
    /// nothing, and whatever it was doing never completes.
    pub(crate) async fn park_unless_alive(&self, incarnation: u64) {
        if !self.with(|st, _| st.alive(incarnation)) {
            std::future::pending::<()>().await;
        }
    }

    /// Crashes `incarnation` (see [`State::crash`]) and wakes the world.
    pub(crate) fn crash(
        &self,
        incarnation: u64,
        kind: &'static str,
        why: std::fmt::Arguments<'_>,
    ) -> bool {
        let crashed = self.with(|st, at| st.crash(at, incarnation, kind, why));
        if crashed {
            self.crashed.notify_one();
        }
        crashed
    }

    // -----------------------------------------------------------------
    // The daemon's side of the network.

    /// Opens the inbox of a starting incarnation.
    pub(crate) fn daemon_up(&self, incarnation: u64) -> mpsc::UnboundedReceiver<Inbound> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.with(|st, at| {
            st.life.incarnation = incarnation;
            st.life.up = true;
            st.life.running = false;
            st.net.daemon = Some((incarnation, tx));
            st.step(at, format_args!("daemon {incarnation} starting"));
        });
        rx
    }

    /// What the daemon sends. A dead incarnation sends nothing.
    pub(crate) fn daemon_send(
        self: &Arc<Self>,
        incarnation: u64,
        to: &Peer,
        msg: Outbound,
    ) -> Result<(), TransportError> {
        let mut st = self.lock();
        let at = self.at();
        if !st.alive(incarnation) {
            return Ok(());
        }
        st.step(at, format_args!("daemon -> {to:?}: {}", brief_out(&msg)));
        if let Some(kind) = sent_kind(to, &msg) {
            st.count(kind);
        }
        let bad = st.check.daemon_send(to, &msg);
        st.violations(at, bad);
        match to {
            Peer::Reply(r) => {
                let mailbox = r.0.split('#').next().unwrap_or_default().to_owned();
                drop(st);
                self.to_mailbox(mailbox, msg);
                Ok(())
            }
            Peer::Claim(_, id) => {
                let mailbox = st.net.subscriptions.get(id).cloned();
                drop(st);
                if let Some(mailbox) = mailbox {
                    self.to_mailbox(mailbox, msg);
                }
                Ok(())
            }
            Peer::Node(node) => {
                let Outbound::Agent(m) = msg else {
                    return Err(TransportError::NoPeer(format!(
                        "{node}: not an agent message"
                    )));
                };
                let faults = st.faults(at);
                let brk = faults && st.rng.chance(self.plan.faults.link_break);
                let delay = if faults {
                    st.rng.range(1, self.plan.faults.link_delay_ms)
                } else {
                    1
                };
                let Some(s) = st.net.sessions.get_mut(node) else {
                    return Err(TransportError::NoPeer(format!("node {node}")));
                };
                if brk {
                    let gone = st.break_session(at, node, None);
                    drop(st);
                    self.agent_gone_later(node.clone(), gone);
                    return Ok(());
                }
                let when = (at + delay).max(s.down_at + 1);
                s.down_at = when;
                let id = s.id;
                drop(st);
                let sim = Arc::clone(self);
                let node = node.clone();
                tokio::spawn(async move {
                    sim.until(when).await;
                    sim.with(|st, at| {
                        if let Some(s) = st.net.sessions.get(&node)
                            && s.id == id
                        {
                            st.trace
                                .step(at, format_args!("{node}#{id} <- {}", brief_daemon(&m)));
                            let _ = s.down.send(m);
                        }
                    });
                });
                Ok(())
            }
            other => Err(TransportError::NoPeer(format!("{other:?}"))),
        }
    }

    /// Delivers a claim- or job-plane answer to a caller's mailbox, subject
    /// to loss, duplication and delay.
    fn to_mailbox(self: &Arc<Self>, mailbox: String, msg: Outbound) {
        let deliveries = self.with(|st, at| {
            st.caller_plane_deliveries(at, &self.plan.faults, format_args!("lost -> {mailbox}"))
        });
        for when in deliveries {
            let sim = Arc::clone(self);
            let mailbox = mailbox.clone();
            let msg = msg.clone();
            tokio::spawn(async move {
                sim.until(when).await;
                sim.with(|st, at| {
                    if let Some(tx) = st.net.mailboxes.get(&mailbox) {
                        st.trace
                            .step(at, format_args!("{mailbox} <- {}", brief_out(&msg)));
                        let _ = tx.send(msg);
                    }
                });
            });
        }
    }

    fn agent_gone_later(self: &Arc<Self>, node: NodeId, gone: Option<(u64, u64, Millis)>) {
        let Some((id, incarnation, when)) = gone else {
            return;
        };
        let sim = Arc::clone(self);
        tokio::spawn(async move {
            sim.until(when).await;
            sim.with(|st, at| {
                // A newer connection of the node displaced this one: the
                // node is not gone.
                if st.net.sessions.contains_key(&node) {
                    return;
                }
                if let Some((inc, tx)) = &st.net.daemon
                    && *inc == incarnation
                {
                    let _ = tx.send(Inbound::AgentGone { node: node.clone() });
                    st.trace
                        .step(at, format_args!("daemon <- {node}#{id} gone"));
                }
            });
        });
    }

    // -----------------------------------------------------------------
    // Callers' side.

    /// Opens a caller's mailbox and subscribes it to `claim`'s subjects.
    pub(crate) fn mailbox(
        &self,
        name: &str,
        claim: Option<&ClaimId>,
    ) -> mpsc::UnboundedReceiver<Outbound> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.with(|st, _| {
            st.net.mailboxes.insert(name.to_owned(), tx);
            if let Some(c) = claim {
                st.net.subscriptions.insert(c.clone(), name.to_owned());
            }
        });
        rx
    }

    /// A caller sends to whichever daemon listens when the message arrives
    /// (none: it is lost), subject to loss, duplication and delay.
    pub(crate) fn caller_send(self: &Arc<Self>, what: &str, msg: Inbound) {
        let deliveries = self.with(|st, at| {
            st.step(at, format_args!("{what}"));
            st.caller_plane_deliveries(at, &self.plan.faults, format_args!("lost: {what}"))
        });
        for when in deliveries {
            let sim = Arc::clone(self);
            let msg = msg.clone();
            let what = what.to_owned();
            tokio::spawn(async move {
                sim.until(when).await;
                sim.with(|st, at| match &st.net.daemon {
                    Some((_, tx)) => {
                        let _ = tx.send(msg);
                        st.trace.step(at, format_args!("daemon <- {what}"));
                    }
                    None => st.step(at, format_args!("no daemon for: {what}")),
                });
            });
        }
    }

    // -----------------------------------------------------------------
    // Agents' side.

    /// Connects `node`'s agent to the live daemon, if one is up; a
    /// connection of the same node is displaced.
    pub(crate) fn connect(&self, node: &NodeId, generation: u64) -> Option<Link> {
        self.with(|st, at| {
            if !st.powered(node, generation) {
                return None;
            }
            let incarnation = match &st.net.daemon {
                Some((inc, _)) => *inc,
                None => return None,
            };
            st.net.next_session += 1;
            let id = st.net.next_session;
            let (tx, rx) = mpsc::unbounded_channel();
            st.net.sessions.insert(
                node.clone(),
                Session {
                    id,
                    incarnation,
                    down: tx,
                    up_at: at,
                    down_at: at,
                },
            );
            st.step(
                at,
                format_args!("link {node}#{id} up to daemon {incarnation}"),
            );
            Some(Link {
                node: node.clone(),
                id,
                rx,
            })
        })
    }

    /// An agent writes `msg` on its connection.
    pub(crate) fn agent_send(self: &Arc<Self>, link: &Link, msg: &AgentMsg) -> Sent {
        let mut st = self.lock();
        let at = self.at();
        let node = &link.node;
        let f = &self.plan.faults;
        let faults = st.faults(at);
        let Some(s) = st.net.sessions.get(node).filter(|s| s.id == link.id) else {
            return Sent::Failed;
        };
        let incarnation = s.incarnation;
        let (brk, arrives) = if faults && st.rng.chance(f.link_break) {
            // Broken under this message: lost for good, kept by the agent
            // for the next connection, or arrived and kept too (the agent
            // sends it again: a duplicate).
            match st.rng.range(0, 2) {
                0 => (Sent::Broke, false),
                1 => (Sent::Failed, false),
                _ => (Sent::Failed, true),
            }
        } else {
            (Sent::Ok, true)
        };
        let delay = if faults {
            st.rng.range(1, f.link_delay_ms)
        } else {
            1
        };
        let s = st.net.sessions.get_mut(node).filter(|s| s.id == link.id);
        let when = s.map(|s| {
            let when = (at + delay).max(s.up_at + 1);
            if arrives {
                s.up_at = when;
            }
            when
        });
        st.step(
            at,
            format_args!(
                "{node}#{} -> {}{}",
                link.id,
                brief_agent(msg),
                match brk {
                    Sent::Ok => "",
                    Sent::Broke => " (link breaks, lost)",
                    Sent::Failed if arrives => " (link breaks, arrives, resent)",
                    Sent::Failed => " (link breaks, resent)",
                }
            ),
        );
        let gone = if brk != Sent::Ok {
            st.break_session(at, node, Some(link.id))
        } else {
            None
        };
        drop(st);
        if arrives && let Some(when) = when {
            let sim = Arc::clone(self);
            let msg = msg.clone();
            let node = node.clone();
            let id = link.id;
            tokio::spawn(async move {
                sim.until(when).await;
                sim.with(|st, at| {
                    if let Some((inc, tx)) = &st.net.daemon
                        && *inc == incarnation
                    {
                        st.trace.step(
                            at,
                            format_args!("daemon <- {node}#{id}: {}", brief_agent(&msg)),
                        );
                        let _ = tx.send(Inbound::Agent { node, msg });
                    }
                });
            });
        }
        self.agent_gone_later(node.clone(), gone);
        brk
    }

    /// An agent closes its connection (powering off, draining).
    pub(crate) fn disconnect(self: &Arc<Self>, link: &Link) {
        let gone = self.with(|st, at| st.break_session(at, &link.node, Some(link.id)));
        self.agent_gone_later(link.node.clone(), gone);
    }

    /// Cuts a node's power and tells the daemon the connection is gone.
    pub(crate) fn power_off(self: &Arc<Self>, node: &NodeId) {
        let gone = self.with(|st, at| {
            let s = st
                .net
                .sessions
                .get(node)
                .map(|s| (s.id, s.incarnation, s.up_at));
            st.power_off(at, node);
            s.map(|(id, inc, up)| (id, inc, up.max(at) + 1))
        });
        self.agent_gone_later(node.clone(), gone);
    }
}

/// The virtual clock the daemon reads: tokio's paused clock from [`T0`].
#[derive(Debug, Clone)]
pub(crate) struct SimClock {
    pub(crate) start: Instant,
}

impl Clock for SimClock {
    fn now(&self) -> Millis {
        T0 + u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What a daemon message counts as, for the exercised-events summary.
fn sent_kind(to: &Peer, msg: &Outbound) -> Option<&'static str> {
    use fleet_core::protocol::{ClaimReply, JobReply};
    Some(match (to, msg) {
        (Peer::Claim(..), Outbound::Claim(ClaimReply::Granted(_))) => "grants published",
        (Peer::Claim(..), Outbound::Claim(ClaimReply::Released { .. })) => "claims released",
        (Peer::Claim(..), Outbound::Claim(ClaimReply::Revoked(_))) => "claims revoked",
        (_, Outbound::Job(JobReply::Finished(_))) => "job receipts sent",
        (_, Outbound::Agent(DaemonMsg::Run(_))) => "runs sent",
        _ => return None,
    })
}

pub(crate) fn brief_out(msg: &Outbound) -> String {
    match msg {
        Outbound::Claim(r) => format!("{r:?}"),
        Outbound::Job(r) => format!("{r:?}"),
        Outbound::Agent(m) => brief_daemon(m),
        other => format!("{other:?}"),
    }
}

pub(crate) fn brief_daemon(msg: &DaemonMsg) -> String {
    match msg {
        DaemonMsg::Run(spec) => format!("Run({} of {:?})", spec.id, spec.job),
        other => format!("{other:?}"),
    }
}

pub(crate) fn brief_agent(msg: &AgentMsg) -> String {
    match msg {
        AgentMsg::Hello { seen_commands, .. } => format!("Hello(seen {seen_commands:?})"),
        AgentMsg::Heartbeat { running, .. } => format!("Heartbeat(running {running:?})"),
        AgentMsg::Event { command, event, .. } => format!("Event({command}: {event:?})"),
        other => format!("{other:?}"),
    }
}
