//! # fleet-provider-container
//!
//! Nodes as containers on this host (seed 003's `docker` host spec), run
//! by a Docker-compatible engine's command line — `podman` (the default,
//! daemonless) or `docker`:
//!
//! - `create` runs `<engine> run -d --name fleet-<node> --network host`
//!   with the node's tags as container labels, its directory (agent
//!   config, pool CA, bootstrap token, identity, work dir) mounted at
//!   `/fleet/node`, this daemon's `fleet-agent` mounted read-only at
//!   `/fleet/bin/fleet-agent`, and the pool's image (or the configured
//!   one); the agent is the container's process;
//! - `stop` / `start` stop and start the container (the agent drains on
//!   SIGTERM and reconnects with its identity on start);
//! - `delete` removes the container and the node's directory;
//! - `list` asks the engine for containers carrying fleet's namespace
//!   label and reads their labels back, so a restarted daemon adopts the
//!   containers it started, and another fleet's are never touched.
//!
//! The engine's command line rather than its HTTP API: Podman has no
//! daemon to talk to unless one runs `podman system service`, and the
//! same commands (`run`, `start`, `stop`, `rm`, `ps`, `container
//! inspect`) work on both engines. Declared in [`Capabilities`]: no spot,
//! no resize, no snapshots.

#[cfg(feature = "test-engine")]
pub mod testing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::billing::{
    BillingModel, BootLatency, CallLatency, Granularity, NodeCharges, StoppedBilling,
};
use fleet_core::clock::Clock;
use fleet_core::ids::{InstanceType, Millis, NodeId};
use fleet_core::money::{GbMonthPrice, HourlyPrice, Money};
use fleet_core::protocol::Arch;
use fleet_core::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, SnapshotRef, TAG_FLEET, TAG_NAMESPACE, TAG_NODE, TagFilter,
    check_same_fleet,
};
use fleet_provider_local::{host_memory_mb, write_private};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// The one instance type: a container on this host.
pub const CONTAINER_TYPE: &str = "container.node";

/// Where the node's directory is mounted in its container.
const NODE_MOUNT: &str = "/fleet/node";
/// Where the agent binary is mounted in its container.
const AGENT_MOUNT: &str = "/fleet/bin/fleet-agent";

/// `[provider] kind = "container"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The engine's command (`podman` or `docker`, or a path).
    #[serde(default = "default_engine")]
    pub engine: String,
    /// Flags before every engine subcommand (`--runtime`, `--root`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_args: Vec<String>,
    /// Environment of every engine command (`CONTAINERS_CONF`,
    /// `DOCKER_HOST`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_env: BTreeMap<String, String>,
    /// The image nodes run unless their pool names one (a pool's `image`
    /// other than `default` is used as the container image). It must hold
    /// what the work needs; the agent comes from the host.
    pub image: String,
    /// More `run` flags for every node (mounts, devices, `--cpus`, …): the
    /// seed's `args`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_args: Vec<String>,
    /// Most containers of this fleet at once.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: u32,
    /// The address the agent's gateway binds (a free port) and claimants
    /// dial: containers share the host's network.
    #[serde(default = "default_gateway_host")]
    pub gateway_host: String,
    /// The `fleet-agent` to mount (default: next to the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_bin: Option<PathBuf>,
    /// Seconds `stop` waits for the agent to drain before the engine kills
    /// it (default 30).
    #[serde(default = "default_stop_timeout_secs")]
    pub stop_timeout_secs: u64,
    /// Seconds any engine command may take (default 120: a `run` may pull).
    #[serde(default = "default_call_timeout_secs")]
    pub call_timeout_secs: u64,
}

fn default_engine() -> String {
    "podman".to_owned()
}

fn default_max_nodes() -> u32 {
    4
}

fn default_gateway_host() -> String {
    "127.0.0.1".to_owned()
}

fn default_stop_timeout_secs() -> u64 {
    30
}

fn default_call_timeout_secs() -> u64 {
    120
}

/// What the provider needs besides its configuration.
#[derive(Debug, Clone)]
pub struct ContainerContext {
    /// Where node directories live (the daemon's `<data_dir>/container`).
    pub base_dir: PathBuf,
    /// The agent binary mounted into every container.
    pub agent_bin: PathBuf,
    /// The daemon's agent WebSocket URL (containers share the host's
    /// network, so the daemon's own address works).
    pub daemon_url: String,
    /// The pool CA the agents trust (PEM).
    pub ca_pem: String,
    /// Agent heartbeat interval.
    pub heartbeat_interval_ms: Millis,
}

