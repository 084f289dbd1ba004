//! `daemon.toml`: the daemon's configuration, validated up front so a bad
//! file fails with a message naming the key. With no file the daemon runs
//! the embedded default: a redb store in a local data dir, WebSocket and
//! HTTP on loopback, one pool of local nodes (real `fleet-agent` processes on
//! this host).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleet_core::Workspace;
use fleet_core::arbitrate::Quota;
pub use fleet_core::config::ConfigError;
use fleet_core::controller::Timing;
use fleet_core::strategy::PoolSpec;
use serde::Deserialize;

/// The largest config file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = fleet_core::protocol::DAEMON_CONFIG_ENV;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where the store, CA, keys and tokens live (default
    /// `$XDG_DATA_HOME/fleet`, else `./.fleet`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Where the daemon keeps logs (default `<data_dir>/logs`): the agent
    /// logs of deleted local nodes, in `agents/`.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// `[agent_logs]`: how long and how many deleted nodes' agent logs are
    /// kept.
    #[serde(default)]
    pub agent_logs: AgentLogsConfig,
    /// Subject and tag namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// HTTP API.
    #[serde(default)]
    pub http: HttpConfig,
    /// Transports.
    #[serde(default)]
    pub transport: TransportConfig,
    /// The provider.
    #[serde(default)]
    pub provider: ProviderConfig,
    /// Pools: `[[pool]]` tables, each a [`PoolSpec`] (the simulator's
    /// `pool` is the same type). None: the default pool.
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolSpec>,
    /// Per-workspace quotas.
    #[serde(default)]
    pub quota: BTreeMap<Workspace, Quota>,
    /// Where records live (default: redb in the data dir).
    #[serde(default)]
    pub store: StoreConfig,
    /// Controller timers.
    #[serde(default)]
    pub timing: Timing,
    /// Leader lease.
    #[serde(default)]
    pub leader: LeaderConfig,
    /// `[alerts]`: how job escalations are delivered to their channels.
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// `[artifacts]`: how much of job artifacts is kept.
    #[serde(default)]
    pub artifacts: crate::artifacts::ArtifactsConfig,
}

fn default_namespace() -> String {
    fleet_core::subjects::DEFAULT_NAMESPACE.to_owned()
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address (default `127.0.0.1:7080`; port 0 picks one).
    #[serde(default = "default_http")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http(),
        }
    }
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7080))
}

/// `[transport]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// `[transport.ws]`: agents and claim clients over TLS WebSocket.
    #[serde(default)]
    pub ws: WsConfig,
    /// `[transport.nats]`: also serve the claim plane on NATS subjects (and
    /// the connection a `[store.nats]` uses).
    #[serde(default)]
    pub nats: Option<NatsSection>,
}

/// `[transport.nats]`: how to reach NATS.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// Server URLs.
    pub urls: Vec<String>,
    /// A `.creds` file.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// A file with an nkey seed.
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// A shared token (prefer a file-based secret).
    #[serde(default)]
    pub token: Option<fleet_core::protocol::Secret>,
    /// User name.
    #[serde(default)]
    pub user: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<fleet_core::protocol::Secret>,
    /// A PEM CA file; setting it requires TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Require TLS.
    #[serde(default)]
    pub tls_required: bool,
    /// Reply inbox prefix of the daemon's connection.
    #[serde(default)]
    pub inbox_prefix: Option<String>,
    /// Request timeout.
    #[serde(default = "default_nats_timeout")]
    pub request_timeout_ms: u64,
}

fn default_nats_timeout() -> u64 {
    5_000
}

