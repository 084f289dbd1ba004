//! The server side ([`WsServer`]): one TLS listener, agent sessions on
//! `/v1/agent`, claim-plane clients on `/v1/claims`.
//!
//! This module owns what both planes share: the listener, the TLS and
//! WebSocket upgrade, routing a connection by its URL path, the registry both
//! planes keep their connections in (one lock), shutdown, and the
//! [`Transport`] impl. Each plane's sessions and routing live in `agent` and
//! `claims`.

mod agent;
mod claims;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use fleet_core::ids::{ClaimId, NodeId, Workspace};
use fleet_core::transport::{Inbound, Outbound, Peer, Transport, TransportError};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tracing::{debug, info, warn};

use crate::auth::{AgentAuth, ClaimAuth, ClaimScope, OpenClaims};
use crate::config::{WsConfig, WsError, close_code};
use crate::conn::{CloseReason, ws_config};
use crate::tls::{ServerTlsConfig, node_of_cert};
use crate::utls::ServerTls;

use agent::{AgentEntry, agent_open, agent_run};
use claims::{ClaimConn, claims_session};

/// The URL path of agent sessions.
pub const AGENT_PATH: &str = "/v1/agent";
/// The URL path of claim-plane clients.
pub const CLAIMS_PATH: &str = "/v1/claims";

/// Both planes' connections under one lock: `close_all` sets `closed` and
/// takes every close signal at once, and a session registers only while
/// `closed` is false, so none slips in after a close.
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

    /// Routes one outbound message without waiting: a full queue is
    /// backpressure, a missing peer is `NoPeer`.
    fn deliver(&self, to: &Peer, msg: &Outbound) -> Result<(), TransportError> {
        match (to, msg) {
            (Peer::Reply(reply), Outbound::Claim(_) | Outbound::Job(_)) => {
                self.deliver_reply(reply, msg)
            }
            (Peer::Claim(ws, id), Outbound::Claim(reply)) => self.deliver_to_claim(ws, id, reply),
            (Peer::Node(node), Outbound::Agent(m)) => self.deliver_to_node(node, m),
            (to, _) => Err(TransportError::NoPeer(format!(
                "{to:?} does not take this kind of message"
            ))),
        }
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
