//! The server side ([`WsServer`]): one TLS listener, agent sessions on
//! `/v1/agent`, claim-plane clients on `/v1/claims`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use fleet_core::ids::{ClaimId, NodeId, Workspace};
use fleet_core::protocol::{
    AgentMsg, ClaimMsg, ClaimRejection, ClaimReply, DaemonMsg, JobMsg, JobReply, decode_limited,
};
use fleet_core::transport::{Inbound, Outbound, Peer, ReplyTo, Transport, TransportError};
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::{debug, info, warn};

use crate::auth::{AgentAuth, AgentHelloInfo, ClaimAuth, ClaimScope, OpenClaims};
use crate::config::{WsConfig, WsError, close_code};
use crate::conn::{
    CloseReason, Flow, Handler, Queued, close_for, drive, drive_split, queue_error, to_message,
    ws_config,
};
use crate::frame::{ClientFrame, ServerFrame, probe};
use crate::tls::{ServerTlsConfig, node_of_cert};
use crate::utls::ServerTls;

/// The URL path of agent sessions.
pub const AGENT_PATH: &str = "/v1/agent";
/// The URL path of claim-plane clients.
pub const CLAIMS_PATH: &str = "/v1/claims";

const REPLY_PREFIX: &str = "ws-";

/// What a claim-plane request number is open for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Open {
    Claim(Option<(Workspace, ClaimId)>),
    Job,
}

struct ClaimConn {
    tx: mpsc::Sender<Queued>,
    open: HashMap<u64, Open>,
    subs: HashMap<u64, Workspace>,
    close: Option<oneshot::Sender<CloseReason>>,
}

struct AgentEntry {
    conn: u64,
    tx: mpsc::Sender<Queued>,
    close: Option<oneshot::Sender<CloseReason>>,
}

#[derive(Default)]
struct State {
    closed: bool,
    conns: HashMap<u64, ClaimConn>,
    /// Claim requests in flight, by claim: (connection, request number).
    waiters: HashMap<(Workspace, ClaimId), Vec<(u64, u64)>>,
    /// Revocation subscriptions by workspace: (connection, subscription).
    subs: HashMap<Workspace, Vec<(u64, u64)>>,
    agents: HashMap<NodeId, AgentEntry>,
}

struct Shared {
    cfg: WsConfig,
    auth: Arc<dyn AgentAuth>,
    claim_auth: Arc<dyn ClaimAuth>,
    inbox: mpsc::Sender<Inbound>,
    next_conn: AtomicU64,
    state: Mutex<State>,
    /// Becomes true on close, so a waiting `recv` ends.
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under the lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claim_frame(&self, frame: &ServerFrame) -> Result<Queued, TransportError> {
        to_message(frame, self.cfg.max_message_bytes).map(Queued::from)
    }

