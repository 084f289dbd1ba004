//! Simulated node agents, behaving as `fleet-agent`'s session does: connect
//! with backoff, `Hello` with the commands already seen, heartbeats listing
//! what runs, commands run to completion (or a recoverable failure), their
//! events queued in an outbox that survives reconnects (the one message
//! whose write failed is sent again first), a `Run` of a command already
//! seen answered with its last event, `Drain` honoured.
//!
//! An agent lives as long as its instance has power: the provider handle
//! boots one when an instance starts running and cuts it when the
//! instance stops or goes away.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleet_core::ids::{CommandId, Millis, NodeId};
use fleet_core::protocol::{AgentMsg, Arch, CommandSpec, DaemonMsg, NodeResources, WorkerEvent};
use tokio::sync::mpsc;

use crate::sim::{Sent, Sim};

/// Heartbeat interval (the daemon's timing uses the same).
pub(crate) const HEARTBEAT_MS: Millis = 5_000;

/// What an agent's own tasks (and the world) tell its session loop.
#[derive(Debug)]
pub(crate) enum Note {
    /// A command produced an event.
    Event(CommandId, WorkerEvent),
    /// A command ended.
    Done(CommandId),
    /// Send this (a spot interruption notice).
    Say(AgentMsg),
}

/// Powers `node` on and boots its agent after the schedule's boot time.
pub(crate) fn boot(sim: &Arc<Sim>, node: &NodeId) {
    let (generation, delay, tx, rx) = sim.with(|st, at| {
        let e = st.power.entry(node.clone()).or_insert((0, false));
        e.0 += 1;
        e.1 = true;
        let generation = e.0;
        let (lo, hi) = sim.plan.boot_ms;
        let delay = st.rng.range(lo, hi);
        let (tx, rx) = mpsc::unbounded_channel();
        st.agents.insert(node.clone(), (generation, tx.clone()));
        st.step(
            at,
            format_args!("agent {node} powered on (generation {generation}); boots in {delay} ms"),
        );
        (generation, delay, tx, rx)
    });
    tokio::spawn(run(
        Arc::clone(sim),
        node.clone(),
        generation,
        delay,
        tx,
        rx,
    ));
}

struct Agent {
    sim: Arc<Sim>,
    node: NodeId,
    generation: u64,
    notes: mpsc::UnboundedSender<Note>,
    outbox: VecDeque<AgentMsg>,
    running: BTreeSet<CommandId>,
    seqs: BTreeMap<CommandId, u64>,
    draining: bool,
}

