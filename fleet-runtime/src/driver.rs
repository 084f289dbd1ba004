//! The driver: runs the core [`Controller`] with real I/O.
//!
//! It owns the controller and nothing else decides: it feeds it inbound
//! messages, store and provider results and ticks at the controller's
//! deadline, and performs the commands it returns — store writes and provider
//! calls as concurrent tasks whose results come back as events, transport
//! sends in order, credential issuance through a [`CredentialIssuer`].
//! Reply addresses are prefixed with the index of the transport they came
//! from, so answers go back the way the question came.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::controller::{
    Alert, Command, Controller, ControllerConfig, CostReport, Event, NodeStatus, ProviderCall,
    ProviderOutcome,
};
use fleet_core::ids::{ClaimId, CommandId, Epoch, FleetId, Millis, NodeId, PoolName, Workspace};
use fleet_core::memory::transport::{
    InProcAgent, InProcClaimClient, InProcJobClient, InProcTransport,
};
use fleet_core::protocol::{
    AgentMsg, CapacityShortage, ClaimRecord, ClaimReply, FleetRecord, JobLog, JobLogWhat,
    JobRecord, Record, SealedCredentials, decode, encode,
};
use fleet_core::provider::{
    Offering, Provider, ProviderError, TAG_FLEET, TAG_NAMESPACE, TagFilter,
};
use fleet_core::store::{Key, Revision, Store, StoreError, Versioned};
use fleet_core::strategy::PoolSpec;
use fleet_core::subjects::Subjects;
use fleet_core::transport::{Inbound, Outbound, Peer, ReplyTo, Transport, TransportError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use fleet_core::clock::Clock;

use crate::commit::{Answers, Persist, Writer};
use crate::metrics::Metrics;
use crate::tokens::BootstrapError;

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms(self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        self.now_ms()
    }
}

/// What a grant's credentials are minted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRequest {
    /// The claim.
    pub claim: ClaimId,
    /// Its workspace.
    pub workspace: Workspace,
    /// The node it is granted on.
    pub node: NodeId,
    /// The node's gateway endpoint.
    pub endpoint: String,
    /// The caller's age recipient.
    pub recipient: String,
    /// Lease end (certificate expiry).
    pub expires_at: Millis,
}

/// Mints and seals per-claim credentials (the daemon's CA and signing key).
#[async_trait]
pub trait CredentialIssuer: Send + Sync {
    /// Issues and seals credentials; the error text is shown to operators.
    async fn issue(&self, req: CredentialRequest) -> Result<SealedCredentials, String>;
}

/// Mints single-use bootstrap tokens for new nodes (the agent auth side
/// consumes them); [`crate::tokens::BootstrapRegistry`] keeps them in the
/// store.
#[async_trait]
pub trait BootstrapTokens: Send + Sync {
    /// A fresh token for `node`, remembered (hashed, durably) before it is
    /// returned, so that it is honoured even by a later incarnation of the
    /// daemon. An error means no token: the create is not sent.
    async fn mint(&self, node: &NodeId) -> Result<fleet_core::protocol::Secret, BootstrapError>;
    /// Drops every token of `node` (it is gone).
    async fn forget(&self, node: &NodeId) -> Result<(), BootstrapError>;
    /// Drops the tokens of every node not in `live`; returns how many
    /// nodes' tokens were dropped.
    async fn retain(&self, live: &BTreeSet<NodeId>) -> Result<usize, BootstrapError>;
}

/// Why the runtime could not start or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored record could not be decoded; the daemon refuses to start
    /// rather than drop it.
    #[error("record {key} in the store is unreadable ({error}); run `fleetctl doctor`")]
    CorruptRecord {
        /// The key.
        key: String,
        /// The decode error.
        error: String,
    },
    /// The control loop has stopped.
    #[error("the control loop has stopped")]
    Stopped,
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
}

impl RuntimeError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeError::Store(_) => "store",
            RuntimeError::CorruptRecord { .. } => "corrupt_record",
            RuntimeError::Stopped => "stopped",
            RuntimeError::Config(_) => "config",
        }
    }

    /// Whether the same call may succeed later: the store was unavailable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RuntimeError::Store(e) if e.is_retryable())
    }
}

/// Where the driver hands the alerts the controller raises, besides its
/// log and metrics: the daemon delivers a job's escalation to the channels
/// of its alert policy. Called on the driver's task: queue and return.
pub trait AlertSink: Send + Sync {
    /// One alert.
    fn alert(&self, alert: &Alert);
}

/// A piece of a file a job's command left in its artifact directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactPiece {
    /// The job's workspace.
    pub workspace: fleet_core::Workspace,
    /// The job.
    pub job: fleet_core::JobId,
    /// Its attempt that made the file.
    pub attempt: u32,
    /// The file's name (as the agent sent it: check it).
    pub name: String,
    /// Where the bytes go.
    pub offset: u64,
    /// The bytes (at most 256 KiB).
    pub bytes: Vec<u8>,
    /// The file ends here.
    pub last: bool,
}

/// Where the driver puts the artifacts agents upload (the daemon: files
/// under its data dir). Called on the driver's task, which runs every
/// decision: queue the work and return, never write here.
pub trait ArtifactSink: Send + Sync {
    /// Takes one piece; an error (a full queue) is logged and the piece
    /// dropped.
    fn piece(&self, piece: ArtifactPiece) -> Result<(), String>;
    /// The job's record is gone (its retention ended): drop its files.
    fn forget(&self, workspace: &fleet_core::Workspace, job: &fleet_core::JobId);
}

