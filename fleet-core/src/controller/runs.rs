//! Runs: a group of jobs with one lifecycle (seed 003's `FleetRun`).
//!
//! The run record holds the whole spec, tasks included, and is written
//! first; once it is stored, each task becomes a job of its own (a job
//! record per task, as a lone submit makes). A crash between the two is
//! mended on restore: a run that is not over gets the jobs it lacks. The
//! run's status is derived from its tasks' jobs and stored when it changes;
//! its jobs are forgotten with it, once it has been over for the retention
//! time.

use std::collections::BTreeMap;

use super::persist::{Effect, TimerKey};
use super::{Command, Controller, Job, Run};
use crate::ids::{JobId, Millis, PoolName, RunId, Workspace};
use crate::protocol::{
    JobReply, JobState, Record, RunAction, RunRecord, RunSpec, RunStatus, run_status,
};
use crate::subjects::Subjects;
use crate::transport::{Outbound, Peer, ReplyTo};

impl Controller {
    pub(super) fn restore_run(&mut self, rec: RunRecord) {
        let id = rec.spec.id.clone();
        self.runs.insert(
            id,
            Run {
                rec,
                durable: true,
                reply: None,
            },
        );
    }

    /// After restore: every run's timer is set; a run that is not over is
    /// mended on the first tick ([`Controller::mend_restored_runs`]).
    pub(super) fn relink_runs(&mut self) {
        let ids: Vec<RunId> = self.runs.keys().cloned().collect();
        for id in ids {
            if self
                .runs
                .get(&id)
                .is_some_and(|r| !r.rec.status.is_terminal())
            {
                self.runs_to_mend.push(id.clone());
            }
            self.touch_run(&id);
        }
    }

    /// A restored run gets the jobs a crash kept from being stored, and
    /// its status is brought up to date with its tasks.
    pub(super) fn mend_restored_runs(&mut self, now: Millis, out: &mut Vec<Command>) {
        for id in std::mem::take(&mut self.runs_to_mend) {
            self.materialize_run(&id, None, now, out);
            self.refresh_run(&id, now, out);
        }
    }

    fn run_deadline(&self, run: &Run) -> Option<Millis> {
        run.rec
            .completed_at
            .filter(|_| run.rec.status.is_terminal())
            .map(|t| t.saturating_add(self.timing.claim_retention_ms))
    }

    fn touch_run(&mut self, id: &RunId) {
        let at = self.runs.get(id).and_then(|r| self.run_deadline(r));
        self.timers.set(TimerKey::Run(id.clone()), at);
    }

    pub(super) fn run_timer(&mut self, id: &RunId, now: Millis, out: &mut Vec<Command>) {
        let Some(run) = self.runs.get(id) else {
            return;
        };
        if self.run_deadline(run).is_none_or(|t| t > now) {
            return self.touch_run(id);
        }
        let key = Subjects::run_key(&run.rec.spec.workspace, id);
        let effect = Effect::RunForgotten { run: id.clone() };
        if let Some(done) = self.writes.write(key, None, vec![effect], out) {
            self.run_effects(done, now, out);
        }
    }

    pub(super) fn on_submit_run(
        &mut self,
        spec: RunSpec,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let id = spec.id.clone();
        if let Some(existing) = self.runs.get_mut(&id) {
            if existing.rec.spec != spec {
                let why = format!("run id {id} already used by a different run");
                return Self::reply_job(out, reply, JobReply::Rejected { job: None, why });
            }
            // Idempotent resubmit: this submitter now hears the run.
            existing.reply = Some(reply.clone());
            if existing.durable {
                let status = existing.rec.status;
                Self::reply_job(out, reply, JobReply::Run { run: id, status });
            }
            return;
        }
        if let Some(why) = self.run_invalid(&spec) {
            let why = format!("run {id}: {why}");
            return Self::reply_job(out, reply, JobReply::Rejected { job: None, why });
        }
        let rec = RunRecord {
            status: RunStatus::Pending,
            paused: spec.paused,
            submitted_at: now,
            updated_at: now,
            completed_at: None,
            epoch: self.epoch,
            spec,
        };
        self.runs.insert(
            id.clone(),
            Run {
                rec,
                durable: false,
                reply: Some(reply.clone()),
            },
        );
        self.save_run(
            &id,
            vec![Effect::RunAccepted {
                run: id.clone(),
                reply,
            }],
            now,
            out,
        );
    }