impl std::fmt::Debug for NatsSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are redacted by their type; URLs may carry a password.
        f.debug_struct("NatsSection")
            .field("urls", &self.urls.len())
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "nats")]
impl NatsSection {
    /// As the transport crate's connection options.
    pub fn options(&self) -> fleet_transport_nats::NatsConfig {
        fleet_transport_nats::NatsConfig {
            urls: self.urls.clone(),
            creds_file: self.creds_file.clone(),
            nkey_seed_file: self.nkey_seed_file.clone(),
            token: self.token.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_required: self.tls_required,
            inbox_prefix: self.inbox_prefix.clone(),
            request_timeout_ms: self.request_timeout_ms,
            name: Some("fleet-daemon".to_owned()),
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `[store.nats]`: keep records in a JetStream KV bucket (shared by
    /// several daemons; the leader lease decides who writes).
    #[serde(default)]
    pub nats: Option<NatsStoreSection>,
}

/// `[store.nats]`: bucket settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsStoreSection {
    /// Bucket (default: the namespace with `.` → `_`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Replicas (3 in production).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Revisions kept per key.
    #[serde(default = "default_history")]
    pub history: i64,
    /// Largest value.
    #[serde(default = "default_max_value")]
    pub max_value_bytes: usize,
}

fn default_replicas() -> usize {
    1
}
fn default_history() -> i64 {
    5
}
fn default_max_value() -> usize {
    1 << 20
}

#[cfg(feature = "nats")]
impl NatsStoreSection {
    /// As the transport crate's bucket settings.
    pub fn options(&self) -> fleet_transport_nats::KvConfig {
        fleet_transport_nats::KvConfig {
            bucket: self.bucket.clone(),
            replicas: self.replicas,
            history: self.history,
            max_value_bytes: self.max_value_bytes,
            ..Default::default()
        }
    }
}

/// `[transport.ws]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsConfig {
    /// Listen address (default `127.0.0.1:7443`; port 0 picks one).
    #[serde(default = "default_ws")]
    pub listen: SocketAddr,
    /// Host names and IPs the daemon's certificate is issued for, besides
    /// `localhost` and the listen IP.
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            listen: default_ws(),
            hosts: Vec::new(),
        }
    }
}

fn default_ws() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}

/// `[provider]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ProviderConfig {
    /// Nodes are `fleet-agent` processes on this host.
    Local {
        /// The agent binary (default: `fleet-agent` next to the daemon's
        /// executable, else on `PATH`).
        #[serde(default)]
        agent_bin: Option<PathBuf>,
        /// Most local nodes at once.
        #[serde(default = "default_local_max")]
        max_nodes: u32,
        /// Where the nodes live (default `<data_dir>/local`): this host's
        /// "cloud account". A daemon restored into another data dir names
        /// the old one's here to serve the nodes it had.
        #[serde(default)]
        dir: Option<PathBuf>,
        /// What a local node is charged per hour, in dollars (default 0: a
        /// process on this host costs nothing); set one to see cost
        /// reports, the console's charts and budgets at work locally.
        #[serde(default)]
        hourly_price: Option<String>,
    },
    /// Machines of your own, reached over SSH (`[[provider.hosts]]`):
    /// each runs one node's `fleet-agent`.
    Ssh(fleet_provider_ssh::SshConfig),
    /// Containers on this host (Podman or Docker), each running one node's
    /// `fleet-agent`.
    Container(fleet_provider_container::ContainerConfig),
    /// Servers in a Hetzner Cloud project.
    Hetzner(HetznerProviderConfig),
    /// Instances in an AWS account (EC2).
    Aws(AwsProviderConfig),
}

