//! The daemon as a process: everything `fleet-daemon` wires together.
//!
//! In order: the HTTP API comes up (a follower answers health and says so),
//! the store opens and the leader lease is taken (every write fenced by its
//! epoch), the pool CA and the sealing key load, the TLS WebSocket listener
//! for agents and claim clients binds, the provider is built, and the
//! runtime starts the control loop. Then `daemon.json` (addresses and trust
//! files) is written for `fleetctl`, and the lease is held until shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fleet_core::clock::Clock;
use fleet_core::protocol::{DISCOVERY_FILE, Discovery};
use fleet_core::store::Store;
use fleet_core::subjects::Subjects;
use fleet_runtime::ca::{CA_CERT_FILE, CA_KEY_FILE, PoolCa};
use fleet_runtime::credentials::CaIssuer;
use fleet_runtime::lease::{LeaderLease, LeaseFencedStore};
use fleet_runtime::seal::{SEAL_PUB_FILE, Sealer};
use fleet_runtime::tokens::{BootstrapRegistry, write_private};
use fleet_runtime::{Fleet, SystemClock};
use fleet_store_redb::{OpenError, RedbStore};
use fleet_transport_ws::{ServerTlsConfig, WsConfig, WsServer};

use crate::auth::{ADMIN_TOKEN_FILE, ApiTokens, NodeAuth};
use crate::config::DaemonConfig;
use crate::providers::{self, ProviderContext};

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

