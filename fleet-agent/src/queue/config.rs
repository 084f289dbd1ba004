//! Queue mode's settings, from the environment: each `FLEET_QUEUE_*`
//! variable is also read under the seed's `CELLOS_FLEET_*` name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Where the specs are.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// A directory (local, or a shared mount).
    Dir(PathBuf),
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
    /// This node's name in logs and leases.
    pub node_id: String,
    /// How long a lease lasts unless renewed (default 60 s).
    pub lease: Duration,
    /// How often the holder renews it, and how often `claimed/` is looked
    /// at for lapsed and settled claims (default a third of the lease).
    pub renew_interval: Duration,
    /// Whether this agent takes over specs whose lease lapsed (default yes).
    pub take_over: bool,
    /// Runs a spec gets before a lapsed lease files it as failed (default 3).
    pub max_attempts: u64,
    /// The program that starts the supervisor in its own process group and
    /// kills that group when the agent dies: this agent's own executable
    /// (`fleet-agent queue-guard`, see [`super::guard`]).
    pub guard: PathBuf,
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
const VARS: [(&str, &str); 13] = [
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
    ("FLEET_QUEUE_LEASE_MS", "CELLOS_FLEET_LEASE_MS"),
    (
        "FLEET_QUEUE_RENEW_INTERVAL_MS",
        "CELLOS_FLEET_RENEW_INTERVAL_MS",
    ),
    ("FLEET_QUEUE_TAKE_OVER", "CELLOS_FLEET_TAKE_OVER"),
    ("FLEET_QUEUE_MAX_ATTEMPTS", "CELLOS_FLEET_MAX_ATTEMPTS"),
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
        // The variable that is set (the fleet name wins) and its value.
        let get = |name: &str| -> Option<(String, &str)> {
            let alias = VARS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(name, |(_, a)| *a);
            env.get(name)
                .map(|v| (name.to_owned(), v.as_str()))
                .or_else(|| env.get(alias).map(|v| (alias.to_owned(), v.as_str())))
                .filter(|(_, v)| !v.trim().is_empty())
        };
        let err = |var: &str, why: &str| QueueConfigError {
            var: var.to_owned(),
            why: why.to_owned(),
        };
        let positive = |name: &str| -> Result<Option<(String, u64)>, QueueConfigError> {
            match get(name) {
                None => Ok(None),
                Some((var, v)) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some((var, n))),
                    _ => Err(err(&var, "must be a positive whole number")),
                },
            }
        };
        let ms = |name: &str, default: u64| -> Result<Duration, QueueConfigError> {
            Ok(Duration::from_millis(
                positive(name)?.map_or(default, |(_, n)| n),
            ))
        };
        let backend = match (get("FLEET_QUEUE_BUCKET"), get("FLEET_QUEUE_DIR")) {
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
        let token = |name: &str, default: &str| -> Result<Option<String>, QueueConfigError> {
            match get(name) {
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
        let lease = ms("FLEET_QUEUE_LEASE_MS", 60_000)?;
        let renew_interval = match positive("FLEET_QUEUE_RENEW_INTERVAL_MS")? {
            None => lease / 3,
            Some((var, n)) if Duration::from_millis(n) >= lease => {
                return Err(err(
                    &var,
                    &format!(
                        "must be shorter than the lease ({} ms): a lease renewed less often lapses",
                        lease.as_millis()
                    ),
                ));
            }
            Some((_, n)) => Duration::from_millis(n),
        };
        let take_over = match get("FLEET_QUEUE_TAKE_OVER") {
            None => true,
            Some((var, v)) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(err(&var, "must be true or false")),
            },
        };
        Ok(QueueConfig {
            backend,
            prefix: token("FLEET_QUEUE_PREFIX", "fleet")?.unwrap_or_default(),
            queue_name: token("FLEET_QUEUE_NAME", "")?,
            pool_id: get("FLEET_QUEUE_POOL_ID").map(|(_, v)| v.trim().to_owned()),
            supervisor: get("FLEET_QUEUE_SUPERVISOR")
                .map_or_else(|| "cellos-supervisor".to_owned(), |(_, v)| v.to_owned()),
            poll_interval: ms("FLEET_QUEUE_POLL_INTERVAL_MS", 5_000)?,
            heartbeat_interval: ms("FLEET_QUEUE_HEARTBEAT_INTERVAL_MS", 30_000)?,
            node_id: get("FLEET_QUEUE_NODE_ID").map_or_else(hostname, |(_, v)| v.trim().to_owned()),
            lease,
            renew_interval,
            take_over,
            max_attempts: positive("FLEET_QUEUE_MAX_ATTEMPTS")?.map_or(3, |(_, n)| n),
            guard: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("fleet-agent")),
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
        assert_eq!(cfg.lease, Duration::from_secs(60));
        assert_eq!(cfg.renew_interval, Duration::from_secs(20));
        assert!(cfg.take_over);
        assert_eq!(cfg.max_attempts, 3);
        // The fleet names win over the aliases.
        let cfg = QueueConfig::from_env(&env(&[
            ("FLEET_QUEUE_DIR", "/srv/q"),
            ("FLEET_QUEUE_PREFIX", "jobs"),
            ("CELLOS_FLEET_PREFIX", "ignored"),
            ("FLEET_QUEUE_POLL_INTERVAL_MS", "250"),
            ("CELLOS_FLEET_LEASE_MS", "1500"),
            ("FLEET_QUEUE_RENEW_INTERVAL_MS", "400"),
            ("CELLOS_FLEET_RENEW_INTERVAL_MS", "ignored"),
            ("CELLOS_FLEET_TAKE_OVER", "no"),
            ("FLEET_QUEUE_MAX_ATTEMPTS", "5"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.backend, Backend::Dir("/srv/q".into()));
        assert_eq!(cfg.dir("claimed"), "jobs/claimed/");
        assert_eq!(cfg.poll_interval, Duration::from_millis(250));
        assert_eq!(cfg.lease, Duration::from_millis(1500));
        assert_eq!(cfg.renew_interval, Duration::from_millis(400));
        assert!(!cfg.take_over);
        assert_eq!(cfg.max_attempts, 5);
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
            (
                vec![
                    ("FLEET_QUEUE_DIR", "/d"),
                    ("FLEET_QUEUE_LEASE_MS", "1000"),
                    ("CELLOS_FLEET_RENEW_INTERVAL_MS", "1000"),
                ],
                "CELLOS_FLEET_RENEW_INTERVAL_MS",
            ),
            (
                vec![
                    ("FLEET_QUEUE_DIR", "/d"),
                    ("FLEET_QUEUE_TAKE_OVER", "maybe"),
                ],
                "FLEET_QUEUE_TAKE_OVER",
            ),
            (
                vec![("FLEET_QUEUE_DIR", "/d"), ("FLEET_QUEUE_MAX_ATTEMPTS", "0")],
                "FLEET_QUEUE_MAX_ATTEMPTS",
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
}
