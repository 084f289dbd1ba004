//! # fleet-provider-ssh
//!
//! Bring-your-own machines: a fixed list of hosts reached over SSH, each
//! serving as one node (seed 003's `ssh` host spec). The machines are
//! yours; the provider only runs `fleet-agent` on them:
//!
//! - `create` takes a free host (one whose fleet directory holds no
//!   instance), installs the agent binary there if the host lacks that
//!   exact build (compared by SHA-256), writes the agent's config, the pool
//!   CA and the node's single-use bootstrap token, records the instance in
//!   `<dir>/instance.json` **on the host**, and starts the agent;
//! - `stop` stops the agent (SIGTERM, then SIGKILL after the timeout) and
//!   `start` starts it again: it reconnects with the mTLS identity it was
//!   issued;
//! - `delete` stops the agent and removes the node's directory — never
//!   anything outside the fleet directory, never the machine;
//! - `list` reads every host's `instance.json`, so a restarted daemon (or
//!   one with a fresh store) finds and adopts the agents it started, and
//!   never adopts a host another fleet's instance occupies (its tags
//!   differ).
//!
//! SSH is the system's OpenSSH client through the `openssh` crate: your
//! `~/.ssh/config`, keys, agent and `known_hosts` apply. Every remote
//! command is a fixed `sh` script whose inputs are positional arguments
//! (never spliced into the script). Declared in [`Capabilities`]: no spot,
//! no resize, no snapshots (a host is what it is); stop and start are the
//! agent's.

#[cfg(feature = "test-sshd")]
pub mod sshd;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::billing::{
    BillingModel, BootLatency, CallLatency, Granularity, NodeCharges, StoppedBilling,
};
use fleet_core::clock::Clock;
use fleet_core::ids::{InstanceType, Millis};
use fleet_core::money::{GbMonthPrice, HourlyPrice, Money};
use fleet_core::protocol::{Arch, HostAgentState, SshHostRecord};
use fleet_core::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, SnapshotRef, TagFilter, check_same_fleet,
};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Mutex;

/// The one instance type: a host of the list.
pub const SSH_TYPE: &str = "ssh.host";

/// The agent's gateway port on a host unless the host says otherwise.
pub const DEFAULT_GATEWAY_PORT: u16 = 7443;

/// One machine (`[[provider.hosts]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshHost {
    /// Host name or address, as `ssh` takes it (a `~/.ssh/config` alias
    /// works).
    pub host: String,
    /// SSH port (default: ssh's, usually 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Login user (default: ssh's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Private key file (default: ssh's keys and agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// A name unique in the list (default `host`, or `host:port`): the
    /// instance's provider id starts with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The fleet directory on the host (default `.fleet`, under the login
    /// user's home): everything the provider writes is under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The port the agent's gateway listens on (default 7443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_port: Option<u16>,
    /// The address claimants reach the gateway at (default `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_host: Option<String>,
    /// Only nodes of these pools run here (default: any pool's). Give a
    /// class of machines (GPU boxes, big builders) its own pool, with the
    /// pool's `labels` saying what they offer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<fleet_core::ids::PoolName>,
}

impl SshHost {
    /// The host's name in provider ids.
    pub fn name(&self) -> String {
        match (&self.name, self.port) {
            (Some(n), _) => n.clone(),
            (None, Some(p)) => format!("{}:{p}", self.host),
            (None, None) => self.host.clone(),
        }
    }

    fn dir(&self) -> &str {
        self.dir.as_deref().unwrap_or(".fleet")
    }
}

/// How strictly host keys are checked (`ssh -o StrictHostKeyChecking`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKeys {
    /// Only hosts already in `known_hosts` (the safe default).
    #[default]
    Strict,
    /// Add a host seen for the first time; refuse a changed key.
    Add,
    /// Accept any key (test rigs only).
    Accept,
}

