//! Queue mode: the agent as a host-resident worker that takes specs from an
//! object-store prefix and hands each to a local supervisor — no daemon, no
//! database, no leader (seed 001, `cellos-fleet`).
//!
//! Layout under `<prefix>[/<queue name>]` (the objects are
//! `fleet_core::protocol::{QueueClaim, QueueRecord}`, PROTOCOL.md "Queue
//! mode objects"):
//!
//! ```text
//! pending/<spec-id>.json  → claimed/<spec-id>.json (spec + lease) → supervisor runs
//!                           → claimed/<spec-id>.json settled (+ result)
//!                           → completed/<spec-id>.json   (exit 0)
//!                           → failed/<spec-id>.json      (otherwise, with a reason)
//! ```
//!
//! A claim creates `claimed/<id>.json` only if it is absent, so of several
//! agents one gets the spec. Its holder renews the lease every
//! `renew_interval` by a conditional write on the version it last wrote; a
//! lost renewal means another agent took the spec over, and the holder
//! stops its supervisor. A lease not renewed by its expiry is taken over by
//! another agent (a conditional write too, fencing number + 1), which runs
//! the spec again; after `max_attempts` runs a lapsed spec is filed as
//! failed. The result is recorded only under the lease it ran with: the
//! holder settles the claim (the result written into it, conditionally),
//! and any agent files a settled claim (a create of the record, then the
//! claim's conditional delete) — so a run that comes back after losing its
//! lease records nothing, and a spec is filed once.
//!
//! The supervisor gets the spec on stdin and `FLEET_QUEUE_SPEC_ID`,
//! `FLEET_QUEUE_NODE_ID`, `FLEET_QUEUE_AGENT_ID` and `FLEET_QUEUE_FENCING`
//! in its environment; it runs in its own process group under a
//! [`guard`] that kills the group when the agent dies. With a pool id set,
//! specs whose `spec.placement.poolId` is another pool are left alone. A
//! heartbeat line is logged every interval; on SIGTERM no new spec is
//! claimed or taken over, the running one finishes, and a drain line is
//! logged.

pub mod config;
pub mod guard;
pub mod lease;
pub mod store;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fleet_core::ids::Millis;
use fleet_core::protocol::{
    MAX_QUEUE_RECORD_BYTES, MAX_QUEUE_SPEC_BYTES, QUEUE_AGENT_ID_ENV, QUEUE_FENCING_ENV,
    QUEUE_NODE_ID_ENV, QUEUE_SPEC_ID_ENV, QueueClaim, QueueOutcome, QueueRecord, decode_limited,
    encode,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

pub use config::{Backend, QueueConfig, QueueConfigError};
use lease::{Found, Rules};
use store::{ObjectStore, StoreError, Version};

/// What became of one spec this agent took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Filed under `completed/`: the supervisor exited 0.
    Completed(String),
    /// Filed under `failed/`: it exited otherwise, could not start, the
    /// spec was not runnable, or its lease lapsed too often.
    Failed(String),
    /// Nothing recorded: the lease was taken over (or lapsed unrenewed)
    /// before the result could be; the spec is another agent's now.
    Lost(String),
}

/// Whether `spec` may run in `pool`: no pool set on either side, or the same.
pub fn placement_allows(spec: &serde_json::Value, pool: Option<&str>) -> bool {
    match (
        pool,
        spec.pointer("/spec/placement/poolId")
            .and_then(|p| p.as_str()),
    ) {
        (Some(mine), Some(wanted)) => mine == wanted,
        _ => true,
    }
}

/// Wall-clock milliseconds since the Unix epoch (leases compare clocks of
/// different hosts: keep them synchronised well within a lease).
fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The spec id of `key` (`…/<id>.json`).
fn spec_id(key: &str) -> Option<&str> {
    key.rsplit('/')
        .next()
        .and_then(|n| n.strip_suffix(".json"))
        .filter(|n| !n.is_empty())
}

