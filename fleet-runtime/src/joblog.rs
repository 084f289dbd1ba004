//! What jobs reported and printed, kept for operators: the driver notes
//! every worker event and output chunk of a job's command as it arrives
//! (whether or not the job's submitter listens), [`crate::Fleet::job_log`]
//! reads it. In memory and bounded: [`JOB_LOG_JOBS`] jobs, each log as
//! [`JobLog::push`] bounds it; a job's log goes with its record.

use std::collections::{BTreeMap, VecDeque};

use fleet_core::JobId;
use fleet_core::ids::{Millis, Workspace};
use fleet_core::protocol::{JOB_LOG_JOBS, JobLog, JobLogEntry, JobLogWhat};

/// The logs of the newest [`JOB_LOG_JOBS`] jobs.
#[derive(Debug, Default)]
pub(crate) struct JobLogs {
    logs: BTreeMap<(Workspace, JobId), JobLog>,
    /// Jobs in the order their logs began, oldest first.
    order: VecDeque<(Workspace, JobId)>,
}

impl JobLogs {
    /// Appends `what` of `attempt` to the job's log.
    pub(crate) fn note(
        &mut self,
        workspace: &Workspace,
        job: &JobId,
        attempt: u32,
        at: Millis,
        what: JobLogWhat,
    ) {
        let key = (workspace.clone(), job.clone());
        if !self.logs.contains_key(&key) {
            while self.order.len() >= JOB_LOG_JOBS {
                if let Some(old) = self.order.pop_front() {
                    self.logs.remove(&old);
                }
            }
            self.order.push_back(key.clone());
        }
        self.logs
            .entry(key)
            .or_insert_with(|| JobLog::new(workspace.clone(), job.clone()))
            .push(JobLogEntry { at, attempt, what });
    }

    /// The job's log, if one is kept.
    pub(crate) fn get(&self, workspace: &Workspace, job: &JobId) -> Option<JobLog> {
        self.logs.get(&(workspace.clone(), job.clone())).cloned()
    }

    /// Forgets the job's log (its record is gone).
    pub(crate) fn forget(&mut self, workspace: &Workspace, job: &JobId) {
        let key = (workspace.clone(), job.clone());
        if self.logs.remove(&key).is_some() {
            self.order.retain(|k| k != &key);
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet_core::protocol::OutputStream;

    use super::*;

    fn out(text: &str) -> JobLogWhat {
        JobLogWhat::Output {
            stream: OutputStream::Stdout,
            data: text.to_owned(),
        }
    }

    #[test]
    fn the_newest_jobs_logs_are_kept_and_forgotten_with_their_jobs()
    -> Result<(), Box<dyn std::error::Error>> {
        let ws = Workspace::new("ci")?;
        let mut logs = JobLogs::default();
        for i in 0..=JOB_LOG_JOBS {
            logs.note(&ws, &JobId::new(format!("j{i}"))?, 1, 0, out("hello"));
        }
        assert!(
            logs.get(&ws, &JobId::new("j0")?).is_none(),
            "the oldest went"
        );
        let last = JobId::new(format!("j{JOB_LOG_JOBS}"))?;
        logs.note(&ws, &last, 2, 5, out(" again"));
        let log = logs.get(&ws, &last).ok_or("no log of the newest job")?;
        assert_eq!(log.entries.len(), 2);
        assert_eq!((log.entries[1].attempt, log.entries[1].at), (2, 5));
        assert!(logs.get(&Workspace::new("other")?, &last).is_none());
        logs.forget(&ws, &last);
        assert!(logs.get(&ws, &last).is_none());
        assert_eq!(logs.order.len(), JOB_LOG_JOBS - 1);
        Ok(())
    }
}
