//! Serialized, coalescing, write-ahead store writes, and the timer table.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Command, ProviderCall};
use crate::ids::{ClaimId, JobId, Millis, NodeId, RunId};
use crate::protocol::Record;
use crate::store::{Key, Revision, StoreError};
use crate::transport::ReplyTo;

/// What to do once a write is durable.
#[derive(Debug, Clone)]
pub(super) enum Effect {
    /// A new claim is stored: acknowledge it and let arbitration see it.
    ClaimAccepted { claim: ClaimId, reply: ReplyTo },
    /// A grant is stored: send it.
    Grant { claim: ClaimId },
    /// A renewal is stored: confirm it.
    Renewed { claim: ClaimId, reply: ReplyTo },
    /// A claim's end is stored: free its slot and tell whoever should know.
    ClaimEnded {
        claim: ClaimId,
        reply: Option<ReplyTo>,
    },
    /// A claim record is deleted: forget it.
    ClaimForgotten { claim: ClaimId },
    /// A node record is stored: the provider call may go out.
    NodeCall { node: NodeId, call: ProviderCall },
    /// A node record is deleted: forget it.
    NodeForgotten { node: NodeId },
    /// A new job is stored: acknowledge it and let scheduling see it.
    /// (Its submitter, when there is one to answer, hears `accepted`.)
    JobAccepted { job: JobId, reply: Option<ReplyTo> },
    /// A job's lease to a node is stored: send the command.
    JobDispatch { job: JobId },
    /// A job's receipt is stored: free its slot on `node` (write-ahead,
    /// as a claim's end frees its slot only once stored) and tell the
    /// submitter.
    JobFinished { job: JobId, node: Option<NodeId> },
    /// A job's requeue (its attempt left `node`) is stored: free the slot.
    JobSlotFreed { job: JobId, node: Option<NodeId> },
    /// A job record is deleted: forget it.
    JobForgotten { job: JobId },
    /// A new run is stored: acknowledge it and store its tasks' jobs.
    RunAccepted { run: RunId, reply: ReplyTo },
    /// A run record is deleted: forget it (its jobs are deleted with it).
    RunForgotten { run: RunId },
    /// A task of the run is stored: its status may have changed.
    RunRefresh { run: RunId },
}

#[derive(Debug)]
struct Write {
    value: Option<Record>,
    effects: Vec<Effect>,
}

/// A key's write queue. The writes are boxed: a record is 560 bytes, and
/// a map of slots that held two inline moved about a kilobyte per entry
/// each time an entry came or went (measured: a tenth of a simulated
/// year's time went to `memmove`).
#[derive(Debug, Default)]
struct Slot {
    revision: Option<Revision>,
    in_flight: Option<Box<Write>>,
    next: Option<Box<Write>>,
    retry_at: Option<Millis>,
}

/// Per-key write queues.
#[derive(Debug, Default)]
pub(super) struct Writes {
    /// Only looked up by key, never walked: a hash map spares the long
    /// shared prefixes of store keys a tree compares on every lookup. The
    /// std hasher is seeded per process: claim ids come from clients.
    slots: HashMap<Key, Slot>,
    retries: BTreeSet<(Millis, Key)>,
    busy: usize,
}

impl Writes {
    /// Records a revision read from the store at restore.
    pub(super) fn known(&mut self, key: Key, revision: Revision) {
        self.slots.entry(key).or_default().revision = Some(revision);
    }

    /// Queues a write; emits it now if nothing is in flight for the key.
    pub(super) fn write(
        &mut self,
        key: Key,
        value: Option<Record>,
        effects: Vec<Effect>,
        out: &mut Vec<Command>,
    ) -> Option<Vec<Effect>> {
        let slot = self.slots.entry(key.clone()).or_default();
        if slot.in_flight.is_some() {
            // Coalesce: the newest value wins, every effect still runs, in order.
            match &mut slot.next {
                Some(next) => {
                    next.value = value;
                    next.effects.extend(effects);
                }
                None => slot.next = Some(Box::new(Write { value, effects })),
            }
            return None;
        }
        if slot.revision.is_none() && value.is_none() {
            // Deleting what was never stored: nothing to write.
            self.slots.remove(&key);
            return Some(effects);
        }
        out.push(Command::Persist {
            key,
            value: value.clone(),
            expected: slot.revision,
        });
        slot.in_flight = Some(Box::new(Write { value, effects }));
        self.busy += 1;
        None
    }

    /// Whether a write of `key` is in flight or queued: the record in
    /// memory may be newer than the stored one.
    pub(super) fn pending(&self, key: &Key) -> bool {
        self.slots
            .get(key)
            .is_some_and(|s| s.in_flight.is_some() || s.next.is_some())
    }

    /// Adds an effect to the newest queued write of `key`; returns it back
    /// when nothing is queued (the caller runs it now).
    pub(super) fn attach(&mut self, key: &Key, effect: Effect) -> Option<Effect> {
        let Some(slot) = self.slots.get_mut(key) else {
            return Some(effect);
        };
        match (&mut slot.next, &mut slot.in_flight) {
            (Some(w), _) | (None, Some(w)) => {
                w.effects.push(effect);
                None
            }
            (None, None) => Some(effect),
        }
    }

