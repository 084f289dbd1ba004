//! The daemon as a process: everything `fleet-daemon` wires together.
//!
//! Opens the redb store in the data dir, takes the leader lease (fencing
//! every write with its epoch), loads or creates the pool CA and the sealing
//! key, listens for agents and claim clients on TLS WebSocket, serves the
//! HTTP API, and runs the control loop over the configured provider. Writes
//! `daemon.json` (addresses and trust files) for `fleetctl`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::ids::Millis;
use fleet_core::protocol::{
    CREDENTIALS_FORMAT, CredentialsBundle, NodeIdentity, SealedCredentials,
};
use fleet_core::provider::Provider;
use fleet_core::store::Store;
use fleet_transport_ws::{
    AgentAuth, AgentHelloInfo, AuthError, ServerTlsConfig, WsConfig, WsServer,
};
use serde::{Deserialize, Serialize};

use crate::auth::{ADMIN_TOKEN_FILE, ApiTokens, BootstrapRegistry, write_private};
use crate::ca::PoolCa;
use crate::config::{DaemonConfig, ProviderConfig};
use crate::driver::{Clock, CredentialIssuer, CredentialRequest, Fleet, SystemClock};
use crate::lease::LeaderLease;
use crate::local::{LocalOptions, LocalProvider};
use crate::seal::{SEAL_PUB_FILE, Sealer};
use crate::store::{OpenError, RedbStore};

/// The discovery file `fleetctl` reads.
pub const DISCOVERY_FILE: &str = "daemon.json";

/// Node identities (agent mTLS and gateway certificates) last this long.
const NODE_CERT_TTL_MS: Millis = 30 * 24 * 3_600_000;

/// What `daemon.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    /// HTTP API base URL.
    pub http: String,
    /// WebSocket base URL (`wss://host:port`; paths `/v1/agent`, `/v1/claims`).
    pub ws: String,
    /// The pool CA certificate file.
    pub ca_file: PathBuf,
    /// The daemon's Ed25519 signer public key file (base64).
    pub signer_file: PathBuf,
    /// The namespace.
    pub namespace: String,
    /// The daemon's process id.
    pub pid: u32,
}

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A setup step failed.
    #[error("{step}: {error}")]
    Setup {
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        error: String,
    },
    /// Leadership was lost to another daemon.
    #[error("lost the leader lease: {0}")]
    LostLeadership(String),
}

fn setup(step: &'static str) -> impl Fn(String) -> ServeError {
    move |error| ServeError::Setup { step, error }
}

/// Mints per-claim certificates with the pool CA and seals them.
struct CaIssuer {
    ca: Arc<PoolCa>,
    sealer: Arc<Sealer>,
    clock: Arc<dyn Clock>,
}