/// A consistent view of the control plane, for status APIs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// The fleet's identity.
    pub fleet_id: FleetId,
    /// The leader epoch.
    pub epoch: Epoch,
    /// When the view was taken.
    pub at: Millis,
    /// Pools.
    pub pools: Vec<PoolSpec>,
    /// Per pool, the instance types its new nodes avoid for lack of
    /// capacity (pools without any are left out).
    pub shortages: BTreeMap<PoolName, Vec<CapacityShortage>>,
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
    /// Claims.
    pub claims: Vec<ClaimRecord>,
    /// Jobs.
    pub jobs: Vec<JobRecord>,
    /// Runs.
    pub runs: Vec<fleet_core::protocol::RunRecord>,
    /// Costs so far.
    pub costs: CostReport,
    /// Grants of claims with an affinity key, on a node that last served
    /// the key or not (this leader's).
    pub affinity: fleet_core::controller::AffinityStats,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// What this leader's start recovered, and how long each step took.
    pub replay: fleet_core::protocol::ReplayStatus,
}

/// A read of the controller, run on the control loop.
pub(crate) type Inspection = Box<dyn FnOnce(&Controller, Millis) + Send>;

pub(crate) enum Input {
    Inbound(usize, Inbound),
    TransportDown(usize, TransportError),
    Persisted {
        key: Key,
        result: Result<Revision, StoreError>,
    },
    ProviderDone {
        op: fleet_core::ids::OpId,
        call: &'static str,
        result: Result<ProviderOutcome, ProviderError>,
    },
    Credentials {
        claim: ClaimId,
        result: Result<SealedCredentials, String>,
    },
    Inventory(Vec<fleet_core::provider::Instance>),
    Offerings(Vec<Offering>),
    Status(oneshot::Sender<Status>),
    Snapshot(oneshot::Sender<crate::commit::Snapshot>),
    /// Runs on the control loop with its controller, after the events
    /// before it ([`Fleet::inspect`]).
    Inspect(Inspection),
    Shutdown,
}

/// Builds a [`Fleet`].
pub struct FleetBuilder {
    store: Option<Arc<dyn Store>>,
    provider: Option<Arc<dyn Provider>>,
    transports: Vec<Arc<dyn Transport>>,
    pools: Vec<PoolSpec>,
    quotas: BTreeMap<Workspace, fleet_core::arbitrate::Quota>,
    timing: fleet_core::controller::Timing,
    namespace: String,
    fleet_id: Option<FleetId>,
    epoch: Epoch,
    issuer: Option<Arc<dyn CredentialIssuer>>,
    alerts: Option<Arc<dyn AlertSink>>,
    artifacts: Option<Arc<dyn ArtifactSink>>,
    tokens: Option<Arc<dyn BootstrapTokens>>,
    clock: Arc<dyn Clock>,
    inventory_every: Duration,
    offerings_every: Duration,
}

