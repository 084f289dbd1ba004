//! The job plane: submit jobs and runs, watch them, pause, resume and
//! cancel — over the same connection as claims.
//!
//! ```no_run
//! # async fn demo(fleet: fleet_client::FleetClient, spec: fleet_core::protocol::RunSpec)
//! # -> Result<(), fleet_client::ClientError> {
//! use fleet_core::protocol::JobReply;
//! use futures_util::StreamExt as _;
//!
//! let jobs = fleet.jobs()?;
//! let mut run = jobs.submit_run(spec).await?;
//! while let Some(reply) = run.next().await {
//!     match reply {
//!         JobReply::Finished(receipt) => println!("{} {:?}", receipt.job, receipt.result),
//!         JobReply::Run { status, .. } if status.is_terminal() => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use fleet_core::ids::{JobId, RunId, Workspace};
use fleet_core::protocol::{JobMsg, JobReply, RunAction, RunSpec, RunStatus, TaskSpec, Verdict};
use fleet_core::transport::JobClient;
use futures_core::stream::BoxStream;
use futures_util::StreamExt as _;

use crate::ClientError;

/// Replies about a job or run, as its submitter hears them, until dropped.
pub type JobReplies = BoxStream<'static, JobReply>;

/// The job plane of a fleet. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    client: Arc<dyn JobClient>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

impl Jobs {
    /// The job plane over any transport (the daemon's WebSocket, NATS, an
    /// embedded fleet's in-process one).
    pub fn new(client: Arc<dyn JobClient>) -> Jobs {
        Jobs { client }
    }

    /// Submits a task. Returns once the control plane accepted it; the
    /// stream carries its events, output and `finished`. Submits are
    /// idempotent by job id: submitting again re-attaches.
    pub async fn submit_job(&self, spec: TaskSpec) -> Result<JobReplies, ClientError> {
        let mut replies = self.client.send(JobMsg::Submit(Box::new(spec))).await?;
        match replies.next().await {
            Some(JobReply::Accepted { .. }) => Ok(replies),
            other => Err(refused("submit", other)),
        }
    }

    /// Submits a run. Returns its status once accepted; the stream carries
    /// its status changes and every task's replies. Idempotent by run id.
    pub async fn submit_run(&self, spec: RunSpec) -> Result<JobReplies, ClientError> {
        let mut replies = self.client.send(JobMsg::SubmitRun(Box::new(spec))).await?;
        match replies.next().await {
            Some(JobReply::Run { status, run }) => {
                // Hand the status back at the head of the stream.
                let head = futures_util::stream::iter([JobReply::Run { run, status }]);
                Ok(Box::pin(head.chain(replies)))
            }
            other => Err(refused("submit run", other)),
        }
    }

    /// Pauses, resumes or cancels a run; its status after the action.
    pub async fn run_action(
        &self,
        workspace: &Workspace,
        run: &RunId,
        action: RunAction,
    ) -> Result<RunStatus, ClientError> {
        let msg = JobMsg::Run {
            workspace: workspace.clone(),
            run: run.clone(),
            action,
        };
        let mut replies = self.client.send(msg).await?;
        match replies.next().await {
            Some(JobReply::Run { status, .. }) => Ok(status),
            other => Err(refused(action.name(), other)),
        }
    }

    /// Cancels a job (its process group on the node is killed).
    pub async fn cancel_job(&self, workspace: &Workspace, job: &JobId) -> Result<(), ClientError> {
        let msg = JobMsg::Cancel {
            workspace: workspace.clone(),
            job: job.clone(),
        };
        self.expect_accepted("cancel", msg).await
    }

    /// A person's verdict on a job whose scorer is `manual`.
    pub async fn verdict(
        &self,
        workspace: &Workspace,
        job: &JobId,
        verdict: Verdict,
    ) -> Result<(), ClientError> {
        let msg = JobMsg::Verdict {
            workspace: workspace.clone(),
            job: job.clone(),
            verdict,
        };
        self.expect_accepted("verdict", msg).await
    }

    async fn expect_accepted(&self, call: &str, msg: JobMsg) -> Result<(), ClientError> {
        let mut replies = self.client.send(msg).await?;
        match replies.next().await {
            Some(JobReply::Accepted { .. }) => Ok(()),
            other => Err(refused(call, other)),
        }
    }
}

/// The error for a first reply that is not the acceptance a call expects.
fn refused(call: &str, reply: Option<JobReply>) -> ClientError {
    match reply {
        Some(JobReply::Rejected { why, .. }) => ClientError::Rejected(format!("{call}: {why}")),
        None => ClientError::Dial(format!("{call}: the connection closed before an answer")),
        Some(other) => ClientError::Rejected(format!("{call}: unexpected answer {other:?}")),
    }
}