/// `keys` from a random place on, so agents polling together do not all
/// race for the first one.
fn rotated(mut keys: Vec<String>) -> Vec<String> {
    if !keys.is_empty() {
        let at = fastrand::usize(..keys.len());
        keys.rotate_left(at);
    }
    keys
}

/// Takes specs from `store` and runs them until `stop` turns true, then
/// returns (after the running one finished).
pub async fn run(
    cfg: &QueueConfig,
    store: Arc<dyn ObjectStore>,
    stop: watch::Receiver<bool>,
) -> Vec<Outcome> {
    let agent = Agent {
        cfg,
        store: &*store,
        id: format!("{}/{}", cfg.node_id, std::process::id()),
        rules: Rules {
            lease_ms: u64::try_from(cfg.lease.as_millis()).unwrap_or(u64::MAX),
            max_attempts: cfg.max_attempts,
            take_over: cfg.take_over,
        },
        running: Arc::default(),
        unreadable: Mutex::default(),
        stop,
    };
    let heartbeat = {
        let (node, every, running) = (
            cfg.node_id.clone(),
            cfg.heartbeat_interval,
            agent.running.clone(),
        );
        let mut stop = agent.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let spec = running.lock().map(|r| r.clone()).unwrap_or_default();
                        tracing::info!(node = %node, state = if spec.is_some() { "running" } else { "idle" }, spec = spec.as_deref().unwrap_or("-"), "fleet queue agent heartbeat");
                    }
                    _ = stop.changed() => return,
                }
            }
        })
    };
    tracing::info!(agent = %agent.id, lease_ms = agent.rules.lease_ms, renew_ms = u64::try_from(cfg.renew_interval.as_millis()).unwrap_or(u64::MAX), take_over = cfg.take_over, max_attempts = cfg.max_attempts, "fleet queue agent ready");
    let mut outcomes = Vec::new();
    let mut scanned: Option<Instant> = None;
    while !agent.stopping() {
        let mut done = None;
        // Lapsed and settled claims, at most once per renew interval.
        if scanned.is_none_or(|t| t.elapsed() >= cfg.renew_interval) {
            scanned = Some(Instant::now());
            match agent.scan_claimed().await {
                Ok(o) => done = o,
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "looking at claimed specs failed; retrying")
                }
            }
        }
        if done.is_none() {
            match agent.next_pending().await {
                Ok(o) => done = o,
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "queue poll failed; retrying")
                }
            }
        }
        if let Some(outcome) = done {
            outcomes.push(outcome);
            continue; // more may be waiting: look again at once
        }
        let mut stop = agent.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(cfg.poll_interval) => {}
            _ = stop.changed() => {}
        }
    }
    heartbeat.abort();
    tracing::info!(node = %cfg.node_id, ran = outcomes.len(), "fleet queue agent drained: no spec claimed or running; exiting");
    outcomes
}

/// One agent's view: its settings, store and identity.
struct Agent<'a> {
    cfg: &'a QueueConfig,
    store: &'a dyn ObjectStore,
    /// `<node id>/<pid>`: the holder named in leases and records.
    id: String,
    rules: Rules,
    /// The spec being run, for the heartbeat.
    running: Arc<Mutex<Option<String>>>,
    /// Claimed objects already reported as unreadable (logged once each).
    unreadable: Mutex<HashSet<String>>,
    stop: watch::Receiver<bool>,
}

/// A claim this agent holds, at the version it last wrote.
struct Held {
    key: String,
    claim: QueueClaim,
    version: Version,
}