    /// Routes one outbound message without waiting: a full queue is
    /// backpressure, a missing peer is `NoPeer`.
    fn deliver(&self, to: &Peer, msg: &Outbound) -> Result<(), TransportError> {
        match (to, msg) {
            (Peer::Reply(reply), Outbound::Claim(_) | Outbound::Job(_)) => {
                let Some((conn, req)) = parse_reply(reply) else {
                    return Err(TransportError::NoPeer(reply.0.clone()));
                };
                let frame = match msg {
                    Outbound::Claim(m) => ServerFrame::Reply {
                        req,
                        msg: m.clone(),
                    },
                    Outbound::Job(m) => ServerFrame::JobReply {
                        req,
                        msg: m.clone(),
                    },
                    _ => return Err(TransportError::NoPeer(reply.0.clone())),
                };
                let wire = self.claim_frame(&frame)?;
                let st = self.lock();
                if st.closed {
                    return Err(TransportError::Closed);
                }
                let Some(c) = st.conns.get(&conn) else {
                    return Err(TransportError::NoPeer(reply.0.clone()));
                };
                match (c.open.get(&req), msg) {
                    (Some(Open::Claim(_)), Outbound::Claim(_))
                    | (Some(Open::Job), Outbound::Job(_)) => {
                        c.tx.try_send(wire).map_err(|e| queue_error(e, &reply.0))
                    }
                    (Some(_), _) => Err(TransportError::NoPeer(format!(
                        "{} belongs to the other plane",
                        reply.0
                    ))),
                    (None, _) => Err(TransportError::NoPeer(reply.0.clone())),
                }
            }
            (Peer::Claim(ws, id), Outbound::Claim(reply)) => {
                let who = format!("claim {ws}/{id}");
                let st = self.lock();
                if st.closed {
                    return Err(TransportError::Closed);
                }
                let mut result = Ok(());
                for (conn, req) in st
                    .waiters
                    .get(&(ws.clone(), id.clone()))
                    .into_iter()
                    .flatten()
                {
                    if let Some(c) = st.conns.get(conn) {
                        let wire = self.claim_frame(&ServerFrame::Reply {
                            req: *req,
                            msg: reply.clone(),
                        })?;
                        if let Err(e @ TransportError::Backpressure(_)) =
                            c.tx.try_send(wire).map_err(|e| queue_error(e, &who))
                        {
                            result = Err(e);
                        }
                    }
                }
                if let ClaimReply::Revoked(rev) = reply {
                    for (conn, sub) in st.subs.get(ws).into_iter().flatten() {
                        if let Some(c) = st.conns.get(conn) {
                            let wire = self.claim_frame(&ServerFrame::Revocation {
                                sub: *sub,
                                msg: rev.clone(),
                            })?;
                            if let Err(e @ TransportError::Backpressure(_)) =
                                c.tx.try_send(wire).map_err(|e| queue_error(e, &who))
                            {
                                result = Err(e);
                            }
                        }
                    }
                }
                result
            }
            (Peer::Node(node), Outbound::Agent(m)) => {
                let wire = Queued::from(to_message(m, self.cfg.max_message_bytes)?);
                let mut st = self.lock();
                if st.closed {
                    return Err(TransportError::Closed);
                }
                let Some(entry) = st.agents.get_mut(node) else {
                    return Err(TransportError::NoPeer(format!("node {node}")));
                };
                let who = format!("node {node}");
                let result = entry.tx.try_send(wire).map_err(|e| queue_error(e, &who));
                if matches!(result, Err(TransportError::Backpressure(_)))
                    && self.cfg.close_slow_agents
                {
                    warn!(%node, "agent send queue full; closing the session");
                    if let Some(close) = entry.close.take() {
                        let _ = close.send(CloseReason::new(
                            close_code::SLOW_CONSUMER,
                            "send queue full",
                        ));
                    }
                }
                result
            }
            (to, _) => Err(TransportError::NoPeer(format!(
                "{to:?} does not take this kind of message"
            ))),
        }
    }

    fn send_to_conn(&self, conn: u64, frame: &ServerFrame) {
        let Ok(wire) = self.claim_frame(frame) else {
            return;
        };
        if let Some(c) = self.lock().conns.get(&conn)
            && c.tx.try_send(wire).is_err()
        {
            debug!(conn, "could not queue a control frame");
        }
    }

    fn remove_conn(&self, conn: u64) {
        let mut st = self.lock();
        let Some(c) = st.conns.remove(&conn) else {
            return;
        };
        for open in c.open.values() {
            if let Open::Claim(Some(key)) = open {
                remove_pair(&mut st.waiters, key, conn, None);
            }
        }
        for ws in c.subs.values() {
            remove_pair(&mut st.subs, ws, conn, None);
        }
        drop(st);
        drop(c);
    }

    fn close_all(&self) {
        let mut st = self.lock();
        st.closed = true;
        self.shutdown.send_replace(true);
        let mut signals = Vec::new();
        for c in st.conns.values_mut() {
            signals.extend(c.close.take());
        }
        for a in st.agents.values_mut() {
            signals.extend(a.close.take());
        }
        drop(st);
        for s in signals {
            let _ = s.send(CloseReason::new(
                close_code::GOING_AWAY,
                "server shutting down",
            ));
        }
    }
}