    /// Why the control plane refuses `spec`, if it does.
    fn run_invalid(&self, spec: &RunSpec) -> Option<String> {
        if let Some(why) = spec.invalid() {
            return Some(why);
        }
        for w in &spec.workers {
            if !self.pools.contains_key(&w.pool) {
                return Some(format!("unknown pool {}", w.pool));
            }
        }
        for t in &spec.tasks {
            if self.jobs.contains_key(&t.id) {
                return Some(format!("job id {} is already used", t.id));
            }
            if let Some(why) = self.task_invalid(t) {
                return Some(format!("task {}: {why}", t.id));
            }
        }
        None
    }

    pub(super) fn on_run_action(
        &mut self,
        ws: &Workspace,
        id: &RunId,
        action: RunAction,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(run) = self
            .runs
            .get_mut(id)
            .filter(|r| r.durable && &r.rec.spec.workspace == ws)
        else {
            let why = format!("unknown run {id}");
            return Self::reply_job(out, reply, JobReply::Rejected { job: None, why });
        };
        let status = run.rec.status;
        if status.is_terminal() {
            // Cancelling a cancelled run again is a retried request.
            if action == RunAction::Cancel && status == RunStatus::Cancelled {
                return Self::reply_job(
                    out,
                    reply,
                    JobReply::Run {
                        run: id.clone(),
                        status,
                    },
                );
            }
            let why = format!("run {id} is {status}; it cannot {}", action.name());
            return Self::reply_job(out, reply, JobReply::Rejected { job: None, why });
        }
        match action {
            RunAction::Pause | RunAction::Resume => {
                let paused = action == RunAction::Pause;
                if run.rec.paused != paused {
                    run.rec.paused = paused;
                    // Resumed tasks may be scheduled now.
                    self.decide_again();
                    // The flag is stored even when the status stays (a run
                    // whose tasks are all finishing).
                    if !self.refresh_run(id, now, out) {
                        self.save_run(id, Vec::new(), now, out);
                    }
                }
            }
            RunAction::Cancel => {
                run.rec.status = RunStatus::Cancelled;
                run.rec.updated_at = now;
                run.rec.completed_at = Some(now);
                let tasks: Vec<JobId> = run.rec.spec.tasks.iter().map(|t| t.id.clone()).collect();
                self.save_run(id, Vec::new(), now, out);
                self.run_status_out(id, out);
                for task in tasks {
                    self.cancel_job(&task, now, out);
                }
            }
        }
        let status = self.runs.get(id).map_or(status, |r| r.rec.status);
        Self::reply_job(
            out,
            reply,
            JobReply::Run {
                run: id.clone(),
                status,
            },
        );
    }

    fn save_run(&mut self, id: &RunId, effects: Vec<Effect>, now: Millis, out: &mut Vec<Command>) {
        let Some(r) = self.runs.get_mut(id) else {
            return;
        };
        r.rec.epoch = self.epoch;
        let key = Subjects::run_key(&r.rec.spec.workspace, id);
        let value = Some(Record::Run(r.rec.clone()));
        if let Some(done) = self.writes.write(key, value, effects, out) {
            self.run_effects(done, now, out);
        }
        self.touch_run(id);
    }