impl Agent<'_> {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn key(&self, state: &str, id: &str) -> String {
        format!("{}{id}.json", self.cfg.dir(state))
    }

    fn encode(claim: &QueueClaim) -> Result<Vec<u8>, StoreError> {
        encode(claim).map_err(|e| StoreError::Io(format!("encoding a claim: {e}")))
    }

    /// Files settled claims, takes over one lapsed claim and runs it.
    async fn scan_claimed(&self) -> Result<Option<Outcome>, StoreError> {
        for key in rotated(self.store.list(&self.cfg.dir("claimed")).await?) {
            if spec_id(&key).is_none() {
                continue;
            }
            let object = match self.store.get(&key, MAX_QUEUE_RECORD_BYTES).await {
                Ok(o) => o,
                Err(StoreError::NotFound(_)) => continue, // filed meanwhile
                Err(e @ StoreError::TooLarge { .. }) => {
                    self.unreadable(&key, &e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let claim: QueueClaim = match decode_limited(&object.body, MAX_QUEUE_RECORD_BYTES) {
                Ok(c) => c,
                Err(e) => {
                    self.unreadable(&key, &e.to_string());
                    continue;
                }
            };
            let held = Held {
                key,
                claim,
                version: object.version,
            };
            match lease::found(&held.claim, &self.id, now_ms(), &self.rules) {
                Found::Held { .. } => {}
                Found::Lapsed => {
                    tracing::debug!(spec = %held.claim.spec_id, holder = %held.claim.lease.agent, "lease lapsed; take-over is off here");
                }
                Found::File(record) => self.file(&held, &record).await?,
                Found::TakeOver(next) | Found::GiveUp(next) if !self.stopping() => {
                    let Some(version) = self
                        .store
                        .replace(&held.key, &Self::encode(&next)?, &held.version)
                        .await?
                    else {
                        continue; // another agent acted on it first
                    };
                    tracing::warn!(spec = %next.spec_id, from = %held.claim.lease.agent, fencing = next.lease.fencing, expired_at = held.claim.lease.expires_at, settled = next.result.is_some(), "took over a lapsed lease");
                    let next = Held {
                        key: held.key,
                        claim: next,
                        version,
                    };
                    if let Some(outcome) = self.start(next).await? {
                        return Ok(Some(outcome));
                    }
                }
                Found::TakeOver(_) | Found::GiveUp(_) => {}
            }
        }
        Ok(None)
    }

    fn unreadable(&self, key: &str, why: &str) {
        let first = self
            .unreadable
            .lock()
            .map(|mut seen| seen.insert(key.to_owned()))
            .unwrap_or(true);
        if first {
            tracing::error!(
                key,
                error = why,
                "a claimed object is not a fleet claim; left for an operator"
            );
        }
    }

    /// Claims the first pending spec this agent may take and runs it;
    /// `None` when there is none.
    async fn next_pending(&self) -> Result<Option<Outcome>, StoreError> {
        for key in rotated(self.store.list(&self.cfg.dir("pending")).await?) {
            if self.stopping() {
                return Ok(None);
            }
            let Some(id) = spec_id(&key) else {
                continue;
            };
            let now = now_ms();
            let claim = match self.store.get(&key, MAX_QUEUE_SPEC_BYTES).await {
                Ok(object) => match serde_json::from_slice::<serde_json::Value>(&object.body) {
                    Ok(spec) if placement_allows(&spec, self.cfg.pool_id.as_deref()) => {
                        lease::claim(id, spec, &self.id, now, &self.rules)
                    }
                    Ok(_) => continue, // another pool's
                    Err(e) => {
                        let text = String::from_utf8_lossy(&object.body).into_owned();
                        tracing::error!(spec = %id, error = %e, "spec is not JSON: filed as failed without running");
                        let reason = format!("the spec is not JSON: {e}");
                        lease::refused(id, text.into(), &self.id, now, reason, &self.rules)
                    }
                },
                Err(StoreError::NotFound(_)) => continue, // claimed meanwhile
                Err(e @ StoreError::TooLarge { .. }) => {
                    tracing::error!(spec = %id, error = %e, "spec too large: filed as failed without running");
                    let reason = format!("the spec is too large: {e}");
                    let spec = serde_json::Value::Null;
                    lease::refused(id, spec, &self.id, now, reason, &self.rules)
                }
                Err(e) => return Err(e),
            };
            let claimed = self.key("claimed", id);
            let Some(version) = self.store.create(&claimed, &Self::encode(&claim)?).await? else {
                continue; // another agent won it
            };
            tracing::info!(spec = %id, agent = %self.id, "claimed");
            let held = Held {
                key: claimed,
                claim,
                version,
            };
            if let Some(outcome) = self.start(held).await? {
                return Ok(Some(outcome));
            }
        }
        Ok(None)
    }

    /// Whether `id` has a record already.
    async fn filed(&self, id: &str) -> Result<Option<&'static str>, StoreError> {
        for state in ["completed", "failed"] {
            match self
                .store
                .get(&self.key(state, id), MAX_QUEUE_RECORD_BYTES)
                .await
            {
                Ok(_) | Err(StoreError::TooLarge { .. }) => return Ok(Some(state)),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Runs (or files) a claim this agent just created or took over.
    async fn start(&self, held: Held) -> Result<Option<Outcome>, StoreError> {
        let id = held.claim.spec_id.clone();
        // The pending object is gone once claimed; one left by an agent that
        // died in between has a claim, and the claim is only deleted after
        // the spec was filed. So a record here means this claim came from
        // such a leftover (or a reused id): drop it, do not run again.
        if let Some(state) = self.filed(&id).await? {
            tracing::warn!(spec = %id, state, "spec already filed: a leftover pending copy; removed without running");
            self.store.delete_if(&held.key, &held.version).await?;
            self.store.delete(&self.key("pending", &id)).await?;
            return Ok(None);
        }
        if let Err(e) = self.store.delete(&self.key("pending", &id)).await {
            // The claim stands; the leftover is dropped when seen again.
            tracing::warn!(spec = %id, error = %e, "could not remove the pending copy of a claimed spec");
        }
        if let Some(record) = held.claim.record() {
            self.file(&held, &record).await?;
            return Ok(Some(Outcome::Failed(id)));
        }
        if let Ok(mut r) = self.running.lock() {
            *r = Some(format!("{id} (fencing {})", held.claim.lease.fencing));
        }
        let outcome = self.supervise(held).await;
        if let Ok(mut r) = self.running.lock() {
            *r = None;
        }
        Ok(Some(outcome))
    }

    /// Files a settled claim: creates its record if absent (a spec is filed
    /// once), then deletes the claim if it is still that version.
    async fn file(&self, held: &Held, record: &QueueRecord) -> Result<(), StoreError> {
        let state = record.outcome.dir();
        let key = self.key(state, &record.spec_id);
        let body = encode(record).map_err(|e| StoreError::Io(format!("encoding a record: {e}")))?;
        if self.store.create(&key, &body).await?.is_some() {
            tracing::info!(spec = %record.spec_id, state, agent = %record.agent, fencing = record.fencing, "filed");
        } else {
            tracing::info!(spec = %record.spec_id, state, "already filed");
        }
        self.store.delete_if(&held.key, &held.version).await?;
        Ok(())
    }

    /// Runs the supervisor under the lease, renewing it; settles and files
    /// the result if the lease still holds.
    async fn supervise(&self, mut held: Held) -> Outcome {
        let id = held.claim.spec_id.clone();
        let fencing = held.claim.lease.fencing;
        let started_at = now_ms();
        let outcome = match Supervisor::start(self, &held.claim) {
            Err(e) => {
                tracing::error!(spec = %id, guard = %self.cfg.guard.display(), error = %e, "the supervisor did not start");
                QueueOutcome::Failed {
                    exit_code: None,
                    reason: format!("the supervisor did not start: {e}"),
                }
            }
            Ok(mut sup) => {
                // A failed renewal is retried sooner.
                let retry = (self.cfg.renew_interval / 4).max(Duration::from_millis(50));
                let mut wait = self.cfg.renew_interval;
                let status = loop {
                    tokio::select! {
                        status = sup.child.wait() => break status,
                        () = tokio::time::sleep(wait) => {}
                    }
                    let next = lease::renew(&held.claim, now_ms(), &self.rules);
                    let written = match Self::encode(&next) {
                        Ok(body) => self.store.replace(&held.key, &body, &held.version).await,
                        Err(e) => Err(e),
                    };
                    match written {
                        Ok(Some(version)) => {
                            held.claim = next;
                            held.version = version;
                            wait = self.cfg.renew_interval;
                        }
                        Ok(None) => {
                            tracing::warn!(spec = %id, fencing, "lease lost: another agent took the spec over; stopping the supervisor, recording nothing");
                            sup.stop().await;
                            return Outcome::Lost(id);
                        }
                        Err(e) if now_ms() > held.claim.lease.expires_at => {
                            tracing::warn!(spec = %id, fencing, error = %e, "lease lapsed unrenewed (it may run elsewhere now); stopping the supervisor");
                            sup.stop().await;
                            return Outcome::Lost(id);
                        }
                        Err(e) => {
                            tracing::warn!(spec = %id, fencing, error = %e, "lease renewal failed; retrying");
                            wait = retry;
                        }
                    }
                };
                sup.waited();
                outcome_of(&status)
            }
        };
        let ended_at = now_ms();
        tracing::info!(spec = %id, fencing, state = outcome.dir(), ?outcome, "supervisor ended");
        let settled = lease::settle(&held.claim, outcome, started_at, ended_at);
        // Recorded only if the lease still holds: the same version.
        let give_up = held
            .claim
            .lease
            .expires_at
            .saturating_add(self.rules.lease_ms);
        let version = loop {
            let written = match Self::encode(&settled) {
                Ok(body) => self.store.replace(&held.key, &body, &held.version).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(Some(v)) => break v,
                Ok(None) => {
                    tracing::warn!(spec = %id, fencing, "result not recorded: the lease was taken over while the supervisor ran");
                    return Outcome::Lost(id);
                }
                Err(e) if now_ms() > give_up => {
                    tracing::error!(spec = %id, fencing, error = %e, "result not recorded: the store failed until the lease was long gone");
                    return Outcome::Lost(id);
                }
                Err(e) => {
                    tracing::warn!(spec = %id, fencing, error = %e, "recording the result failed; retrying");
                    tokio::time::sleep(self.cfg.poll_interval.min(Duration::from_millis(500)))
                        .await;
                }
            }
        };
        let settled = Held {
            key: held.key,
            claim: settled,
            version,
        };
        let failed = matches!(
            settled.claim.result.as_ref().map(|r| &r.outcome),
            Some(QueueOutcome::Failed { .. })
        );
        if let Some(record) = settled.claim.record()
            && let Err(e) = self.file(&settled, &record).await
        {
            // Settled: any agent files it later.
            tracing::warn!(spec = %id, error = %e, "filing failed; the settled claim is filed later");
        }
        if failed {
            Outcome::Failed(id)
        } else {
            Outcome::Completed(id)
        }
    }
}

/// The supervisor's outcome from the guard's exit status.
fn outcome_of(status: &std::io::Result<std::process::ExitStatus>) -> QueueOutcome {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) if s.success() => QueueOutcome::Completed { exit_code: 0 },
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) if code == i32::from(guard::NOT_STARTED) => QueueOutcome::Failed {
                exit_code: Some(code),
                reason: format!(
                    "the supervisor exited with {code} (it could not be started; see the agent's log)"
                ),
            },
            (Some(code), _) => QueueOutcome::Failed {
                exit_code: Some(code),
                reason: format!("the supervisor exited with {code}"),
            },
            (None, Some(sig)) => QueueOutcome::Failed {
                exit_code: None,
                reason: format!(
                    "the supervisor was killed by {}",
                    Signal::try_from(sig)
                        .map_or_else(|_| format!("signal {sig}"), |s| s.to_string())
                ),
            },
            (None, None) => QueueOutcome::Failed {
                exit_code: None,
                reason: format!("the supervisor ended: {s}"),
            },
        },
        Err(e) => QueueOutcome::Failed {
            exit_code: None,
            reason: format!("waiting for the supervisor failed: {e}"),
        },
    }
}