#[async_trait]
impl CredentialIssuer for CaIssuer {
    async fn issue(&self, req: CredentialRequest) -> Result<SealedCredentials, String> {
        let ca = self.ca.clone();
        let sealer = self.sealer.clone();
        let now = self.clock.now();
        tokio::task::spawn_blocking(move || {
            let cert = ca
                .issue_claim_cert(&req.claim, now, req.expires_at)
                .map_err(|e| e.to_string())?;
            let bundle = CredentialsBundle {
                format: CREDENTIALS_FORMAT.to_owned(),
                claim_id: req.claim.clone(),
                workspace: req.workspace,
                node: req.node,
                endpoint: req.endpoint,
                expires_at: req.expires_at,
                ca_pem: ca.ca_pem().to_owned(),
                cert_pem: cert.cert_pem,
                key_pem: cert.key_pem,
            };
            sealer
                .seal(&bundle, &req.recipient)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("credential task failed: {e}"))?
    }
}

/// Authenticates agents: a single-use bootstrap token gets a fresh node
/// identity from the pool CA; afterwards the agent's certificate must name
/// the node its hello names.
struct NodeAuth {
    tokens: Arc<BootstrapRegistry>,
    ca: Arc<PoolCa>,
    clock: Arc<dyn Clock>,
}

#[async_trait]
impl AgentAuth for NodeAuth {
    async fn authenticate(
        &self,
        hello: &AgentHelloInfo,
    ) -> Result<Option<NodeIdentity>, AuthError> {
        if let Some(cert_node) = &hello.cert_node {
            if cert_node == &hello.node {
                return Ok(None);
            }
            return Err(AuthError::NodeMismatch {
                cert: cert_node.clone(),
                hello: hello.node.clone(),
            });
        }
        let Some(token) = &hello.bootstrap_token else {
            return Err(AuthError::NoCredentials);
        };
        if !self.tokens.consume(&hello.node, token.expose()) {
            return Err(AuthError::BadToken);
        }
        let now = self.clock.now();
        let hosts = vec!["localhost".to_owned(), hello.peer.ip().to_string()];
        self.ca
            .issue_node_identity(&hello.node, &hosts, now, now + NODE_CERT_TTL_MS)
            .map(Some)
            .map_err(|e| AuthError::Unavailable(e.to_string()))
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

/// Opens the store, waiting while another daemon holds it: with redb the
/// data dir's lock is the leadership, so a second daemon on the same dir
/// stays a follower until the first exits.
async fn open_store(data_dir: &Path, leader: &AtomicBool) -> Result<RedbStore, ServeError> {
    let mut warned = false;
    loop {
        let dir = data_dir.to_owned();
        let opened = tokio::task::spawn_blocking(move || RedbStore::open(&dir))
            .await
            .map_err(|e| setup("opening the store")(e.to_string()))?;
        match opened {
            Ok(store) => return Ok(store),
            Err(OpenError::Locked { path }) => {
                leader.store(false, Ordering::Relaxed);
                if !warned {
                    tracing::warn!(path = %path.display(), "store held by another daemon; waiting as follower");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(setup("opening the store")(e.to_string())),
        }
    }
}

/// Runs the daemon until `shutdown` resolves. `ready` is called with the
/// discovery info once everything listens.
pub async fn serve(
    cfg: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&Discovery),
) -> Result<(), ServeError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let data_dir = cfg.data_dir();
    create_private_dir(&data_dir)
        .map_err(|e| setup("creating the data dir")(format!("{}: {e}", data_dir.display())))?;
    let data_dir = data_dir
        .canonicalize()
        .map_err(|e| setup("resolving the data dir")(e.to_string()))?;
    let leader = Arc::new(AtomicBool::new(false));

    // The HTTP API comes up first: a follower serves health and says so.
    // HTTP API.
    let tokens = Arc::new(
        ApiTokens::load(&data_dir).map_err(|e| setup("loading API tokens")(e.to_string()))?,
    );
    if tokens.is_empty() {
        let token = tokens
            .create("admin", None, clock.now())
            .map_err(|e| setup("creating the admin token")(e.to_string()))?;
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        write_private(&path, token.expose().as_bytes())
            .map_err(|e| setup("writing the admin token")(e.to_string()))?;
        eprintln!(
            "fleet-daemon: created the admin API token (shown once; also in {}):\n  {}",
            path.display(),
            token.expose()
        );
    }
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|e| setup("listening for HTTP")(format!("{}: {e}", cfg.http.listen)))?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| setup("listening for HTTP")(e.to_string()))?;
    let fleet_cell: Arc<std::sync::OnceLock<Arc<Fleet>>> = Arc::new(std::sync::OnceLock::new());
    let app = crate::http::router(crate::http::ApiState {
        fleet: fleet_cell.clone(),
        tokens: tokens.clone(),
        leader: leader.clone(),
    });
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await;
    });

    // The store: redb in the data dir (its file lock makes a second daemon a
    // follower), or a JetStream KV bucket shared by several daemons.
    let subjects = fleet_core::subjects::Subjects::new(&cfg.namespace)
        .map_err(|e| setup("namespace")(e.to_string()))?;
    let nats = match &cfg.transport.nats {
        Some(n) => Some(
            n.options()
                .connect()
                .await
                .map_err(|e| setup("connecting to NATS")(e.to_string()))?,
        ),
        None => None,
    };
    let (lease_store, redb): (Arc<dyn Store>, Option<RedbStore>) = match (&cfg.store.nats, &nats) {
        (Some(kv), Some(conn)) => {
            let store = fleet_transport_nats::NatsKvStore::open(conn, &subjects, &kv.options())
                .await
                .map_err(|e| setup("opening the NATS KV bucket")(e.to_string()))?;
            (Arc::new(store), None)
        }
        _ => {
            let store = open_store(&data_dir, &leader).await?;
            (Arc::new(store.clone()), Some(store))
        }
    };
    let holder = format!("{}-{}", hostname(), std::process::id());
    let mut lease = LeaderLease::new(holder, cfg.leader.lease_ms);
    let epoch = loop {
        match lease.try_acquire(&*lease_store, clock.now()).await {
            Ok(Some(epoch)) => break epoch,
            Ok(None) => tokio::time::sleep(Duration::from_millis(cfg.leader.lease_ms / 3)).await,
            Err(e) => return Err(setup("taking the leader lease")(e.to_string())),
        }
    };
    leader.store(true, Ordering::Relaxed);
    tracing::info!(epoch = epoch.0, "leader");
    // With redb every write is fenced by the epoch in the same transaction;
    // a shared KV store relies on revisions, and on the lease: no write once
    // it lapsed by this process's clock (see ARCH.md).
    let write_store: Arc<dyn Store> = match &redb {
        Some(r) => Arc::new(r.fenced(epoch)),
        None => Arc::new(crate::lease::LeaseFencedStore::new(
            lease_store.clone(),
            lease.guard(),
            epoch,
        )),
    };

    let now = clock.now();
    let (ca, sealer) = {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(PoolCa, Sealer), String> {
            let ca = PoolCa::load_or_create(&dir, now).map_err(|e| e.to_string())?;
            let sealer = Sealer::load_or_create(&dir).map_err(|e| e.to_string())?;
            Ok((ca, sealer))
        })
        .await
        .map_err(|e| setup("loading the CA")(e.to_string()))?
        .map_err(setup("loading the CA"))?
    };
    let ca = Arc::new(ca);
    let ca_file = data_dir.join(crate::ca::CA_CERT_FILE);

    // Agents and claim clients: TLS WebSocket with the daemon's certificate
    // from the pool CA; agents' client certificates verified against it.
    let ws_listen = cfg.transport.ws.listen;
    let mut hosts = vec!["localhost".to_owned(), ws_listen.ip().to_string()];
    hosts.extend(cfg.transport.ws.hosts.iter().cloned());
    let server_cert = ca
        .issue_server_cert(&hosts, now, now + 365 * 24 * 3_600_000)
        .map_err(|e| setup("issuing the server certificate")(e.to_string()))?;
    let tls = ServerTlsConfig {
        cert_chain_pem: server_cert.cert_pem,
        key_pem: server_cert.key_pem,
        client_ca_pem: Some(ca.ca_pem().to_owned()),
    };
    let bootstrap = Arc::new(BootstrapRegistry::default());
    let auth = Arc::new(NodeAuth {
        tokens: bootstrap.clone(),
        ca: ca.clone(),
        clock: clock.clone(),
    });
    let mut ws_config = WsConfig::default();
    ws_config.heartbeat_interval_ms = cfg.timing.heartbeat_interval_ms;
    // Claim-plane callers present an API token: an operator's opens every
    // workspace, a limited one only its own.
    let (ws, ws_addr) = WsServer::bind_with_claim_auth(ws_listen, &tls, auth, tokens, ws_config)
        .await
        .map_err(|e| setup("listening for agents")(e.to_string()))?;
    let ws_url = format!("wss://{}", url_host(ws_addr));

    let provider: Arc<dyn Provider> = match &cfg.provider {
        ProviderConfig::Local {
            agent_bin,
            max_nodes,
        } => Arc::new(LocalProvider::new(
            LocalOptions {
                base_dir: data_dir.join("local"),
                agent_bin: agent_binary(agent_bin.as_deref()),
                daemon_url: format!("{ws_url}{}", fleet_transport_ws::AGENT_PATH),
                ca_file: ca_file.clone(),
                max_nodes: *max_nodes,
                heartbeat_interval_ms: cfg.timing.heartbeat_interval_ms,
                stop_timeout: Duration::from_secs(30),
            },
            clock.clone(),
        )),
        ProviderConfig::Memory => {
            Arc::new(fleet_core::memory::provider::MemoryProvider::ec2_like())
        }
        ProviderConfig::Hetzner(h) => Arc::new(
            hetzner_provider(h, ca.ca_pem(), &hosts)
                .map_err(|e| setup("configuring the Hetzner provider")(e))?,
        ),
        ProviderConfig::Aws(a) => Arc::new(
            aws_provider(a, ca.ca_pem(), &hosts)
                .map_err(|e| setup("configuring the EC2 provider")(e))?,
        ),
    };

    let mut extra_transports: Vec<Arc<dyn fleet_core::transport::Transport>> = Vec::new();
    if let Some(conn) = &nats {
        let t = fleet_transport_nats::NatsTransport::start(
            conn,
            subjects.clone(),
            fleet_transport_nats::NatsTransportConfig::default(),
        )
        .await
        .map_err(|e| setup("serving the claim plane on NATS")(e.to_string()))?;
        extra_transports.push(Arc::new(t));
    }
    let mut builder = Fleet::builder()
        .store(write_store)
        .provider(provider)
        .transport(Arc::new(ws))
        .timing(cfg.timing.clone())
        .namespace(cfg.namespace.clone())
        .epoch(epoch)
        .issuer(Arc::new(CaIssuer {
            ca: ca.clone(),
            sealer: Arc::new(sealer),
            clock: clock.clone(),
        }))
        .bootstrap_tokens(bootstrap)
        .clock(clock.clone());
    for t in extra_transports {
        builder = builder.transport(t);
    }
    for p in &cfg.pools {
        builder = builder.pool(p.spec());
    }
    for (ws, q) in &cfg.quota {
        builder = builder.quota(ws.clone(), q.clone());
    }
    let fleet = Arc::new(
        builder
            .start()
            .await
            .map_err(|e| setup("starting the control loop")(e.to_string()))?,
    );

    if fleet_cell.set(fleet.clone()).is_err() {
        return Err(setup("starting the control loop")("already started".into()));
    }

    let discovery = Discovery {
        http: format!("http://{}", url_host(http_addr)),
        ws: ws_url,
        ca_file,
        signer_file: data_dir.join(SEAL_PUB_FILE),
        namespace: cfg.namespace.clone(),
        pid: std::process::id(),
    };
    let json = serde_json::to_vec_pretty(&discovery)
        .map_err(|e| setup("writing daemon.json")(e.to_string()))?;
    write_private(&data_dir.join(DISCOVERY_FILE), &json)
        .map_err(|e| setup("writing daemon.json")(e.to_string()))?;
    tracing::info!(http = %discovery.http, ws = %discovery.ws, data_dir = %data_dir.display(), "fleet-daemon serving");
    ready(&discovery);

    // Keep the lease; losing it means another daemon leads: stop at once.
    let renew_every = Duration::from_millis((cfg.leader.lease_ms / 3).max(100));
    let lost = async {
        loop {
            tokio::time::sleep(renew_every).await;
            if let Err(e) = lease.renew(&*lease_store, clock.now()).await {
                return e.to_string();
            }
        }
    };
    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        why = lost => Err(ServeError::LostLeadership(why)),
    };
    tracing::info!("fleet-daemon stopping");
    leader.store(false, Ordering::Relaxed);
    let _ = stop_http.send(());
    let _ = http.await;
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.shutdown().await;
    }
    if outcome.is_ok() {
        let _ = lease.release(&*lease_store, clock.now()).await;
    }
    outcome
}

