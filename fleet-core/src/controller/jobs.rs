//! The job plane (seed 003): submit → queued → leased to a node → events →
//! receipt, with retries per the task's policy and escalation alerts.
//!
//! A queued job takes a node slot like a claim does, but after claims: the
//! claim plane is interactive, jobs are batch. Strategies see queued jobs as
//! demand, so pools grow for them too.

use super::cost::Holder;
use super::persist::{Effect, TimerKey};
use super::{Alert, Command, Controller, Job};
use crate::arbitrate::{ArbitrationInput, NodeCapacity, PendingClaim, arbitrate};
use crate::ids::{ClaimId, CommandId, JobId, Millis, NodeId, Workspace};
use crate::protocol::{
    CommandSpec, DaemonMsg, JobMsg, JobRecord, JobReply, JobState, Receipt, Record, Score, Scorer,
    TaskResult, TaskSpec, Verdict, WorkerEvent,
};
use crate::subjects::Subjects;
use crate::transport::{Outbound, Peer, ReplyTo};

impl Controller {
    pub(super) fn restore_job(&mut self, rec: JobRecord, now: Millis) {
        let id = rec.spec.id.clone();
        if matches!(rec.state, JobState::Queued { .. }) {
            self.queued.insert(id.clone());
        }
        if let JobState::Leased { command, .. } | JobState::Running { command, .. } = &rec.state {
            self.commands.insert(command.clone(), id.clone());
        }
        self.jobs.insert(
            id,
            Job {
                rec,
                durable: true,
                reply: None,
                artifacts: Vec::new(),
                progress_at: now,
                stale: false,
            },
        );
    }

    /// After restore: jobs on nodes hold their slots; a job on a vanished
    /// node is requeued on the first tick.
    pub(super) fn relink_jobs(&mut self, now: Millis) {
        let ids: Vec<JobId> = self.jobs.keys().cloned().collect();
        for id in ids {
            let node = match self.jobs.get(&id).map(|j| &j.rec.state) {
                Some(JobState::Leased { node, .. } | JobState::Running { node, .. }) => {
                    node.clone()
                }
                _ => {
                    self.touch_job(&id);
                    continue;
                }
            };
            match self.nodes.get_mut(&node) {
                Some(n) => {
                    n.jobs.insert(id.clone());
                    n.idle_since = None;
                    self.bill_hold(&node, Holder::Job(id.clone()), now);
                }
                None => self.orphaned_jobs.push(id.clone()),
            }
            self.touch_job(&id);
        }
    }

    fn job_deadline(&self, job: &Job) -> Option<Millis> {
        match &job.rec.state {
            JobState::Queued { not_before } if *not_before > 0 => Some(*not_before),
            JobState::Leased { .. } | JobState::Running { .. } if !job.stale => {
                stale_after(&job.rec.spec).map(|ms| job.progress_at.saturating_add(ms))
            }
            // A run's task is forgotten with its run.
            JobState::Done | JobState::Cancelled
                if job
                    .rec
                    .run
                    .as_ref()
                    .is_some_and(|r| self.runs.contains_key(r)) =>
            {
                None
            }
            JobState::Done | JobState::Cancelled => job.rec.receipt.as_ref().map(|r| {
                r.completed_at
                    .saturating_add(self.timing.claim_retention_ms)
            }),
            _ => None,
        }
    }

    pub(super) fn touch_job(&mut self, id: &JobId) {
        let at = self.jobs.get(id).and_then(|j| self.job_deadline(j));
        self.timers.set_job(id, at);
    }

