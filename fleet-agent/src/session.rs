//! The agent's main loop: connect (jittered exponential backoff), `Hello`
//! with the commands already seen, heartbeats with CPU and memory, dispatch
//! of the daemon's messages, and the drain on SIGTERM or `Drain`.
//!
//! Messages produced while the link is down wait in a bounded outbox (and
//! the commands producing them wait on it), so nothing is dropped between
//! sessions; the one message whose send failed is resent first.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_core::protocol::{AgentMsg, DaemonMsg, NodeIdentity};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::exec::Executor;
use crate::gateway::{Gateway, GatewayError};
use crate::link::{Connector, Link, LinkError, msg_name};
use crate::load::{LoadSampler, node_resources};

/// Messages waiting for the link.
const OUTBOX: usize = 1024;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A local resource could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What the agent was doing.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The gateway could not start.
    #[error("gateway: {0}")]
    Gateway(#[from] GatewayError),
    /// The daemon link cannot work at all.
    #[error(transparent)]
    Link(#[from] LinkError),
}

impl AgentError {
    /// A short stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Io { .. } => "io",
            AgentError::Gateway(e) => e.kind(),
            AgentError::Link(e) => e.kind(),
        }
    }

    /// Whether starting again may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AgentError::Io { .. })
    }

    /// The process exit code: [`AgentError::EXIT_REFUSED`] when the daemon
    /// refused this node for good, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Link(LinkError::Denied(_)) => AgentError::EXIT_REFUSED,
            _ => 1,
        }
    }

    /// Exit code of an agent the daemon refused for good (a service
    /// manager should not restart it with the same credentials:
    /// `RestartPreventExitStatus=3`).
    pub const EXIT_REFUSED: u8 = 3;
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// Jittered exponential backoff: the n-th delay is drawn from
/// `[d/2, d]` with `d = min(max, min · 2ⁿ)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Backoff between `min_ms` and `max_ms`.
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into())
            ^ u64::from(std::process::id()).rotate_left(32);
        Backoff {
            min_ms: min_ms.max(1),
            max_ms: max_ms.max(min_ms.max(1)),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min_ms
            .saturating_mul(1u64 << self.attempt.min(32))
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs no cryptographic randomness.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = ceiling / 2;
        Duration::from_millis(half + self.rng % (ceiling - half + 1))
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A running agent's handles, for embedders and tests.
#[derive(Debug, Clone)]
pub struct Handles {
    /// The gateway's bound address, when it runs.
    pub gateway_addr: Option<SocketAddr>,
}

/// Runs the agent until it has drained (after `shutdown` resolves or the
/// daemon sends `Drain`). `started` receives the gateway address once it is
/// bound.
pub async fn run_with<F>(
    config: Config,
    connector: Arc<dyn Connector>,
    shutdown: F,
    started: Option<oneshot::Sender<Handles>>,
) -> Result<(), AgentError>
where
    F: Future<Output = ()> + Send,
{
    std::fs::create_dir_all(&config.work_dir)
        .map_err(io_err(format!("work_dir {}", config.work_dir.display())))?;
    let (out_tx, mut out_rx) = mpsc::channel::<AgentMsg>(OUTBOX);
    let executor = Executor::new(&config.work_dir, out_tx.clone())
        .map_err(io_err("loading the command ledger"))?;
    let mut identity = crate::identity::load(&config.identity_dir).map_err(io_err(format!(
        "identity_dir {}",
        config.identity_dir.display()
    )))?;

    // Gateway.
    let mut gateway = None;
    let mut gateway_addr = None;
    if let Some(listen) = config.gateway_listen {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(io_err(format!("gateway_listen {listen}")))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("gateway_listen address"))?;
        let gw = Gateway::new(config.backend.clone(), config.work_dir.join("claims"));
        if let Some(id) = &identity {
            gw.set_identity(id)?;
        }
        let serving = gw.clone();
        tokio::spawn(async move { serving.serve(listener).await });
        tracing::info!(%addr, "gateway listening");
        gateway = Some(gw);
        gateway_addr = Some(addr);
    }
    let advertise = config
        .gateway_advertise
        .clone()
        .or_else(|| gateway_addr.map(|a| a.to_string()));
    if let Some(tx) = started {
        let _ = tx.send(Handles { gateway_addr });
    }

    // Spot watcher.
    if let Some(url) = &config.imds_url {
        let imds = crate::imds::Imds::new(url).map_err(|e| AgentError::Io {
            what: format!("imds_url {url}"),
            source: std::io::Error::other(e.to_string()),
        })?;
        let every = Duration::from_millis(config.imds_poll_interval_ms);
        tokio::spawn(spot_watcher(imds, every, out_tx.clone()));
    }

    let mut session = Session {
        config,
        connector,
        executor,
        gateway,
        advertise,
        load: LoadSampler::default(),
        pending: VecDeque::new(),
        drained: None,
    };
    tokio::pin!(shutdown);
    let mut shutdown_seen = false;
    let mut backoff = Backoff::new(
        session.config.reconnect_min_ms,
        session.config.reconnect_max_ms,
    );
    loop {
        let hello = session.hello(identity.as_ref());
        let connect = session.connector.connect(hello, identity.as_ref());
        let connected = tokio::select! {
            r = connect => Some(r),
            () = &mut shutdown, if !shutdown_seen => {
                shutdown_seen = true;
                tracing::info!("SIGTERM: draining (daemon not connected)");
                session.start_drain();
                None
            }
            () = wait_drained(&mut session.drained) => {
                tracing::warn!("drained while disconnected; queued events are lost");
                return Ok(());
            }
        };
        let Some(connected) = connected else { continue };
        let (welcome, mut link) = match connected {
            Ok(ok) => ok,
            Err(e) => {
                if !e.is_retryable() {
                    tracing::error!(error = %e, kind = e.kind(), "cannot join the daemon; not retrying");
                    return Err(e.into());
                }
                let delay = backoff.next_delay();
                match &e {
                    LinkError::Refused(why) => tracing::warn!(
                        why = %why,
                        retry_in_ms = delay.as_millis(),
                        "daemon refused the session for now; retrying"
                    ),
                    other => tracing::warn!(
                        error = %other, kind = other.kind(),
                        retry_in_ms = delay.as_millis(), "cannot connect to the daemon; retrying"
                    ),
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut shutdown, if !shutdown_seen => {
                        shutdown_seen = true;
                        tracing::info!("SIGTERM: draining (daemon not connected)");
                        session.start_drain();
                    }
                }
                continue;
            }
        };
        backoff.reset();
        if let Some(new_id) = welcome.identity {
            if let Err(e) = crate::identity::save(&session.config.identity_dir, &new_id) {
                tracing::error!(error = %e, "cannot persist the node identity");
            }
            if let Some(gw) = &session.gateway
                && let Err(e) = gw.set_identity(&new_id)
            {
                tracing::error!(error = %e, "gateway cannot use the issued identity");
            }
            tracing::info!("received the node identity");
            identity = Some(new_id);
        }
        let beat_ms = session
            .config
            .heartbeat_interval_ms
            .unwrap_or(welcome.heartbeat_interval_ms)
            .max(1);
        session
            .executor
            .set_heartbeat(Duration::from_millis(beat_ms));
        tracing::info!(node = %welcome.node, heartbeat_ms = beat_ms, "connected to the daemon");
        match session
            .serve(
                &mut *link,
                &mut out_rx,
                &mut shutdown,
                &mut shutdown_seen,
                beat_ms,
            )
            .await
        {
            SessionEnd::Drained => return Ok(()),
            SessionEnd::Lost => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    retry_in_ms = delay.as_millis(),
                    "daemon link lost; reconnecting"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

enum SessionEnd {
    Drained,
    Lost,
}

struct Session {
    config: Config,
    connector: Arc<dyn Connector>,
    executor: Executor,
    gateway: Option<Gateway>,
    advertise: Option<String>,
    load: LoadSampler,
    /// Messages taken from the outbox whose send failed.
    pending: VecDeque<AgentMsg>,
    /// Set once a drain started; resolves when in-flight work is done.
    drained: Option<oneshot::Receiver<()>>,
}

async fn wait_drained(rx: &mut Option<oneshot::Receiver<()>>) {
    match rx {
        Some(r) => {
            let _ = r.await;
        }
        None => std::future::pending().await,
    }
}

impl Session {
    fn hello(&self, identity: Option<&NodeIdentity>) -> AgentMsg {
        let bootstrap_token = if identity.is_none() {
            let t = self.config.bootstrap_token();
            if t.is_none() {
                tracing::error!(
                    "no node identity in identity_dir and no bootstrap token \
                     (set bootstrap_token_file or FLEET_AGENT_BOOTSTRAP_TOKEN)"
                );
            }
            t
        } else {
            None
        };
        AgentMsg::Hello {
            node: self.config.node_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            bootstrap_token,
            resources: node_resources(self.config.labels.clone()),
            gateway: self.advertise.clone(),
            seen_commands: self.executor.seen(),
        }
    }

    /// Starts a drain (idempotent): no new commands, tell the daemon, and
    /// finish in-flight work in the background.
    fn start_drain(&mut self) {
        if self.drained.is_some() {
            return;
        }
        self.executor.begin_drain();
        let in_flight = self.executor.running();
        tracing::info!(?in_flight, "draining: no new commands");
        self.pending.push_back(AgentMsg::Draining { in_flight });
        let (tx, rx) = oneshot::channel();
        self.drained = Some(rx);
        let executor = self.executor.clone();
        let grace = Duration::from_millis(self.config.drain_timeout_ms);
        tokio::spawn(async move {
            executor.finish_in_flight(grace).await;
            let _ = tx.send(());
        });
    }

    async fn serve<F>(
        &mut self,
        link: &mut dyn Link,
        out_rx: &mut mpsc::Receiver<AgentMsg>,
        shutdown: &mut std::pin::Pin<&mut F>,
        shutdown_seen: &mut bool,
        beat_ms: u64,
    ) -> SessionEnd
    where
        F: Future<Output = ()> + Send,
    {
        let mut beat = tokio::time::interval(Duration::from_millis(beat_ms));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Resend what failed (and queued drain notices) first, in order.
            while let Some(msg) = self.pending.pop_front() {
                if let Err(e) = link.send(msg.clone()).await {
                    tracing::warn!(error = %e, "send failed");
                    self.pending.push_front(msg);
                    return SessionEnd::Lost;
                }
            }
            tokio::select! {
                msg = link.recv() => match msg {
                    Some(m) => self.dispatch(m),
                    None => return SessionEnd::Lost,
                },
                Some(out) = out_rx.recv() => self.pending.push_back(out),
                _ = beat.tick() => {
                    let (cpu_percent, memory_mb) = self.load.sample();
                    self.pending.push_back(AgentMsg::Heartbeat {
                        cpu_percent,
                        memory_mb,
                        running: self.executor.running(),
                    });
                }
                () = &mut *shutdown, if !*shutdown_seen => {
                    *shutdown_seen = true;
                    tracing::info!("SIGTERM: draining");
                    self.start_drain();
                }
                () = wait_drained(&mut self.drained) => {
                    // Everything the commands produced is in the outbox now.
                    while let Ok(out) = out_rx.try_recv() {
                        self.pending.push_back(out);
                    }
                    self.pending.push_back(AgentMsg::Draining { in_flight: Vec::new() });
                    while let Some(msg) = self.pending.pop_front() {
                        if let Err(e) = link.send(msg).await {
                            tracing::warn!(error = %e, "could not report everything before exit");
                            break;
                        }
                    }
                    return SessionEnd::Drained;
                }
            }
        }
    }

    fn dispatch(&mut self, msg: DaemonMsg) {
        tracing::debug!(msg = msg_name(&msg), "from daemon");
        match msg {
            DaemonMsg::Run(spec) => self.executor.run(spec),
            DaemonMsg::Cancel { command } => self.executor.cancel(&command),
            DaemonMsg::Activate {
                claim_id,
                expires_at,
            } => match &self.gateway {
                Some(gw) => {
                    tracing::info!(claim = %claim_id, expires_at, "claim activated");
                    gw.activate(claim_id, expires_at);
                }
                None => tracing::warn!(claim = %claim_id, "Activate but no gateway configured"),
            },
            DaemonMsg::Deactivate { claim_id } => {
                if let Some(gw) = &self.gateway {
                    tracing::info!(claim = %claim_id, "claim deactivated");
                    gw.deactivate(&claim_id);
                }
            }
            DaemonMsg::Drain => {
                tracing::info!("daemon asked to drain");
                self.start_drain();
            }
            other => tracing::debug!(msg = msg_name(&other), "ignored"),
        }
    }
}

async fn spot_watcher(mut imds: crate::imds::Imds, every: Duration, out: mpsc::Sender<AgentMsg>) {
    let mut reported = None;
    loop {
        match imds.instance_action().await {
            Ok(Some(action)) if reported != Some(action.deadline) => {
                tracing::warn!(action = %action.action, deadline = action.deadline,
                    "spot interruption notice");
                reported = Some(action.deadline);
                if out
                    .send(AgentMsg::Interrupted {
                        deadline: action.deadline,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "imds poll failed"),
        }
        tokio::time::sleep(every).await;
    }
}