/// Runs the daemon until `shutdown` resolves. `ready` is called with the
/// discovery info once everything listens.
pub async fn serve(
    cfg: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&Discovery),
) -> Result<(), ServeError> {
    cfg.check_features()
        .map_err(|e| setup("checking the config")(e.to_string()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let data_dir = open_data_dir(&cfg)?;
    let leader = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(load_api_tokens(&data_dir, &*clock)?);
    let fleet_cell: Arc<OnceLock<Arc<Fleet>>> = Arc::new(OnceLock::new());
    let alert_stats = Arc::new(crate::alerts::AlertStats::default());
    let artifacts = Arc::new(crate::artifacts::Artifacts::new(
        data_dir.join("artifacts"),
        &cfg.artifacts,
    ));
    let holder = format!("{}-{}", hostname(), std::process::id());
    let lease_store: Arc<OnceLock<Arc<dyn fleet_core::Store>>> = Arc::new(OnceLock::new());
    // What the HTTP API serves from; the same whichever listener starts it.
    let api = crate::http::ApiState {
        fleet: fleet_cell.clone(),
        tokens: tokens.clone(),
        leader: leader.clone(),
        alerts: alert_stats.clone(),
        artifacts: artifacts.clone(),
        lease: crate::http::LeaseView {
            store: lease_store.clone(),
            holder: holder.clone(),
            lease_ms: cfg.leader.lease_ms,
        },
        heartbeat_timeout_ms: cfg.timing.heartbeat_timeout_ms,
        data_dir: data_dir.clone(),
        namespace: cfg.namespace.clone(),
        costs: Arc::default(),
        closing: Arc::new(tokio::sync::watch::Sender::new(false)),
    };
    let closing = api.closing.clone();
    // The console's cost charts: a point a minute while this daemon leads.
    let sampler = tokio::spawn(crate::console::sample_costs(api.clone()));
    // Beyond loopback the API is HTTPS with a certificate from the pool CA.
    // A CA already on disk is only read, so a follower serves at once; on a
    // first start only the leader may create it, so the API waits for it.
    let early_tls = if api_needs_tls(cfg.http.listen) {
        existing_ca(&data_dir, clock.now())
            .await?
            .map(|ca| api_tls(&cfg, &ca, clock.now()))
            .transpose()?
    } else {
        None
    };
    let mut http = match (&early_tls, api_needs_tls(cfg.http.listen)) {
        (None, true) => None,
        (tls, _) => Some(HttpServer::start(&cfg, api.clone(), tls.clone()).await?),
    };

    let subjects = Subjects::new(&cfg.namespace).map_err(|e| setup("namespace")(e.to_string()))?;
    let nats = nats::connect(&cfg).await?;
    let stores = open_stores(&cfg, &data_dir, &leader, &subjects, nats.as_ref()).await?;
    // A restored backup goes into the store before anyone leads on it.
    crate::backup::import_pending(&data_dir, &*stores.lease, clock.now())
        .await
        .map_err(setup("restoring the backup"))?;
    let _ = lease_store.set(stores.lease.clone());
    let mut lease = LeaderLease::new(holder.clone(), cfg.leader.lease_ms);
    let epoch = loop {
        // Holding redb's file lock proves every earlier holder of the data
        // dir dead (the kernel drops it with its process): lead at once
        // instead of waiting out a crashed predecessor's lease. A shared
        // store proves nothing; wait for the lease to lapse.
        let acquired = if stores.redb.is_some() {
            lease.take_over(&*stores.lease, clock.now()).await
        } else {
            lease.try_acquire(&*stores.lease, clock.now()).await
        };
        match acquired {
            Ok(Some(epoch)) => break epoch,
            Ok(None) => {
                // Another daemon leads: let it (and `fleetctl leader`) see
                // this one waiting.
                let noted =
                    fleet_runtime::lease::note_follower(&*stores.lease, &holder, clock.now()).await;
                if let Err(e) = noted {
                    tracing::debug!(error = %e, "could not note this follower in the store");
                }
            }
            // A follower is what takes over when the leader's store server
            // dies too: an unreachable store is waited for, not fatal.
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "the store is unavailable; still waiting for the leader lease");
            }
            Err(e) => return Err(setup("taking the leader lease")(e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(cfg.leader.lease_ms / 3)).await;
    };
    leader.store(true, Ordering::Relaxed);
    tracing::info!(epoch = epoch.0, "leader");
    if let Err(e) = fleet_runtime::lease::forget_follower(&*stores.lease, &holder).await {
        tracing::debug!(error = %e, "could not drop this daemon's follower record");
    }
    // With redb every write is fenced by the epoch in the same transaction;
    // a shared KV store relies on revisions, and on the lease: no write once
    // it lapsed by this process's clock (see ARCH.md).
    let write_store: Arc<dyn Store> = match &stores.redb {
        Some(r) => Arc::new(r.fenced(epoch)),
        None => Arc::new(LeaseFencedStore::new(
            stores.lease.clone(),
            lease.guard(),
            epoch,
        )),
    };

    let (ca, sealer) = load_trust(&data_dir, clock.now()).await?;
    let http = match http.take() {
        Some(h) => h,
        None => {
            let tls = api_tls(&cfg, &ca, clock.now())?;
            HttpServer::start(&cfg, api.clone(), Some(tls)).await?
        }
    };
    // Bootstrap tokens live in the store, fenced like every leader write,
    // so a node created before a restart joins after it.
    let bootstrap = Arc::new(BootstrapRegistry::new(write_store.clone(), clock.clone()));
    let (ws, ws_url, cert_hosts) =
        bind_ws(&cfg, &ca, &bootstrap, &tokens, clock.clone(), clock.now()).await?;
    let ca_file = data_dir.join(CA_CERT_FILE);
    // Relative to the resolved data dir, and made now so a bad path fails
    // the start rather than the first node's delete.
    // Made owner-only if missing; an existing one keeps the mode its
    // operator gave it.
    let log_dir = cfg.log_dir.clone().unwrap_or_else(|| data_dir.join("logs"));
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&log_dir)
            .map_err(|e| setup("creating the log dir")(format!("{}: {e}", log_dir.display())))?;
    }
    let provider = providers::build(
        &cfg,
        ProviderContext {
            ws_url: &ws_url,
            ca_pem: ca.ca_pem(),
            ca_file: &ca_file,
            cert_hosts: &cert_hosts,
            data_dir: &data_dir,
            log_dir: &log_dir,
            clock: clock.clone(),
        },
    )
    .await
    .map_err(setup("configuring the provider"))?;

    let mut builder = Fleet::builder()
        .store(write_store)
        .provider(provider)
        .transport(Arc::new(ws))
        .timing(cfg.timing.clone())
        .namespace(cfg.namespace.clone())
        .epoch(epoch)
        .issuer(Arc::new(CaIssuer::new(
            ca.clone(),
            Arc::new(sealer),
            clock.clone(),
        )))
        .bootstrap_tokens(bootstrap)
        .alerts(
            crate::alerts::Alerts::start(&cfg.alerts, alert_stats.clone())
                .map_err(setup("starting alert delivery"))?,
        )
        .artifacts(Arc::new(
            crate::artifacts::ArtifactWriter::start(artifacts.clone())
                .map_err(|e| setup("starting the artifact writer")(e.to_string()))?,
        ))
        .clock(clock.clone());
    for t in nats::transports(nats.as_ref(), &subjects).await? {
        builder = builder.transport(t);
    }
    for p in &cfg.pools {
        builder = builder.pool(p.clone());
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
        http: format!("{}://{}", http.scheme(), url_host(connectable(http.addr))),
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
    // A renewal the store could not take is tried again while the lease
    // holds by this process's clock (writes stop when it lapses anyway).
    let renew_every = Duration::from_millis((cfg.leader.lease_ms / 3).max(100));
    let guard = lease.guard();
    let lost = async {
        loop {
            tokio::time::sleep(renew_every).await;
            match lease.renew(&*stores.lease, clock.now()).await {
                Ok(_) => {}
                Err(e) if e.is_retryable() && guard.remaining().is_some() => {
                    tracing::warn!(error = %e, remaining = ?guard.remaining(), "renewing the leader lease failed; retrying");
                }
                Err(e) => return e.to_string(),
            }
        }
    };
    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        why = lost => Err(ServeError::LostLeadership(why)),
    };
    tracing::info!("fleet-daemon stopping");
    leader.store(false, Ordering::Relaxed);
    closing.send_replace(true);
    sampler.abort();
    http.stop().await;
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.shutdown().await;
    }
    if outcome.is_ok() {
        let _ = lease.release(&*stores.lease, clock.now()).await;
    }
    outcome
}