fn remove_pair<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Vec<(u64, u64)>>,
    key: &K,
    conn: u64,
    n: Option<u64>,
) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|(c, m)| !(*c == conn && n.is_none_or(|n| n == *m)));
        if list.is_empty() {
            map.remove(key);
        }
    }
}

fn parse_reply(reply: &ReplyTo) -> Option<(u64, u64)> {
    let rest = reply.0.strip_prefix(REPLY_PREFIX)?;
    let (conn, req) = rest.split_once('-')?;
    Some((conn.parse().ok()?, req.parse().ok()?))
}

/// The WebSocket transport's server side: a [`Transport`] for the control
/// plane. Dropping it (or [`WsServer::close`]) stops the listener and closes
/// every connection with 1001.
pub struct WsServer {
    shared: Arc<Shared>,
    inbox: tokio::sync::Mutex<mpsc::Receiver<Inbound>>,
    accept: JoinHandle<()>,
    addr: SocketAddr,
}

impl fmt::Debug for WsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl WsServer {
    /// Binds `addr` and starts accepting; returns the server and the bound
    /// address (pass port 0 for a free one). Must run inside a tokio runtime.
    /// Every claim-plane client may use every workspace ([`OpenClaims`]);
    /// see [`WsServer::bind_with_claim_auth`].
    pub async fn bind(
        addr: SocketAddr,
        tls: &ServerTlsConfig,
        auth: Arc<dyn AgentAuth>,
        cfg: WsConfig,
    ) -> Result<(WsServer, SocketAddr), WsError> {
        WsServer::bind_with_claim_auth(addr, tls, auth, Arc::new(OpenClaims), cfg).await
    }

    /// Like [`WsServer::bind`], with `claim_auth` deciding which claim-plane
    /// clients may connect and in which workspaces they may act.
    pub async fn bind_with_claim_auth(
        addr: SocketAddr,
        tls: &ServerTlsConfig,
        auth: Arc<dyn AgentAuth>,
        claim_auth: Arc<dyn ClaimAuth>,
        cfg: WsConfig,
    ) -> Result<(WsServer, SocketAddr), WsError> {
        let acceptor = tls.build()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| WsError::Io(format!("bind {addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| WsError::Io(e.to_string()))?;
        let (tx, rx) = mpsc::channel(cfg.inbox_capacity.max(1));
        let shared = Arc::new(Shared {
            cfg,
            auth,
            claim_auth,
            inbox: tx,
            next_conn: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            shutdown: tokio::sync::watch::Sender::new(false),
        });
        let accept = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&shared)));
        info!(%addr, "fleet WebSocket transport listening");
        Ok((
            WsServer {
                shared,
                inbox: tokio::sync::Mutex::new(rx),
                accept,
                addr,
            },
            addr,
        ))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of connected agent sessions.
    pub fn agent_count(&self) -> usize {
        self.shared.lock().agents.len()
    }

    /// Closes one node's session (e.g. on a decommission); `false` if none.
    pub fn disconnect_agent(&self, node: &NodeId) -> bool {
        let signal = self
            .shared
            .lock()
            .agents
            .get_mut(node)
            .and_then(|a| a.close.take());
        match signal {
            Some(s) => s
                .send(CloseReason::new(
                    close_code::NORMAL,
                    "disconnected by server",
                ))
                .is_ok(),
            None => false,
        }
    }

    /// Closes every claim-plane connection (1001) but keeps serving; clients
    /// reconnect and re-send their calls. For failover drills and tests.
    pub fn close_claim_connections(&self) {
        let signals: Vec<_> = self
            .shared
            .lock()
            .conns
            .values_mut()
            .filter_map(|c| c.close.take())
            .collect();
        for s in signals {
            let _ = s.send(CloseReason::new(
                close_code::GOING_AWAY,
                "connection reset by server",
            ));
        }
    }