    /// Completes the in-flight write of `key`. Returns the effects to run,
    /// or the store's error when it means another writer owns the key.
    pub(super) fn persisted(
        &mut self,
        key: &Key,
        result: Result<Revision, StoreError>,
        now: Millis,
        retry_ms: Millis,
        out: &mut Vec<Command>,
    ) -> Result<Vec<Effect>, StoreError> {
        let Some(slot) = self.slots.get_mut(key) else {
            return Ok(Vec::new());
        };
        let Some(done) = slot.in_flight.take() else {
            return Ok(Vec::new());
        };
        self.busy = self.busy.saturating_sub(1);
        match result {
            Ok(rev) => {
                slot.revision = if done.value.is_some() {
                    Some(rev)
                } else {
                    None
                };
            }
            Err(StoreError::Unavailable(_)) => {
                // Keep the write (merged with anything queued behind it) and
                // try again later; effects wait with it.
                let merged = match slot.next.take() {
                    Some(mut next) => {
                        let mut effects = done.effects;
                        effects.append(&mut next.effects);
                        Box::new(Write {
                            value: next.value,
                            effects,
                        })
                    }
                    None => done,
                };
                slot.in_flight = Some(merged);
                self.busy += 1;
                let at = now.saturating_add(retry_ms);
                slot.retry_at = Some(at);
                self.retries.insert((at, key.clone()));
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        }
        let mut effects = done.effects;
        if let Some(next) = slot.next.take() {
            if let Some(mut now_done) = self.write(key.clone(), next.value, next.effects, out) {
                effects.append(&mut now_done);
            }
        } else if slot.revision.is_none() {
            self.slots.remove(key);
        }
        Ok(effects)
    }

    /// Re-emits writes whose retry time has come.
    pub(super) fn retry_due(&mut self, now: Millis, out: &mut Vec<Command>) {
        while let Some((at, key)) = self.retries.first().cloned() {
            if at > now {
                break;
            }
            self.retries.pop_first();
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            if slot.retry_at != Some(at) {
                continue;
            }
            slot.retry_at = None;
            if let Some(w) = &slot.in_flight {
                out.push(Command::Persist {
                    key: key.clone(),
                    value: w.value.clone(),
                    expected: slot.revision,
                });
            }
        }
    }

    /// The earliest retry.
    pub(super) fn next_retry(&self) -> Option<Millis> {
        self.retries.first().map(|(t, _)| *t)
    }

    /// Writes in flight (including ones waiting to be retried).
    pub(super) fn in_flight(&self) -> usize {
        self.busy
    }
}

/// What a timer is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKey {
    Claim(ClaimId),
    Node(NodeId),
    Job(JobId),
    Run(RunId),
}

/// A set of deadlines, one per key, ordered by time. Setting a key to the
/// deadline it already has costs a lookup and no allocation: most writes do
/// not move their record's deadline.
#[derive(Debug, Default)]
pub(super) struct Timers {
    by_time: BTreeSet<(Millis, TimerKey)>,
    claims: BTreeMap<ClaimId, Millis>,
    nodes: BTreeMap<NodeId, Millis>,
    jobs: BTreeMap<JobId, Millis>,
    runs: BTreeMap<RunId, Millis>,
}

impl Timers {
    fn current(&self, key: &TimerKey) -> Option<Millis> {
        match key {
            TimerKey::Claim(id) => self.claims.get(id).copied(),
            TimerKey::Node(id) => self.nodes.get(id).copied(),
            TimerKey::Job(id) => self.jobs.get(id).copied(),
            TimerKey::Run(id) => self.runs.get(id).copied(),
        }
    }

    /// Sets (or clears) the deadline of `key`.
    pub(super) fn set(&mut self, key: TimerKey, at: Option<Millis>) {
        let old = self.current(&key);
        if old == at {
            return;
        }
        if let Some(old) = old {
            self.by_time.remove(&(old, key.clone()));
        }
        match (&key, at) {
            (TimerKey::Claim(id), Some(t)) => self.claims.insert(id.clone(), t),
            (TimerKey::Claim(id), None) => self.claims.remove(id),
            (TimerKey::Node(id), Some(t)) => self.nodes.insert(id.clone(), t),
            (TimerKey::Node(id), None) => self.nodes.remove(id),
            (TimerKey::Job(id), Some(t)) => self.jobs.insert(id.clone(), t),
            (TimerKey::Job(id), None) => self.jobs.remove(id),
            (TimerKey::Run(id), Some(t)) => self.runs.insert(id.clone(), t),
            (TimerKey::Run(id), None) => self.runs.remove(id),
        };
        if let Some(at) = at {
            self.by_time.insert((at, key));
        }
    }

    /// Sets the deadline of a claim, without building a key when unchanged.
    pub(super) fn set_claim(&mut self, id: &ClaimId, at: Option<Millis>) {
        if self.claims.get(id).copied() != at {
            self.set(TimerKey::Claim(id.clone()), at);
        }
    }

    /// Sets the deadline of a node, without building a key when unchanged.
    pub(super) fn set_node(&mut self, id: &NodeId, at: Option<Millis>) {
        if self.nodes.get(id).copied() != at {
            self.set(TimerKey::Node(id.clone()), at);
        }
    }

    /// Sets the deadline of a job, without building a key when unchanged.
    pub(super) fn set_job(&mut self, id: &JobId, at: Option<Millis>) {
        if self.jobs.get(id).copied() != at {
            self.set(TimerKey::Job(id.clone()), at);
        }
    }

    /// Removes and returns every key due at `now`.
    pub(super) fn due(&mut self, now: Millis) -> Vec<TimerKey> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.by_time.pop_first() {
                match &key {
                    TimerKey::Claim(id) => self.claims.remove(id),
                    TimerKey::Node(id) => self.nodes.remove(id),
                    TimerKey::Job(id) => self.jobs.remove(id),
                    TimerKey::Run(id) => self.runs.remove(id),
                };
                due.push(key);
            }
        }
        due
    }

    /// The earliest deadline.
    pub(super) fn first(&self) -> Option<Millis> {
        self.by_time.first().map(|(t, _)| *t)
    }
}