    pub(super) fn run_effect(&mut self, effect: Effect, now: Millis, out: &mut Vec<Command>) {
        match effect {
            Effect::RunAccepted { run, reply } => {
                let Some(r) = self.runs.get_mut(&run) else {
                    return;
                };
                r.durable = true;
                let status = r.rec.status;
                Self::reply_job(
                    out,
                    reply.clone(),
                    JobReply::Run {
                        run: run.clone(),
                        status,
                    },
                );
                self.materialize_run(&run, Some(reply), now, out);
            }
            Effect::RunRefresh { run } => {
                self.refresh_run(&run, now, out);
            }
            Effect::RunForgotten { run } => {
                let Some(r) = self.runs.remove(&run) else {
                    return;
                };
                self.timers.set(TimerKey::Run(run), None);
                // Its tasks' jobs go with it (each forgotten once deleted).
                for t in &r.rec.spec.tasks {
                    if self.jobs.contains_key(&t.id) {
                        let key = super::jobs::job_key(t);
                        let effect = Effect::JobForgotten { job: t.id.clone() };
                        if let Some(done) = self.writes.write(key, None, vec![effect], out) {
                            self.run_effects(done, now, out);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Stores a job for every task of the run that has none.
    fn materialize_run(
        &mut self,
        id: &RunId,
        reply: Option<ReplyTo>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(run) = self.runs.get(id) else {
            return;
        };
        let tasks: Vec<_> = run
            .rec
            .spec
            .tasks
            .iter()
            .filter(|t| !self.jobs.contains_key(&t.id))
            .map(|t| run.rec.spec.task_as_run(t))
            .collect();
        for spec in tasks {
            self.add_job(spec, Some(id.clone()), reply.clone(), now, out);
        }
    }

    /// Recomputes a run's status from its tasks; a change is stored and
    /// sent to its submitter. Whether it stored the run.
    pub(super) fn refresh_run(&mut self, id: &RunId, now: Millis, out: &mut Vec<Command>) -> bool {
        let Some(run) = self.runs.get(id).filter(|r| r.durable) else {
            return false;
        };
        if run.rec.status == RunStatus::Cancelled {
            return false;
        }
        // A task whose write is still in flight may be ahead of its stored
        // record: that write's own refresh decides (a run's status never
        // runs ahead of what its tasks' submitters have heard).
        let unsettled = run
            .rec
            .spec
            .tasks
            .iter()
            .any(|t| self.writes.pending(&Subjects::job_key(&t.workspace, &t.id)));
        if unsettled {
            return false;
        }
        let jobs = run.rec.spec.tasks.iter().map(|t| {
            self.jobs
                .get(&t.id)
                .filter(|j| j.durable && j.rec.run.as_ref() == Some(id))
                .map(|j| &j.rec)
        });
        let status = run_status(run.rec.paused, jobs);
        if status == run.rec.status {
            return false;
        }
        if let Some(r) = self.runs.get_mut(id) {
            r.rec.status = status;
            r.rec.updated_at = now;
            r.rec.completed_at = status.is_terminal().then_some(now);
        }
        self.save_run(id, Vec::new(), now, out);
        self.run_status_out(id, out);
        true
    }

    fn run_status_out(&self, id: &RunId, out: &mut Vec<Command>) {
        if let Some(r) = self.runs.get(id)
            && let Some(reply) = &r.reply
        {
            out.push(Command::Send {
                to: Peer::Reply(reply.clone()),
                msg: Outbound::Job(JobReply::Run {
                    run: id.clone(),
                    status: r.rec.status,
                }),
            });
        }
    }

    /// Whether `job` may be scheduled now: not while its run is paused or
    /// cancelled, and not past its run's limit in its pool (`room` counts
    /// what is left per run and pool in this round).
    pub(super) fn run_admits(
        &self,
        job: &Job,
        room: &mut BTreeMap<(RunId, PoolName), u32>,
    ) -> bool {
        let Some(run) = job.rec.run.as_ref().and_then(|r| self.runs.get(r)) else {
            return true;
        };
        if run.rec.paused || run.rec.status == RunStatus::Cancelled {
            return false;
        }
        let pool = &job.rec.spec.pool;
        let Some(limit) = run
            .rec
            .spec
            .worker(pool)
            .and_then(|w| w.max_concurrent_tasks)
        else {
            return true;
        };
        let left = room
            .entry((run.rec.spec.id.clone(), pool.clone()))
            .or_insert_with(|| {
                let active = run
                    .rec
                    .spec
                    .tasks
                    .iter()
                    .filter(|t| &t.pool == pool)
                    .filter_map(|t| self.jobs.get(&t.id))
                    .filter(|j| {
                        matches!(
                            j.rec.state,
                            JobState::Leased { .. } | JobState::Running { .. }
                        )
                    })
                    .count();
                limit.saturating_sub(u32::try_from(active).unwrap_or(u32::MAX))
            });
        if *left == 0 {
            return false;
        }
        *left -= 1;
        true
    }

    /// A run's stored record.
    pub fn run(&self, id: &RunId) -> Option<&RunRecord> {
        self.runs.get(id).map(|r| &r.rec)
    }

    /// Every known run record.
    pub fn runs(&self) -> impl Iterator<Item = &RunRecord> {
        self.runs.values().map(|r| &r.rec)
    }
}