fn url_host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), "data dir is readable by others; tightening to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The largest user data the cloud providers accept (Hetzner 32 KiB; EC2
/// 16 KiB before base64, checked by the AWS provider's caller below).
const MAX_USER_DATA_BYTES: u64 = 32 * 1024;

/// What a cloud server needs to join: the user data template and the
/// values the daemon fills into it, checked before any server is made.
struct AgentBootstrap {
    user_data: String,
    vars: std::collections::BTreeMap<String, String>,
}

impl AgentBootstrap {
    /// Reads the template at `user_data` (at most `max_bytes`, using
    /// `{{bootstrap_token}}`) and checks that agents dialing `daemon_url`
    /// will accept the daemon's certificate (its host in `cert_hosts`).
    fn load(
        daemon_url: &str,
        user_data: &Path,
        max_bytes: u64,
        ca_pem: &str,
        cert_hosts: &[String],
    ) -> Result<AgentBootstrap, String> {
        let host = daemon_url
            .strip_prefix("wss://")
            .map(|rest| rest.split(['/', '?']).next().unwrap_or(rest))
            .map(|authority| match authority.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|c| c.is_ascii_digit()) => host,
                _ => authority,
            })
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| format!("daemon_url {daemon_url:?} must be a wss:// URL"))?;
        if !cert_hosts.iter().any(|c| c == host) {
            return Err(format!(
                "daemon_url host {host:?} is not in [transport.ws] hosts {cert_hosts:?}: agents would refuse the daemon's certificate"
            ));
        }
        let meta = std::fs::metadata(user_data)
            .map_err(|e| format!("user_data {}: {e}", user_data.display()))?;
        if meta.len() > max_bytes {
            return Err(format!(
                "user_data {}: {} bytes; the provider accepts at most {max_bytes}",
                user_data.display(),
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(user_data)
            .map_err(|e| format!("user_data {}: {e}", user_data.display()))?;
        if !text.contains("{{bootstrap_token}}") {
            return Err(format!(
                "user_data {}: the template never uses {{{{bootstrap_token}}}}, so no agent could join",
                user_data.display()
            ));
        }
        let agent_url = format!(
            "{}{}",
            daemon_url.trim_end_matches('/'),
            fleet_transport_ws::AGENT_PATH
        );
        let vars = [
            ("daemon_url".to_owned(), agent_url),
            ("ca_pem".to_owned(), ca_pem.trim_end().to_owned()),
        ]
        .into();
        Ok(AgentBootstrap {
            user_data: text,
            vars,
        })
    }
}

/// A secret from `file` (trimmed), else from the environment variable `env`.
fn secret_from(file: Option<&Path>, env: &str, what: &str) -> Result<Option<String>, String> {
    let value = match file {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?
        }
        None => std::env::var(env).unwrap_or_default(),
    };
    let value = value.trim();
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

/// A Hetzner provider from `[provider] kind = "hetzner"`: the token from its
/// file or `$HCLOUD_TOKEN`, the user data template from its file.
fn hetzner_provider(
    h: &crate::config::HetznerProviderConfig,
    ca_pem: &str,
    cert_hosts: &[String],
) -> Result<fleet_provider_hetzner::HetznerProvider, String> {
    use fleet_provider_hetzner::{HetznerConfig, HetznerProvider};
    let boot = AgentBootstrap::load(
        &h.daemon_url,
        &h.user_data,
        MAX_USER_DATA_BYTES,
        ca_pem,
        cert_hosts,
    )?;
    let token = secret_from(h.token_file.as_deref(), "HCLOUD_TOKEN", "token_file")?
        .ok_or("no API token: set token_file or HCLOUD_TOKEN")?;
    let mut cfg = HetznerConfig::new(fleet_core::protocol::Secret::new(token), h.location.clone());
    if let Some(url) = &h.api_url {
        cfg.api_url = url.clone();
    }
    if let Some(rate) = &h.eur_to_usd {
        let m: fleet_core::Money = rate
            .parse()
            .map_err(|e| format!("eur_to_usd {rate:?}: {e}"))?;
        cfg.eur_to_usd_micros = u64::try_from(m.micros())
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| format!("eur_to_usd {rate:?} must be positive"))?;
    }
    cfg.server_types = h.server_types.clone();
    cfg.ssh_keys = h.ssh_keys.clone();
    cfg.max_instances = h.max_instances;
    cfg.user_data = Some(boot.user_data);
    cfg.user_data_vars = boot.vars;
    HetznerProvider::new(cfg).map_err(|e| e.to_string())
}