/// `[provider] kind = "ssh"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The machines: each is one node at most.
    pub hosts: Vec<SshHost>,
    /// The daemon's agent WebSocket URL as the hosts reach it
    /// (`wss://daemon.example:7443/v1/agent`).
    pub daemon_url: String,
    /// The `fleet-agent` binary to install (default: next to the daemon);
    /// ignored for hosts when `remote_agent_bin` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_bin: Option<PathBuf>,
    /// An agent already installed on every host (a package, say): used as
    /// is, nothing is uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_agent_bin: Option<String>,
    /// Host key checking.
    #[serde(default)]
    pub host_keys: HostKeys,
    /// A `known_hosts` file to use instead of `~/.ssh/known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<PathBuf>,
    /// An ssh config file to use instead of `~/.ssh/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_config: Option<PathBuf>,
    /// Seconds to wait for a host to answer (default 10).
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Seconds `stop` waits for the agent to drain before killing it
    /// (default 30).
    #[serde(default = "default_stop_timeout_secs")]
    pub stop_timeout_secs: u64,
    /// What one host costs per hour, in dollars (default 0: you own it);
    /// the cost model charges it while the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_price: Option<String>,
}

fn default_connect_timeout_secs() -> u64 {
    10
}

fn default_stop_timeout_secs() -> u64 {
    30
}

/// What the provider needs besides its configuration.
#[derive(Debug, Clone)]
pub struct SshContext {
    /// The local agent binary to install (resolved `agent_bin`).
    pub agent_bin: PathBuf,
    /// The pool CA the agents trust (PEM).
    pub ca_pem: String,
    /// Agent heartbeat interval.
    pub heartbeat_interval_ms: Millis,
}

/// What `<dir>/instance.json` on a host says (PROTOCOL.md, "SSH hosts").
type HostInstance = SshHostRecord;

fn power(state: HostAgentState) -> InstanceState {
    match state {
        HostAgentState::Stopped => InstanceState::Stopped,
        _ => InstanceState::Running,
    }
}

/// Nodes as `fleet-agent`s on a fixed list of machines.
pub struct SshProvider {
    cfg: SshConfig,
    ctx: SshContext,
    capabilities: Capabilities,
    billing: BillingModel,
    price: HourlyPrice,
    clock: Arc<dyn Clock>,
    /// Serializes the choice of a free host.
    create_lock: Mutex<()>,
    /// One operation at a time per host.
    host_locks: Vec<Mutex<()>>,
    /// The local agent binary's size, modification time and SHA-256.
    agent_hash: Mutex<Option<(AgentStamp, String)>>,
}

type AgentStamp = (u64, Option<std::time::SystemTime>);

impl std::fmt::Debug for SshProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshProvider")
            .field("hosts", &self.cfg.hosts.len())
            .finish_non_exhaustive()
    }
}