/// Nodes as containers.
pub struct ContainerProvider {
    cfg: ContainerConfig,
    ctx: ContainerContext,
    capabilities: Capabilities,
    billing: BillingModel,
    offering: Offering,
    clock: Arc<dyn Clock>,
    /// One create at a time (the count against `max_nodes`).
    lock: Mutex<()>,
}

impl std::fmt::Debug for ContainerProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerProvider")
            .field("engine", &self.cfg.engine)
            .field("image", &self.cfg.image)
            .finish_non_exhaustive()
    }
}

/// The part of `container inspect` the provider reads (the same fields on
/// Podman and Docker).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    id: String,
    #[serde(default)]
    created: String,
    state: InspectedState,
    config: InspectedConfig,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedState {
    #[serde(default)]
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedConfig {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

fn container_name(node: &NodeId) -> String {
    format!("fleet-{node}")
}

fn io(what: &str, path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::Transient(format!("{what} {}: {e}", path.display()))
}

impl ContainerProvider {
    /// A provider on `cfg`'s engine; the error says what is wrong.
    pub fn new(
        cfg: ContainerConfig,
        ctx: ContainerContext,
        clock: Arc<dyn Clock>,
    ) -> Result<ContainerProvider, String> {
        if cfg.engine.is_empty() {
            return Err("engine must name podman or docker".into());
        }
        if cfg.image.is_empty() || cfg.image.starts_with('-') {
            return Err(format!("image {:?} cannot be used", cfg.image));
        }
        if cfg.max_nodes == 0 {
            return Err("max_nodes must be at least 1".into());
        }
        if cfg.gateway_host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "gateway_host {:?} must be an address of this host",
                cfg.gateway_host
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let memory_mb = host_memory_mb().unwrap_or(1024);
        let arch = if std::env::consts::ARCH == "aarch64" {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        Ok(ContainerProvider {
            capabilities: Capabilities {
                stop_start: true,
                resize: false,
                resize_requires_stop: false,
                snapshot: false,
                spot: false,
                max_instances: Some(cfg.max_nodes),
            },
            billing: BillingModel {
                granularity: Granularity::PerSecond { minimum_secs: 0 },
                stopped: StoppedBilling::DiskOnly,
                disk_per_gb_month: GbMonthPrice(Money::ZERO),
                snapshot_per_gb_month: GbMonthPrice(Money::ZERO),
                boot: BootLatency {
                    image_ms: 2_000,
                    snapshot_ms: 2_000,
                    stopped_ms: 1_000,
                    resize_ms: 0,
                },
                calls: CallLatency {
                    api_ms: 300,
                    snapshot_ms: 0,
                },
                charges: NodeCharges::default(),
            },
            offering: Offering {
                instance_type: InstanceType::new(CONTAINER_TYPE)
                    .unwrap_or_else(|_| unreachable!("valid literal")),
                cpus,
                memory_mb,
                arch,
                disk_gb: 0,
                on_demand: HourlyPrice(Money::ZERO),
                spot: None,
            },
            cfg,
            ctx,
            clock,
            lock: Mutex::new(()),
        })
    }

    /// Runs `<engine> <engine_args> <args>`; its stdout, or an error
    /// classified from what it printed.
    async fn engine<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String, ProviderError> {
        let mut cmd = tokio::process::Command::new(&self.cfg.engine);
        cmd.args(&self.cfg.engine_args)
            .args(args)
            .envs(&self.cfg.engine_env)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let what = args
            .first()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .unwrap_or_default();
        let limit = Duration::from_secs(self.cfg.call_timeout_secs.max(1));
        let out = match tokio::time::timeout(limit, cmd.output()).await {
            Err(_) => {
                return Err(ProviderError::Transient(format!(
                    "{} {what}: no answer in {} s",
                    self.cfg.engine,
                    limit.as_secs()
                )));
            }
            Ok(Err(e)) => {
                return Err(ProviderError::Permanent(format!(
                    "cannot run {}: {e}",
                    self.cfg.engine
                )));
            }
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let lower = err.to_lowercase();
        let msg = format!("{} {what}: {err}", self.cfg.engine);
        Err(
            if lower.contains("no such container") || lower.contains("no container with") {
                ProviderError::NotFound(msg)
            } else if lower.contains("already in use") {
                ProviderError::AlreadyExists(msg)
            } else {
                ProviderError::Transient(msg)
            },
        )
    }

    /// Containers by name or id, as the engine describes them.
    async fn inspect(&self, ids: &[String]) -> Result<Vec<Inspected>, ProviderError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["container".to_owned(), "inspect".to_owned()];
        args.extend(ids.iter().cloned());
        let text = self.engine(&args).await?;
        serde_json::from_str(&text).map_err(|e| {
            ProviderError::Transient(format!(
                "{} container inspect: unreadable: {e}",
                self.cfg.engine
            ))
        })
    }

    /// The container of `node`, if there is one.
    async fn find(&self, node: &NodeId) -> Result<Option<Inspected>, ProviderError> {
        match self.inspect(&[container_name(node)]).await {
            Ok(mut found) => Ok(found.pop()),
            Err(ProviderError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn instance(&self, c: &Inspected) -> Option<Instance> {
        let tags = c.config.labels.clone().unwrap_or_default();
        let node = NodeId::new(tags.get(TAG_NODE)?.as_str()).ok()?;
        let state = match c.state.status.as_str() {
            "running" => InstanceState::Running,
            "created" | "configured" | "initialized" | "restarting" => InstanceState::Pending,
            "exited" | "stopped" | "paused" => InstanceState::Stopped,
            "stopping" => InstanceState::Stopping,
            _ => InstanceState::Terminated,
        };
        Some(Instance {
            node,
            provider_id: c.id.clone(),
            instance_type: self.offering.instance_type.clone(),
            market: Market::OnDemand,
            state,
            address: Some(self.cfg.gateway_host.clone()),
            tags,
            created_at: fleet_core::time::parse_rfc3339(&truncate_nanos(&c.created))
                .unwrap_or_else(|| self.clock.now()),
        })
    }

    fn node_dir(&self, node: &NodeId) -> PathBuf {
        self.ctx.base_dir.join("nodes").join(node.as_str())
    }

    fn write_node_files(&self, spec: &NodeSpec, dir: &Path) -> Result<(), ProviderError> {
        std::fs::create_dir_all(dir.join("work")).map_err(|e| io("creating", dir, e))?;
        let token = spec
            .bootstrap_token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .unwrap_or_default();
        write_private(&dir.join("bootstrap.token"), token.as_bytes())?;
        write_private(&dir.join("ca.pem"), self.ctx.ca_pem.as_bytes())?;
        let mut labels = String::new();
        for (k, v) in spec.tags.iter().filter(|(k, _)| !k.starts_with("fleet-")) {
            labels.push_str(&format!("{k:?} = {v:?}\n"));
        }
        let config = format!(
            "# Written by the fleet daemon's container provider.\n\
             node_id = {node:?}\n\
             daemon_url = {url:?}\n\
             ca_file = \"{m}/ca.pem\"\n\
             bootstrap_token_file = \"{m}/bootstrap.token\"\n\
             identity_dir = \"{m}/identity\"\n\
             work_dir = \"{m}/work\"\n\
             heartbeat_interval_ms = {hb}\n\
             gateway_listen = \"{gw}:0\"\n\
             reconnect_min_ms = 100\n\
             reconnect_max_ms = 2000\n\
             \n[labels]\n{labels}",
            node = spec.node.as_str(),
            url = self.ctx.daemon_url,
            m = NODE_MOUNT,
            hb = self.ctx.heartbeat_interval_ms,
            gw = self.cfg.gateway_host,
        );
        write_private(&dir.join("agent.toml"), config.as_bytes())
    }

    fn image_of(&self, spec: &NodeSpec) -> String {
        match &spec.source {
            BootSource::Image { image } if !image.is_empty() && image != "default" => image.clone(),
            _ => self.cfg.image.clone(),
        }
    }
}

/// Podman writes nanoseconds; the RFC 3339 reader takes milliseconds.
fn truncate_nanos(ts: &str) -> String {
    match ts.split_once('.') {
        Some((head, rest)) => {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let zone = &rest[digits.len()..];
            let ms: String = digits.chars().take(3).collect();
            format!("{head}.{ms:0<3}{zone}")
        }
        None => ts.to_owned(),
    }
}

#[async_trait]
impl Provider for ContainerProvider {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn billing(&self) -> &BillingModel {
        &self.billing
    }

    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        Ok(vec![self.offering.clone()])
    }

    async fn create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError> {
        if spec.market == Market::Spot {
            return Err(ProviderError::Unsupported(
                "spot on the container provider".into(),
            ));
        }
        if let BootSource::Snapshot(_) = spec.source {
            return Err(ProviderError::Unsupported(
                "snapshot boots on the container provider".into(),
            ));
        }
        if spec.instance_type != self.offering.instance_type {
            return Err(ProviderError::Permanent(format!(
                "unknown instance type {}; the container provider runs {CONTAINER_TYPE}",
                spec.instance_type
            )));
        }
        let _g = self.lock.lock().await;
        if let Some(existing) = self.find(&spec.node).await? {
            // Idempotent by node id, for the fleet that made it only.
            let tags = existing.config.labels.clone().unwrap_or_default();
            check_same_fleet(&tags, spec)?;
            return self.instance(&existing).ok_or_else(|| {
                ProviderError::Permanent(format!("container of {} has no node label", spec.node))
            });
        }
        // This fleet's containers count: the engine may run other fleets'.
        let mine = TagFilter(
            [TAG_NAMESPACE, TAG_FLEET]
                .iter()
                .filter_map(|t| Some(((*t).to_owned(), spec.tags.get(*t)?.clone())))
                .collect(),
        );
        let running = self.list(&mine).await?;
        let live = running
            .iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .count();
        if live >= self.cfg.max_nodes as usize {
            return Err(ProviderError::Quota(format!(
                "the container provider runs at most {} nodes",
                self.cfg.max_nodes
            )));
        }
        let dir = self.node_dir(&spec.node);
        self.write_node_files(spec, &dir)?;
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            container_name(&spec.node),
            "--network".into(),
            "host".into(),
            "-e".into(),
            format!("FLEET_AGENT_CONFIG={NODE_MOUNT}/agent.toml"),
            "-v".into(),
            format!("{}:{NODE_MOUNT}", dir.display()),
            "-v".into(),
            format!("{}:{AGENT_MOUNT}:ro", self.ctx.agent_bin.display()),
            "--stop-timeout".into(),
            self.cfg.stop_timeout_secs.to_string(),
        ];
        for (k, v) in &spec.tags {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(self.cfg.run_args.iter().cloned());
        args.push(self.image_of(spec));
        args.push(AGENT_MOUNT.into());
        let id = self.engine(&args).await?.trim().to_owned();
        let found = self.inspect(std::slice::from_ref(&id)).await?;
        found
            .first()
            .and_then(|c| self.instance(c))
            .ok_or_else(|| ProviderError::Transient(format!("container {id} vanished after run")))
    }

    async fn start(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        self.engine(&["start", r.provider_id.as_str()]).await?;
        let found = self.inspect(std::slice::from_ref(&r.provider_id)).await?;
        found
            .first()
            .and_then(|c| self.instance(c))
            .ok_or_else(|| ProviderError::NotFound(r.provider_id.clone()))
    }

    async fn stop(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let secs = self.cfg.stop_timeout_secs.to_string();
        self.engine(&["stop", "-t", secs.as_str(), r.provider_id.as_str()])
            .await?;
        let found = self.inspect(std::slice::from_ref(&r.provider_id)).await?;
        found
            .first()
            .and_then(|c| self.instance(c))
            .ok_or_else(|| ProviderError::NotFound(r.provider_id.clone()))
    }

    async fn resize(&self, _: &InstanceRef, _: &InstanceType) -> Result<Instance, ProviderError> {
        Err(ProviderError::Unsupported(
            "resize on the container provider".into(),
        ))
    }

    async fn snapshot(&self, _: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        Err(ProviderError::Unsupported(
            "snapshots on the container provider".into(),
        ))
    }

    async fn delete(&self, r: &InstanceRef) -> Result<(), ProviderError> {
        // Only the container this instance ref names, and only if it is
        // the node's: another fleet's container is never removed.
        let ours = match self.inspect(std::slice::from_ref(&r.provider_id)).await {
            Ok(found) => found.first().and_then(|c| self.instance(c)),
            Err(ProviderError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(inst) = ours.filter(|i| i.node == r.node) {
            let secs = self.cfg.stop_timeout_secs.to_string();
            match self
                .engine(&["stop", "-t", secs.as_str(), inst.provider_id.as_str()])
                .await
            {
                Ok(_) | Err(ProviderError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            match self.engine(&["rm", "-f", inst.provider_id.as_str()]).await {
                Ok(_) | Err(ProviderError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let dir = self.node_dir(&r.node);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &dir, e)),
            }
        }
        Ok(())
    }

    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        let filter = format!("label={TAG_NAMESPACE}");
        let ids: Vec<String> = self
            .engine(&["ps", "-a", "-q", "--no-trunc", "--filter", filter.as_str()])
            .await?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        let found = match self.inspect(&ids).await {
            // One was removed between the two calls (the engine refuses
            // the whole batch): one at a time, the removed ones left out.
            Err(ProviderError::NotFound(_)) => {
                let mut found = Vec::new();
                for id in &ids {
                    match self.inspect(std::slice::from_ref(id)).await {
                        Ok(mut one) => found.append(&mut one),
                        Err(ProviderError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                found
            }
            other => other?,
        };
        let mut out: Vec<Instance> = found
            .iter()
            .filter_map(|c| self.instance(c))
            .filter(|i| tags.matches(&i.tags))
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }
}