    pub(super) fn job_timer(&mut self, id: &JobId, now: Millis, out: &mut Vec<Command>) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        match &job.rec.state {
            JobState::Queued { .. } => {
                // Backoff over: it may be scheduled again.
                self.decide_again();
            }
            JobState::Leased { .. } | JobState::Running { .. } => {
                let due = self.job_deadline(job).is_some_and(|t| t <= now);
                if due {
                    self.on_stale(id, now, out);
                } else {
                    self.touch_job(id);
                }
            }
            JobState::Done | JobState::Cancelled => {
                let due = self.job_deadline(job).is_some_and(|t| t <= now);
                if due {
                    let key = job_key(&job.rec.spec);
                    let effect = Effect::JobForgotten { job: id.clone() };
                    if let Some(done) = self.writes.write(key, None, vec![effect], out) {
                        self.run_effects(done, now, out);
                    }
                } else {
                    self.touch_job(id);
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_job(
        &mut self,
        msg: JobMsg,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        match msg {
            JobMsg::Submit(spec) => self.on_submit(*spec, reply, now, out),
            JobMsg::Cancel { workspace, job } => self.on_cancel(&workspace, &job, reply, now, out),
            JobMsg::Verdict {
                workspace,
                job,
                verdict,
            } => self.on_verdict(&workspace, &job, verdict, reply, now, out),
            JobMsg::SubmitRun(spec) => self.on_submit_run(*spec, reply, now, out),
            JobMsg::Run {
                workspace,
                run,
                action,
            } => self.on_run_action(&workspace, &run, action, reply, now, out),
        }
    }

    pub(super) fn reply_job(out: &mut Vec<Command>, reply: ReplyTo, msg: JobReply) {
        out.push(Command::Send {
            to: Peer::Reply(reply),
            msg: Outbound::Job(msg),
        });
    }

    fn on_submit(&mut self, spec: TaskSpec, reply: ReplyTo, now: Millis, out: &mut Vec<Command>) {
        let id = spec.id.clone();
        if let Some(existing) = self.jobs.get_mut(&id) {
            if existing.rec.spec != spec {
                let why = "job id already used by a different task".to_owned();
                return Self::reply_job(out, reply, JobReply::Rejected { job: Some(id), why });
            }
            // Idempotent resubmit: this submitter now gets the events.
            existing.reply = Some(reply.clone());
            if !existing.durable {
                return;
            }
            Self::reply_job(out, reply.clone(), JobReply::Accepted { job: id.clone() });
            if let Some(receipt) = &existing.rec.receipt {
                Self::reply_job(out, reply, JobReply::Finished(receipt.clone()));
            }
            return;
        }
        if let Some(why) = self.task_invalid(&spec) {
            return Self::reply_job(out, reply, JobReply::Rejected { job: Some(id), why });
        }
        self.add_job(spec, None, Some(reply), now, out);
    }

    /// Stores a new job, queued; once it is stored `reply` (if any) hears
    /// `accepted` and its events.
    pub(super) fn add_job(
        &mut self,
        spec: TaskSpec,
        run: Option<crate::ids::RunId>,
        reply: Option<ReplyTo>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let id = spec.id.clone();
        let rec = JobRecord {
            spec,
            state: JobState::Queued { not_before: 0 },
            attempts: 0,
            submitted_at: now,
            last_event_at: None,
            escalated: false,
            receipt: None,
            run,
            epoch: self.epoch,
        };
        self.jobs.insert(
            id.clone(),
            Job {
                rec,
                durable: false,
                reply: reply.clone(),
                artifacts: Vec::new(),
                progress_at: now,
                stale: false,
            },
        );
        // Stored, it may be scheduled (and a submitter hears `accepted`).
        let accepted = Effect::JobAccepted {
            job: id.clone(),
            reply,
        };
        self.save_job(&id, vec![accepted], now, out);
    }

    fn on_cancel(
        &mut self,
        ws: &Workspace,
        id: &JobId,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        if self
            .jobs
            .get(id)
            .is_none_or(|j| &j.rec.spec.workspace != ws)
        {
            let why = "unknown job".to_owned();
            return Self::reply_job(
                out,
                reply,
                JobReply::Rejected {
                    job: Some(id.clone()),
                    why,
                },
            );
        }
        self.cancel_job(id, now, out);
        Self::reply_job(out, reply, JobReply::Accepted { job: id.clone() });
    }

    /// Cancels a job: one that waits ends here, skipped; one on a node is
    /// killed there (the agent reports `cancelled`, which ends it); one
    /// already over stays as it is.
    /// Why a task cannot be accepted, if it cannot.
    pub(super) fn task_invalid(&self, spec: &TaskSpec) -> Option<String> {
        if !self.pools.contains_key(&spec.pool) {
            Some(format!("unknown pool {}", spec.pool))
        } else if spec.argv.is_empty() || spec.argv[0].is_empty() {
            Some("argv must name a program".to_owned())
        } else if spec.retry.max_attempts == 0 {
            Some("retry.max_attempts must be at least 1".to_owned())
        } else if spec.alert.as_ref().and_then(|a| a.after_minutes_stale) == Some(0) {
            Some("alert.after_minutes_stale must be at least 1".to_owned())
        } else {
            spec.scorer.as_ref().and_then(scorer_invalid)
        }
    }

    pub(super) fn cancel_job(&mut self, id: &JobId, now: Millis, out: &mut Vec<Command>) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        match job.rec.state.clone() {
            JobState::Queued { .. } | JobState::AwaitingVerdict { .. } => {
                // Nothing runs: it ends here, skipped.
                let ended = Ended {
                    reason: Some("cancelled".into()),
                    ..Ended::new(TaskResult::Skip)
                };
                self.finish_job(id, ended, now, out);
                if let Some(j) = self.jobs.get_mut(id) {
                    j.rec.state = JobState::Cancelled;
                }
                self.save_job(id, Vec::new(), now, out);
            }
            JobState::Leased { node, command } | JobState::Running { node, command } => {
                out.push(Command::Send {
                    to: Peer::Node(node),
                    msg: Outbound::Agent(DaemonMsg::Cancel { command }),
                });
            }
            JobState::Done | JobState::Cancelled => {}
        }
    }

    pub(super) fn save_job(
        &mut self,
        id: &JobId,
        effects: Vec<Effect>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get_mut(id) else {
            return;
        };
        j.rec.epoch = self.epoch;
        if matches!(j.rec.state, JobState::Queued { .. }) {
            self.queued.insert(id.clone());
        } else {
            self.queued.remove(id);
        }
        let key = job_key(&j.rec.spec);
        let value = Some(Record::Job(j.rec.clone()));
        let mut effects = effects;
        if let Some(run) = &j.rec.run {
            // Once stored (and after what the write tells the submitter):
            // a run's status never runs ahead of its tasks' records.
            effects.push(Effect::RunRefresh { run: run.clone() });
        }
        if let Some(done) = self.writes.write(key, value, effects, out) {
            self.run_effects(done, now, out);
        }
        self.touch_job(id);
    }

    pub(super) fn job_effect(&mut self, effect: Effect, now: Millis, out: &mut Vec<Command>) {
        match effect {
            Effect::JobAccepted { job, reply } => {
                let Some(j) = self.jobs.get_mut(&job) else {
                    return;
                };
                j.durable = true;
                self.arbitrate_due = true;
                self.plan_due = true;
                let Some(reply) = reply else {
                    return; // a job stored for a restored run: nobody to tell
                };
                Self::reply_job(out, reply.clone(), JobReply::Accepted { job: job.clone() });
                if let Some(r) = &j.rec.receipt {
                    Self::reply_job(out, reply, JobReply::Finished(r.clone()));
                } else if matches!(j.rec.state, JobState::Queued { .. }) {
                    self.job_event_out(&job, WorkerEvent::Queued, out);
                }
            }
            Effect::JobDispatch { job } => {
                let Some(j) = self.jobs.get(&job) else {
                    return;
                };
                let JobState::Leased { node, command } = &j.rec.state else {
                    return;
                };
                out.push(Command::Send {
                    to: Peer::Node(node.clone()),
                    msg: Outbound::Agent(run_msg(&job, command, &j.rec.spec)),
                });
                let event = WorkerEvent::Leased {
                    lease_expires_at: None,
                };
                self.job_event_out(&job, event, out);
            }
            Effect::JobSlotFreed { job, node } => {
                // Unless the job was dispatched to that node again meanwhile.
                let there_again = self.jobs.get(&job).is_some_and(|j| {
                    matches!(&j.rec.state,
                        JobState::Leased { node: n, .. } | JobState::Running { node: n, .. }
                            if Some(n) == node.as_ref())
                });
                if !there_again {
                    self.release_job_slot(&job, node.as_ref(), now);
                }
            }
            Effect::JobFinished { job, node } => {
                self.release_job_slot(&job, node.as_ref(), now);
                let Some(j) = self.jobs.get(&job) else {
                    return;
                };
                if let (Some(reply), Some(receipt)) = (&j.reply, &j.rec.receipt) {
                    Self::reply_job(out, reply.clone(), JobReply::Finished(receipt.clone()));
                }
            }
            Effect::JobForgotten { job } => {
                let ended = self
                    .jobs
                    .get(&job)
                    .is_some_and(|j| matches!(j.rec.state, JobState::Done | JobState::Cancelled));
                if ended && let Some(j) = self.jobs.remove(&job) {
                    self.ledger.forget(&Holder::Job(job.clone()));
                    self.timers.set(TimerKey::Job(job.clone()), None);
                    out.push(Command::JobForgotten {
                        workspace: j.rec.spec.workspace,
                        job,
                    });
                }
            }
            _ => {}
        }
    }

    fn job_event_out(&self, job: &JobId, event: WorkerEvent, out: &mut Vec<Command>) {
        if let Some(j) = self.jobs.get(job)
            && let Some(reply) = &j.reply
        {
            out.push(Command::Send {
                to: Peer::Reply(reply.clone()),
                msg: Outbound::Job(JobReply::Event {
                    job: job.clone(),
                    attempt: j.rec.attempts,
                    event,
                }),
            });
        }
    }

    /// Schedules queued jobs on the slots claims left free; returns whether
    /// it dispatched any.
    pub(super) fn schedule_jobs(&mut self, now: Millis, out: &mut Vec<Command>) -> bool {
        let over_budget = self.over_budget(now);
        let mut due: Vec<&Job> = self
            .queued
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| {
                j.durable
                    && matches!(j.rec.state, JobState::Queued { not_before } if not_before <= now)
            })
            // A workspace over budget starts no job until its window resets.
            .filter(|j| !over_budget.contains_key(&j.rec.spec.workspace))
            .collect();
        if !self.runs.is_empty() {
            // A run's pool limit admits its most urgent tasks first.
            due.sort_by(|a, b| {
                (b.rec.spec.priority, a.rec.submitted_at)
                    .cmp(&(a.rec.spec.priority, b.rec.submitted_at))
            });
        }
        let mut run_room = std::collections::BTreeMap::new();
        let queued: Vec<PendingClaim> = due
            .into_iter()
            // A paused run starts none; a run's pool limit caps how many.
            .filter(|j| self.run_admits(j, &mut run_room))
            .filter_map(|j| {
                Some(PendingClaim {
                    id: ClaimId::new(j.rec.spec.id.as_str()).ok()?,
                    workspace: j.rec.spec.workspace.clone(),
                    pool: j.rec.spec.pool.clone(),
                    requirements: j.rec.spec.requirements.clone(),
                    priority: j.rec.spec.priority,
                    enqueued_at: j.rec.submitted_at,
                })
            })
            .collect();
        if queued.is_empty() {
            return false;
        }
        let capacity: Vec<NodeCapacity> = self.capacity();
        // Jobs are held to their workspace's quota and dollar cap like
        // claims: the holdings count both.
        let usage = self.usage(&capacity);
        let outcome = arbitrate(ArbitrationInput {
            claims: &queued,
            nodes: &capacity,
            quotas: &self.quotas,
            usage: &usage,
        });
        let dispatched = !outcome.grants.is_empty();
        for a in outcome.grants {
            let Ok(job) = JobId::new(a.claim.as_str()) else {
                continue;
            };
            self.dispatch_job(&job, &a.node, now, out);
        }
        dispatched
    }

    fn dispatch_job(&mut self, id: &JobId, node: &NodeId, now: Millis, out: &mut Vec<Command>) {
        let command = self.next_command_id();
        let Some(j) = self.jobs.get_mut(id) else {
            return;
        };
        j.rec.attempts += 1;
        j.rec.state = JobState::Leased {
            node: node.clone(),
            command: command.clone(),
        };
        j.rec.last_event_at = Some(now);
        j.progress_at = now;
        j.stale = false;
        self.commands.insert(command, id.clone());
        if let Some(n) = self.nodes.get_mut(node) {
            n.jobs.insert(id.clone());
            n.idle_since = None;
        }
        self.bill_hold(node, Holder::Job(id.clone()), now);
        self.count_use(node, now, out);
        self.save_job(id, vec![Effect::JobDispatch { job: id.clone() }], now, out);
    }

    fn next_command_id(&mut self) -> CommandId {
        let seq = self.next_command_seq;
        self.next_command_seq += 1;
        // Unique across restarts: each leadership term has its own epoch.
        CommandId::new(format!("cmd-{}-{seq}", self.epoch.0)).unwrap_or_else(|_| {
            // Unreachable: the format only uses token characters.
            CommandId::new("cmd").unwrap_or_else(|_| unreachable!())
        })
    }

    /// A worker event from the agent running `command`.
    pub(super) fn on_worker_event(
        &mut self,
        node: &NodeId,
        command: &CommandId,
        event: WorkerEvent,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(id) = self.commands.get(command).cloned() else {
            return; // not a job command (or already finished)
        };
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        j.rec.last_event_at = Some(now);
        if !matches!(event, WorkerEvent::Heartbeat { .. }) {
            j.progress_at = now;
        }
        let running = matches!(j.rec.state, JobState::Running { .. });
        self.job_event_out(&id, event.clone(), out);
        self.touch_job(&id);
        match event {
            WorkerEvent::Starting | WorkerEvent::Running if !running => {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.rec.state = JobState::Running {
                        node: node.clone(),
                        command: command.clone(),
                    };
                }
                self.save_job(&id, Vec::new(), now, out);
            }
            WorkerEvent::Artifact(a) => {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.artifacts.push(a);
                }
            }
            WorkerEvent::Completed {
                exit_code, verdict, ..
            } => self.on_completed(&id, node, exit_code, verdict, now, out),
            WorkerEvent::Failed {
                reason,
                recoverable,
            } => {
                let timeout = reason.starts_with("timeout");
                if recoverable && !timeout {
                    self.retry_job(&id, reason, now, out);
                } else {
                    let result = if timeout {
                        TaskResult::Timeout
                    } else {
                        TaskResult::Fail
                    };
                    let ended = Ended {
                        node: Some(node.clone()),
                        reason: Some(reason),
                        ..Ended::new(result)
                    };
                    self.finish_job(&id, ended, now, out);
                }
            }
            WorkerEvent::Interrupted { signal } => {
                let why = format!(
                    "interrupted ({})",
                    signal.unwrap_or_else(|| "signal".into())
                );
                self.retry_job(&id, why, now, out);
            }
            WorkerEvent::Cancelled { cancelled_by } => {
                let why = format!(
                    "cancelled by {}",
                    cancelled_by.unwrap_or_else(|| "request".into())
                );
                let ended = Ended {
                    node: Some(node.clone()),
                    reason: Some(why),
                    ..Ended::new(TaskResult::Skip)
                };
                self.finish_job(&id, ended, now, out);
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.rec.state = JobState::Cancelled;
                }
                self.save_job(&id, Vec::new(), now, out);
            }
            _ => {}
        }
    }

    /// The attempt's process exited: the scorer's verdict (or, without a
    /// scorer, the exit code) ends the job; a `manual` scorer leaves it
    /// awaiting a person's verdict, its node slot freed.
    fn on_completed(
        &mut self,
        id: &JobId,
        node: &NodeId,
        exit_code: Option<i32>,
        verdict: Option<Verdict>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get(id) else {
            return;
        };
        if j.rec.spec.scorer == Some(Scorer::Manual) {
            self.forget_command(id);
            if let Some(j) = self.jobs.get_mut(id) {
                j.rec.state = JobState::AwaitingVerdict {
                    node: node.clone(),
                    exit_code,
                };
            }
            let freed = Effect::JobSlotFreed {
                job: id.clone(),
                node: Some(node.clone()),
            };
            return self.save_job(id, vec![freed], now, out);
        }
        let by_exit_code = || match exit_code {
            Some(0) | None => TaskResult::Pass,
            Some(_) => TaskResult::Fail,
        };
        let (result, score, reason) = match verdict {
            Some(v) => (v.result, Some(v.score), None),
            // An agent that did not run the scorer: the exit code judges,
            // and the receipt says the scorer did not.
            None if j.rec.spec.scorer.is_some() => (
                by_exit_code(),
                None,
                Some("the agent sent no verdict; judged by the exit code".to_owned()),
            ),
            None => (by_exit_code(), None, None),
        };
        let ended = Ended {
            node: Some(node.clone()),
            result,
            exit_code,
            reason,
            score,
        };
        self.finish_job(id, ended, now, out);
    }

    /// A person's verdict on a job awaiting one.
    fn on_verdict(
        &mut self,
        ws: &Workspace,
        id: &JobId,
        verdict: Verdict,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get(id).filter(|j| &j.rec.spec.workspace == ws) else {
            let (job, why) = (Some(id.clone()), "unknown job".to_owned());
            return Self::reply_job(out, reply, JobReply::Rejected { job, why });
        };
        let (node, exit_code) = match &j.rec.state {
            JobState::AwaitingVerdict { node, exit_code } => (node.clone(), *exit_code),
            // The same verdict again (a retried request): already done.
            JobState::Done
                if j.rec.receipt.as_ref().is_some_and(|r| {
                    r.result == verdict.result && r.score.as_ref() == Some(&verdict.score)
                }) =>
            {
                return Self::reply_job(out, reply, JobReply::Accepted { job: id.clone() });
            }
            other => {
                let why = format!("the job is {}, not awaiting a verdict", other.name());
                let job = Some(id.clone());
                return Self::reply_job(out, reply, JobReply::Rejected { job, why });
            }
        };
        if let Some(why) = verdict.invalid() {
            let job = Some(id.clone());
            return Self::reply_job(out, reply, JobReply::Rejected { job, why });
        }
        let ended = Ended {
            node: Some(node),
            result: verdict.result,
            exit_code,
            reason: None,
            score: Some(verdict.score),
        };
        self.finish_job(id, ended, now, out);
        Self::reply_job(out, reply, JobReply::Accepted { job: id.clone() });
    }

    /// Output of a job's command goes to its submitter (not stored: the
    /// ledger keeps events and receipts, not logs).
    pub(super) fn on_job_output(
        &mut self,
        command: &CommandId,
        stream: crate::protocol::OutputStream,
        data: String,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(job) = self.job_progress(command, now) else {
            return;
        };
        if let Some(j) = self.jobs.get(&job)
            && let Some(reply) = &j.reply
        {
            out.push(Command::Send {
                to: Peer::Reply(reply.clone()),
                msg: Outbound::Job(JobReply::Output {
                    job: job.clone(),
                    attempt: j.rec.attempts,
                    stream,
                    data,
                }),
            });
        }
    }

    /// The attempt of `command` showed progress (output, an upload): its
    /// stale clock starts again. Its job, if it is one's.
    pub(super) fn job_progress(&mut self, command: &CommandId, now: Millis) -> Option<JobId> {
        let job = self.commands.get(command).cloned()?;
        if let Some(j) = self.jobs.get_mut(&job) {
            j.progress_at = now;
        }
        self.touch_job(&job);
        Some(job)
    }

    /// The job and attempt `command` runs, if it runs one.
    pub fn command_job(&self, command: &CommandId) -> Option<(&JobRecord, u32)> {
        let j = self.jobs.get(self.commands.get(command)?)?;
        Some((&j.rec, j.rec.attempts))
    }

    /// Requeues a job whose attempt ended recoverably (node lost, spot
    /// interruption, recoverable failure), or ends it when attempts are used
    /// up.
    pub(super) fn retry_job(
        &mut self,
        id: &JobId,
        reason: String,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get(id) else {
            return;
        };
        let next = j.rec.attempts + 1;
        let node = match &j.rec.state {
            JobState::Leased { node, .. } | JobState::Running { node, .. } => Some(node.clone()),
            _ => None,
        };
        let escalate = j
            .rec
            .spec
            .alert
            .as_ref()
            .and_then(|a| a.after_attempts)
            .is_some_and(|n| j.rec.attempts >= n && !j.rec.escalated);
        match j.rec.spec.retry.backoff_before(next) {
            Some(backoff) => {
                // The slot is freed once the requeue is stored (write-ahead,
                // as for a receipt).
                self.forget_command(id);
                if let Some(j) = self.jobs.get_mut(id) {
                    j.rec.state = JobState::Queued {
                        not_before: now.saturating_add(backoff),
                    };
                    if escalate {
                        j.rec.escalated = true;
                    }
                }
                let restarts = next - 1;
                self.job_event_out(
                    id,
                    WorkerEvent::Restarted {
                        restart_count: restarts,
                    },
                    out,
                );
                if escalate {
                    self.escalate(id, "attempts", reason.clone(), now, out);
                }
                self.job_event_out(id, WorkerEvent::Queued, out);
                self.save_job(
                    id,
                    vec![Effect::JobSlotFreed {
                        job: id.clone(),
                        node,
                    }],
                    now,
                    out,
                );
            }
            None => {
                let ended = Ended {
                    node,
                    reason: Some(reason),
                    ..Ended::new(TaskResult::Fail)
                };
                self.finish_job(id, ended, now, out);
            }
        }
    }

    /// A running attempt made no progress for its policy's
    /// `after_minutes_stale`: the submitter is told, and the policy's
    /// channels get an alert. The attempt goes on (its `timeout_ms` is
    /// what ends a hung task).
    fn on_stale(&mut self, id: &JobId, now: Millis, out: &mut Vec<Command>) {
        let Some(j) = self.jobs.get_mut(id) else {
            return;
        };
        j.stale = true;
        let last_heartbeat_at = j.rec.last_event_at;
        let quiet_ms = now.saturating_sub(j.progress_at);
        self.job_event_out(id, WorkerEvent::Stale { last_heartbeat_at }, out);
        let reason = format!("no progress for {} s", quiet_ms / 1_000);
        self.escalate(id, "stale", reason, now, out);
    }

    /// Alerts the job's channels (if its policy names any) and tells its
    /// submitter, one `escalated` event per channel.
    fn escalate(
        &self,
        id: &JobId,
        cause: &str,
        reason: String,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get(id) else {
            return;
        };
        let channels = j
            .rec
            .spec
            .alert
            .as_ref()
            .map(|a| a.channels.clone())
            .unwrap_or_default();
        let alert_id = format!("{id}-{}-{cause}", j.rec.attempts);
        for channel in &channels {
            let event = WorkerEvent::Escalated {
                channel: channel.kind().to_owned(),
                alert_id: Some(alert_id.clone()),
            };
            self.job_event_out(id, event, out);
        }
        out.push(Command::Alert(Alert::JobEscalated {
            job: id.clone(),
            workspace: j.rec.spec.workspace.clone(),
            attempts: j.rec.attempts,
            reason,
            alert_id,
            channels,
            at: now,
        }));
    }

    /// Forgets the command of `id`'s current attempt: its events are no
    /// longer the job's.
    fn forget_command(&mut self, id: &JobId) {
        if let Some(j) = self.jobs.get(id)
            && let JobState::Leased { command, .. } | JobState::Running { command, .. } =
                &j.rec.state
        {
            self.commands.remove(command);
        }
    }

    /// Frees `id`'s slot on `node` (its command is already forgotten).
    fn release_job_slot(&mut self, id: &JobId, node: Option<&NodeId>, now: Millis) {
        if let Some(node) = node {
            self.bill_release(node, &Holder::Job(id.clone()), now);
        }
        if let Some(n) = node.and_then(|n| self.nodes.get_mut(n)) {
            n.jobs.remove(id);
            if n.claims.is_empty() && n.jobs.is_empty() {
                n.idle_since = Some(now);
            }
        }
        self.decide_again();
    }

    fn finish_job(&mut self, id: &JobId, ended: Ended, now: Millis, out: &mut Vec<Command>) {
        let running_on = self.jobs.get(id).and_then(|j| match &j.rec.state {
            JobState::Leased { node, .. } | JobState::Running { node, .. } => Some(node.clone()),
            _ => None,
        });
        // The command is over; its node slot is freed once the receipt is
        // stored (`Effect::JobFinished`): until then a crash would restore
        // the job as running there, and nothing may stop or delete it.
        self.forget_command(id);
        let Some(j) = self.jobs.get_mut(id) else {
            return;
        };
        let artifacts = std::mem::take(&mut j.artifacts);
        j.rec.receipt = Some(Receipt {
            job: id.clone(),
            node: ended.node.or_else(|| running_on.clone()),
            attempts: j.rec.attempts,
            completed_at: now,
            result: ended.result,
            exit_code: ended.exit_code,
            reason: ended.reason,
            artifacts,
            score: ended.score,
        });
        j.rec.state = JobState::Done;
        self.save_job(
            id,
            vec![Effect::JobFinished {
                job: id.clone(),
                node: running_on,
            }],
            now,
            out,
        );
    }

    /// The attempts running on a node that went away are requeued.
    pub(super) fn requeue_jobs_of(
        &mut self,
        node: &NodeId,
        why: &str,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let held: Vec<JobId> = self
            .nodes
            .get(node)
            .map(|n| n.jobs.iter().cloned().collect())
            .unwrap_or_default();
        for id in held {
            self.retry_job(&id, why.to_owned(), now, out);
        }
    }

    /// Requeue jobs whose node vanished while the daemon was down.
    pub(super) fn requeue_orphaned_jobs(&mut self, now: Millis, out: &mut Vec<Command>) {
        for id in std::mem::take(&mut self.orphaned_jobs) {
            self.retry_job(&id, "node gone after restart".to_owned(), now, out);
        }
    }

    /// After a reconnect, re-sends the command of every attempt the node
    /// holds: the agent runs what it has not seen and answers what it has
    /// with that command's last event. A final event written to a
    /// connection that broke under it (or received by a daemon that
    /// crashed before storing it) is lost to the daemon; without this the
    /// attempt would stay running forever. Attempts with a write in flight
    /// are left to the effect of that write.
    pub(super) fn resend_commands(&self, node: &NodeId, out: &mut Vec<Command>) {
        for (command, job) in &self.commands {
            let Some(j) = self.jobs.get(job) else {
                continue;
            };
            let on_node = matches!(&j.rec.state,
                JobState::Leased { node: n, .. } | JobState::Running { node: n, .. } if n == node);
            if on_node && !self.writes.pending(&job_key(&j.rec.spec)) {
                out.push(Command::Send {
                    to: Peer::Node(node.clone()),
                    msg: Outbound::Agent(run_msg(job, command, &j.rec.spec)),
                });
            }
        }
    }

    /// A job's stored record.
    pub fn job(&self, id: &JobId) -> Option<&JobRecord> {
        self.jobs.get(id).map(|j| &j.rec)
    }

    /// Every known job record.
    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().map(|j| &j.rec)
    }
}