/// The data dir, created private (0700) if missing, as an absolute path.
fn open_data_dir(cfg: &DaemonConfig) -> Result<PathBuf, ServeError> {
    let data_dir = cfg.data_dir();
    create_private_dir(&data_dir)
        .map_err(|e| setup("creating the data dir")(format!("{}: {e}", data_dir.display())))?;
    data_dir
        .canonicalize()
        .map_err(|e| setup("resolving the data dir")(e.to_string()))
}

/// The API tokens; on a first start, an admin token is created, shown once
/// and written (0600) for `fleetctl` on this host.
fn load_api_tokens(data_dir: &Path, clock: &dyn Clock) -> Result<ApiTokens, ServeError> {
    let tokens =
        ApiTokens::load(data_dir).map_err(|e| setup("loading API tokens")(e.to_string()))?;
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
    Ok(tokens)
}

/// The HTTP API, up before leadership so a follower answers health.
struct HttpServer {
    addr: SocketAddr,
    tls: bool,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    async fn start(
        cfg: &DaemonConfig,
        api: crate::http::ApiState,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<HttpServer, ServeError> {
        let listener = tokio::net::TcpListener::bind(cfg.http.listen)
            .await
            .map_err(|e| setup("listening for HTTP")(format!("{}: {e}", cfg.http.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| setup("listening for HTTP")(e.to_string()))?;
        let app = crate::http::router(api);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let https = tls.is_some();
        let task = match tls {
            Some(tls) => {
                let listener = crate::tls_listener::TlsListener::new(listener, tls);
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await;
                })
            }
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await;
            }),
        };
        Ok(HttpServer {
            addr,
            tls: https,
            stop,
            task,
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The store the lease lives in, and the redb store when that is it.
struct Stores {
    lease: Arc<dyn Store>,
    redb: Option<RedbStore>,
}

/// The store: a JetStream KV bucket shared by several daemons when
/// `[store.nats]` says so, else redb in the data dir (its file lock makes a
/// second daemon a follower).
async fn open_stores(
    cfg: &DaemonConfig,
    data_dir: &Path,
    leader: &AtomicBool,
    subjects: &Subjects,
    nats: Option<&nats::Connection>,
) -> Result<Stores, ServeError> {
    if let Some(store) = nats::kv_store(cfg, subjects, nats).await? {
        return Ok(Stores {
            lease: store,
            redb: None,
        });
    }
    let store = open_redb(data_dir, leader).await?;
    Ok(Stores {
        lease: Arc::new(store.clone()),
        redb: Some(store),
    })
}

/// Opens redb, waiting while another daemon holds it: with redb the data
/// dir's lock is the leadership, so a second daemon on the same dir stays a
/// follower until the first exits.
async fn open_redb(data_dir: &Path, leader: &AtomicBool) -> Result<RedbStore, ServeError> {
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

/// The pool CA and the credential sealing key, created on a first start.
async fn load_trust(data_dir: &Path, now: u64) -> Result<(Arc<PoolCa>, Sealer), ServeError> {
    let dir = data_dir.to_owned();
    let (ca, sealer) = tokio::task::spawn_blocking(move || -> Result<(PoolCa, Sealer), String> {
        let ca = PoolCa::load_or_create(&dir, now).map_err(|e| e.to_string())?;
        let sealer = Sealer::load_or_create(&dir).map_err(|e| e.to_string())?;
        Ok((ca, sealer))
    })
    .await
    .map_err(|e| setup("loading the CA")(e.to_string()))?
    .map_err(setup("loading the CA"))?;
    Ok((Arc::new(ca), sealer))
}

/// Whether the API must be HTTPS: beyond loopback an operator's bearer
/// token would otherwise cross the network in clear text.
pub(crate) fn api_needs_tls(listen: SocketAddr) -> bool {
    !listen.ip().is_loopback()
}

/// The pool CA if the data dir already has one (read, never created).
async fn existing_ca(data_dir: &Path, now: u64) -> Result<Option<Arc<PoolCa>>, ServeError> {
    let present = data_dir.join(CA_CERT_FILE).exists() && data_dir.join(CA_KEY_FILE).exists();
    if !present {
        return Ok(None);
    }
    let dir = data_dir.to_owned();
    let ca = tokio::task::spawn_blocking(move || PoolCa::load_or_create(&dir, now))
        .await
        .map_err(|e| setup("loading the CA")(e.to_string()))?
        .map_err(|e| setup("loading the CA")(e.to_string()))?;
    Ok(Some(Arc::new(ca)))
}

/// The API's TLS: a server certificate from the pool CA for `localhost`,
/// the listen address (the loopback addresses too when it is a wildcard)
/// and the WebSocket's extra host names.
fn api_tls(
    cfg: &DaemonConfig,
    ca: &PoolCa,
    now: u64,
) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let ip = cfg.http.listen.ip();
    let mut hosts = vec!["localhost".to_owned(), ip.to_string()];
    if ip.is_unspecified() {
        hosts.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
    }
    hosts.extend(cfg.transport.ws.hosts.iter().cloned());
    let cert = ca
        .issue_server_cert(&hosts, now, now + 365 * 24 * 3_600_000)
        .map_err(|e| setup("issuing the API's certificate")(e.to_string()))?;
    ServerTlsConfig {
        cert_chain_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        client_ca_pem: None,
    }
    .build()
    .map_err(|e| setup("configuring the API's TLS")(e.to_string()))
}

/// An address a local client can connect to: a wildcard listen address
/// becomes the loopback one.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// Agents and claim clients: TLS WebSocket with the daemon's certificate
/// from the pool CA; agents' client certificates verified against it.
/// Claim-plane callers present an API token: an operator's opens every
/// workspace, a limited one only its own. Returns the server, its URL and
/// the host names its certificate names.
async fn bind_ws(
    cfg: &DaemonConfig,
    ca: &Arc<PoolCa>,
    bootstrap: &Arc<BootstrapRegistry>,
    tokens: &Arc<ApiTokens>,
    clock: Arc<dyn Clock>,
    now: u64,
) -> Result<(WsServer, String, Vec<String>), ServeError> {
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
    let auth = Arc::new(NodeAuth {
        tokens: bootstrap.clone(),
        ca: ca.clone(),
        clock,
    });
    let mut ws_config = WsConfig::default();
    ws_config.heartbeat_interval_ms = cfg.timing.heartbeat_interval_ms;
    let (ws, ws_addr) =
        WsServer::bind_with_claim_auth(ws_listen, &tls, auth, tokens.clone(), ws_config)
            .await
            .map_err(|e| setup("listening for agents")(e.to_string()))?;
    Ok((ws, format!("wss://{}", url_host(ws_addr)), hosts))
}

/// NATS: the claim plane on subjects and the shared KV store, compiled with
/// the `nats` feature; without it a config naming NATS is refused when it
/// is read (see `DaemonConfig::validate`).
#[cfg(feature = "nats")]
mod nats {
    use std::sync::Arc;

    use fleet_core::store::Store;
    use fleet_core::subjects::Subjects;
    use fleet_core::transport::Transport;

    use super::{ServeError, setup};
    use crate::config::DaemonConfig;

    pub(super) type Connection = fleet_transport_nats::Connection;

    pub(super) async fn connect(cfg: &DaemonConfig) -> Result<Option<Connection>, ServeError> {
        match &cfg.transport.nats {
            Some(n) => n
                .options()
                .connect()
                .await
                .map(Some)
                .map_err(|e| setup("connecting to NATS")(e.to_string())),
            None => Ok(None),
        }
    }

    pub(super) async fn kv_store(
        cfg: &DaemonConfig,
        subjects: &Subjects,
        conn: Option<&Connection>,
    ) -> Result<Option<Arc<dyn Store>>, ServeError> {
        let (Some(kv), Some(conn)) = (&cfg.store.nats, conn) else {
            return Ok(None);
        };
        let store = fleet_transport_nats::NatsKvStore::open(conn, subjects, &kv.options())
            .await
            .map_err(|e| setup("opening the NATS KV bucket")(e.to_string()))?;
        Ok(Some(Arc::new(store)))
    }

    pub(super) async fn transports(
        conn: Option<&Connection>,
        subjects: &Subjects,
    ) -> Result<Vec<Arc<dyn Transport>>, ServeError> {
        let Some(conn) = conn else {
            return Ok(Vec::new());
        };
        let t = fleet_transport_nats::NatsTransport::start(
            conn,
            subjects.clone(),
            fleet_transport_nats::NatsTransportConfig::default(),
        )
        .await
        .map_err(|e| setup("serving the claim plane on NATS")(e.to_string()))?;
        Ok(vec![Arc::new(t)])
    }
}

#[cfg(not(feature = "nats"))]
mod nats {
    use std::sync::Arc;

    use fleet_core::store::Store;
    use fleet_core::subjects::Subjects;
    use fleet_core::transport::Transport;

    use super::ServeError;
    use crate::config::DaemonConfig;

    /// Never made: without the feature there is no NATS connection.
    pub(super) enum Connection {}

    pub(super) async fn connect(_: &DaemonConfig) -> Result<Option<Connection>, ServeError> {
        Ok(None)
    }

    pub(super) async fn kv_store(
        _: &DaemonConfig,
        _: &Subjects,
        _: Option<&Connection>,
    ) -> Result<Option<Arc<dyn Store>>, ServeError> {
        Ok(None)
    }

    pub(super) async fn transports(
        _: Option<&Connection>,
        _: &Subjects,
    ) -> Result<Vec<Arc<dyn Transport>>, ServeError> {
        Ok(Vec::new())
    }
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
