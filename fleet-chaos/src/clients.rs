//! Simulated callers: claim clients and job submitters that retry as the
//! real clients do — the same claim id re-sent until it is answered (a
//! retry is idempotent), renewals and releases re-sent until confirmed, a
//! job re-submitted with the same id until accepted and again when its
//! events go quiet (a resubmit re-attaches). What each learnt is kept for
//! the settled checks.

use std::sync::Arc;
use std::time::Duration;

use fleet_core::ids::{ClaimId, JobId, Millis, Workspace};
use fleet_core::protocol::{
    ClaimMsg, ClaimRejection, ClaimReply, ClaimRequest, JobMsg, JobReply, Requirements, Revocation,
    TaskSpec,
};
use fleet_core::transport::{Inbound, Outbound, ReplyTo};
use tokio::sync::mpsc;

use crate::check::{ClaimView, JobView};
use crate::plan::{ClaimScript, JobScript};
use crate::sim::Sim;

/// A valid age X25519 recipient (the simulated issuer does not encrypt).
const RECIPIENT: &str = "age166j880zym4c8emmhegj987f0qa96pa7qyz9wza337kpftnytqk7qg3zd0u";
/// Silence after which a request is sent again.
const RETRY_MS: Millis = 10_000;
/// Silence after which an acknowledged request is sent again.
const WAIT_RETRY_MS: Millis = 60_000;
/// Silence after which a job's submitter re-attaches.
const JOB_QUIET_MS: Millis = 120_000;

fn workspace() -> Workspace {
    Workspace::new("chaos").unwrap_or_else(|_| unreachable!("a valid workspace"))
}

struct Mailbox {
    name: String,
    rx: mpsc::UnboundedReceiver<Outbound>,
    next: u64,
}

impl Mailbox {
    fn reply(&mut self) -> ReplyTo {
        self.next += 1;
        ReplyTo(format!("{}#{}", self.name, self.next))
    }