impl std::fmt::Debug for FleetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("pools", &self.pools)
            .field("transports", &self.transports.len())
            .field("namespace", &self.namespace)
            .field("fleet_id", &self.fleet_id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Default for FleetBuilder {
    fn default() -> Self {
        FleetBuilder {
            store: None,
            provider: None,
            transports: Vec::new(),
            pools: Vec::new(),
            quotas: BTreeMap::new(),
            timing: fleet_core::controller::Timing::default(),
            namespace: fleet_core::subjects::DEFAULT_NAMESPACE.to_owned(),
            fleet_id: None,
            epoch: Epoch(1),
            issuer: None,
            alerts: None,
            artifacts: None,
            tokens: None,
            clock: Arc::new(SystemClock),
            inventory_every: Duration::from_secs(300),
            offerings_every: Duration::from_secs(15 * 60),
        }
    }
}

impl FleetBuilder {
    /// The store (default: in memory, lost with the process; a durable
    /// fleet passes `fleet-store-redb` or a shared store).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The provider (required).
    pub fn provider(mut self, provider: Arc<dyn Provider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Adds a transport (the in-process one is always there).
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transports.push(transport);
        self
    }

    /// Adds a pool.
    pub fn pool(mut self, pool: PoolSpec) -> Self {
        self.pools.push(pool);
        self
    }

    /// Sets a workspace's quota.
    pub fn quota(mut self, ws: Workspace, quota: fleet_core::arbitrate::Quota) -> Self {
        self.quotas.insert(ws, quota);
        self
    }

    /// Timers.
    pub fn timing(mut self, timing: fleet_core::controller::Timing) -> Self {
        self.timing = timing;
        self
    }

    /// The namespace (subjects, tags).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Sets the fleet's identity instead of the one in the store (for tests
    /// and embedders that manage identities themselves; nothing is written).
    /// By default the identity is read from the store, or generated and
    /// stored at the fleet's first start ([`fleet_identity`]).
    pub fn fleet_id(mut self, id: FleetId) -> Self {
        self.fleet_id = Some(id);
        self
    }

    /// The leader epoch this daemon writes with.
    pub fn epoch(mut self, epoch: Epoch) -> Self {
        self.epoch = epoch;
        self
    }

    /// Where alerts go besides the log and the metrics (a job's
    /// escalation to its policy's channels); without one they are logged.
    pub fn alerts(mut self, sink: Arc<dyn AlertSink>) -> Self {
        self.alerts = Some(sink);
        self
    }

    /// Where uploaded job artifacts go; without one they are dropped (the
    /// receipt still lists them, with their paths on the node).
    pub fn artifacts(mut self, sink: Arc<dyn ArtifactSink>) -> Self {
        self.artifacts = Some(sink);
        self
    }

    /// The credential issuer (without one, claims naming a recipient are
    /// revoked with a clear note).
    pub fn issuer(mut self, issuer: Arc<dyn CredentialIssuer>) -> Self {
        self.issuer = Some(issuer);
        self
    }

    /// Bootstrap token minting for new nodes.
    pub fn bootstrap_tokens(mut self, tokens: Arc<dyn BootstrapTokens>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often the provider's offerings are re-read after the start, so
    /// cost decisions follow moving (spot) prices (default 15 min).
    pub fn offerings_every(mut self, every: Duration) -> Self {
        self.offerings_every = every;
        self
    }

    /// How often the provider's inventory is re-read (orphan collection).
    pub fn inventory_every(mut self, every: Duration) -> Self {
        self.inventory_every = every;
        self
    }

    /// Restores from the store, reconciles with the provider and starts the
    /// control loop.
    pub async fn start(self) -> Result<Fleet, RuntimeError> {
        if self.pools.is_empty() {
            return Err(RuntimeError::Config("at least one pool is required".into()));
        }
        Subjects::new(&self.namespace).map_err(|e| RuntimeError::Config(e.to_string()))?;
        let store: Arc<dyn Store> = self
            .store
            .unwrap_or_else(|| Arc::new(fleet_core::memory::store::MemoryStore::new()));
        let Some(provider) = self.provider else {
            return Err(RuntimeError::Config("a provider is required".into()));
        };
        let started_at = self.clock.now();
        let epoch = self.epoch;
        let mut steps = Vec::new();
        let mut step_began = std::time::Instant::now();
        let mut step_done = |name: &str, began: &mut std::time::Instant| {
            steps.push(fleet_core::protocol::ReplayStep {
                step: name.to_owned(),
                ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
            *began = std::time::Instant::now();
        };
        let offerings = startup_offerings(&*provider, &self.timing).await?;
        step_done("read the provider's offerings", &mut step_began);
        let mut pools = self.pools;
        for p in &mut pools {
            let name = p.name.clone();
            let invalid = |e: fleet_core::config::ConfigError| {
                RuntimeError::Config(format!("pool {name}: {e}"))
            };
            p.validate().map_err(invalid)?;
            // A pool naming no instance type runs the cheapest the provider sells.
            p.resolve(&offerings).map_err(invalid)?;
        }
        let fleet_id = match self.fleet_id {
            Some(id) => id,
            None => {
                startup_read(&self.timing, "reading the fleet identity", || {
                    fleet_identity(&*store, self.clock.now())
                })
                .await?
            }
        };
        tracing::info!(fleet_id = %fleet_id, namespace = %self.namespace, "fleet identity");
        step_done("read the fleet identity", &mut step_began);
        let records = startup_read(&self.timing, "loading the records", || {
            load_records(&*store)
        })
        .await?;
        step_done("load the records", &mut step_began);
        if let Some(tokens) = &self.tokens {
            // Tokens of nodes deleted while their removal was lost to a crash.
            let live: BTreeSet<NodeId> = records
                .iter()
                .filter_map(|(_, _, r)| match r {
                    Record::Node(n) => Some(n.node.clone()),
                    _ => None,
                })
                .collect();
            match tokens.retain(&live).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(nodes = n, "dropped the bootstrap tokens of gone nodes"),
                Err(e) => tracing::warn!(error = %e, "bootstrap tokens of gone nodes not dropped"),
            }
        }
        let config = ControllerConfig {
            pools,
            quotas: self.quotas,
            offerings,
            capabilities: provider.capabilities().clone(),
            billing: provider.billing().clone(),
            epoch: self.epoch,
            namespace: self.namespace.clone(),
            fleet_id: fleet_id.clone(),
            timing: self.timing,
        };
        let now = self.clock.now();
        let controller = Controller::restore(config, records, now);
        step_done("restore the control plane's state", &mut step_began);
        let replay = Replay {
            started_at,
            steps,
            ready_at: None,
        };
        let inproc = Arc::new(InProcTransport::new(4_096));
        let mut transports: Vec<Arc<dyn Transport>> = vec![inproc.clone()];
        transports.extend(self.transports);
        let (tx, rx) = mpsc::unbounded_channel();
        let ready = Arc::new(AtomicBool::new(false));
        for (idx, t) in transports.iter().enumerate() {
            let t = t.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    match t.recv().await {
                        Ok(inbound) => {
                            if tx.send(Input::Inbound(idx, inbound)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Input::TransportDown(idx, e));
                            return;
                        }
                    }
                }
            });
        }
        // Reconcile with what the provider runs, now and periodically.
        {
            let provider = provider.clone();
            let tx = tx.clone();
            // This fleet's instances only: another fleet sharing the
            // account and the namespace has another fleet id.
            let filter = TagFilter(BTreeMap::from([
                (TAG_NAMESPACE.to_owned(), self.namespace.clone()),
                (TAG_FLEET.to_owned(), fleet_id.to_string()),
            ]));
            let every = self.inventory_every;
            tokio::spawn(async move {
                loop {
                    match provider.list(&filter).await {
                        Ok(instances) => {
                            if tx.send(Input::Inventory(instances)).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "provider inventory failed"),
                    }
                    tokio::time::sleep(every).await;
                }
            });
        }
        // Prices move (spot): read the offerings again now and then.
        {
            let provider = provider.clone();
            let tx = tx.clone();
            let every = self.offerings_every;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match provider.offerings().await {
                        Ok(offerings) => {
                            if tx.send(Input::Offerings(offerings)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "re-reading the provider's offerings failed; prices unchanged")
                        }
                    }
                }
            });
        }
        let writer = Writer::new(store.clone(), self.tokens.clone(), controller.epoch());
        let driver = Driver {
            writer,
            controller,
            provider,
            transports,
            node_routes: BTreeMap::new(),
            issuer: self.issuer,
            alerts: self.alerts,
            artifacts: self.artifacts,
            tokens: self.tokens,
            clock: self.clock,
            tx: tx.clone(),
            metrics: Metrics::default(),
            ready: ready.clone(),
            replay,
            changes: tokio::sync::watch::Sender::new(0),
            job_logs: Arc::default(),
        };
        let changes = driver.changes.subscribe();
        let job_logs = driver.job_logs.clone();
        let task = tokio::spawn(driver.run(rx));
        Ok(Fleet {
            fleet_id,
            epoch,
            tx,
            inproc,
            ready,
            changes,
            job_logs,
            task: Some(task),
        })
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct Fleet {
    fleet_id: FleetId,
    epoch: Epoch,
    tx: mpsc::UnboundedSender<Input>,
    inproc: Arc<InProcTransport>,
    ready: Arc<AtomicBool>,
    changes: tokio::sync::watch::Receiver<u64>,
    job_logs: Arc<std::sync::Mutex<crate::joblog::JobLogs>>,
    task: Option<JoinHandle<()>>,
}