    /// Stops accepting and closes every connection (1001). Idempotent;
    /// `recv` returns what was already queued, then `Closed` (a `recv`
    /// waiting at the time ends with `Closed`).
    pub fn close(&self) {
        self.accept.abort();
        self.shared.close_all();
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl Transport for WsServer {
    async fn recv(&self) -> Result<Inbound, TransportError> {
        let mut inbox = self.inbox.lock().await;
        // What already arrived is still delivered after a close.
        if let Ok(m) = inbox.try_recv() {
            return Ok(m);
        }
        let mut shutdown = self.shared.shutdown.subscribe();
        tokio::select! {
            m = inbox.recv() => m.ok_or(TransportError::Closed),
            _ = shutdown.wait_for(|closed| *closed) => Err(TransportError::Closed),
        }
    }

    async fn send(&self, to: &Peer, msg: Outbound) -> Result<(), TransportError> {
        self.shared.deliver(to, &msg)
    }
}

async fn accept_loop(listener: TcpListener, acceptor: Arc<ServerConfig>, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let acceptor = Arc::clone(&acceptor);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    serve(tcp, peer, acceptor, shared).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

type Ws = WebSocketStream<ServerTls<TcpStream>>;

/// Which endpoint a handshake asked for.
#[derive(Clone, PartialEq, Eq)]
enum Endpoint {
    Agent,
    Claims(ClaimScope),
}

async fn handshake(
    tcp: TcpStream,
    acceptor: Arc<ServerConfig>,
    cfg: &WsConfig,
    claim_auth: &dyn ClaimAuth,
) -> Result<(Ws, Endpoint, Option<NodeId>), String> {
    let _ = tcp.set_nodelay(true);
    let tls = crate::utls::accept(tcp, acceptor)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let cert_node = tls
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| node_of_cert(c));
    let mut endpoint = None;
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback signature"
    )]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let refuse = |status: StatusCode, why: String| {
            let mut err = ErrorResponse::new(Some(why));
            *err.status_mut() = status;
            if status == StatusCode::UNAUTHORIZED
                && let Ok(v) = "Bearer".parse()
            {
                err.headers_mut().insert("www-authenticate", v);
            }
            err
        };
        endpoint = match req.uri().path() {
            AGENT_PATH => Some(Endpoint::Agent),
            CLAIMS_PATH => {
                let bearer = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match claim_auth.authorize(bearer) {
                    Ok(scope) => Some(Endpoint::Claims(scope)),
                    Err(e) => {
                        info!(error = %e, "claim-plane client refused");
                        return Err(refuse(
                            StatusCode::UNAUTHORIZED,
                            format!("unauthorized: {e}"),
                        ));
                    }
                }
            }
            _ => return Err(refuse(StatusCode::NOT_FOUND, "no such endpoint".to_owned())),
        };
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(tls, callback, Some(ws_config(cfg)))
        .await
        .map_err(|e| format!("WebSocket: {e}"))?;
    let endpoint = endpoint.ok_or("no endpoint")?;
    Ok((ws, endpoint, cert_node))
}

async fn serve(tcp: TcpStream, peer: SocketAddr, acceptor: Arc<ServerConfig>, shared: Arc<Shared>) {
    let cfg = &shared.cfg;
    // Boxed: the handshake futures hold a rustls connection by value inside
    // the TLS and tungstenite handshake states (~10 KB in all).
    // Inline, this task would reserve that much for the connection's whole
    // life; boxed, it is freed once the handshake is done.
    let (ws, endpoint, cert_node) = match Box::pin(timeout(
        cfg.hello_timeout,
        handshake(tcp, acceptor, cfg, &*shared.claim_auth),
    ))
    .await
    {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "handshake timed out");
            return;
        }
    };
    match endpoint {
        Endpoint::Agent => {
            // The Hello exchange is boxed for the same reason; what outlives
            // it is the split stream and the queue (see `AgentOpen`).
            let opened = Box::pin(agent_open(ws, peer, cert_node, &shared)).await;
            if let Some(open) = opened {
                agent_run(open, shared).await;
            }
        }
        // Boxed so the (rare) claim-plane connection's larger future does not
        // size every agent connection's task.
        Endpoint::Claims(scope) => Box::pin(claims_session(ws, peer, scope, shared)).await,
    }
}