/// An EC2 provider from `[provider] kind = "aws"`: credentials from the
/// files named or the standard `AWS_*` variables.
fn aws_provider(
    a: &crate::config::AwsProviderConfig,
    ca_pem: &str,
    cert_hosts: &[String],
) -> Result<fleet_provider_aws::Ec2Provider, String> {
    use fleet_provider_aws::{CredentialSource, Credentials, Ec2Config, Ec2Provider};
    // EC2 takes 16 KiB of user data before base64.
    let boot = AgentBootstrap::load(&a.daemon_url, &a.user_data, 16 * 1024, ca_pem, cert_hosts)?;
    let access_key_id = secret_from(
        a.access_key_id_file.as_deref(),
        "AWS_ACCESS_KEY_ID",
        "access_key_id_file",
    )?;
    let secret_access_key = secret_from(
        a.secret_access_key_file.as_deref(),
        "AWS_SECRET_ACCESS_KEY",
        "secret_access_key_file",
    )?;
    let credentials = match (access_key_id, secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => CredentialSource::Static(Credentials {
            access_key_id,
            secret_access_key,
            session_token: secret_from(None, "AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN")?,
        }),
        (None, None) => {
            tracing::info!("no AWS keys configured: using the instance role (IMDSv2)");
            CredentialSource::instance_role()
        }
        _ => {
            return Err(
                "an AWS access key id without its secret (or the reverse): set both, or neither to use the instance role"
                    .to_owned(),
            );
        }
    };
    let mut cfg = Ec2Config::new(a.region.clone(), credentials);
    if let Some(endpoint) = &a.endpoint {
        cfg.endpoint = endpoint.clone();
    }
    cfg.instance_types = a.instance_types.clone();
    cfg.prices = a.prices.clone();
    if let Some(p) = a.spot_per_mille {
        cfg.spot_per_mille = p;
    }
    if let Some(gb) = a.root_volume_gb {
        cfg.root_volume_gb = gb;
    }
    cfg.subnet_id = a.subnet_id.clone();
    cfg.security_group_ids = a.security_group_ids.clone();
    cfg.key_name = a.key_name.clone();
    cfg.instance_profile = a.instance_profile.clone();
    cfg.max_instances = a.max_instances;
    cfg.user_data = Some(boot.user_data);
    cfg.user_data_vars = boot.vars;
    Ec2Provider::new(cfg).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HetznerProviderConfig;

    /// A config whose files live in their own subdirectory of `dir`.
    fn config(dir: &Path, template: &str) -> HetznerProviderConfig {
        let dir = tempfile::tempdir_in(dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .keep();
        let token = dir.join("token");
        std::fs::write(&token, "secret\n").unwrap_or_else(|e| panic!("{e}"));
        let user_data = dir.join("user-data.sh");
        std::fs::write(&user_data, template).unwrap_or_else(|e| panic!("{e}"));
        HetznerProviderConfig {
            location: "fsn1".to_owned(),
            token_file: Some(token),
            daemon_url: "wss://fleet.example.com:7443".to_owned(),
            user_data,
            server_types: Vec::new(),
            ssh_keys: Vec::new(),
            max_instances: None,
            api_url: None,
            eur_to_usd: None,
        }
    }

    #[test]
    fn hetzner_settings_are_checked_before_any_server_is_made() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let hosts = vec!["fleet.example.com".to_owned()];
        let good = config(dir.path(), "token={{bootstrap_token}}");
        assert!(hetzner_provider(&good, "CA", &hosts).is_ok());

        let err = |c: &HetznerProviderConfig, hosts: &[String]| {
            hetzner_provider(c, "CA", hosts).err().unwrap_or_default()
        };
        assert!(err(&good, &["other.host".to_owned()]).contains("[transport.ws] hosts"));
        let mut c = good.clone();
        c.daemon_url = "https://fleet.example.com".to_owned();
        assert!(err(&c, &hosts).contains("wss://"));
        let mut c = good.clone();
        c.eur_to_usd = Some("-1".to_owned());
        assert!(err(&c, &hosts).contains("eur_to_usd"));
        let c = config(dir.path(), "no token here");
        assert!(err(&c, &hosts).contains("bootstrap_token"));
        let mut c = good.clone();
        std::fs::write(dir.path().join("blank"), "  \n").unwrap_or_else(|e| panic!("{e}"));
        c.token_file = Some(dir.path().join("blank"));
        assert!(err(&c, &hosts).contains("no API token"));
        let big = dir.path().join("big.sh");
        std::fs::write(&big, "x".repeat(40 * 1024)).unwrap_or_else(|e| panic!("{e}"));
        let mut c = good;
        c.user_data = big;
        assert!(err(&c, &hosts).contains("at most"));
    }

    #[test]
    fn aws_settings_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let user_data = dir.path().join("user-data.sh");
        std::fs::write(&user_data, "t={{bootstrap_token}}").unwrap_or_else(|e| panic!("{e}"));
        let key = dir.path().join("key");
        std::fs::write(&key, "AKID\n").unwrap_or_else(|e| panic!("{e}"));
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s\n").unwrap_or_else(|e| panic!("{e}"));
        let hosts = vec!["fleet.example.com".to_owned()];
        let good = crate::config::AwsProviderConfig {
            region: "eu-west-1".to_owned(),
            access_key_id_file: Some(key),
            secret_access_key_file: Some(secret),
            daemon_url: "wss://fleet.example.com:7443".to_owned(),
            user_data,
            instance_types: Vec::new(),
            prices: [("c7i.large".to_owned(), "0.099".to_owned())].into(),
            spot_per_mille: None,
            root_volume_gb: None,
            subnet_id: None,
            security_group_ids: Vec::new(),
            key_name: None,
            instance_profile: None,
            max_instances: None,
            endpoint: None,
        };
        assert!(aws_provider(&good, "CA", &hosts).is_ok());
        let err = |c: &crate::config::AwsProviderConfig| {
            aws_provider(c, "CA", &hosts).err().unwrap_or_default()
        };
        let mut c = good.clone();
        c.prices.insert("m7i.large".to_owned(), "lots".to_owned());
        assert!(err(&c).contains("prices.m7i.large"), "{}", err(&c));
        let mut c = good.clone();
        c.access_key_id_file = Some(dir.path().join("nope"));
        assert!(err(&c).contains("access_key_id_file"), "{}", err(&c));
        let mut c = good.clone();
        c.daemon_url = "wss://elsewhere:7443".to_owned();
        assert!(err(&c).contains("[transport.ws] hosts"), "{}", err(&c));
        // A key id without its secret is a mistake; neither means the
        // instance role (unless the environment has keys).
        if std::env::var_os("AWS_SECRET_ACCESS_KEY").is_none() {
            let mut c = good.clone();
            c.secret_access_key_file = None;
            assert!(err(&c).contains("without its secret"), "{}", err(&c));
        }
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
            && std::env::var_os("AWS_SECRET_ACCESS_KEY").is_none()
        {
            let mut c = good;
            c.access_key_id_file = None;
            c.secret_access_key_file = None;
            assert!(aws_provider(&c, "CA", &hosts).is_ok());
        }
    }
}
