//! The local provider: nodes are real `fleet-agent` processes on this host.
//!
//! `create` writes the node's `agent.toml` (daemon URL, pool CA, a
//! single-use bootstrap token) into its own directory and spawns the agent;
//! `stop` sends SIGTERM (the agent drains) and waits; `start` spawns it again
//! (it reconnects with the mTLS identity it was issued); `delete` kills it
//! and removes its directory — its `agent.log` moved first, with
//! [`KeptLogs`], to a directory where the logs of deleted nodes are kept for
//! a bounded time, number and size. Each node's state is kept in
//! `<dir>/instance.json`, so a restarted daemon finds — and adopts — the
//! agents it started before (only its own: a node directory whose instance
//! carries another fleet's id or namespace is refused, not adopted).
//!
//! Honest emulation, declared in [`Capabilities`]: there is no spot market
//! and no resize (one instance type, the host itself); a snapshot copies the
//! node's work dir, and booting from it copies the work dir back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::billing::{
    BillingModel, BootLatency, CallLatency, Granularity, NodeCharges, StoppedBilling,
};
use fleet_core::ids::{InstanceType, Millis, NodeId};
use fleet_core::money::{GbMonthPrice, HourlyPrice, Money};
use fleet_core::protocol::Arch;
use fleet_core::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, SnapshotRef, TagFilter, check_same_fleet,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use fleet_core::clock::Clock;

/// The one instance type: this host.
pub const LOCAL_TYPE: &str = "local.node";

/// How the local provider starts agents.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Where node directories live.
    pub base_dir: PathBuf,
    /// The `fleet-agent` binary.
    pub agent_bin: PathBuf,
    /// The daemon's WebSocket agent URL (`wss://127.0.0.1:7443/v1/agent`).
    pub daemon_url: String,
    /// The pool CA certificate file the agent trusts.
    pub ca_file: PathBuf,
    /// Most nodes at once.
    pub max_nodes: u32,
    /// Agent heartbeat interval.
    pub heartbeat_interval_ms: Millis,
    /// How long `stop` waits for an agent to drain before killing it.
    pub stop_timeout: Duration,
    /// Where a deleted node's agent log is kept (`None`: removed with the
    /// node).
    pub kept_logs: Option<KeptLogs>,
    /// What a node is charged per hour while its agent runs (default
    /// zero: a process on this host costs nothing). A price lets the
    /// embedded default show cost reports, charts and budgets at work.
    pub hourly_price: HourlyPrice,
}

/// Where the agent logs of deleted nodes are kept, and within what bounds:
/// so an operator can read why a node failed after it is gone. Each is
/// `<dir>/<node>.<deleted at, ms>.log`. Kept logs are pruned at each
/// delete and when the provider is made: the oldest (by last write) go
/// first, until every bound holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptLogs {
    /// The directory (the daemon's `<log_dir>/agents`).
    pub dir: PathBuf,
    /// A log not written to for longer is removed.
    pub max_age: Duration,
    /// At most this many logs are kept.
    pub max_files: usize,
    /// At most this many bytes of logs are kept.
    pub max_bytes: u64,
}