/// `[provider] kind = "aws"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsProviderConfig {
    /// `us-east-1`, … (else `AWS_REGION`, the profile's `region`, IMDS).
    #[serde(default)]
    pub region: Option<String>,
    /// The shared-config profile (`~/.aws/config`, or `AWS_CONFIG_FILE`)
    /// to take credentials and region from (else `AWS_PROFILE`, else
    /// `default`): static keys, `role_arn` assume-role, SSO,
    /// `credential_process`.
    #[serde(default)]
    pub profile: Option<String>,
    /// File with an access key id; with `secret_access_key_file`, these
    /// keys are used instead of the SDK's credential chain (environment,
    /// profile, SSO, web identity, container credentials, instance role).
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// File with the secret access key of `access_key_id_file`.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// The daemon's WebSocket address as new instances reach it; its host
    /// must be one of `[transport.ws] hosts`.
    pub daemon_url: String,
    /// The user data template that starts the agent (same placeholders as
    /// the Hetzner provider's).
    pub user_data: PathBuf,
    /// Sell only these instance types (default: every priced one).
    #[serde(default)]
    pub instance_types: Vec<String>,
    /// On-demand dollars per hour by type (`"c7i.large" = "0.08925"`),
    /// over the built-in us-east-1 list; required in other regions.
    #[serde(default)]
    pub prices: BTreeMap<String, String>,
    /// Spot is priced from `DescribeSpotPriceHistory`; for a type EC2
    /// gives no price for, at this per mille of on-demand (default 350).
    #[serde(default)]
    pub spot_per_mille: Option<u64>,
    /// Root volume GB, for pricing stopped instances (default 30).
    #[serde(default)]
    pub root_volume_gb: Option<u32>,
    /// Subnet for new instances.
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// Whether new instances get a public IPv4 address ($0.005/h each
    /// while running, counted in the cost model unless `false`); unset,
    /// the subnet's auto-assign setting decides and it is counted.
    #[serde(default)]
    pub public_ipv4: Option<bool>,
    /// Security groups for new instances.
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Key pair name.
    #[serde(default)]
    pub key_name: Option<String>,
    /// IAM instance profile name.
    #[serde(default)]
    pub instance_profile: Option<String>,
    /// Most instances at once.
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// API endpoint (default the region's).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `[provider] kind = "hetzner"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HetznerProviderConfig {
    /// Location servers are created in (`fsn1`, `nbg1`, `hel1`, `ash`, …).
    pub location: String,
    /// File holding the project API token (else `$HCLOUD_TOKEN`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The daemon's WebSocket address as new servers reach it
    /// (`wss://fleet.example.com:7443`); its host must be one of
    /// `[transport.ws] hosts`.
    pub daemon_url: String,
    /// The cloud-init user data template that starts the agent
    /// (`{{node}}`, `{{pool}}`, `{{bootstrap_token}}`, `{{daemon_url}}`,
    /// `{{ca_pem}}` are filled in).
    pub user_data: PathBuf,
    /// Sell only these server types (default: all priced in the location).
    #[serde(default)]
    pub server_types: Vec<String>,
    /// SSH key names added to new servers.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Whether new servers get a primary IPv4 address (default true;
    /// €0.0008/h each while the server exists, counted in the cost model);
    /// without, the agent must reach the daemon over IPv6.
    #[serde(default)]
    pub public_ipv4: Option<bool>,
    /// Most servers at once.
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// API base URL (default the public API).
    #[serde(default)]
    pub api_url: Option<String>,
    /// Fixed EUR→USD rate, as a decimal (default `"1.08"`).
    #[serde(default)]
    pub eur_to_usd: Option<String>,
}

fn default_local_max() -> u32 {
    4
}

impl ProviderConfig {
    /// The `kind` that names it in `daemon.toml`, which is also the cargo
    /// feature a cloud provider needs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Local { .. } => "local",
            ProviderConfig::Ssh(_) => "ssh",
            ProviderConfig::Container(_) => "container",
            ProviderConfig::Hetzner(_) => "hetzner",
            ProviderConfig::Aws(_) => "aws",
        }
    }

    /// Whether this build of the daemon has the provider.
    pub fn compiled_in(&self) -> bool {
        match self {
            ProviderConfig::Local { .. }
            | ProviderConfig::Ssh(_)
            | ProviderConfig::Container(_) => true,
            ProviderConfig::Hetzner(_) => cfg!(feature = "hetzner"),
            ProviderConfig::Aws(_) => cfg!(feature = "aws"),
        }
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig::Local {
            agent_bin: None,
            max_nodes: default_local_max(),
            dir: None,
            hourly_price: None,
        }
    }
}

/// `[agent_logs]`: the agent logs of deleted nodes (local provider), kept
/// in `<log_dir>/agents/` within these bounds; the oldest go first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentLogsConfig {
    /// A log is removed this many hours after its agent last wrote to it
    /// (default 168: a week).
    #[serde(default = "default_log_hours")]
    pub max_age_hours: u64,
    /// At most this many logs (default 200).
    #[serde(default = "default_log_files")]
    pub max_files: usize,
    /// At most this many MiB of logs in all (default 1024).
    #[serde(default = "default_log_mb")]
    pub max_mb: u64,
}