/// How long an attempt may go without progress before it is stale.
fn stale_after(spec: &TaskSpec) -> Option<Millis> {
    let minutes = spec.alert.as_ref()?.after_minutes_stale?;
    Some(minutes.saturating_mul(60_000))
}

/// Why a scorer cannot run, if it cannot. Patterns and JSONPath
/// expressions are checked where they run, on the node (a bad one is a
/// failed verdict that says why).
fn scorer_invalid(scorer: &Scorer) -> Option<String> {
    match scorer {
        Scorer::FileExists { path }
        | Scorer::RegexMatch { path, .. }
        | Scorer::JsonPath { path, .. }
            if path.is_empty() =>
        {
            Some("scorer.path must name a file".to_owned())
        }
        Scorer::Command { argv } if argv.first().is_none_or(String::is_empty) => {
            Some("scorer.argv must name a program".to_owned())
        }
        _ => None,
    }
}

/// How a job ended: what its receipt says.
#[derive(Debug)]
struct Ended {
    /// The node it ran on last (default: where its state says).
    node: Option<NodeId>,
    result: TaskResult,
    exit_code: Option<i32>,
    reason: Option<String>,
    score: Option<Score>,
}

impl Ended {
    /// An end with this result and nothing else known yet.
    fn new(result: TaskResult) -> Ended {
        Ended {
            node: None,
            result,
            exit_code: None,
            reason: None,
            score: None,
        }
    }
}

/// The agent command for one attempt of a job.
fn run_msg(job: &JobId, command: &CommandId, spec: &TaskSpec) -> DaemonMsg {
    DaemonMsg::Run(CommandSpec {
        id: command.clone(),
        job: Some(job.clone()),
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        timeout_ms: spec.timeout_ms,
        redact: Vec::new(),
        scorer: spec.scorer.clone(),
    })
}

pub(super) fn job_key(spec: &TaskSpec) -> crate::store::Key {
    Subjects::job_key(&spec.workspace, &spec.id)
}