async fn close_now(mut ws: Ws, reason: CloseReason) {
    use futures_util::SinkExt;
    let _ = timeout(std::time::Duration::from_secs(1), async {
        let _ = ws.send(reason.frame()).await;
        let _ = ws.close(None).await;
    })
    .await;
}

/// Reads until the first data frame.
async fn first_data(ws: &mut Ws) -> Result<Bytes, CloseReason> {
    use futures_util::StreamExt;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(Bytes::from(t)),
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Close(_))) | None => {
                return Err(CloseReason::new(close_code::NORMAL, "closed before hello"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                return Err(close_for(&e)
                    .unwrap_or_else(|| CloseReason::new(close_code::PROTOCOL, e.to_string())));
            }
        }
    }
}

/// An agent session past its Hello: registered, welcomed, and ready to run.
struct AgentOpen {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    rx: mpsc::Receiver<Queued>,
    close_rx: oneshot::Receiver<CloseReason>,
    node: NodeId,
    conn: u64,
}

/// Waits for the agent's Hello, authenticates it, registers the session and
/// forwards the Hello; `None` when the connection was closed instead.
async fn agent_open(
    mut ws: Ws,
    peer: SocketAddr,
    cert_node: Option<NodeId>,
    shared: &Arc<Shared>,
) -> Option<AgentOpen> {
    let cfg = &shared.cfg;
    let first = match timeout(cfg.hello_timeout, first_data(&mut ws)).await {
        Ok(Ok(b)) => b,
        Ok(Err(reason)) => {
            debug!(%peer, reason = %reason.reason, "agent left before hello");
            close_now(ws, reason).await;
            return None;
        }
        Err(_) => {
            warn!(%peer, "agent sent no hello in time");
            close_now(
                ws,
                CloseReason::new(close_code::HELLO_TIMEOUT, "no hello in time"),
            )
            .await;
            return None;
        }
    };
    let hello = match decode_limited::<AgentMsg>(&first, cfg.max_message_bytes) {
        Ok(h @ AgentMsg::Hello { .. }) => h,
        Ok(_) => {
            warn!(%peer, "agent's first message is not hello");
            close_now(
                ws,
                CloseReason::new(close_code::POLICY, "first message must be hello"),
            )
            .await;
            return None;
        }
        Err(e) => {
            warn!(%peer, error = %e, kind = e.kind(), "undecodable agent hello");
            close_now(
                ws,
                CloseReason::new(close_code::INVALID_PAYLOAD, e.to_string()),
            )
            .await;
            return None;
        }
    };
    let AgentMsg::Hello {
        node,
        bootstrap_token,
        ..
    } = &hello
    else {
        return None;
    };
    let node = node.clone();
    let info = AgentHelloInfo {
        node: node.clone(),
        bootstrap_token: bootstrap_token.clone(),
        cert_node,
        peer,
    };
    let identity = match shared.auth.authenticate(&info).await {
        Ok(id) => id,
        Err(e) => {
            warn!(%peer, %node, cert_node = ?info.cert_node, error = %e, kind = e.kind(), "agent refused");
            close_now(ws, CloseReason::new(close_code::AUTH_REFUSED, e.kind())).await;
            return None;
        }
    };
    let bootstrapped = identity.is_some();
    let welcome = DaemonMsg::Welcome {
        node: node.clone(),
        identity,
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
    };
    let welcome = match to_message(&welcome, cfg.max_message_bytes) {
        Ok(m) => m,
        Err(e) => {
            warn!(%node, error = %e, "cannot encode welcome");
            close_now(
                ws,
                CloseReason::new(close_code::INTERNAL, "cannot encode welcome"),
            )
            .await;
            return None;
        }
    };
    let (tx, rx) = mpsc::channel(cfg.send_queue.max(1));
    // The queue is fresh, so Welcome is the first thing the agent gets.
    let _ = tx.try_send(Queued::from(welcome));
    let (close_tx, close_rx) = oneshot::channel();
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let displaced = {
        let mut st = shared.lock();
        if st.closed {
            None
        } else {
            Some(st.agents.insert(
                node.clone(),
                AgentEntry {
                    conn,
                    tx,
                    close: Some(close_tx),
                },
            ))
        }
    };
    let Some(displaced) = displaced else {
        close_now(
            ws,
            CloseReason::new(close_code::GOING_AWAY, "server shutting down"),
        )
        .await;
        return None;
    };
    if let Some(mut old) = displaced
        && let Some(signal) = old.close.take()
    {
        info!(%node, "a new session replaces the node's previous one");
        let _ = signal.send(CloseReason::new(
            close_code::REPLACED,
            "replaced by a newer session",
        ));
    }
    info!(%node, %peer, bootstrapped, "agent session open");
    if shared
        .inbox
        .send(Inbound::Agent {
            node: node.clone(),
            msg: hello,
        })
        .await
        .is_err()
    {
        return None;
    }
    let (sink, stream) = ws.split();
    Some(AgentOpen {
        sink,
        stream,
        rx,
        close_rx,
        node,
        conn,
    })
}