    /// The next message, or `None` after `ms` of silence.
    async fn recv(&mut self, ms: Millis) -> Option<Outbound> {
        tokio::time::timeout(Duration::from_millis(ms), self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

fn set_claim(sim: &Sim, id: &ClaimId, view: ClaimView) {
    sim.with(|st, at| {
        if let ClaimView::Ended(how) = &view {
            st.count(if how == "released" {
                "callers: claims released"
            } else {
                "callers: claims ended otherwise"
            });
        }
        st.step(at, format_args!("caller {id}: {view:?}"));
        st.claims.insert(id.clone(), view);
    });
}

/// One caller: claims, holds, renews, releases.
pub(crate) async fn claim(sim: Arc<Sim>, script: ClaimScript) {
    sim.until(script.at).await;
    let id = ClaimId::new(format!("c{}", script.n)).unwrap_or_else(|_| unreachable!("a valid id"));
    let ws = workspace();
    let req = ClaimRequest {
        claim_id: id.clone(),
        workspace: ws.clone(),
        pool: sim.plan.pool.name.clone(),
        requirements: Requirements {
            cpus: if script.large { 8 } else { 0 },
            ..Requirements::default()
        },
        priority: 0,
        lease_ttl_ms: script.lease_ttl_ms,
        max_wait_ms: script.max_wait_ms,
        recipient: script.sealed.then(|| RECIPIENT.to_owned()),
        affinity: script
            .affinity
            .and_then(|k| fleet_core::AffinityKey::new(format!("repo-{k}")).ok()),
    };
    let mut mb = Mailbox {
        name: format!("caller-{id}"),
        rx: sim.mailbox(&format!("caller-{id}"), Some(&id)),
        next: 0,
    };
    set_claim(&sim, &id, ClaimView::Asking);
    // Ask until granted or refused.
    let mut acked = false;
    let grant = 'ask: loop {
        let reply = mb.reply();
        sim.caller_send(
            &format!("{} request {id}", reply.0),
            Inbound::Claim {
                msg: ClaimMsg::Request(req.clone()),
                reply,
            },
        );
        loop {
            let wait = if acked { WAIT_RETRY_MS } else { RETRY_MS };
            match mb.recv(wait).await {
                None => continue 'ask,
                Some(Outbound::Claim(r)) => match r {
                    ClaimReply::Pending { .. } => acked = true,
                    ClaimReply::Granted(g) => break 'ask g,
                    ClaimReply::Revoked(r) => {
                        return revoked(&sim, &id, &r);
                    }
                    ClaimReply::Rejected { error, .. } => {
                        return set_claim(
                            &sim,
                            &id,
                            ClaimView::Ended(format!("rejected: {error:?}")),
                        );
                    }
                    // Late answers to earlier calls.
                    _ => {}
                },
                Some(_) => {}
            }
        }
    };
    set_claim(&sim, &id, ClaimView::Held(grant.node.clone()));
    // Hold, renewing at a third of the lease.
    let granted_at = sim.at();
    let release_at = granted_at + script.hold_ms;
    let renew_every = script.lease_ttl_ms / 3;
    let mut next_renew = granted_at + renew_every;
    let mut renewing = false;
    while sim.at() < release_at {
        let now = sim.at();
        if now >= next_renew {
            let reply = mb.reply();
            sim.caller_send(
                &format!("{} renew {id}", reply.0),
                Inbound::Claim {
                    msg: ClaimMsg::Renew {
                        workspace: ws.clone(),
                        claim_id: id.clone(),
                    },
                    reply,
                },
            );
            renewing = true;
            next_renew = now + RETRY_MS.min(renew_every);
        }
        let wait = next_renew.min(release_at).saturating_sub(now).max(1);
        match mb.recv(wait).await {
            Some(Outbound::Claim(ClaimReply::Renewed(r))) if renewing => {
                renewing = false;
                next_renew = sim.at() + renew_every;
                let _ = r;
            }
            Some(Outbound::Claim(ClaimReply::Revoked(r))) => {
                return revoked(&sim, &id, &r);
            }
            Some(Outbound::Claim(ClaimReply::Rejected { error, .. })) => {
                return ended_under(&sim, &id, &error, "renew");
            }
            _ => {}
        }
    }
    // Release until confirmed.
    loop {
        let reply = mb.reply();
        sim.caller_send(
            &format!("{} release {id}", reply.0),
            Inbound::Claim {
                msg: ClaimMsg::Release {
                    workspace: ws.clone(),
                    claim_id: id.clone(),
                },
                reply,
            },
        );
        let deadline = sim.at() + RETRY_MS;
        while sim.at() < deadline {
            match mb.recv(deadline - sim.at()).await {
                Some(Outbound::Claim(ClaimReply::Released { .. })) => {
                    return set_claim(&sim, &id, ClaimView::Ended("released".into()));
                }
                Some(Outbound::Claim(ClaimReply::Revoked(r))) => {
                    return revoked(&sim, &id, &r);
                }
                Some(Outbound::Claim(ClaimReply::Rejected { error, .. })) => {
                    return ended_under(&sim, &id, &error, "release");
                }
                None => break,
                _ => {}
            }
        }
    }
}

/// A renewal or release refused: the claim ended under its caller (fine,
/// with a reason) or the daemon forgot it (a lost claim).
/// The claim ended by a revocation.
fn revoked(sim: &Sim, id: &ClaimId, r: &Revocation) {
    set_claim(
        sim,
        id,
        ClaimView::Ended(format!("revoked: {:?}", r.reason)),
    );
}

fn ended_under(sim: &Sim, id: &ClaimId, error: &ClaimRejection, call: &str) {
    if matches!(error, ClaimRejection::UnknownClaim) {
        sim.with(|st, at| {
            st.violations(
                at,
                vec![format!(
                    "claim {id}: {call} answered unknown claim after the grant"
                )],
            );
        });
    }
    set_claim(
        sim,
        id,
        ClaimView::Ended(format!("{call} refused: {error:?}")),
    );
}

fn set_job(sim: &Sim, id: &JobId, view: JobView) {
    sim.with(|st, at| {
        st.step(at, format_args!("submitter {id}: {view:?}"));
        st.jobs.insert(id.clone(), view);
    });
}

/// A task `id` in the schedule's pool: `sleep <secs>`.
fn sleep_task(sim: &Sim, id: String, secs: u64) -> TaskSpec {
    TaskSpec {
        id: JobId::new(id).unwrap_or_else(|_| unreachable!("a valid id")),
        workspace: workspace(),
        pool: sim.plan.pool.name.clone(),
        argv: vec!["sleep".to_owned(), secs.to_string()],
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        retry: Default::default(),
        alert: None,
        scorer: None,
        priority: 0,
        requirements: Requirements::default(),
    }
}

/// One submitter: submits until accepted, then waits for the receipt.
pub(crate) async fn job(sim: Arc<Sim>, script: JobScript) {
    sim.until(script.at).await;
    let spec = sleep_task(&sim, format!("j{}", script.n), script.run_secs);
    let id = spec.id.clone();
    let mut mb = Mailbox {
        name: format!("submitter-{id}"),
        rx: sim.mailbox(&format!("submitter-{id}"), None),
        next: 0,
    };
    set_job(&sim, &id, JobView::Waiting);
    let mut accepted = false;
    loop {
        let reply = mb.reply();
        sim.caller_send(
            &format!("{} submit {id}", reply.0),
            Inbound::Job {
                msg: JobMsg::Submit(Box::new(spec.clone())),
                reply,
            },
        );
        let quiet = if accepted { JOB_QUIET_MS } else { RETRY_MS };
        while let Some(msg) = mb.recv(quiet).await {
            match msg {
                Outbound::Job(JobReply::Accepted { .. }) => accepted = true,
                Outbound::Job(JobReply::Finished(r)) => {
                    return set_job(&sim, &id, JobView::Finished(format!("{:?}", r.result)));
                }
                Outbound::Job(JobReply::Rejected { why, .. }) => {
                    sim.with(|st, at| {
                        st.violations(at, vec![format!("job {id} rejected: {why}")]);
                    });
                    return set_job(&sim, &id, JobView::Finished(format!("rejected: {why}")));
                }
                _ => {}
            }
        }
    }
}

/// One run's submitter: submits until it hears the run's status, then
/// waits for it to end (submitting again when quiet: a submit of the same
/// run is answered with its status).
pub(crate) async fn run(sim: Arc<Sim>, script: crate::plan::RunScript) {
    sim.until(script.at).await;
    let id = fleet_core::RunId::new(format!("r{}", script.n))
        .unwrap_or_else(|_| unreachable!("a valid id"));
    let tasks = script
        .tasks
        .iter()
        .enumerate()
        .map(|(i, secs)| sleep_task(&sim, format!("r{}-t{i}", script.n), *secs))
        .collect();
    let spec = fleet_core::protocol::RunSpec {
        id: id.clone(),
        workspace: workspace(),
        name: String::new(),
        labels: Default::default(),
        tasks,
        workers: Vec::new(),
        paused: false,
    };
    let name = format!("run-submitter-{id}");
    let mut mb = Mailbox {
        name: name.clone(),
        rx: sim.mailbox(&name, None),
        next: 0,
    };
    let set = |view: JobView| {
        sim.with(|st, at| {
            st.step(at, format_args!("run submitter {id}: {view:?}"));
            st.runs.insert(id.clone(), view);
        });
    };
    set(JobView::Waiting);
    let mut heard = false;
    loop {
        let reply = mb.reply();
        sim.caller_send(
            &format!("{} submit run {id}", reply.0),
            Inbound::Job {
                msg: JobMsg::SubmitRun(Box::new(spec.clone())),
                reply,
            },
        );
        let quiet = if heard { JOB_QUIET_MS } else { RETRY_MS };
        while let Some(msg) = mb.recv(quiet).await {
            match msg {
                Outbound::Job(JobReply::Run { status, .. }) => {
                    heard = true;
                    if status.is_terminal() {
                        return set(JobView::Finished(status.to_string()));
                    }
                }
                Outbound::Job(JobReply::Rejected { why, .. }) => {
                    sim.with(|st, at| {
                        st.violations(at, vec![format!("run {id} rejected: {why}")]);
                    });
                    return set(JobView::Finished(format!("rejected: {why}")));
                }
                _ => {}
            }
        }
    }
}
