//! Queue mode: the agent as a host-resident worker that takes specs from an
//! object-store prefix and hands each to a local supervisor — no daemon, no
//! database, no leader (seed 001, `cellos-fleet`).
//!
//! Layout under `<prefix>[/<queue name>]`:
//!
//! ```text
//! pending/<spec-id>.json  → claimed/<spec-id>.json → supervisor runs
//!                           → completed/<spec-id>.json   (exit 0)
//!                           → failed/<spec-id>.json      (exit ≠ 0, or a spec
//!                                                         that is not JSON)
//! ```
//!
//! A claim creates `claimed/<id>.json` only if it does not exist (a hard
//! link in a directory, `If-None-Match: *` on S3), so of several agents
//! exactly one runs a spec; the pending object is removed after. The
//! supervisor gets the spec on stdin and `FLEET_QUEUE_SPEC_ID`,
//! `FLEET_QUEUE_NODE_ID` in its environment. With a pool id set, specs whose
//! `spec.placement.poolId` is set to another pool are left alone. A
//! heartbeat line is logged every interval; on SIGTERM no new spec is
//! claimed, the running one finishes, and a drain line is logged.
//!
//! A spec left in `claimed/` by an agent that died stays there for an
//! operator: re-running it automatically could run it twice.

pub mod store;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use store::{ObjectStore, StoreError};

/// Where the specs are.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// A directory (local, or a shared mount).
    Dir(std::path::PathBuf),
    /// An S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// Its region (`AWS_REGION`; else the SDK's region chain).
        region: Option<String>,
        /// An endpoint overriding the region's (`AWS_ENDPOINT_URL_S3`,
        /// `AWS_ENDPOINT_URL`: an S3-compatible store or an emulator).
        endpoint: Option<String>,
    },
}

/// Queue mode settings, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// The store.
    pub backend: Backend,
    /// Key prefix (default `fleet`).
    pub prefix: String,
    /// Optional lane under the prefix.
    pub queue_name: Option<String>,
    /// Only specs for this pool (or for no pool in particular).
    pub pool_id: Option<String>,
    /// The supervisor executable.
    pub supervisor: String,
    /// Poll cadence.
    pub poll_interval: Duration,
    /// Heartbeat cadence.
    pub heartbeat_interval: Duration,
    /// This node's name in logs.
    pub node_id: String,
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {why}")]
pub struct QueueConfigError {
    /// The variable.
    pub var: String,
    /// What is wrong.
    pub why: String,
}

/// Each setting's variable and the seed's alias.
const VARS: [(&str, &str); 9] = [
    ("FLEET_QUEUE_BUCKET", "CELLOS_FLEET_BUCKET"),
    ("FLEET_QUEUE_DIR", "CELLOS_FLEET_DIR"),
    ("FLEET_QUEUE_PREFIX", "CELLOS_FLEET_PREFIX"),
    ("FLEET_QUEUE_NAME", "CELLOS_FLEET_QUEUE_NAME"),
    ("FLEET_QUEUE_POOL_ID", "CELLOS_FLEET_POOL_ID"),
    ("FLEET_QUEUE_SUPERVISOR", "CELLOS_FLEET_SUPERVISOR"),
    (
        "FLEET_QUEUE_POLL_INTERVAL_MS",
        "CELLOS_FLEET_POLL_INTERVAL_MS",
    ),
    (
        "FLEET_QUEUE_HEARTBEAT_INTERVAL_MS",
        "CELLOS_FLEET_HEARTBEAT_INTERVAL_MS",
    ),
    ("FLEET_QUEUE_NODE_ID", "CELLOS_FLEET_NODE_ID"),
];

impl QueueConfig {
    /// Whether the environment asks for queue mode (a bucket or a directory).
    pub fn requested(env: &BTreeMap<String, String>) -> bool {
        VARS[..2]
            .iter()
            .any(|(a, b)| env.contains_key(*a) || env.contains_key(*b))
    }