/// Runs an open agent session until it ends, then unregisters it.
async fn agent_run(open: AgentOpen, shared: Arc<Shared>) {
    let AgentOpen {
        sink,
        stream,
        rx,
        close_rx,
        node,
        conn,
    } = open;
    let cfg = &shared.cfg;
    let mut handler = AgentHandler {
        shared: Arc::clone(&shared),
        node: node.clone(),
    };
    let ending = drive_split(sink, stream, rx, close_rx, cfg, &mut handler).await;
    let current = {
        let mut st = shared.lock();
        if st.agents.get(&node).is_some_and(|a| a.conn == conn) {
            st.agents.remove(&node);
            true
        } else {
            false
        }
    };
    info!(%node, ?ending, replaced = !current, "agent session closed");
    if current {
        let _ = shared.inbox.send(Inbound::AgentGone { node }).await;
    }
}

struct AgentHandler {
    shared: Arc<Shared>,
    node: NodeId,
}

impl Handler for AgentHandler {
    /// Decodes and forwards without waiting when the inbox has room; only a
    /// full inbox makes it wait, on a boxed `send`. An `async fn` (or any
    /// binding of the message across the await) would keep room for the
    /// message and the send future (~0.4-0.8 KB) in every connection's task
    /// for its whole life, to serve a path only taken under backpressure.
    fn on_frame(&mut self, data: Bytes) -> impl Future<Output = Flow> + Send {
        let going_away = || CloseReason::new(close_code::GOING_AWAY, "server shutting down");
        let step = match decode_limited::<AgentMsg>(&data, self.shared.cfg.max_message_bytes) {
            Ok(msg) => {
                let inbound = Inbound::Agent {
                    node: self.node.clone(),
                    msg,
                };
                match self.shared.inbox.try_send(inbound) {
                    Ok(()) => Err(Flow::Continue),
                    Err(mpsc::error::TrySendError::Full(inbound)) => {
                        Ok(Box::pin(self.shared.inbox.send(inbound)))
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(Flow::Close(going_away())),
                }
            }
            Err(e) => {
                warn!(node = %self.node, error = %e, kind = e.kind(), "undecodable agent message; closing");
                Err(Flow::Close(CloseReason::new(
                    close_code::INVALID_PAYLOAD,
                    e.to_string(),
                )))
            }
        };
        async move {
            match step {
                Err(flow) => flow,
                Ok(wait) => match wait.await {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Close(going_away()),
                },
            }
        }
    }
}

async fn claims_session(ws: Ws, peer: SocketAddr, scope: ClaimScope, shared: Arc<Shared>) {
    let cfg = &shared.cfg;
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(cfg.send_queue.max(1));
    let (close_tx, close_rx) = oneshot::channel();
    let closed = {
        let mut st = shared.lock();
        st.closed || {
            st.conns.insert(
                conn,
                ClaimConn {
                    tx,
                    open: HashMap::new(),
                    subs: HashMap::new(),
                    close: Some(close_tx),
                },
            );
            false
        }
    };
    if closed {
        return close_now(
            ws,
            CloseReason::new(close_code::GOING_AWAY, "server shutting down"),
        )
        .await;
    }
    debug!(conn, %peer, "claim-plane client connected");
    let mut handler = ClaimsHandler {
        shared: Arc::clone(&shared),
        conn,
        scope,
    };
    let ending = drive(ws, rx, close_rx, cfg, &mut handler).await;
    shared.remove_conn(conn);
    debug!(conn, %peer, ?ending, "claim-plane client disconnected");
}

struct ClaimsHandler {
    shared: Arc<Shared>,
    conn: u64,
    /// The workspaces this connection's token covers.
    scope: ClaimScope,
}

impl ClaimsHandler {
    fn reply_to(&self, req: u64) -> ReplyTo {
        ReplyTo(format!("{REPLY_PREFIX}{}-{req}", self.conn))
    }