/// A running supervisor: the guard process.
struct Supervisor {
    child: tokio::process::Child,
    pid: Option<Pid>,
}

impl Supervisor {
    /// Starts the guard (which starts the supervisor) with the spec on stdin.
    fn start(agent: &Agent<'_>, claim: &QueueClaim) -> std::io::Result<Supervisor> {
        let spec = serde_json::to_vec(&claim.spec)?;
        let mut child = tokio::process::Command::new(&agent.cfg.guard)
            .arg(guard::GUARD_COMMAND)
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--")
            .arg(&agent.cfg.supervisor)
            .env(QUEUE_SPEC_ID_ENV, &claim.spec_id)
            .env(QUEUE_NODE_ID_ENV, &agent.cfg.node_id)
            .env(QUEUE_AGENT_ID_ENV, &claim.lease.agent)
            .env(QUEUE_FENCING_ENV, claim.lease.fencing.to_string())
            .stdin(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        if let Some(mut stdin) = child.stdin.take() {
            let id = claim.spec_id.clone();
            // Apart from the wait: a supervisor that does not read its
            // stdin must not hold up the lease renewals.
            tokio::spawn(async move {
                if let Err(e) = stdin.write_all(&spec).await {
                    tracing::warn!(spec = %id, error = %e, "the supervisor did not read the whole spec");
                }
            });
        }
        Ok(Supervisor { child, pid })
    }

    /// Asks the guard to kill the supervisor's group, and waits for it.
    async fn stop(&mut self) {
        self.signal();
        let _ = self.child.wait().await;
        self.waited();
    }

    fn signal(&self) {
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGTERM);
        }
    }

    /// The guard was reaped: its pid may be reused, never signal it again.
    fn waited(&mut self) {
        self.pid = None;
    }
}