impl KeptLogs {
    /// Moves `log` (an agent log of `node`, deleted at `now`) here and
    /// prunes; returns where it is now, if it was kept.
    fn keep(&self, node: &NodeId, log: &Path, now: Millis) -> std::io::Result<Option<PathBuf>> {
        use std::os::unix::fs::DirBuilderExt as _;
        if !log.exists() {
            return Ok(None);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let kept = self.dir.join(format!("{node}.{now}.log"));
        if std::fs::rename(log, &kept).is_err() {
            // Another file system: copy (the original goes with the node).
            std::fs::copy(log, &kept)?;
        }
        self.prune(now)?;
        Ok(kept.exists().then_some(kept))
    }

    /// Removes the logs beyond the bounds at `now`; returns them.
    pub fn prune(&self, now: Millis) -> std::io::Result<Vec<PathBuf>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut logs = Vec::new();
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if !meta.is_file() || path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let written = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            logs.push((written, path, meta.len()));
        }
        // Newest first; the name breaks ties, so the order is stable.
        logs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        let max_age = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX);
        let (mut files, mut bytes) = (0usize, 0u64);
        let mut removed = Vec::new();
        for (written, path, len) in logs {
            let fits = now.saturating_sub(written) <= max_age
                && files < self.max_files
                && bytes.saturating_add(len) <= self.max_bytes;
            if fits {
                files += 1;
                bytes += len;
            } else {
                std::fs::remove_file(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LocalInstance {
    node: NodeId,
    provider_id: String,
    instance_type: InstanceType,
    state: InstanceState,
    pid: Option<i32>,
    tags: BTreeMap<String, String>,
    created_at: Millis,
}

impl LocalInstance {
    fn instance(&self) -> Instance {
        Instance {
            node: self.node.clone(),
            provider_id: self.provider_id.clone(),
            instance_type: self.instance_type.clone(),
            market: Market::OnDemand,
            state: self.state,
            address: Some("127.0.0.1".to_owned()),
            tags: self.tags.clone(),
            created_at: self.created_at,
        }
    }
}

/// Nodes as local `fleet-agent` processes.
pub struct LocalProvider {
    opts: LocalOptions,
    capabilities: Capabilities,
    billing: BillingModel,
    offering: Offering,
    clock: Arc<dyn Clock>,
    /// Serializes operations: they touch files and processes of one host.
    lock: Mutex<()>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("base_dir", &self.opts.base_dir)
            .field("agent_bin", &self.opts.agent_bin)
            .finish_non_exhaustive()
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::Transient(format!("{what} {}: {e}", path.display()))
}

impl LocalProvider {
    /// A provider for this host. Prunes the kept agent logs.
    pub fn new(opts: LocalOptions, clock: Arc<dyn Clock>) -> LocalProvider {
        if let Some(kept) = &opts.kept_logs
            && let Err(e) = kept.prune(clock.now())
        {
            tracing::warn!(dir = %kept.dir.display(), error = %e, "cannot prune the kept agent logs");
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let memory_mb = host_memory_mb().unwrap_or(1024);
        let arch = if std::env::consts::ARCH == "aarch64" {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        LocalProvider {
            capabilities: Capabilities {
                stop_start: true,
                resize: false,
                resize_requires_stop: false,
                snapshot: true,
                spot: false,
                max_instances: Some(opts.max_nodes),
            },
            billing: BillingModel {
                granularity: Granularity::PerSecond { minimum_secs: 0 },
                stopped: StoppedBilling::DiskOnly,
                disk_per_gb_month: GbMonthPrice(Money::ZERO),
                snapshot_per_gb_month: GbMonthPrice(Money::ZERO),
                boot: BootLatency {
                    image_ms: 2_000,
                    snapshot_ms: 1_500,
                    stopped_ms: 1_000,
                    resize_ms: 0,
                },
                // Stopping waits for the agent to exit; a snapshot copies
                // its work directory.
                calls: CallLatency {
                    api_ms: 100,
                    snapshot_ms: 500,
                },
                // No disk or address is charged for a process on this
                // machine; its running time is, at `hourly_price`.
                charges: NodeCharges::default(),
            },
            offering: Offering {
                instance_type: InstanceType::new(LOCAL_TYPE)
                    .unwrap_or_else(|_| unreachable!("valid literal")),
                cpus,
                memory_mb,
                arch,
                disk_gb: 0,
                on_demand: opts.hourly_price,
                spot: None,
            },
            opts,
            clock,
            lock: Mutex::new(()),
        }
    }

    fn node_dir(&self, node: &NodeId) -> PathBuf {
        self.opts.base_dir.join("nodes").join(node.as_str())
    }

    fn state_file(&self, node: &NodeId) -> PathBuf {
        self.node_dir(node).join("instance.json")
    }

    fn read(&self, node: &NodeId) -> Result<Option<LocalInstance>, ProviderError> {
        let path = self.state_file(node);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ProviderError::Permanent(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path, e)),
        }
    }

    fn write(&self, inst: &LocalInstance) -> Result<(), ProviderError> {
        let path = self.state_file(&inst.node);
        let bytes =
            serde_json::to_vec_pretty(inst).map_err(|e| ProviderError::Permanent(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", &path, e))
    }

    fn all(&self) -> Result<Vec<LocalInstance>, ProviderError> {
        let dir = self.opts.base_dir.join("nodes");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(node) = NodeId::new(name) else {
                continue;
            };
            if let Some(inst) = self.read(&node)? {
                out.push(inst);
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    fn write_agent_config(&self, spec: &NodeSpec, dir: &Path) -> Result<(), ProviderError> {
        let token_file = dir.join("bootstrap.token");
        if let Some(token) = &spec.bootstrap_token {
            write_private(&token_file, token.expose().as_bytes())?;
        }
        let mut labels = String::new();
        for (k, v) in &spec.tags {
            if !k.starts_with("fleet-") {
                labels.push_str(&format!("{k} = {v:?}\n"));
            }
        }
        let config = format!(
            "# Written by the fleet daemon's local provider.\n\
             node_id = {node:?}\n\
             daemon_url = {url:?}\n\
             ca_file = {ca:?}\n\
             bootstrap_token_file = {token:?}\n\
             identity_dir = {identity:?}\n\
             work_dir = {work:?}\n\
             heartbeat_interval_ms = {hb}\n\
             gateway_listen = \"127.0.0.1:0\"\n\
             reconnect_min_ms = 100\n\
             reconnect_max_ms = 2000\n",
            node = spec.node.as_str(),
            url = self.opts.daemon_url,
            ca = self.opts.ca_file.display().to_string(),
            token = token_file.display().to_string(),
            identity = dir.join("identity").display().to_string(),
            work = dir.join("work").display().to_string(),
            hb = self.opts.heartbeat_interval_ms,
        );
        let path = dir.join("agent.toml");
        std::fs::write(&path, config).map_err(|e| io("writing", &path, e))
    }

    fn spawn(&self, node: &NodeId) -> Result<i32, ProviderError> {
        let dir = self.node_dir(node);
        let log_path = dir.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io("opening", &log_path, e))?;
        let err = log.try_clone().map_err(|e| io("opening", &log_path, e))?;
        let child = std::process::Command::new(&self.opts.agent_bin)
            .env("FLEET_AGENT_CONFIG", dir.join("agent.toml"))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                ProviderError::Permanent(format!(
                    "cannot start {}: {e}",
                    self.opts.agent_bin.display()
                ))
            })?;
        let pid = i32::try_from(child.id()).map_err(|e| ProviderError::Permanent(e.to_string()))?;
        // Reap it when it exits so it does not linger as a zombie.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(pid)
    }

    async fn terminate(&self, pid: Option<i32>, signal: Signal) {
        let Some(pid) = pid else { return };
        let pid = Pid::from_raw(pid);
        if kill(pid, signal).is_err() {
            return; // already gone
        }
        let deadline = tokio::time::Instant::now() + self.opts.stop_timeout;
        while tokio::time::Instant::now() < deadline {
            if kill(pid, None).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Where the `fleet-agent` binary is: configured, else next to this
/// executable, else on `PATH`.
pub fn agent_binary(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_owned();
    }
    if let Ok(env) = std::env::var("FLEET_AGENT_BIN") {
        return PathBuf::from(env);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for candidate in [dir.join("fleet-agent"), dir.join("../fleet-agent")] {
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("fleet-agent")
}

/// Writes `bytes` to `path`, readable by this user only (a bootstrap
/// token, a node's config); errors are transient provider errors.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ProviderError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("writing", path, e))?;
    f.write_all(bytes).map_err(|e| io("writing", path, e))
}

/// The bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// This host's memory in MiB (`/proc/meminfo`).
pub fn host_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[async_trait]
impl Provider for LocalProvider {
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
        let _g = self.lock.lock().await;
        if let Some(existing) = self.read(&spec.node)? {
            // Idempotent by node id, for the fleet that made it only: a node
            // directory of another fleet sharing this base dir is not ours.
            check_same_fleet(&existing.tags, spec)?;
            return Ok(existing.instance());
        }
        if spec.instance_type != self.offering.instance_type {
            return Err(ProviderError::Permanent(format!(
                "unknown instance type {}; the local provider runs {LOCAL_TYPE}",
                spec.instance_type
            )));
        }
        if spec.market == Market::Spot {
            return Err(ProviderError::Unsupported(
                "spot on the local provider".into(),
            ));
        }
        let running = self
            .all()?
            .iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .count();
        if running >= self.opts.max_nodes as usize {
            return Err(ProviderError::Quota(format!(
                "the local provider runs at most {} nodes",
                self.opts.max_nodes
            )));
        }
        let dir = self.node_dir(&spec.node);
        std::fs::create_dir_all(dir.join("work")).map_err(|e| io("creating", &dir, e))?;
        if let BootSource::Snapshot(snap) = &spec.source {
            let from = self.opts.base_dir.join("snapshots").join(&snap.id);
            copy_dir(&from, &dir.join("work"))
                .map_err(|e| io("restoring snapshot into", &dir, e))?;
        }
        self.write_agent_config(spec, &dir)?;
        let pid = self.spawn(&spec.node)?;
        let inst = LocalInstance {
            node: spec.node.clone(),
            provider_id: format!("local-{}", spec.node),
            instance_type: spec.instance_type.clone(),
            state: InstanceState::Running,
            pid: Some(pid),
            tags: spec.tags.clone(),
            created_at: self.clock.now(),
        };
        self.write(&inst)?;
        Ok(inst.instance())
    }

    async fn start(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let _g = self.lock.lock().await;
        let mut inst = self
            .read(&r.node)?
            .ok_or_else(|| ProviderError::NotFound(r.provider_id.clone()))?;
        let alive = inst
            .pid
            .is_some_and(|p| kill(Pid::from_raw(p), None).is_ok());
        if !alive {
            inst.pid = Some(self.spawn(&r.node)?);
        }
        inst.state = InstanceState::Running;
        self.write(&inst)?;
        Ok(inst.instance())
    }

    async fn stop(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let _g = self.lock.lock().await;
        let mut inst = self
            .read(&r.node)?
            .ok_or_else(|| ProviderError::NotFound(r.provider_id.clone()))?;
        self.terminate(inst.pid, Signal::SIGTERM).await;
        inst.pid = None;
        inst.state = InstanceState::Stopped;
        self.write(&inst)?;
        Ok(inst.instance())
    }

    async fn resize(&self, _: &InstanceRef, _: &InstanceType) -> Result<Instance, ProviderError> {
        Err(ProviderError::Unsupported(
            "resize: a local node is the host itself".into(),
        ))
    }

    async fn snapshot(&self, r: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        let _g = self.lock.lock().await;
        if self.read(&r.node)?.is_none() {
            return Err(ProviderError::NotFound(r.provider_id.clone()));
        }
        let now = self.clock.now();
        let id = format!("snap-{}-{now}", r.node);
        let to = self.opts.base_dir.join("snapshots").join(&id);
        copy_dir(&self.node_dir(&r.node).join("work"), &to)
            .map_err(|e| io("snapshotting to", &to, e))?;
        // Billed storage is whole GB, and a snapshot takes some: at least 1.
        let bytes = dir_bytes(&to).map_err(|e| io("measuring", &to, e))?;
        Ok(SnapshotRef {
            id,
            size_gb: u32::try_from(bytes.div_ceil(1 << 30))
                .unwrap_or(u32::MAX)
                .max(1),
            created_at: now,
        })
    }

    async fn delete(&self, r: &InstanceRef) -> Result<(), ProviderError> {
        let _g = self.lock.lock().await;
        let Some(inst) = self.read(&r.node)? else {
            return Ok(()); // deleting a deleted node succeeds
        };
        self.terminate(inst.pid, Signal::SIGTERM).await;
        let dir = self.node_dir(&r.node);
        if let Some(kept) = &self.opts.kept_logs {
            // The agent has exited: its log is complete. Losing it must not
            // keep the node alive, so a failure is only logged.
            match kept.keep(&r.node, &dir.join("agent.log"), self.clock.now()) {
                Ok(Some(path)) => {
                    tracing::info!(node = %r.node, log = %path.display(), "agent log kept")
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %r.node, dir = %kept.dir.display(), error = %e, "cannot keep the agent log")
                }
            }
        }
        std::fs::remove_dir_all(&dir).map_err(|e| io("removing", &dir, e))
    }

    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        let _g = self.lock.lock().await;
        Ok(self
            .all()?
            .into_iter()
            .filter(|i| tags.matches(&i.tags))
            .map(|i| i.instance())
            .collect())
    }
}