    /// Registers an open request; false when the connection has too many.
    fn open(&self, req: u64, what: Open) -> bool {
        let mut st = self.shared.lock();
        let State { conns, waiters, .. } = &mut *st;
        let Some(c) = conns.get_mut(&self.conn) else {
            return false;
        };
        if c.open.len() >= self.shared.cfg.max_open_requests && !c.open.contains_key(&req) {
            return false;
        }
        if let Open::Claim(Some(key)) = &what {
            waiters
                .entry(key.clone())
                .or_default()
                .push((self.conn, req));
        }
        if let Some(Open::Claim(Some(old))) = c.open.insert(req, what) {
            remove_pair(waiters, &old, self.conn, Some(req));
        }
        true
    }

    fn done(&self, req: u64) {
        let mut st = self.shared.lock();
        let State { conns, waiters, .. } = &mut *st;
        if let Some(c) = conns.get_mut(&self.conn)
            && let Some(Open::Claim(Some(key))) = c.open.remove(&req)
        {
            remove_pair(waiters, &key, self.conn, Some(req));
        }
    }

    fn subscribe(&self, sub: u64, ws: Workspace) {
        let mut st = self.shared.lock();
        let State { conns, subs, .. } = &mut *st;
        if let Some(c) = conns.get_mut(&self.conn) {
            if let Some(old) = c.subs.insert(sub, ws.clone()) {
                remove_pair(subs, &old, self.conn, Some(sub));
            }
            subs.entry(ws).or_default().push((self.conn, sub));
        }
    }

    fn unsubscribe(&self, sub: u64) {
        let mut st = self.shared.lock();
        let State { conns, subs, .. } = &mut *st;
        if let Some(c) = conns.get_mut(&self.conn)
            && let Some(ws) = c.subs.remove(&sub)
        {
            remove_pair(subs, &ws, self.conn, Some(sub));
        }
    }

    /// Answers a frame for a workspace outside this connection's scope; true
    /// when it was (and must go no further).
    fn forbidden(&self, frame: &ClientFrame) -> bool {
        let (workspace, answer) = match frame {
            ClientFrame::Claim { req, msg } => (
                msg.workspace(),
                ServerFrame::Reply {
                    req: *req,
                    msg: ClaimReply::Rejected {
                        claim_id: Some(msg.claim_id().clone()),
                        error: ClaimRejection::Forbidden {
                            workspace: msg.workspace().to_string(),
                        },
                    },
                },
            ),
            ClientFrame::Job { req, msg } => {
                let (workspace, job) = match msg {
                    JobMsg::Submit(spec) => (&spec.workspace, &spec.id),
                    JobMsg::Cancel { workspace, job } => (workspace, job),
                    // A job message this server cannot place in a workspace:
                    // only an unlimited client may send it.
                    _ if self.scope == ClaimScope::All => return false,
                    _ => {
                        self.refuse(
                            Some("job"),
                            Some(*req),
                            "forbidden",
                            "this job message names no workspace".to_owned(),
                        );
                        return true;
                    }
                };
                (
                    workspace,
                    ServerFrame::JobReply {
                        req: *req,
                        msg: JobReply::Rejected {
                            job: Some(job.clone()),
                            why: format!("not allowed in workspace {workspace}"),
                        },
                    },
                )
            }
            ClientFrame::SubscribeRevocations { sub, workspace } => (
                workspace,
                ServerFrame::Error {
                    req: Some(*sub),
                    kind: "forbidden".to_owned(),
                    why: format!("not allowed in workspace {workspace}"),
                },
            ),
            _ => return false,
        };
        if self.scope.allows(workspace) {
            return false;
        }
        warn!(conn = self.conn, %workspace, "claim-plane frame outside the token's workspaces refused");
        self.shared.send_to_conn(self.conn, &answer);
        true
    }

