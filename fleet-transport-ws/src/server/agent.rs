//! The agent plane (`/v1/agent`): an agent's Hello and its authentication,
//! the one session per node (a newer one replaces the older), forwarding
//! what the agent sends to the control plane, and routing `DaemonMsg`s to
//! the node.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fleet_core::ids::NodeId;
use fleet_core::protocol::{AgentMsg, DaemonMsg, decode_limited};
use fleet_core::transport::{Inbound, TransportError};
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::{debug, info, warn};

use super::{Shared, Ws, close_now};
use crate::auth::AgentHelloInfo;
use crate::config::{WsConfig, close_code};
use crate::conn::{
    CloseReason, Flow, Handler, Queued, close_for, drive_split, queue_error, to_message,
};

pub(super) struct AgentEntry {
    conn: u64,
    tx: mpsc::Sender<Queued>,
    pub(super) close: Option<oneshot::Sender<CloseReason>>,
}

impl Shared {
    /// Queues a message for the node's session; a full queue closes a slow
    /// agent when the config says so.
    pub(super) fn deliver_to_node(
        &self,
        node: &NodeId,
        m: &DaemonMsg,
    ) -> Result<(), TransportError> {
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
        if matches!(result, Err(TransportError::Backpressure(_))) && self.cfg.close_slow_agents {
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
}

/// Reads until the first data frame.
async fn first_data(ws: &mut Ws) -> Result<Bytes, CloseReason> {
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

/// Reads the session's first message, which must be a Hello and arrive
/// within the hello timeout; otherwise the reason to close with.
async fn read_hello(
    ws: &mut Ws,
    peer: SocketAddr,
    cfg: &WsConfig,
) -> Result<AgentMsg, CloseReason> {
    let first = match timeout(cfg.hello_timeout, first_data(ws)).await {
        Ok(Ok(b)) => b,
        Ok(Err(reason)) => {
            debug!(%peer, reason = %reason.reason, "agent left before hello");
            return Err(reason);
        }
        Err(_) => {
            warn!(%peer, "agent sent no hello in time");
            return Err(CloseReason::new(
                close_code::HELLO_TIMEOUT,
                "no hello in time",
            ));
        }
    };
    match decode_limited::<AgentMsg>(&first, cfg.max_message_bytes) {
        Ok(h @ AgentMsg::Hello { .. }) => Ok(h),
        Ok(_) => {
            warn!(%peer, "agent's first message is not hello");
            Err(CloseReason::new(
                close_code::POLICY,
                "first message must be hello",
            ))
        }
        Err(e) => {
            warn!(%peer, error = %e, kind = e.kind(), "undecodable agent hello");
            Err(CloseReason::new(close_code::INVALID_PAYLOAD, e.to_string()))
        }
    }
}

/// An agent session past its Hello: registered, welcomed, and ready to run.
pub(super) struct AgentOpen {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    rx: mpsc::Receiver<Queued>,
    close_rx: oneshot::Receiver<CloseReason>,
    node: NodeId,
    conn: u64,
}

/// Waits for the agent's Hello, authenticates it, registers the session and
/// forwards the Hello; `None` when the connection was closed instead.
pub(super) async fn agent_open(
    mut ws: Ws,
    peer: SocketAddr,
    cert_node: Option<NodeId>,
    shared: &Arc<Shared>,
) -> Option<AgentOpen> {
    let cfg = &shared.cfg;
    let hello = match read_hello(&mut ws, peer, cfg).await {
        Ok(h) => h,
        Err(reason) => {
            close_now(ws, reason).await;
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
            let refusal = e.refusal();
            close_now(ws, CloseReason::new(refusal.close_code(), refusal.as_str())).await;
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
pub(super) async fn agent_run(open: AgentOpen, shared: Arc<Shared>) {
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