    /// Reads the settings from `env` (the `CELLOS_FLEET_*` names are
    /// accepted for each `FLEET_QUEUE_*` one).
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<QueueConfig, QueueConfigError> {
        let get = |i: usize| -> Option<(String, &str)> {
            let (name, alias) = VARS[i];
            env.get(name)
                .map(|v| (name.to_owned(), v.as_str()))
                .or_else(|| env.get(alias).map(|v| (alias.to_owned(), v.as_str())))
                .filter(|(_, v)| !v.trim().is_empty())
        };
        let err = |var: &str, why: &str| QueueConfigError {
            var: var.to_owned(),
            why: why.to_owned(),
        };
        let ms = |i: usize, default: u64| -> Result<Duration, QueueConfigError> {
            match get(i) {
                None => Ok(Duration::from_millis(default)),
                Some((var, v)) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Duration::from_millis(n)),
                    _ => Err(err(&var, "must be a positive number of milliseconds")),
                },
            }
        };
        let backend = match (get(0), get(1)) {
            (Some((var, _)), Some((other, _))) => {
                return Err(err(
                    &var,
                    &format!("set a bucket or a directory ({other}), not both"),
                ));
            }
            (Some((_, bucket)), None) => {
                let set = |k: &str| env.get(k).filter(|v| !v.trim().is_empty()).cloned();
                let region = set("AWS_REGION").or_else(|| set("AWS_DEFAULT_REGION"));
                let endpoint = set("AWS_ENDPOINT_URL_S3").or_else(|| set("AWS_ENDPOINT_URL"));
                Backend::S3 {
                    bucket: bucket.trim().to_owned(),
                    region,
                    endpoint,
                }
            }
            (None, Some((_, dir))) => Backend::Dir(dir.trim().into()),
            (None, None) => {
                return Err(err(
                    "FLEET_QUEUE_BUCKET",
                    "set a bucket (or FLEET_QUEUE_DIR for a directory)",
                ));
            }
        };
        let token = |i: usize, default: &str| -> Result<Option<String>, QueueConfigError> {
            match get(i) {
                None => Ok((!default.is_empty()).then(|| default.to_owned())),
                Some((var, v)) => {
                    let v = v.trim().trim_matches('/');
                    if v.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
                        Err(err(&var, "must be a plain key path"))
                    } else {
                        Ok(Some(v.to_owned()))
                    }
                }
            }
        };
        Ok(QueueConfig {
            backend,
            prefix: token(2, "fleet")?.unwrap_or_default(),
            queue_name: token(3, "")?,
            pool_id: get(4).map(|(_, v)| v.trim().to_owned()),
            supervisor: get(5)
                .map_or_else(|| "cellos-supervisor".to_owned(), |(_, v)| v.to_owned()),
            poll_interval: ms(6, 5_000)?,
            heartbeat_interval: ms(7, 30_000)?,
            node_id: get(8).map_or_else(hostname, |(_, v)| v.trim().to_owned()),
        })
    }

    /// `<prefix>[/<queue>]/<state>/`.
    pub fn dir(&self, state: &str) -> String {
        match &self.queue_name {
            Some(q) => format!("{}/{q}/{state}/", self.prefix),
            None => format!("{}/{state}/", self.prefix),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What became of one spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The supervisor exited 0.
    Completed(String),
    /// It exited otherwise, could not start, or the spec was not JSON.
    Failed(String),
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

/// Takes specs from `store` and runs them until `stop` turns true, then
/// returns (after the running one finished).
pub async fn run(
    cfg: &QueueConfig,
    store: Arc<dyn ObjectStore>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Outcome> {
    let running: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let heartbeat = {
        let (node, every, running) = (cfg.node_id.clone(), cfg.heartbeat_interval, running.clone());
        let mut stop = stop.clone();
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
    let mut outcomes = Vec::new();
    while !*stop.borrow() {
        match next(cfg, &*store, &running).await {
            Ok(Some(outcome)) => {
                outcomes.push(outcome);
                continue; // more may be waiting: look again at once
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "queue poll failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.poll_interval) => {}
            _ = stop.changed() => {}
        }
    }
    heartbeat.abort();
    tracing::info!(node = %cfg.node_id, ran = outcomes.len(), "fleet queue agent drained: no spec claimed or running; exiting");
    outcomes
}

/// Claims and runs the first spec this agent may take; `None` when there is none.
async fn next(
    cfg: &QueueConfig,
    store: &dyn ObjectStore,
    running: &std::sync::Mutex<Option<String>>,
) -> Result<Option<Outcome>, StoreError> {
    for key in store.list(&cfg.dir("pending")).await? {
        let Some(id) = key
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
        else {
            continue;
        };
        let body = match store.get(&key).await {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => continue, // claimed meanwhile
            Err(e) => return Err(e),
        };
        let spec: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if spec
            .as_ref()
            .is_some_and(|s| !placement_allows(s, cfg.pool_id.as_deref()))
        {
            continue;
        }
        let claimed = format!("{}{id}.json", cfg.dir("claimed"));
        if !store.create(&claimed, &body).await? {
            continue; // another agent won it
        }
        store.delete(&key).await?;
        tracing::info!(spec = %id, node = %cfg.node_id, "claimed");
        if let Ok(mut r) = running.lock() {
            *r = Some(id.clone());
        }
        let ok = match &spec {
            None => {
                tracing::error!(spec = %id, "spec is not JSON: marked failed without running");
                false
            }
            Some(_) => supervise(cfg, &id, &body).await,
        };
        if let Ok(mut r) = running.lock() {
            *r = None;
        }
        let state = if ok { "completed" } else { "failed" };
        store
            .put(&format!("{}{id}.json", cfg.dir(state)), &body)
            .await?;
        store.delete(&claimed).await?;
        tracing::info!(spec = %id, state, "done");
        return Ok(Some(if ok {
            Outcome::Completed(id)
        } else {
            Outcome::Failed(id)
        }));
    }
    Ok(None)
}

/// Runs the supervisor with the spec on stdin; whether it exited 0.
async fn supervise(cfg: &QueueConfig, id: &str, spec: &[u8]) -> bool {
    let child = tokio::process::Command::new(&cfg.supervisor)
        .env("FLEET_QUEUE_SPEC_ID", id)
        .env("FLEET_QUEUE_NODE_ID", &cfg.node_id)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(spec = %id, supervisor = %cfg.supervisor, error = %e, "the supervisor did not start");
            return false;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(spec).await {
            tracing::warn!(spec = %id, error = %e, "the supervisor did not read the whole spec");
        }
        drop(stdin);
    }
    match child.wait().await {
        Ok(status) => {
            tracing::info!(spec = %id, code = ?status.code(), "supervisor exited");
            status.success()
        }
        Err(e) => {
            tracing::error!(spec = %id, error = %e, "waiting for the supervisor failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn settings_come_from_the_environment_with_the_seed_aliases() {
        let cfg = QueueConfig::from_env(&env(&[
            ("CELLOS_FLEET_BUCKET", "cellos-prod"),
            ("CELLOS_FLEET_QUEUE_NAME", "gpu-pool"),
            ("CELLOS_FLEET_POOL_ID", "gpu-a100"),
            (
                "CELLOS_FLEET_SUPERVISOR",
                "/opt/cellos/bin/cellos-supervisor",
            ),
            ("AWS_REGION", "us-west-2"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.backend,
            Backend::S3 {
                bucket: "cellos-prod".into(),
                region: Some("us-west-2".into()),
                endpoint: None
            }
        );
        assert_eq!(cfg.dir("pending"), "fleet/gpu-pool/pending/");
        assert_eq!(cfg.pool_id.as_deref(), Some("gpu-a100"));
        assert_eq!(cfg.poll_interval, Duration::from_secs(5));
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(30));
        // The fleet names win over the aliases.
        let cfg = QueueConfig::from_env(&env(&[
            ("FLEET_QUEUE_DIR", "/srv/q"),
            ("FLEET_QUEUE_PREFIX", "jobs"),
            ("CELLOS_FLEET_PREFIX", "ignored"),
            ("FLEET_QUEUE_POLL_INTERVAL_MS", "250"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.backend, Backend::Dir("/srv/q".into()));
        assert_eq!(cfg.dir("claimed"), "jobs/claimed/");
        assert_eq!(cfg.poll_interval, Duration::from_millis(250));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (pairs, var) in [
            (vec![], "FLEET_QUEUE_BUCKET"),
            (
                vec![("FLEET_QUEUE_BUCKET", "b"), ("FLEET_QUEUE_DIR", "/d")],
                "FLEET_QUEUE_BUCKET",
            ),
            (
                vec![
                    ("FLEET_QUEUE_DIR", "/d"),
                    ("CELLOS_FLEET_POLL_INTERVAL_MS", "soon"),
                ],
                "CELLOS_FLEET_POLL_INTERVAL_MS",
            ),
            (
                vec![("FLEET_QUEUE_DIR", "/d"), ("FLEET_QUEUE_PREFIX", "a/../b")],
                "FLEET_QUEUE_PREFIX",
            ),
        ] {
            let e = QueueConfig::from_env(&env(&pairs))
                .err()
                .unwrap_or_else(|| panic!("{pairs:?}"));
            assert_eq!(e.var, var, "{e}");
        }
        assert!(!QueueConfig::requested(&env(&[("HOME", "/root")])));
        assert!(QueueConfig::requested(&env(&[(
            "CELLOS_FLEET_BUCKET",
            "b"
        )])));
    }

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
}