impl Fleet {
    /// A builder.
    pub fn builder() -> FleetBuilder {
        FleetBuilder::default()
    }

    /// The fleet's identity: in every instance's tags and node id.
    pub fn fleet_id(&self) -> &FleetId {
        &self.fleet_id
    }

    /// This leader's fencing epoch (the builder's).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// An in-process claim client: no network hop.
    pub fn client(&self) -> InProcClaimClient {
        self.inproc.claim_client()
    }

    /// An in-process job client.
    pub fn job_client(&self) -> InProcJobClient {
        self.inproc.job_client()
    }

    /// An in-process agent session (agents embedded in the same process).
    pub fn connect_agent(&self, node: NodeId) -> InProcAgent {
        self.inproc.connect_agent(node)
    }

    /// Whether the control loop is up and reconciled (O(1)).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// A count of the control loop's rounds that decided something (wrote
    /// a record, sent a message, called the provider): a watcher wakes
    /// when what [`Fleet::status`] shows may have changed, and reads it
    /// then (the console's event stream). Rounds that decide nothing, as
    /// most heartbeats, do not count.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }

    /// What `job` of `workspace` reported and printed, as far as kept (in
    /// memory, bounded: see [`fleet_core::protocol::JobLog`]); `None` when
    /// nothing is kept of it.
    pub fn job_log(&self, workspace: &Workspace, job: &fleet_core::JobId) -> Option<JobLog> {
        self.job_logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(workspace, job)
    }

    /// A consistent status view.
    pub async fn status(&self) -> Result<Status, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Status(tx))
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)
    }

    /// Runs `f` on the control loop with its controller and the clock's
    /// now, after the events that arrived before, and returns its answer:
    /// how an embedder or the HTTP API reads what [`Fleet::status`] does
    /// not carry ([`Controller::explain`], [`Controller::claim_history`]).
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Controller, Millis) -> T + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        let run = move |c: &Controller, now: Millis| {
            let _ = tx.send(f(c, now));
        };
        self.tx
            .send(Input::Inspect(Box::new(run)))
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)
    }

    /// Every stored entry (records, the fleet identity, the lease,
    /// bootstrap token digests; not the followers' notes), read once every
    /// write the control loop issued so far is committed and before any
    /// later one: a state it was in, whatever the store. What a backup is
    /// made of.
    pub async fn snapshot(&self) -> Result<Vec<(Key, Versioned)>, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Snapshot(tx))
            .map_err(|_| RuntimeError::Stopped)?;
        Ok(rx.await.map_err(|_| RuntimeError::Stopped)??)
    }

    /// Stops the control loop and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.tx.send(Input::Shutdown);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.inproc.close();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.tx.send(Input::Shutdown);
    }
}