async fn run(
    sim: Arc<Sim>,
    node: NodeId,
    generation: u64,
    boot_ms: Millis,
    notes: mpsc::UnboundedSender<Note>,
    mut rx: mpsc::UnboundedReceiver<Note>,
) {
    tokio::time::sleep(Duration::from_millis(boot_ms)).await;
    let mut a = Agent {
        sim,
        node,
        generation,
        notes,
        outbox: VecDeque::new(),
        running: BTreeSet::new(),
        seqs: BTreeMap::new(),
        draining: false,
    };
    let mut attempt = 0u32;
    loop {
        if !a.powered() {
            return;
        }
        if let Some(link) = a.sim.connect(&a.node, a.generation) {
            attempt = 0;
            match a.session(link, &mut rx).await {
                End::PowerOff | End::Drained => return,
                End::Lost => {}
            }
        }
        // Jittered exponential backoff, 1 s doubling up to 30 s.
        let ceiling = 1_000u64.saturating_mul(1 << attempt.min(5)).min(30_000);
        attempt += 1;
        let delay = a.sim.with(|st, _| st.rng.range(ceiling / 2, ceiling));
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

enum End {
    Lost,
    PowerOff,
    Drained,
}

impl Agent {
    fn powered(&self) -> bool {
        self.sim
            .with(|st, _| st.powered(&self.node, self.generation))
    }

    async fn session(
        &mut self,
        mut link: crate::sim::Link,
        rx: &mut mpsc::UnboundedReceiver<Note>,
    ) -> End {
        let seen: Vec<CommandId> = self.sim.with(|st, _| {
            st.ledgers
                .get(&self.node)
                .map(|l| l.keys().cloned().collect())
                .unwrap_or_default()
        });
        let hello = AgentMsg::Hello {
            node: self.node.clone(),
            agent_version: "chaos".to_owned(),
            bootstrap_token: None,
            resources: NodeResources {
                cpus: 2,
                memory_mb: 4_096,
                arch: Arch::X86_64,
                labels: BTreeMap::new(),
            },
            gateway: Some(format!("{}.node.chaos:7443", self.node)),
            seen_commands: seen,
        };
        if self.sim.agent_send(&link, &hello) != Sent::Ok {
            return End::Lost;
        }
        let every = Duration::from_millis(HEARTBEAT_MS);
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Some(msg) = self.outbox.front() {
                if !self.powered() {
                    return End::PowerOff;
                }
                match self.sim.agent_send(&link, msg) {
                    Sent::Ok => {
                        self.outbox.pop_front();
                    }
                    Sent::Broke => {
                        self.outbox.pop_front();
                        return End::Lost;
                    }
                    Sent::Failed => return End::Lost,
                }
            }
            if self.draining && self.running.is_empty() {
                self.sim.disconnect(&link);
                return End::Drained;
            }
            tokio::select! {
                biased;
                m = link.rx.recv() => match m {
                    Some(m) => self.dispatch(m),
                    None => return if self.powered() { End::Lost } else { End::PowerOff },
                },
                Some(note) = rx.recv() => self.note(note),
                _ = beat.tick() => {
                    if !self.powered() {
                        return End::PowerOff;
                    }
                    self.outbox.push_back(AgentMsg::Heartbeat {
                        cpu_percent: 10.0,
                        memory_mb: 512,
                        running: self.running.iter().cloned().collect(),
                    });
                }
            }
        }
    }

    fn push_event(&mut self, command: CommandId, event: WorkerEvent) {
        let seq = self.seqs.entry(command.clone()).or_insert(0);
        *seq += 1;
        let seq = *seq;
        let node = self.node.clone();
        self.sim.with(|st, _| {
            st.ledgers
                .entry(node)
                .or_default()
                .insert(command.clone(), Some((seq, event.clone())));
        });
        self.outbox.push_back(AgentMsg::Event {
            command,
            seq,
            event,
        });
    }

    fn note(&mut self, note: Note) {
        match note {
            Note::Event(command, event) => self.push_event(command, event),
            Note::Done(command) => {
                self.running.remove(&command);
            }
            Note::Say(msg) => self.outbox.push_back(msg),
        }
    }

    fn dispatch(&mut self, msg: DaemonMsg) {
        match msg {
            DaemonMsg::Run(spec) => self.start(spec),
            DaemonMsg::Drain if !self.draining => {
                self.draining = true;
                self.outbox.push_back(AgentMsg::Draining {
                    in_flight: self.running.iter().cloned().collect(),
                });
            }
            // The gateway and cancellation are not simulated: the
            // invariants are about the control plane's decisions.
            _ => {}
        }
    }

    /// Runs a command once; a command already seen gets its last event
    /// again, as the real agent's ledger answers a re-sent `Run`.
    fn start(&mut self, spec: CommandSpec) {
        let node = self.node.clone();
        let seen = self.sim.with(|st, _| {
            let ledger = st.ledgers.entry(node).or_default();
            match ledger.get(&spec.id) {
                Some(last) => Some(last.clone()),
                None => {
                    ledger.insert(spec.id.clone(), None);
                    None
                }
            }
        });
        if let Some(last) = seen {
            if let Some((seq, event)) = last {
                self.outbox.push_back(AgentMsg::Event {
                    command: spec.id,
                    seq,
                    event,
                });
            }
            return;
        }
        if self.draining {
            self.push_event(
                spec.id,
                WorkerEvent::Failed {
                    reason: "agent is draining".to_owned(),
                    recoverable: true,
                },
            );
            return;
        }
        let secs = match spec.argv.as_slice() {
            [cmd, secs] if cmd == "sleep" => secs.parse().unwrap_or(1),
            _ => 1,
        };
        self.running.insert(spec.id.clone());
        self.push_event(spec.id.clone(), WorkerEvent::Starting);
        self.push_event(spec.id.clone(), WorkerEvent::Running);
        let sim = Arc::clone(&self.sim);
        let notes = self.notes.clone();
        let (node, generation) = (self.node.clone(), self.generation);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let fail = sim.with(|st, at| {
                st.powered(&node, generation)
                    .then(|| st.faults(at) && st.rng.chance(sim.plan.faults.job_fail))
            });
            // A node that lost power took its command with it.
            let Some(fail) = fail else { return };
            let event = if fail {
                WorkerEvent::Failed {
                    reason: "flaky test".to_owned(),
                    recoverable: true,
                }
            } else {
                WorkerEvent::Completed {
                    exit_code: Some(0),
                    summary: None,
                    verdict: None,
                }
            };
            let _ = notes.send(Note::Event(spec.id.clone(), event));
            let _ = notes.send(Note::Done(spec.id));
        });
    }
}