impl Drop for Supervisor {
    /// The run is abandoned (the agent is shutting down): the guard kills
    /// the group (SIGKILL to the guard would leave the group behind).
    fn drop(&mut self) {
        self.signal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_gate_only_refuses_a_spec_for_another_pool() {
        let spec = |p: Option<&str>| match p {
            Some(p) => serde_json::json!({"spec": {"placement": {"poolId": p}}}),
            None => serde_json::json!({"spec": {}}),
        };
        assert!(placement_allows(&spec(None), Some("gpu")));
        assert!(placement_allows(&spec(Some("gpu")), Some("gpu")));
        assert!(!placement_allows(&spec(Some("cpu")), Some("gpu")));
        assert!(placement_allows(&spec(Some("cpu")), None));
    }

    #[test]
    fn exit_statuses_become_outcomes_with_reasons() {
        use std::os::unix::process::ExitStatusExt;
        let of = |raw: i32| outcome_of(&Ok(std::process::ExitStatus::from_raw(raw)));
        assert_eq!(of(0), QueueOutcome::Completed { exit_code: 0 });
        assert_eq!(
            of(3 << 8),
            QueueOutcome::Failed {
                exit_code: Some(3),
                reason: "the supervisor exited with 3".into()
            }
        );
        assert_eq!(
            of(9),
            QueueOutcome::Failed {
                exit_code: None,
                reason: "the supervisor was killed by SIGKILL".into()
            }
        );
        assert!(
            matches!(of(127 << 8), QueueOutcome::Failed { exit_code: Some(127), reason } if reason.contains("could not be started"))
        );
    }

    #[test]
    fn spec_ids_are_object_names_without_json() {
        assert_eq!(spec_id("fleet/pending/a b.json"), Some("a b"));
        assert_eq!(spec_id("fleet/pending/.json"), None);
        assert_eq!(spec_id("fleet/pending/x.txt"), None);
    }
}