impl Default for AgentLogsConfig {
    fn default() -> Self {
        AgentLogsConfig {
            max_age_hours: default_log_hours(),
            max_files: default_log_files(),
            max_mb: default_log_mb(),
        }
    }
}

fn default_log_hours() -> u64 {
    168
}
fn default_log_files() -> usize {
    200
}
fn default_log_mb() -> u64 {
    1024
}

impl AgentLogsConfig {
    /// The local provider's setting, for logs kept in `log_dir`.
    pub fn kept_logs(&self, log_dir: &Path) -> fleet_provider_local::KeptLogs {
        fleet_provider_local::KeptLogs {
            dir: log_dir.join("agents"),
            max_age: std::time::Duration::from_secs(self.max_age_hours.saturating_mul(3_600)),
            max_files: self.max_files,
            max_bytes: self.max_mb.saturating_mul(1 << 20),
        }
    }
}

/// `[leader]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderConfig {
    /// Lease length.
    #[serde(default = "default_lease")]
    pub lease_ms: u64,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            lease_ms: default_lease(),
        }
    }
}

fn default_lease() -> u64 {
    15_000
}

impl DaemonConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        DaemonConfig::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        let mut cfg: DaemonConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("daemon.toml"),
            message: e.to_string(),
        })?;
        if cfg.pools.is_empty() {
            cfg.pools = vec![PoolSpec::default()];
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fleet_core::subjects::Subjects::new(&self.namespace)
            .map_err(|e| ConfigError::invalid("namespace", e.to_string()))?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let at = format!("pool[{i}].");
            if !seen.insert(p.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("{at}name"),
                    format!("pool {} is defined twice", p.name),
                ));
            }
            p.validate().map_err(|e| e.under(&at))?;
        }
        if self.store.nats.is_some() && self.transport.nats.is_none() {
            return Err(ConfigError::invalid(
                "store.nats",
                "needs [transport.nats] for the connection",
            ));
        }
        if let Some(n) = &self.transport.nats
            && n.urls.is_empty()
        {
            return Err(ConfigError::invalid(
                "transport.nats.urls",
                "at least one server URL is required",
            ));
        }
        if self.leader.lease_ms < 1_000 {
            return Err(ConfigError::invalid(
                "leader.lease_ms",
                "must be at least 1000",
            ));
        }
        Ok(())
    }

    /// Whether this build of the daemon has what the config names: the
    /// cloud providers and NATS are cargo features. Not part of [`parse`]
    /// (`fleetctl doctor` checks a config with its own build of this crate).
    ///
    /// [`parse`]: DaemonConfig::parse
    pub fn check_features(&self) -> Result<(), ConfigError> {
        if !self.provider.compiled_in() {
            let kind = self.provider.kind();
            return Err(ConfigError::invalid(
                "provider.kind",
                format!(
                    "this fleet-daemon was built without the `{kind}` provider; build it with `cargo build -p fleet-daemon --features {kind}`"
                ),
            ));
        }
        if !cfg!(feature = "nats") && (self.transport.nats.is_some() || self.store.nats.is_some()) {
            let key = if self.transport.nats.is_some() {
                "transport.nats"
            } else {
                "store.nats"
            };
            return Err(ConfigError::invalid(
                key,
                "this fleet-daemon was built without NATS; build it with `cargo build -p fleet-daemon --features nats`",
            ));
        }
        Ok(())
    }

    /// The data dir: configured, else `$XDG_DATA_HOME/fleet`, else `./.fleet`.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        fleet_client::discovery::standard_data_dir()
    }

    /// The log dir: configured, else `logs` in the data dir.
    pub fn log_dir(&self) -> PathBuf {
        match &self.log_dir {
            Some(d) => d.clone(),
            None => self.data_dir().join("logs"),
        }
    }
}