    fn refuse(&self, kind: Option<&str>, req: Option<u64>, err_kind: &str, why: String) {
        let frame = match (kind, req) {
            (Some("claim"), Some(req)) => ServerFrame::Reply {
                req,
                msg: ClaimReply::Rejected {
                    claim_id: None,
                    error: ClaimRejection::Invalid { why },
                },
            },
            (Some("job"), Some(req)) => ServerFrame::JobReply {
                req,
                msg: JobReply::Rejected { job: None, why },
            },
            _ => ServerFrame::Error {
                req,
                kind: err_kind.to_owned(),
                why,
            },
        };
        self.shared.send_to_conn(self.conn, &frame);
    }
}

impl Handler for ClaimsHandler {
    async fn on_frame(&mut self, data: Bytes) -> Flow {
        let frame = match decode_limited::<ClientFrame>(&data, self.shared.cfg.max_message_bytes) {
            Ok(f) => f,
            Err(e) => {
                let p = probe(&data);
                let kind = p.as_ref().and_then(|p| p.kind.clone());
                let req = p.as_ref().and_then(|p| p.req.or(p.sub));
                warn!(conn = self.conn, error = %e, kind = e.kind(), "undecodable claim-plane frame");
                self.refuse(kind.as_deref(), req, e.kind(), e.to_string());
                return Flow::Continue;
            }
        };
        if self.forbidden(&frame) {
            return Flow::Continue;
        }
        let inbound = match frame {
            ClientFrame::Claim { req, msg } => {
                let key = match &msg {
                    ClaimMsg::Request(r) => Some((r.workspace.clone(), r.claim_id.clone())),
                    _ => None,
                };
                if !self.open(req, Open::Claim(key)) {
                    self.shared.send_to_conn(
                        self.conn,
                        &ServerFrame::Reply {
                            req,
                            msg: ClaimReply::Rejected {
                                claim_id: Some(msg.claim_id().clone()),
                                error: ClaimRejection::Overloaded,
                            },
                        },
                    );
                    return Flow::Continue;
                }
                Inbound::Claim {
                    msg,
                    reply: self.reply_to(req),
                }
            }
            ClientFrame::Job { req, msg } => {
                if !self.open(req, Open::Job) {
                    self.refuse(
                        Some("job"),
                        Some(req),
                        "limit",
                        "too many open requests".to_owned(),
                    );
                    return Flow::Continue;
                }
                Inbound::Job {
                    msg,
                    reply: self.reply_to(req),
                }
            }
            ClientFrame::Done { req } => {
                self.done(req);
                return Flow::Continue;
            }
            ClientFrame::SubscribeRevocations { sub, workspace } => {
                self.subscribe(sub, workspace);
                self.shared
                    .send_to_conn(self.conn, &ServerFrame::Subscribed { sub });
                return Flow::Continue;
            }
            ClientFrame::Unsubscribe { sub } => {
                self.unsubscribe(sub);
                return Flow::Continue;
            }
        };
        if self.shared.inbox.send(inbound).await.is_err() {
            return Flow::Close(CloseReason::new(
                close_code::GOING_AWAY,
                "server shutting down",
            ));
        }
        Flow::Continue
    }
}