/// The fleet's identity in `store`: the stored one, or, at the fleet's
/// first start, a fresh random one (8 lowercase hex digits) stored with a
/// create — when two starters race on a fresh store, the loser reads the
/// winner's, so both agree.
pub async fn fleet_identity(store: &dyn Store, now: Millis) -> Result<FleetId, RuntimeError> {
    let key = Subjects::fleet_key();
    if let Some(v) = store.get(&key).await? {
        return stored_identity(&key, &v.value);
    }
    let mut bytes = [0u8; 4];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| RuntimeError::Config(format!("no randomness for the fleet id: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let fleet_id = FleetId::new(hex).map_err(|e| RuntimeError::Config(e.to_string()))?;
    let record = FleetRecord {
        fleet_id: fleet_id.clone(),
        created_at: now,
    };
    let bytes = encode(&record).map_err(|e| RuntimeError::Config(e.to_string()))?;
    match store.create(&key, Bytes::from(bytes)).await {
        Ok(_) => {
            tracing::info!(%fleet_id, "new fleet: identity generated and stored");
            Ok(fleet_id)
        }
        Err(StoreError::AlreadyExists { .. }) => match store.get(&key).await? {
            Some(v) => stored_identity(&key, &v.value),
            None => Err(RuntimeError::Store(StoreError::Unavailable(format!(
                "{key} was created by another starter and is gone again"
            )))),
        },
        Err(e) => Err(e.into()),
    }
}

fn stored_identity(key: &Key, bytes: &[u8]) -> Result<FleetId, RuntimeError> {
    decode::<FleetRecord>(bytes)
        .map(|r| r.fleet_id)
        .map_err(|e| RuntimeError::CorruptRecord {
            key: key.to_string(),
            error: e.to_string(),
        })
}

/// Reads and decodes every record the controller owns.
pub async fn load_records(store: &dyn Store) -> Result<Vec<(Key, Revision, Record)>, RuntimeError> {
    let mut records = Vec::new();
    for prefix in Subjects::RECORD_PREFIXES {
        for (key, v) in store.list(prefix).await? {
            let record: Record = decode(&v.value).map_err(|e| RuntimeError::CorruptRecord {
                key: key.to_string(),
                error: e.to_string(),
            })?;
            records.push((key, v.revision, record));
        }
    }
    Ok(records)
}

struct Driver {
    /// The group-commit writer ([`crate::commit`]), polled by the loop:
    /// a round's writes queue there and go out together once it ends.
    writer: Writer,
    controller: Controller,
    provider: Arc<dyn Provider>,
    transports: Vec<Arc<dyn Transport>>,
    node_routes: BTreeMap<NodeId, usize>,
    issuer: Option<Arc<dyn CredentialIssuer>>,
    alerts: Option<Arc<dyn AlertSink>>,
    artifacts: Option<Arc<dyn ArtifactSink>>,
    tokens: Option<Arc<dyn BootstrapTokens>>,
    clock: Arc<dyn Clock>,
    tx: mpsc::UnboundedSender<Input>,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    replay: Replay,
    /// Counts rounds that decided something ([`Fleet::changes`]).
    changes: tokio::sync::watch::Sender<u64>,
    /// What jobs reported and printed ([`Fleet::job_log`]).
    job_logs: Arc<std::sync::Mutex<crate::joblog::JobLogs>>,
}

/// The driver's part of what a start recovered: when it began, its steps'
/// timings, when the control loop ran.
#[derive(Debug)]
struct Replay {
    started_at: Millis,
    steps: Vec<fleet_core::protocol::ReplayStep>,
    ready_at: Option<Millis>,
}

/// Events handled per wake-up before the loop yields to timers.
const BATCH: usize = 256;

/// What woke the control loop.
enum First {
    /// A commit ended: each write's answer.
    Persisted(Answers),
    /// An input arrived.
    Input(Input),
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        self.ready.store(true, Ordering::Relaxed);
        self.replay.ready_at = Some(self.clock.now());
        loop {
            let sleep = match self.controller.next_deadline() {
                Some(at) => {
                    let now = self.clock.now();
                    Duration::from_millis(at.saturating_sub(now))
                }
                None => Duration::from_secs(3_600),
            };
            // Input already waiting: a commit started now overlaps the
            // rounds that take it (see `Writer::next`).
            let busy = !rx.is_empty();
            // Biased: tokio otherwise picks a ready branch at random, and a
            // seeded simulation (fleet-chaos) must replay the same order.
            // Inputs before the timer lose nothing: every event runs due
            // timers.
            let first = tokio::select! {
                biased;
                // A commit's answers first: the claims it makes durable
                // are answered in the round they start.
                answers = self.writer.next(busy) => Some(First::Persisted(answers)),
                input = rx.recv() => match input {
                    Some(i) => Some(First::Input(i)),
                    None => return,
                },
                () = tokio::time::sleep(sleep) => None,
            };
            let mut inputs = Vec::with_capacity(8);
            match first {
                Some(First::Persisted(answers)) => inputs.extend(
                    answers
                        .into_iter()
                        .map(|(key, result)| Input::Persisted { key, result }),
                ),
                Some(First::Input(i)) => inputs.push(i),
                None => {}
            }
            while inputs.len() < BATCH {
                match rx.try_recv() {
                    Ok(i) => inputs.push(i),
                    Err(_) => break,
                }
            }
            if !self.round(inputs).await {
                self.ready.store(false, Ordering::Relaxed);
                // Writes already decided still reach the store; their
                // answers have nobody left to hear them.
                self.writer.finish().await;
                return;
            }
            if self.controller.is_fenced() {
                tracing::error!("fenced by a newer leader; the control loop stops");
                self.ready.store(false, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Hands the controller every event of `inputs` at once (one decision
    /// round for all; none is a tick) and performs what it commands; a
    /// status request is answered after the events before it. False means
    /// stop.
    async fn round(&mut self, inputs: Vec<Input>) -> bool {
        let mut events = Vec::with_capacity(inputs.len().max(1));
        let mut stop = false;
        for input in inputs {
            match input {
                Input::Status(reply) => {
                    self.step(std::mem::take(&mut events)).await;
                    let _ = reply.send(self.status());
                }
                Input::Inspect(f) => {
                    self.step(std::mem::take(&mut events)).await;
                    f(&self.controller, self.clock.now());
                }
                Input::Snapshot(reply) => {
                    // After the writes of the events before it.
                    self.step(std::mem::take(&mut events)).await;
                    self.writer.snapshot(reply);
                }
                Input::Shutdown => {
                    // What arrived before it is handled, as it would have
                    // been one input at a time.
                    stop = true;
                    break;
                }
                other => {
                    if let Some(event) = self.event(other) {
                        events.push(event);
                    }
                }
            }
        }
        if events.is_empty() && !stop {
            events.push(Event::Tick);
        }
        self.step(events).await;
        !stop
    }

    /// Hands a piece of an artifact to the sink, for the job and attempt
    /// its command runs (a command that runs no job keeps no artifact).
    fn store_artifact(
        &self,
        node: &NodeId,
        command: &CommandId,
        name: &str,
        offset: u64,
        data: &str,
        last: bool,
    ) {
        use base64::Engine as _;
        let Some(sink) = &self.artifacts else {
            return;
        };
        let Some((job, attempt)) = self.controller.command_job(command) else {
            tracing::debug!(%node, %command, "artifact of a command that runs no job; dropped");
            return;
        };
        let bytes = match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%node, %command, name, error = %e, "artifact piece is not base64; dropped");
                return;
            }
        };
        let piece = ArtifactPiece {
            workspace: job.spec.workspace.clone(),
            job: job.spec.id.clone(),
            attempt,
            name: name.to_owned(),
            offset,
            bytes,
            last,
        };
        if let Err(why) = sink.piece(piece) {
            tracing::warn!(%node, job = %job.spec.id, name, %why, "artifact not stored");
        }
    }

    /// Notes a worker event or output chunk of a job's command in the
    /// job's log (for [`Fleet::job_log`]).
    fn note_job_log(&self, msg: &AgentMsg) {
        let command = match msg {
            AgentMsg::Event { command, .. } | AgentMsg::Output { command, .. } => command,
            _ => return,
        };
        // A claim's exec is no job's: its output is not copied.
        let Some((job, attempt)) = self.controller.command_job(command) else {
            return;
        };
        let what = match msg {
            AgentMsg::Event { event, .. } => JobLogWhat::Event {
                event: event.clone(),
            },
            AgentMsg::Output { stream, data, .. } => JobLogWhat::Output {
                stream: *stream,
                data: data.clone(),
            },
            _ => return,
        };
        self.job_logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .note(
                &job.spec.workspace,
                &job.spec.id,
                attempt,
                self.clock.now(),
                what,
            );
    }

    /// The controller event of one input, if it makes one.
    fn event(&mut self, input: Input) -> Option<Event> {
        let event = match input {
            Input::Inbound(idx, inbound) => match inbound {
                Inbound::Claim { msg, reply } => Event::Claim {
                    msg,
                    reply: tag_reply(idx, &reply),
                },
                Inbound::Job { msg, reply } => Event::Job {
                    msg,
                    reply: tag_reply(idx, &reply),
                },
                Inbound::Agent { node, msg } => {
                    self.node_routes.insert(node.clone(), idx);
                    if let AgentMsg::ArtifactChunk {
                        command,
                        name,
                        offset,
                        data,
                        last,
                    } = &msg
                    {
                        self.store_artifact(&node, command, name, *offset, data, *last);
                    }
                    self.note_job_log(&msg);
                    Event::Agent { node, msg }
                }
                Inbound::AgentGone { node } => {
                    if self.node_routes.get(&node) != Some(&idx) {
                        return None; // a newer session on another transport
                    }
                    self.node_routes.remove(&node);
                    Event::AgentGone { node }
                }
                other => {
                    tracing::warn!(transport = idx, inbound = ?other, "unknown inbound message dropped");
                    self.metrics.unknown("inbound");
                    return None;
                }
            },
            Input::TransportDown(idx, e) => {
                tracing::error!(transport = idx, error = %e, "transport stopped receiving");
                return None;
            }
            Input::Persisted { key, result } => Event::Persisted { key, result },
            Input::ProviderDone { op, call, result } => {
                if let Err(e) = &result {
                    self.metrics.provider_error(call, e.kind());
                }
                Event::ProviderDone { op, result }
            }
            Input::Credentials { claim, result } => Event::CredentialsIssued { claim, result },
            Input::Inventory(instances) => Event::Inventory { instances },
            Input::Offerings(offerings) => Event::Offerings { offerings },
            Input::Status(_) | Input::Snapshot(_) | Input::Inspect(_) | Input::Shutdown => {
                return None;
            }
        };
        Some(event)
    }

    fn status(&self) -> Status {
        let now = self.clock.now();
        let shortages = self
            .controller
            .pools()
            .map(|p| {
                let name = p.name.clone();
                let short = self.controller.capacity_shortages(&name, now);
                (name, short)
            })
            .filter(|(_, s)| !s.is_empty())
            .collect();
        Status {
            fleet_id: self.controller.fleet_id().clone(),
            epoch: self.controller.epoch(),
            at: now,
            pools: self.controller.pools().cloned().collect(),
            shortages,
            nodes: self.controller.nodes().collect(),
            claims: self.controller.accepted_claims().cloned().collect(),
            jobs: self.controller.jobs().cloned().collect(),
            runs: self.controller.runs().cloned().collect(),
            costs: self.controller.costs(now),
            affinity: self.controller.affinity_stats(),
            metrics: self.metrics.clone(),
            replay: self.replay_status(),
        }
    }

    /// The controller's account of the start with this driver's timings.
    fn replay_status(&self) -> fleet_core::protocol::ReplayStatus {
        let mut r = self.controller.replay().clone();
        r.started_at = self.replay.started_at;
        r.steps = self.replay.steps.clone();
        if let Some(at) = r.first_inventory_at {
            r.steps.push(fleet_core::protocol::ReplayStep {
                step: "first inventory of the provider".to_owned(),
                ms: at.saturating_sub(self.replay.started_at),
            });
        }
        r.ready_at = self.replay.ready_at;
        r
    }

    async fn step(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let now = self.clock.now();
        let commands = self.controller.handle_all(events, now);
        if !commands.is_empty() {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        for c in commands {
            self.perform(c, now).await;
        }
    }

    async fn perform(&mut self, c: Command, now: Millis) {
        match c {
            // The epoch rides in the record; the store given to the builder
            // is fenced at it (FencedStore, LeaseFencedStore).
            Command::Persist {
                key,
                value,
                expected,
            } => self.writer.write(Persist {
                key,
                value,
                expected,
            }),
            Command::Provider { op, call } => {
                let mut call = call;
                let tokens = self.tokens.clone();
                let provider = self.provider.clone();
                let tx = self.tx.clone();
                let name = call.name();
                tokio::spawn(async move {
                    // The token's digest is stored before the create goes
                    // out, so the node can join whichever incarnation of
                    // the daemon leads when its agent says hello.
                    if let (ProviderCall::Create(spec), Some(tokens)) = (&mut call, &tokens) {
                        match tokens.mint(&spec.node).await {
                            Ok(token) => spec.bootstrap_token = Some(token),
                            Err(e) => {
                                tracing::warn!(node = %spec.node, error = %e, "no bootstrap token; the create waits");
                                let _ = tx.send(Input::ProviderDone {
                                    op,
                                    call: name,
                                    result: Err(ProviderError::Transient(format!(
                                        "bootstrap token: {e}"
                                    ))),
                                });
                                return;
                            }
                        }
                    }
                    let result = call_provider(&*provider, call).await;
                    let _ = tx.send(Input::ProviderDone {
                        op,
                        call: name,
                        result,
                    });
                });
            }
            Command::Send { to, msg } => self.send(to, msg, now).await,
            Command::IssueCredentials {
                claim,
                workspace,
                node,
                endpoint,
                recipient,
                expires_at,
            } => {
                let tx = self.tx.clone();
                let issuer = self.issuer.clone();
                tokio::spawn(async move {
                    let result = match issuer {
                        Some(issuer) => {
                            issuer
                                .issue(CredentialRequest {
                                    claim: claim.clone(),
                                    workspace,
                                    node,
                                    endpoint,
                                    recipient,
                                    expires_at,
                                })
                                .await
                        }
                        None => Err(
                            "this fleet issues no credentials; claim without a recipient".into(),
                        ),
                    };
                    let _ = tx.send(Input::Credentials { claim, result });
                });
            }
            Command::JobForgotten { workspace, job } => {
                self.job_logs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .forget(&workspace, &job);
                if let Some(sink) = &self.artifacts {
                    sink.forget(&workspace, &job);
                }
            }
            Command::Alert(alert) => {
                self.metrics.alert(&alert);
                log_alert(&alert);
                if let Some(sink) = &self.alerts {
                    sink.alert(&alert);
                }
            }
            other => {
                tracing::warn!(command = ?other, "unknown command dropped");
                self.metrics.unknown("command");
            }
        }
    }

    async fn send(&mut self, to: Peer, msg: Outbound, now: Millis) {
        if let (Peer::Claim(_, id), Outbound::Claim(ClaimReply::Granted(_))) = (&to, &msg)
            && let Some(c) = self.controller.claim(id)
        {
            self.metrics.granted(now.saturating_sub(c.enqueued_at));
        }
        match to {
            Peer::Reply(r) => {
                let Some((idx, orig)) = untag_reply(&r) else {
                    return;
                };
                if let Some(t) = self.transports.get(idx)
                    && let Err(e) = t.send(&Peer::Reply(orig), msg).await
                {
                    tracing::debug!(error = %e, "reply not delivered");
                }
            }
            Peer::Node(node) => {
                let Some(idx) = self.node_routes.get(&node).copied() else {
                    tracing::debug!(%node, "no session for node; message dropped (resent on reconnect)");
                    return;
                };
                if let Some(t) = self.transports.get(idx)
                    && let Err(e) = t.send(&Peer::Node(node.clone()), msg).await
                {
                    tracing::warn!(%node, error = %e, "agent message not delivered");
                }
            }
            peer @ Peer::Claim(..) => {
                for t in &self.transports {
                    if let Err(e) = t.send(&peer, msg.clone()).await {
                        tracing::debug!(error = %e, "claim broadcast not delivered");
                    }
                }
            }
            other => {
                tracing::warn!(peer = ?other, "message to an unknown kind of peer dropped");
                self.metrics.unknown("peer");
            }
        }
    }
}

fn tag_reply(idx: usize, r: &ReplyTo) -> ReplyTo {
    ReplyTo(format!("{idx}/{}", r.0))
}

fn untag_reply(r: &ReplyTo) -> Option<(usize, ReplyTo)> {
    let (idx, rest) = r.0.split_once('/')?;
    Some((idx.parse().ok()?, ReplyTo(rest.to_owned())))
}

/// Performs one provider call for the controller.
async fn call_provider(
    provider: &dyn Provider,
    call: ProviderCall,
) -> Result<ProviderOutcome, ProviderError> {
    match call {
        ProviderCall::Create(spec) => provider.create(&spec).await.map(ProviderOutcome::Instance),
        ProviderCall::Start(i) => provider.start(&i).await.map(ProviderOutcome::Instance),
        ProviderCall::Stop(i) => provider.stop(&i).await.map(ProviderOutcome::Instance),
        ProviderCall::Resize(i, to) => provider
            .resize(&i, &to)
            .await
            .map(ProviderOutcome::Instance),
        ProviderCall::Snapshot(i) => provider.snapshot(&i).await.map(ProviderOutcome::Snapshot),
        ProviderCall::Delete(i) => provider.delete(&i).await.map(|()| ProviderOutcome::Deleted),
        other => Err(ProviderError::Unsupported(other.name().to_owned())),
    }
}

fn log_alert(alert: &Alert) {
    match alert {
        Alert::Fenced { key, error } => {
            tracing::error!(%key, %error, "fenced: another leader wrote")
        }
        Alert::ProviderFailed {
            node,
            call,
            kind,
            error,
        } => tracing::warn!(%node, %call, %kind, %error, "provider call failed"),
        Alert::NodeLost { node, state } => tracing::warn!(%node, state = state.name(), "node lost"),
        Alert::InvalidAction { pool, detail } => {
            tracing::warn!(%pool, %detail, "strategy asked for an invalid action")
        }
        Alert::UnknownAgent { node } => tracing::warn!(%node, "agent for an unknown node"),
        Alert::CapacityShortage {
            pool,
            node,
            instance_type,
            market,
            using,
            until,
            error,
        } => match using {
            Some(using) => tracing::warn!(
                %pool, %node, %instance_type, ?market, %using, until, %error,
                "insufficient capacity: new nodes use {using} instead of {instance_type} until {until}"
            ),
            None => tracing::warn!(
                %pool, %node, %instance_type, ?market, until, %error,
                "insufficient capacity, and no other type of the pool fits"
            ),
        },
        Alert::JobEscalated {
            job,
            workspace,
            attempts,
            reason,
            alert_id,
            channels,
            ..
        } => tracing::warn!(
            %job, %workspace, attempts, %reason, %alert_id, channels = channels.len(),
            "job escalated"
        ),
        Alert::CredentialsFailed { claim, error } => {
            tracing::warn!(%claim, %error, "credentials could not be issued")
        }
        other => tracing::warn!(?other, "alert"),
    }
}

/// Runs a start-up step, retrying a failure that may pass as the
/// controller retries a provider call (`timing.provider_retry_initial_ms`,
/// doubling up to `provider_retry_max_ms`, `startup_attempts` in all): the
/// provider's API or a replicated store electing a new leader. A permanent
/// failure, or the last attempt's, is returned with the attempts made.
async fn at_startup<T, E, Fut>(
    timing: &fleet_core::controller::Timing,
    what: &str,
    retryable: impl Fn(&E) -> bool,
    mut step: impl FnMut() -> Fut,
) -> Result<T, (E, u32)>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut wait = timing.provider_retry_initial_ms;
    let mut attempt = 1;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if retryable(&e) && attempt < timing.startup_attempts => {
                tracing::warn!(error = %e, attempt, retry_in_ms = wait, "{what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(wait)).await;
                wait = wait.saturating_mul(2).min(timing.provider_retry_max_ms);
                attempt += 1;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}

/// The provider's offerings ([`at_startup`]); a permanent failure (bad
/// credentials, no type sold) fails at once with the provider's words.
async fn startup_offerings(
    provider: &dyn Provider,
    timing: &fleet_core::controller::Timing,
) -> Result<Vec<Offering>, RuntimeError> {
    at_startup(
        timing,
        "reading the provider's offerings",
        ProviderError::is_retryable,
        || provider.offerings(),
    )
    .await
    .map_err(|(e, attempt)| {
        RuntimeError::Config(format!(
            "provider offerings unavailable (after {attempt} attempt(s)): {e}"
        ))
    })
}

/// A store read at start ([`at_startup`]): an unavailable store (a
/// JetStream stream electing a new leader after a server died) is waited
/// for; a corrupt record or a permanent error stops the start at once.
async fn startup_read<T, Fut>(
    timing: &fleet_core::controller::Timing,
    what: &str,
    step: impl FnMut() -> Fut,
) -> Result<T, RuntimeError>
where
    Fut: std::future::Future<Output = Result<T, RuntimeError>>,
{
    at_startup(timing, what, RuntimeError::is_retryable, step)
        .await
        .map_err(|(e, _)| e)
}