impl Default for DaemonConfig {
    /// The embedded default (what an empty file means): the local provider
    /// and the default pool ([`PoolSpec::default`]: `default`, cold-started
    /// nodes of the provider's cheapest type — on the local provider,
    /// `local.node`).
    fn default() -> DaemonConfig {
        DaemonConfig {
            data_dir: None,
            log_dir: None,
            agent_logs: AgentLogsConfig::default(),
            namespace: default_namespace(),
            http: HttpConfig::default(),
            transport: TransportConfig::default(),
            provider: ProviderConfig::default(),
            pools: vec![PoolSpec::default()],
            quota: BTreeMap::new(),
            store: StoreConfig::default(),
            timing: Timing::default(),
            leader: LeaderConfig::default(),
            alerts: crate::alerts::AlertsConfig::default(),
            artifacts: crate::artifacts::ArtifactsConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let cfg = DaemonConfig::parse("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.pools.len(), 1);
        assert_eq!(cfg.pools[0].name.as_str(), "default");
        assert!(matches!(cfg.provider, ProviderConfig::Local { .. }));
        assert_eq!(cfg.http.listen.port(), 7080);
        assert_eq!(cfg.log_dir(), cfg.data_dir().join("logs"));
        assert_eq!(cfg.agent_logs, AgentLogsConfig::default());
        assert_eq!(cfg.agent_logs.max_age_hours, 24 * 7);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("namespce = \"x\"", "namespce"),
            ("[http]\nlisten = \"nope\"", "listen"),
            ("[[pool]]\nname = \"a.b\"\ninstance_types = [\"t\"]", "pool"),
            ("[[pool]]\nname = \"a\"\nmin_nodes = 5", "pool[0].min_nodes"),
            (
                "[[pool]]\nname = \"a\"\n[[pool]]\nname = \"a\"",
                "pool[1].name",
            ),
            ("[[pool]]\nslots_per_node = 0", "pool[0].slots_per_node"),
            (
                "[[pool]]\nname = \"a\"\ninstance_types = [\"t\"]\nstrategy = { kind = \"warp\" }",
                "warp",
            ),
            (
                "[[pool]]\nname = \"a\"\ninstance_types = [\"t\"]\nmax_nodes = 0",
                "pool[0].max_nodes",
            ),
            ("[[pool]]\nmax_uses = 0", "pool[0].max_uses"),
            (
                "[[pool]]\n[[pool.schedule]]\nperiods = [\"* 25 * * *\"]",
                "cron expression \"* 25 * * *\"",
            ),
            (
                "[[pool]]\n[[pool.schedule]]\nperiods = [\"* * * * *\"]\ntimezone = \"Mars/Base\"",
                "unknown time zone \"Mars/Base\"",
            ),
            (
                "[[pool]]\n[[pool.schedule]]\nperiods = [\"* * * * *\"]\nidle_count = 2",
                "idle_count",
            ),
            ("[provider]\nkind = \"cloud9\"", "cloud9"),
            (
                "[provider]\nkind = \"hetzner\"\nlocation = \"fsn1\"\nuser_data = \"u.sh\"",
                "daemon_url",
            ),
            (
                "[provider]\nkind = \"hetzner\"\nlocation = \"fsn1\"\ndaemon_url = \"wss://x\"\nuser_data = \"u.sh\"\nregion = \"eu\"",
                "region",
            ),
            (
                "[provider]\nkind = \"ssh\"\ndaemon_url = \"wss://x\"\n[[provider.hosts]]\nhost = \"a\"\nlabels = { r = \"1\" }",
                "labels",
            ),
            (
                "[provider]\nkind = \"ssh\"\n[[provider.hosts]]\nhost = \"a\"",
                "daemon_url",
            ),
            (
                "[provider]\nkind = \"ssh\"\ndaemon_url = \"wss://x\"\nhost_keys = \"whatever\"\nhosts = []",
                "whatever",
            ),
            ("[timing]\nheartbeat_timeout = 3", "heartbeat_timeout"),
            ("[agent_logs]\nmax_days = 3", "max_days"),
            ("[agent_logs]\nmax_files = -1", "max_files"),
            ("namespace = \"bad ns\"", "namespace"),
            ("[store.nats]\nreplicas = 3", "store.nats"),
            ("[transport.nats]\nurls = []", "transport.nats.urls"),
        ];
        for (text, needle) in cases {
            let err = DaemonConfig::parse(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "{text:?} → {err:?}");
        }
    }

    #[test]
    fn a_full_file_parses() {
        let text = r#"
            data_dir = "/var/lib/fleet"
            log_dir = "/var/log/fleet"
            namespace = "fleet.acme"
            [http]
            listen = "127.0.0.1:0"
            [transport.ws]
            listen = "127.0.0.1:0"
            hosts = ["fleet.internal"]
            [provider]
            kind = "local"
            max_nodes = 2
            [[pool]]
            name = "linux"
            instance_types = ["local.node"]
            strategy = { kind = "stopped_pool", size = 2 }
            max_uses = 20
            [[pool.schedule]]
            periods = ["* 7-19 * * mon-fri"]
            timezone = "Europe/Berlin"
            min_idle = 2
            scale_factor = 0.5
            scale_factor_limit = 6
            idle_time_ms = 1200000
            [quota.team-a]
            max_claims = 3
            daily_budget = 25000000
            over_budget = "reject"
            [agent_logs]
            max_age_hours = 24
            max_files = 50
        "#;
        let cfg = DaemonConfig::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.namespace, "fleet.acme");
        let linux = &cfg.pools[0];
        assert_eq!(linux.max_uses, Some(20));
        let period = linux.schedule[0].spec();
        assert_eq!(
            (period.min_idle, period.scale_factor.get()),
            (2, 0.5),
            "{period:?}"
        );
        assert_eq!(period.timezone, "Europe/Berlin");
        let kept = cfg.agent_logs.kept_logs(&cfg.log_dir());
        assert_eq!(kept.dir, Path::new("/var/log/fleet/agents"));
        assert_eq!(kept.max_age, std::time::Duration::from_secs(86_400));
        assert_eq!(kept.max_files, 50);
        assert_eq!(kept.max_bytes, 1024 << 20, "the default size bound");
        let hetzner = r#"
            [provider]
            kind = "hetzner"
            location = "fsn1"
            token_file = "/etc/fleet/hcloud.token"
            daemon_url = "wss://fleet.example.com:7443"
            user_data = "/etc/fleet/cloud-init.sh"
            server_types = ["cx22", "cx32"]
            max_instances = 10
            eur_to_usd = "1.10"
        "#;
        match DaemonConfig::parse(hetzner).map(|c| c.provider) {
            Ok(ProviderConfig::Hetzner(h)) => {
                assert_eq!(h.location, "fsn1");
                assert_eq!(h.server_types, ["cx22", "cx32"]);
                assert_eq!(h.eur_to_usd.as_deref(), Some("1.10"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.pools[0].strategy.name(), "stopped_pool");
        assert_eq!(cfg.quota.len(), 1);
        let quota = cfg
            .quota
            .values()
            .next()
            .unwrap_or_else(|| panic!("no quota"));
        assert_eq!(quota.daily_budget.map(|m| m.micros()), Some(25_000_000));
        assert_eq!(quota.over_budget, fleet_core::arbitrate::OverBudget::Reject);
    }

    #[test]
    fn a_build_without_a_feature_refuses_the_config_that_needs_it() {
        let hetzner = DaemonConfig::parse(
            "[provider]\nkind = \"hetzner\"\nlocation = \"fsn1\"\ndaemon_url = \"wss://x\"\nuser_data = \"u.sh\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let nats = DaemonConfig::parse("[transport.nats]\nurls = [\"nats://127.0.0.1:4222\"]")
            .unwrap_or_else(|e| panic!("{e}"));
        for (cfg, on, feature) in [
            (hetzner, cfg!(feature = "hetzner"), "--features hetzner"),
            (nats, cfg!(feature = "nats"), "--features nats"),
        ] {
            match cfg.check_features() {
                Ok(()) => assert!(on, "{feature}: accepted without the feature"),
                Err(e) => {
                    assert!(!on, "{feature}: refused with the feature: {e}");
                    assert!(e.to_string().contains(feature), "{e}");
                }
            }
        }
        assert!(DaemonConfig::default().check_features().is_ok());
    }
}