/// The scripts, each run as `sh -c SCRIPT sh ARGS…`: inputs are `$1…`,
/// never spliced into the text.
mod script {
    /// `$1` dir → the instance record, or nothing.
    pub(super) const READ: &str = r#"cat "$1/instance.json" 2>/dev/null || true"#;
    /// CPUs, memory (kB) and machine.
    pub(super) const PROBE: &str =
        r#"nproc; awk '/^MemTotal:/ {print $2}' /proc/meminfo; uname -m"#;
    /// `$1` path, `$2` mode: stdin becomes the file, atomically.
    pub(super) const PUT: &str = r#"set -e; umask 077; mkdir -p "$(dirname "$1")"; cat > "$1.part"; chmod "$2" "$1.part"; mv -f "$1.part" "$1""#;
    /// `$1` path → its SHA-256, or nothing.
    pub(super) const SHA: &str = r#"sha256sum "$1" 2>/dev/null | cut -d' ' -f1"#;
    /// `$1` dir, `$2` agent binary (relative to the dir or absolute):
    /// starts the agent unless it runs. It answers once the started
    /// process runs the agent (up to 5 s), not while it is still the
    /// shell that forked it: a start right after would otherwise not see
    /// it alive and start a second one (seen in CI, under load).
    pub(super) const START: &str = r#"set -e
dir=$(cd "$1" && pwd)
case $2 in /*) bin=$2 ;; *) bin=$dir/$2 ;; esac
cd "$dir/node"
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null && grep -q fleet-agent "/proc/$1/cmdline" 2>/dev/null; }
if [ -f agent.pid ] && alive "$(cat agent.pid)"; then exit 0; fi
FLEET_AGENT_CONFIG="$dir/node/agent.toml" setsid "$bin" >> agent.log 2>&1 < /dev/null &
pid=$!
echo "$pid" > agent.pid
i=0
while ! alive "$pid" && kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done"#;
    /// `$1` dir → its absolute path (made if missing).
    pub(super) const RESOLVE: &str = r#"set -e; umask 077; mkdir -p "$1"; cd "$1"; pwd"#;
    /// `$1` dir, `$2` tenths of a second to wait: stops the agent.
    pub(super) const STOP: &str = r#"cd "$1/node" 2>/dev/null || exit 0
[ -f agent.pid ] || exit 0
pid=$(cat agent.pid)
alive() { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q fleet-agent "/proc/$pid/cmdline" 2>/dev/null; }
if alive; then
  kill -TERM "$pid"
  i=0
  while alive && [ "$i" -lt "$2" ]; do sleep 0.1; i=$((i+1)); done
  if alive; then kill -KILL "$pid"; fi
fi
rm -f agent.pid"#;
    /// `$1` dir: the node's files go (the agent is stopped first).
    pub(super) const CLEAR: &str = r#"rm -rf "$1/node" "$1/instance.json""#;
}

fn transient(host: &SshHost, what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Transient(format!("ssh {}: {what}: {e}", host.name()))
}

impl SshProvider {
    /// A provider for `cfg`'s hosts; the error says what is wrong with it.
    pub fn new(
        cfg: SshConfig,
        ctx: SshContext,
        clock: Arc<dyn Clock>,
    ) -> Result<SshProvider, String> {
        if cfg.hosts.is_empty() {
            return Err("[provider] kind = \"ssh\" needs at least one [[provider.hosts]]".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for h in &cfg.hosts {
            let name = h.name();
            if h.host.is_empty() || h.host.starts_with('-') {
                return Err(format!("host {:?}: not a host name", h.host));
            }
            if name.contains('/') || !names.insert(name.clone()) {
                return Err(format!(
                    "host name {name:?} is used twice or has a '/': give each host a unique `name`"
                ));
            }
            if h.dir().is_empty() || h.dir().starts_with('-') {
                return Err(format!("host {name}: dir {:?} cannot be used", h.dir()));
            }
        }
        if !(cfg.daemon_url.starts_with("wss://") || cfg.daemon_url.starts_with("ws://")) {
            return Err(format!(
                "daemon_url {:?} must be the daemon's ws(s):// agent URL as the hosts reach it",
                cfg.daemon_url
            ));
        }
        let price = match &cfg.hourly_price {
            Some(p) => HourlyPrice(
                p.parse::<Money>()
                    .map_err(|e| format!("hourly_price {p:?}: {e}"))?,
            ),
            None => HourlyPrice(Money::ZERO),
        };
        let hosts = u32::try_from(cfg.hosts.len()).unwrap_or(u32::MAX);
        Ok(SshProvider {
            capabilities: Capabilities {
                stop_start: true,
                resize: false,
                resize_requires_stop: false,
                snapshot: false,
                spot: false,
                max_instances: Some(hosts),
            },
            billing: BillingModel {
                granularity: Granularity::PerSecond { minimum_secs: 0 },
                // A stopped agent leaves the machine to you: nothing is
                // billed to the fleet while it is stopped.
                stopped: StoppedBilling::DiskOnly,
                disk_per_gb_month: GbMonthPrice(Money::ZERO),
                snapshot_per_gb_month: GbMonthPrice(Money::ZERO),
                boot: BootLatency {
                    image_ms: 5_000,
                    snapshot_ms: 5_000,
                    stopped_ms: 2_000,
                    resize_ms: 0,
                },
                calls: CallLatency {
                    api_ms: 1_000,
                    snapshot_ms: 0,
                },
                charges: NodeCharges::default(),
            },
            price,
            host_locks: cfg.hosts.iter().map(|_| Mutex::new(())).collect(),
            cfg,
            ctx,
            clock,
            create_lock: Mutex::new(()),
            agent_hash: Mutex::new(None),
        })
    }

    async fn connect(&self, host: &SshHost) -> Result<openssh::Session, ProviderError> {
        let mut b = openssh::SessionBuilder::default();
        b.known_hosts_check(match self.cfg.host_keys {
            HostKeys::Strict => openssh::KnownHosts::Strict,
            HostKeys::Add => openssh::KnownHosts::Add,
            HostKeys::Accept => openssh::KnownHosts::Accept,
        });
        b.connect_timeout(Duration::from_secs(self.cfg.connect_timeout_secs.max(1)));
        b.server_alive_interval(Duration::from_secs(15));
        if let Some(port) = host.port {
            b.port(port);
        }
        if let Some(user) = &host.user {
            b.user(user.clone());
        }
        if let Some(key) = &host.identity {
            b.keyfile(key);
        }
        if let Some(file) = &self.cfg.known_hosts_file {
            b.user_known_hosts_file(file);
        }
        if let Some(file) = &self.cfg.ssh_config {
            b.config_file(file);
        }
        b.connect(&host.host)
            .await
            .map_err(|e| transient(host, "connect", e))
    }

    /// Runs a script on `session` with `args` and `input` on its stdin;
    /// its stdout, or the error with what it printed on stderr.
    async fn run(
        host: &SshHost,
        session: &openssh::Session,
        what: &str,
        script: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<String, ProviderError> {
        let mut cmd = session.command("sh");
        cmd.arg("-c").arg(script).arg("sh").args(args);
        cmd.stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        cmd.stdin(if input.is_some() {
            openssh::Stdio::piped()
        } else {
            openssh::Stdio::null()
        });
        let mut child = cmd.spawn().await.map_err(|e| transient(host, what, e))?;
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin().take()) {
            stdin
                .write_all(bytes)
                .await
                .map_err(|e| transient(host, what, e))?;
            stdin
                .shutdown()
                .await
                .map_err(|e| transient(host, what, e))?;
            drop(stdin);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| transient(host, what, e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(transient(
                host,
                what,
                format!("{} ({})", err.trim(), out.status),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One session for `f` on host `i`, closed after.
    async fn with_host<T>(
        &self,
        i: usize,
        f: impl AsyncFnOnce(&SshHost, &openssh::Session) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let host = &self.cfg.hosts[i];
        let _g = self.host_locks[i].lock().await;
        let session = self.connect(host).await?;
        let out = f(host, &session).await;
        if let Err(e) = session.close().await {
            tracing::debug!(host = %host.name(), error = %e, "closing the ssh session");
        }
        out
    }

    async fn read_instance(
        host: &SshHost,
        session: &openssh::Session,
    ) -> Result<Option<HostInstance>, ProviderError> {
        let text = Self::run(
            host,
            session,
            "read instance",
            script::READ,
            &[host.dir()],
            None,
        )
        .await?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text).map(Some).map_err(|e| {
            ProviderError::Permanent(format!(
                "ssh {}: {}/instance.json is not an instance record: {e}",
                host.name(),
                host.dir()
            ))
        })
    }

    async fn write_instance(
        host: &SshHost,
        session: &openssh::Session,
        inst: &HostInstance,
    ) -> Result<(), ProviderError> {
        let bytes =
            serde_json::to_vec_pretty(inst).map_err(|e| ProviderError::Permanent(e.to_string()))?;
        let path = format!("{}/instance.json", host.dir());
        Self::run(
            host,
            session,
            "write instance",
            script::PUT,
            &[&path, "600"],
            Some(&bytes),
        )
        .await
        .map(drop)
    }

    fn instance(&self, host: &SshHost, inst: &HostInstance) -> Instance {
        Instance {
            node: inst.node.clone(),
            provider_id: inst.provider_id.clone(),
            instance_type: inst.instance_type.clone(),
            market: Market::OnDemand,
            state: power(inst.state),
            address: Some(
                host.gateway_host
                    .clone()
                    .unwrap_or_else(|| host.host.clone()),
            ),
            tags: inst.tags.clone(),
            created_at: inst.created_at,
        }
    }

    /// The host `r` is on: by its provider id (`<host name>/<node>`).
    fn host_of(&self, r: &InstanceRef) -> Option<usize> {
        let (name, node) = r.provider_id.rsplit_once('/')?;
        (node == r.node.as_str())
            .then(|| self.cfg.hosts.iter().position(|h| h.name() == name))
            .flatten()
    }

    /// The agent binary on the host: the configured remote one, or the
    /// local build, uploaded when the host lacks it.
    async fn install_agent(
        &self,
        host: &SshHost,
        session: &openssh::Session,
    ) -> Result<String, ProviderError> {
        if let Some(bin) = &self.cfg.remote_agent_bin {
            return Ok(bin.clone());
        }
        let want = self.agent_hash().await?;
        let remote = "bin/fleet-agent";
        let path = format!("{}/{remote}", host.dir());
        let have = Self::run(host, session, "hash the agent", script::SHA, &[&path], None).await?;
        if have.trim() != want {
            let bytes = read_file(&self.ctx.agent_bin).await?;
            tracing::info!(host = %host.name(), bytes = bytes.len(), "installing fleet-agent");
            Self::run(
                host,
                session,
                "install the agent",
                script::PUT,
                &[&path, "755"],
                Some(&bytes),
            )
            .await?;
        }
        Ok(remote.to_owned())
    }

    /// The agent's config; `node` is the node directory's absolute path.
    fn agent_config(&self, host: &SshHost, spec: &NodeSpec, node: &str) -> String {
        let mut labels = String::new();
        for (k, v) in spec.tags.iter().filter(|(k, _)| !k.starts_with("fleet-")) {
            labels.push_str(&format!("{k:?} = {v:?}\n"));
        }
        let port = host.gateway_port.unwrap_or(DEFAULT_GATEWAY_PORT);
        let advertise = host.gateway_host.as_deref().unwrap_or(&host.host);
        format!(
            "# Written by the fleet daemon's ssh provider.\n\
             node_id = {node:?}\n\
             daemon_url = {url:?}\n\
             ca_file = \"{node_dir}/ca.pem\"\n\
             bootstrap_token_file = \"{node_dir}/bootstrap.token\"\n\
             identity_dir = \"{node_dir}/identity\"\n\
             work_dir = \"{node_dir}/work\"\n\
             heartbeat_interval_ms = {hb}\n\
             gateway_listen = \"0.0.0.0:{port}\"\n\
             gateway_advertise = {adv:?}\n\
             reconnect_min_ms = 200\n\
             reconnect_max_ms = 5000\n\
             \n[labels]\n{labels}",
            node = spec.node.as_str(),
            url = self.cfg.daemon_url,
            hb = self.ctx.heartbeat_interval_ms,
            adv = format!("{advertise}:{port}"),
            node_dir = node.replace('\\', "\\\\").replace('"', "\\\""),
        )
    }

    /// The SHA-256 of the local agent binary, hashed again only when the
    /// file changes (its size or modification time).
    async fn agent_hash(&self) -> Result<String, ProviderError> {
        let path = &self.ctx.agent_bin;
        let meta = std::fs::metadata(path).map_err(|e| {
            ProviderError::Permanent(format!("the agent binary {}: {e}", path.display()))
        })?;
        let stamp = (meta.len(), meta.modified().ok());
        let mut cached = self.agent_hash.lock().await;
        if let Some((s, hash)) = cached.as_ref()
            && *s == stamp
        {
            return Ok(hash.clone());
        }
        let bytes = read_file(path).await?;
        let hash = hex(&sha2::Sha256::digest(&bytes));
        *cached = Some((stamp, hash.clone()));
        Ok(hash)
    }

    /// Runs `step` (what, script, its argument after the fleet dir) on
    /// `r`'s host and records the agent's new `state` there.
    async fn agent_to(
        &self,
        r: &InstanceRef,
        step: (&str, &str, &str),
        state: HostAgentState,
    ) -> Result<Instance, ProviderError> {
        let (what, script, arg) = step;
        let i = self
            .host_of(r)
            .ok_or_else(|| ProviderError::NotFound(r.provider_id.clone()))?;
        let inst = self
            .with_host(i, async |h, s| {
                let mut inst = Self::read_instance(h, s)
                    .await?
                    .filter(|x| x.provider_id == r.provider_id)
                    .ok_or_else(|| ProviderError::NotFound(r.provider_id.clone()))?;
                Self::run(h, s, what, script, &[h.dir(), arg], None).await?;
                inst.state = state;
                Self::write_instance(h, s, &inst).await?;
                Ok(inst)
            })
            .await?;
        Ok(self.instance(&self.cfg.hosts[i], &inst))
    }

    fn stop_tenths(&self) -> String {
        (self.cfg.stop_timeout_secs.max(1) * 10).to_string()
    }

    fn offering(&self, cpus: u32, memory_mb: u64, arch: Arch) -> Offering {
        Offering {
            instance_type: InstanceType::new(SSH_TYPE)
                .unwrap_or_else(|_| unreachable!("valid literal")),
            cpus,
            memory_mb,
            arch,
            disk_gb: 0,
            on_demand: self.price,
            spot: None,
        }
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, ProviderError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::read(&path).map_err(|e| (path, e)))
        .await
        .map_err(|e| ProviderError::Transient(e.to_string()))?
        .map_err(|(path, e)| {
            ProviderError::Permanent(format!("the agent binary {}: {e}", path.display()))
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of a node's directory the provider writes.
const NODE_FILES: [&str; 3] = ["agent.toml", "ca.pem", "bootstrap.token"];

#[async_trait]
impl Provider for SshProvider {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn billing(&self) -> &BillingModel {
        &self.billing
    }

    /// One type, `ssh.host`, as small as the smallest reachable host.
    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        let probes = (0..self.cfg.hosts.len()).map(|i| {
            self.with_host(i, async |host, s| {
                Self::run(host, s, "probe", script::PROBE, &[], None).await
            })
        });
        let mut smallest: Option<(u32, u64, Arch)> = None;
        let mut last_error = None;
        for (i, probe) in futures_util::future::join_all(probes)
            .await
            .into_iter()
            .enumerate()
        {
            let text = match probe {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(host = %self.cfg.hosts[i].name(), error = %e, "host not probed");
                    last_error = Some(e);
                    continue;
                }
            };
            let mut lines = text.lines().map(str::trim);
            let cpus = lines.next().and_then(|l| l.parse::<u32>().ok());
            let mem_kb = lines.next().and_then(|l| l.parse::<u64>().ok());
            let arch = match lines.next() {
                Some("aarch64" | "arm64") => Some(Arch::Aarch64),
                Some("x86_64" | "amd64") => Some(Arch::X86_64),
                _ => None,
            };
            let (Some(cpus), Some(mem_kb), Some(arch)) = (cpus, mem_kb, arch) else {
                tracing::warn!(host = %self.cfg.hosts[i].name(), output = %text, "host probe unreadable");
                continue;
            };
            let mem = mem_kb / 1024;
            smallest = Some(match smallest {
                None => (cpus, mem, arch),
                Some((c, m, a)) => (c.min(cpus), m.min(mem), a),
            });
        }
        match smallest {
            Some((cpus, mem, arch)) => Ok(vec![self.offering(cpus.max(1), mem.max(1), arch)]),
            None => Err(last_error
                .unwrap_or_else(|| ProviderError::Transient("no host answered the probe".into()))),
        }
    }

    async fn create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError> {
        if spec.market == Market::Spot {
            return Err(ProviderError::Unsupported(
                "spot on the ssh provider".into(),
            ));
        }
        if let BootSource::Snapshot(_) = spec.source {
            return Err(ProviderError::Unsupported(
                "snapshot boots on the ssh provider".into(),
            ));
        }
        if spec.instance_type.as_str() != SSH_TYPE {
            return Err(ProviderError::Permanent(format!(
                "unknown instance type {}; the ssh provider runs {SSH_TYPE}",
                spec.instance_type
            )));
        }
        let _g = self.create_lock.lock().await;
        // Idempotent by node id: a host already holding this node is it.
        let mut free = None;
        let mut unreachable = None;
        for i in 0..self.cfg.hosts.len() {
            match self
                .with_host(i, async |h, s| Self::read_instance(h, s).await)
                .await
            {
                Ok(Some(inst))
                    if inst.node == spec.node && check_same_fleet(&inst.tags, spec).is_ok() =>
                {
                    return Ok(self.instance(&self.cfg.hosts[i], &inst));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    let pools = &self.cfg.hosts[i].pools;
                    if pools.is_empty() || pools.contains(&spec.pool) {
                        free.get_or_insert(i);
                    }
                }
                Err(e) => {
                    tracing::warn!(host = %self.cfg.hosts[i].name(), error = %e, "host unreachable; not used");
                    unreachable = Some(e);
                }
            }
        }
        let Some(i) = free else {
            return Err(match unreachable {
                // A host that is down may be the free one: try again later.
                Some(e) => e,
                None => ProviderError::Quota(format!(
                    "all {} ssh hosts that take pool {} serve a node",
                    self.cfg.hosts.len(),
                    spec.pool
                )),
            });
        };
        let host = &self.cfg.hosts[i];
        let inst = HostInstance {
            node: spec.node.clone(),
            provider_id: format!("{}/{}", host.name(), spec.node),
            instance_type: spec.instance_type.clone(),
            state: HostAgentState::Running,
            tags: spec.tags.clone(),
            created_at: self.clock.now(),
        };
        let token = spec
            .bootstrap_token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .unwrap_or_default();
        self.with_host(i, async |h, s| {
            // The record first: a daemon that dies half way finds the host
            // taken by this node, adopts it or collects it.
            Self::write_instance(h, s, &inst).await?;
            let dir = Self::run(
                h,
                s,
                "resolve the fleet dir",
                script::RESOLVE,
                &[h.dir()],
                None,
            )
            .await?;
            let config = self.agent_config(h, spec, &format!("{}/node", dir.trim()));
            let bin = self.install_agent(h, s).await?;
            let files: [&[u8]; 3] = [
                config.as_bytes(),
                self.ctx.ca_pem.as_bytes(),
                token.as_bytes(),
            ];
            for (name, bytes) in NODE_FILES.iter().zip(files) {
                let path = format!("{}/node/{name}", h.dir());
                Self::run(
                    h,
                    s,
                    "write the agent's files",
                    script::PUT,
                    &[&path, "600"],
                    Some(bytes),
                )
                .await?;
            }
            Self::run(
                h,
                s,
                "start the agent",
                script::START,
                &[h.dir(), &bin],
                None,
            )
            .await?;
            Ok(())
        })
        .await?;
        Ok(self.instance(host, &inst))
    }

    async fn start(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let bin = match &self.cfg.remote_agent_bin {
            Some(b) => b.clone(),
            None => "bin/fleet-agent".to_owned(),
        };
        let start = ("start the agent", script::START, bin.as_str());
        self.agent_to(r, start, HostAgentState::Running).await
    }

    async fn stop(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let tenths = self.stop_tenths();
        let stop = ("stop the agent", script::STOP, tenths.as_str());
        self.agent_to(r, stop, HostAgentState::Stopped).await
    }

    async fn resize(&self, _: &InstanceRef, _: &InstanceType) -> Result<Instance, ProviderError> {
        Err(ProviderError::Unsupported(
            "resize: an ssh host is the machine it is".into(),
        ))
    }

    async fn snapshot(&self, _: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        Err(ProviderError::Unsupported(
            "snapshots on the ssh provider".into(),
        ))
    }

    /// Stops the agent and removes the node's files; the machine stays.
    async fn delete(&self, r: &InstanceRef) -> Result<(), ProviderError> {
        let Some(i) = self.host_of(r) else {
            // Not a host of the list (any more): nothing of ours to remove.
            tracing::warn!(provider_id = %r.provider_id, "delete of an instance on no configured host");
            return Ok(());
        };
        let tenths = self.stop_tenths();
        self.with_host(i, async |h, s| {
            let ours = Self::read_instance(h, s)
                .await?
                .is_some_and(|x| x.provider_id == r.provider_id);
            if !ours {
                return Ok(()); // deleted already, or another node's now
            }
            Self::run(
                h,
                s,
                "stop the agent",
                script::STOP,
                &[h.dir(), &tenths],
                None,
            )
            .await?;
            Self::run(h, s, "remove the node", script::CLEAR, &[h.dir()], None).await?;
            Ok(())
        })
        .await
    }

    /// Every host's instance; an unreachable host fails the call (a node
    /// on it must not look gone because its host did not answer).
    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        let reads = (0..self.cfg.hosts.len())
            .map(|i| self.with_host(i, async |h, s| Self::read_instance(h, s).await));
        let mut out = Vec::new();
        for (i, read) in futures_util::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            if let Some(inst) = read?
                && tags.matches(&inst.tags)
            {
                out.push(self.instance(&self.cfg.hosts[i], &inst));
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node).then(a.provider_id.cmp(&b.provider_id)));
        Ok(out)
    }
}
