//! The client side: [`WsClaimClient`] (a [`ClaimClient`] over `/v1/claims`)
//! and [`WsAgentClient`] (an agent session over `/v1/agent`).

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::ids::{ClaimId, Millis, NodeId, Workspace};
use fleet_core::protocol::{
    AgentMsg, ClaimGrant, ClaimMsg, ClaimReply, ClaimRequest, DaemonMsg, DecodeError, JobMsg,
    JobReply, NodeIdentity, Renewal, Revocation, decode_limited,
};
use fleet_core::transport::{ClaimClient, ClaimError, JobClient, TransportError};
use futures_core::Stream;
use futures_core::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, Uri};
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
use tracing::{debug, warn};

use crate::config::{WsConfig, WsError};
use crate::conn::{CloseReason, Ending, Flow, Handler, drive, to_message, ws_config};
use crate::frame::{ClientFrame, ServerFrame};
use crate::tls::ClientTlsConfig;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A TLS client configuration ready to dial.
#[derive(Clone)]
struct Dialer {
    url: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    cfg: WsConfig,
}

impl Dialer {
    fn new(url: &str, tls: &ClientTlsConfig, cfg: WsConfig) -> Result<Dialer, WsError> {
        let bad = |why: &str| WsError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("wss") {
            return Err(bad("scheme must be wss"));
        }
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let name = tls.server_name.clone().unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name).map_err(|_| bad("invalid server name"))?;
        Ok(Dialer {
            url: url.to_owned(),
            host,
            port,
            server_name,
            tls: tls.build()?,
            cfg,
        })
    }

    /// A TCP connection to the server, from [`WsConfig::local_address`]
    /// if one is set.
    async fn connect_tcp(&self) -> std::io::Result<TcpStream> {
        let Some(local) = self.cfg.local_address else {
            return TcpStream::connect((self.host.as_str(), self.port)).await;
        };
        let mut last = None;
        for remote in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            if remote.is_ipv4() != local.is_ipv4() {
                continue;
            }
            let socket = if local.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(std::net::SocketAddr::new(local, 0))?;
            match socket.connect(remote).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("no address of {} in the family of {local}", self.host),
            )
        }))
    }

    async fn dial_once(&self) -> Result<Ws, WsError> {
        let fut = async {
            let tcp = self
                .connect_tcp()
                .await
                .map_err(|e| WsError::Io(format!("connect {}: {e}", self.url)))?;
            let _ = tcp.set_nodelay(true);
            let tls = TlsConnector::from(Arc::clone(&self.tls))
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| WsError::Io(format!("TLS {}: {e}", self.url)))?;
            let mut request = self
                .url
                .as_str()
                .into_client_request()
                .map_err(|e| WsError::Io(format!("WebSocket {}: {e}", self.url)))?;
            if let Some(token) = &self.cfg.bearer_token {
                let value =
                    HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                        WsError::Protocol("the bearer token is not a header value".into())
                    })?;
                request.headers_mut().insert(AUTHORIZATION, value);
            }
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                request,
                tls,
                Some(ws_config(&self.cfg)),
            )
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    WsError::Refused {
                        code: crate::close_code::AUTH_REFUSED,
                        reason: resp
                            .body()
                            .as_deref()
                            .map(String::from_utf8_lossy)
                            .map_or_else(|| "unauthorized".to_owned(), |b| b.into_owned()),
                    }
                }
                e => WsError::Io(format!("WebSocket {}: {e}", self.url)),
            })?;
            Ok(ws)
        };
        timeout(self.cfg.hello_timeout, fut)
            .await
            .map_err(|_| WsError::Timeout(self.cfg.hello_timeout))?
    }

    /// Dials with up to `connect_attempts` tries and doubling backoff.
    async fn dial(&self) -> Result<Ws, WsError> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.dial_once().await {
                Ok(ws) => return Ok(ws),
                Err(e) if attempt < self.cfg.connect_attempts.max(1) && e.is_retryable() => {
                    debug!(url = %self.url, attempt, error = %e, "dial failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Claim plane

/// A first dial's failure as the [`WsError`] it came from: a refused token
/// stays a refusal (not retryable), a timeout a timeout.
fn dial_error(e: TransportError) -> WsError {
    match e {
        TransportError::Permission(reason) => WsError::Refused {
            code: crate::close_code::AUTH_REFUSED,
            reason,
        },
        TransportError::Timeout(ms) => WsError::Timeout(Duration::from_millis(ms)),
        other => WsError::Io(other.to_string()),
    }
}

/// What a request's waiter receives.
enum Answer {
    Claim(ClaimReply),
    Job(JobReply),
    Error { kind: String, why: String },
}

struct Sub {
    workspace: Workspace,
    tx: mpsc::Sender<Revocation>,
    /// Answered with the server's `subscribed`, or its refusal (`error`
    /// frame: kind, why).
    ack: Option<oneshot::Sender<Result<(), (String, String)>>>,
}

#[derive(Default)]
struct ClientState {
    /// The live connection: (generation, writer queue).
    conn: Option<(u64, mpsc::Sender<Message>)>,
    generation: u64,
    next: u64,
    /// Open requests: number → (connection generation, waiter).
    calls: HashMap<u64, (u64, mpsc::Sender<Answer>)>,
    subs: HashMap<u64, Sub>,
}

struct ClientInner {
    dialer: Dialer,
    state: Mutex<ClientState>,
    dialing: tokio::sync::Mutex<()>,
}

impl ClientInner {
    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn frame(&self, f: &ClientFrame) -> Result<Message, TransportError> {
        to_message(f, self.dialer.cfg.max_message_bytes)
    }

    fn live(&self) -> Option<(u64, mpsc::Sender<Message>)> {
        self.lock()
            .conn
            .as_ref()
            .filter(|(_, tx)| !tx.is_closed())
            .cloned()
    }

    /// The live connection, dialing a new one when there is none.
    async fn connection(self: &Arc<Self>) -> Result<(u64, mpsc::Sender<Message>), TransportError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let ws = self.dialer.dial().await?;
        let (tx, rx) = mpsc::channel(self.dialer.cfg.send_queue.max(1));
        let (close_tx, close_rx) = oneshot::channel();
        let generation = {
            let mut st = self.lock();
            st.generation += 1;
            let generation = st.generation;
            st.conn = Some((generation, tx.clone()));
            // Live subscriptions follow the client to the new connection.
            for (sub, s) in &st.subs {
                let frame = ClientFrame::SubscribeRevocations {
                    sub: *sub,
                    workspace: s.workspace.clone(),
                };
                if let Ok(m) = self.frame(&frame) {
                    let _ = tx.try_send(m);
                }
            }
            generation
        };
        let inner = Arc::downgrade(self);
        let cfg = self.dialer.cfg.clone();
        tokio::spawn(async move {
            // Held so the driver is only closed by its queue or the peer.
            let _close_tx = close_tx;
            let mut handler = ClaimClientHandler {
                inner: inner.clone(),
            };
            let ending = drive(ws, rx, close_rx, &cfg, &mut handler).await;
            debug!(?ending, "claim-plane connection ended");
            if let Some(inner) = inner.upgrade() {
                let mut st = inner.lock();
                if st.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
                    st.conn = None;
                }
                // Waiters on this connection learn it is gone and re-send.
                st.calls.retain(|_, (g, _)| *g != generation);
            }
        });
        Ok((generation, tx))
    }

    fn open_call(self: &Arc<Self>, generation: u64, tx: &mpsc::Sender<Message>) -> Call {
        let (atx, arx) = mpsc::channel(16);
        let mut st = self.lock();
        st.next += 1;
        let req = st.next;
        st.calls.insert(req, (generation, atx));
        drop(st);
        Call {
            inner: Arc::clone(self),
            req,
            conn: tx.clone(),
            rx: arx,
        }
    }

    /// Sends `msg` as request `req` on a live connection and returns the
    /// call; re-dialing when needed.
    async fn start(self: &Arc<Self>, msg: &Request) -> Result<Call, TransportError> {
        let (generation, tx) = self.connection().await?;
        let call = self.open_call(generation, &tx);
        let frame = match msg {
            Request::Claim(m) => ClientFrame::Claim {
                req: call.req,
                msg: m.clone(),
            },
            Request::Job(m) => ClientFrame::Job {
                req: call.req,
                msg: m.clone(),
            },
        };
        let wire = self.frame(&frame)?;
        tx.send(wire)
            .await
            .map_err(|_| TransportError::Io("connection lost".to_owned()))?;
        Ok(call)
    }
}

enum Request {
    Claim(ClaimMsg),
    Job(JobMsg),
}

/// One open request; tells the server `done` when dropped.
struct Call {
    inner: Arc<ClientInner>,
    req: u64,
    conn: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Answer>,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.inner.lock().calls.remove(&self.req);
        if let Ok(m) = self.inner.frame(&ClientFrame::Done { req: self.req }) {
            // Best effort: a lost `done` only keeps a server entry until the
            // connection closes.
            let _ = self.conn.try_send(m);
        }
    }
}

struct ClaimClientHandler {
    inner: std::sync::Weak<ClientInner>,
}

impl Handler for ClaimClientHandler {
    async fn on_frame(&mut self, data: Bytes) -> Flow {
        let Some(inner) = self.inner.upgrade() else {
            return Flow::Close(CloseReason::new(
                crate::close_code::NORMAL,
                "client dropped",
            ));
        };
        let frame = match decode_limited::<ServerFrame>(&data, inner.dialer.cfg.max_message_bytes) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, kind = e.kind(), "undecodable frame from the server; ignored");
                return Flow::Continue;
            }
        };
        let st = inner.lock();
        let (req, answer) = match frame {
            ServerFrame::Reply { req, msg } => (req, Answer::Claim(msg)),
            ServerFrame::JobReply { req, msg } => (req, Answer::Job(msg)),
            ServerFrame::Error {
                req: Some(req),
                kind,
                why,
            } => {
                drop(st);
                let mut st = inner.lock();
                if let Some(ack) = st.subs.get_mut(&req).and_then(|s| s.ack.take()) {
                    // A refused subscription: it is gone on the server.
                    st.subs.remove(&req);
                    let _ = ack.send(Err((kind, why)));
                    return Flow::Continue;
                }
                if let Some((_, tx)) = st.calls.get(&req)
                    && tx.try_send(Answer::Error { kind, why }).is_err()
                {
                    warn!(req, "caller is not reading its answers; dropped one");
                }
                return Flow::Continue;
            }
            ServerFrame::Error {
                req: None,
                kind,
                why,
            } => {
                warn!(%kind, %why, "server reported an error");
                return Flow::Continue;
            }
            ServerFrame::Subscribed { sub } => {
                drop(st);
                if let Some(ack) = inner.lock().subs.get_mut(&sub).and_then(|s| s.ack.take()) {
                    let _ = ack.send(Ok(()));
                }
                return Flow::Continue;
            }
            ServerFrame::Revocation { sub, msg } => {
                if let Some(s) = st.subs.get(&sub)
                    && s.tx.try_send(msg).is_err()
                {
                    warn!(sub, "revocation subscriber is not keeping up; dropped one");
                }
                return Flow::Continue;
            }
            other => {
                warn!(frame = ?other, "server frame this client does not know; ignored");
                return Flow::Continue;
            }
        };
        if let Some((_, tx)) = st.calls.get(&req)
            && tx.try_send(answer).is_err()
        {
            warn!(req, "caller is not reading its answers; dropped one");
        }
        Flow::Continue
    }
}

/// A [`ClaimClient`] over WebSocket (`wss://host:port/v1/claims`). Cheap to
/// clone; clones share one connection, which is re-dialed when it drops.
///
/// A call interrupted by a lost connection is re-sent on a new one; claim
/// ids make that idempotent on the control plane.
#[derive(Clone)]
pub struct WsClaimClient {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for WsClaimClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsClaimClient")
            .field("url", &self.inner.dialer.url)
            .finish_non_exhaustive()
    }
}

impl WsClaimClient {
    /// Connects to `url` (`wss://…/v1/claims`).
    pub async fn connect(
        url: &str,
        tls: &ClientTlsConfig,
        cfg: WsConfig,
    ) -> Result<WsClaimClient, WsError> {
        let inner = Arc::new(ClientInner {
            dialer: Dialer::new(url, tls, cfg)?,
            state: Mutex::new(ClientState::default()),
            dialing: tokio::sync::Mutex::new(()),
        });
        inner.connection().await.map_err(dial_error)?;
        Ok(WsClaimClient { inner })
    }

    /// Sends a job-plane message; the stream yields every answer to it
    /// (`Accepted`, events, `Finished`) until the connection drops or the
    /// stream is dropped.
    pub async fn job(&self, msg: JobMsg) -> Result<BoxStream<'static, JobReply>, TransportError> {
        let call = self.inner.start(&Request::Job(msg)).await?;
        Ok(Box::pin(futures_util::stream::unfold(
            call,
            |mut call| async move {
                loop {
                    match call.rx.recv().await? {
                        Answer::Job(r) => return Some((r, call)),
                        Answer::Error { kind, why } => {
                            return Some((
                                JobReply::Rejected {
                                    job: None,
                                    why: format!("{kind}: {why}"),
                                },
                                call,
                            ));
                        }
                        Answer::Claim(_) => continue,
                    }
                }
            },
        )))
    }

    /// Sends one claim message and waits for answers until `done` says the
    /// call is over, re-sending on a new connection if the old one drops.
    async fn call<T>(
        &self,
        msg: ClaimMsg,
        deadline: Option<Duration>,
        mut done: impl FnMut(ClaimReply) -> Option<Result<T, ClaimError>> + Send,
    ) -> Result<T, ClaimError> {
        let attempts = self.inner.dialer.cfg.connect_attempts.max(1);
        let mut last = TransportError::Io("connection lost".to_owned());
        for _ in 0..attempts {
            let mut call = match self.inner.start(&Request::Claim(msg.clone())).await {
                Ok(c) => c,
                Err(e @ TransportError::Decode(_)) => return Err(e.into()),
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            loop {
                let next = match deadline {
                    Some(d) => match timeout(d, call.rx.recv()).await {
                        Ok(n) => n,
                        Err(_) => {
                            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                            return Err(TransportError::Timeout(ms).into());
                        }
                    },
                    None => call.rx.recv().await,
                };
                match next {
                    // The connection dropped: re-send on a new one.
                    None => break,
                    Some(Answer::Claim(reply)) => {
                        if let Some(result) = done(reply) {
                            return result;
                        }
                    }
                    Some(Answer::Error { kind, why }) => {
                        return Err(ClaimError::Transport(TransportError::Decode(
                            DecodeError::Invalid(format!(
                                "server refused the frame ({kind}): {why}"
                            )),
                        )));
                    }
                    Some(Answer::Job(r)) => {
                        return Err(ClaimError::Unexpected(format!(
                            "job reply to a claim call: {r:?}"
                        )));
                    }
                }
            }
        }
        Err(last.into())
    }
}

#[async_trait]
impl JobClient for WsClaimClient {
    async fn send(&self, msg: JobMsg) -> Result<BoxStream<'static, JobReply>, TransportError> {
        self.job(msg).await
    }
}

#[async_trait]
impl ClaimClient for WsClaimClient {
    async fn claim(&self, req: ClaimRequest) -> Result<ClaimGrant, ClaimError> {
        let id = req.claim_id.clone();
        let ws = req.workspace.clone();
        self.call(ClaimMsg::Request(req), None, |reply| match reply {
            ClaimReply::Pending { ref claim_id, .. } if *claim_id == id => None,
            ClaimReply::Granted(g) if g.claim_id == id && g.workspace == ws => Some(Ok(g)),
            other => Some(Err(ClaimError::from_reply(&id, other, "claim"))),
        })
        .await
    }

    async fn renew(&self, workspace: &Workspace, id: &ClaimId) -> Result<Renewal, ClaimError> {
        let msg = ClaimMsg::Renew {
            workspace: workspace.clone(),
            claim_id: id.clone(),
        };
        let t = self.inner.dialer.cfg.request_timeout;
        self.call(msg, Some(t), |reply| match reply {
            ClaimReply::Renewed(renewal) if renewal.claim_id == *id => Some(Ok(renewal)),
            other => Some(Err(ClaimError::from_reply(id, other, "renew"))),
        })
        .await
    }

    async fn release(&self, workspace: &Workspace, id: &ClaimId) -> Result<(), ClaimError> {
        let msg = ClaimMsg::Release {
            workspace: workspace.clone(),
            claim_id: id.clone(),
        };
        let t = self.inner.dialer.cfg.request_timeout;
        self.call(msg, Some(t), |reply| match reply {
            ClaimReply::Released { claim_id } if claim_id == *id => Some(Ok(())),
            other => Some(Err(ClaimError::from_reply(id, other, "release"))),
        })
        .await
    }

    async fn revocations(
        &self,
        workspace: &Workspace,
    ) -> Result<BoxStream<'static, Revocation>, ClaimError> {
        let (_, conn) = self.inner.connection().await?;
        let (tx, rx) = mpsc::channel(self.inner.dialer.cfg.send_queue.max(1));
        let (ack_tx, ack_rx) = oneshot::channel();
        let sub = {
            let mut st = self.inner.lock();
            st.next += 1;
            let sub = st.next;
            st.subs.insert(
                sub,
                Sub {
                    workspace: workspace.clone(),
                    tx,
                    ack: Some(ack_tx),
                },
            );
            sub
        };
        let stream = RevocationStream {
            inner: Arc::clone(&self.inner),
            sub,
            rx,
        };
        let frame = self.inner.frame(&ClientFrame::SubscribeRevocations {
            sub,
            workspace: workspace.clone(),
        })?;
        conn.send(frame)
            .await
            .map_err(|_| TransportError::Io("connection lost".to_owned()))?;
        let t = self.inner.dialer.cfg.request_timeout;
        match timeout(t, ack_rx).await {
            Ok(Ok(Ok(()))) => Ok(Box::pin(stream)),
            Ok(Ok(Err((kind, why)))) if kind == "forbidden" => {
                Err(TransportError::Permission(why).into())
            }
            Ok(Ok(Err((kind, why)))) => Err(TransportError::Io(format!("{kind}: {why}")).into()),
            Ok(Err(_)) => Err(TransportError::Io("connection lost".to_owned()).into()),
            Err(_) => Err(TransportError::Timeout(
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
            )
            .into()),
        }
    }
}

/// Revocations of one workspace; survives reconnects; unsubscribes on drop.
struct RevocationStream {
    inner: Arc<ClientInner>,
    sub: u64,
    rx: mpsc::Receiver<Revocation>,
}

impl Stream for RevocationStream {
    type Item = Revocation;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Revocation>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for RevocationStream {
    fn drop(&mut self) {
        let conn = {
            let mut st = self.inner.lock();
            st.subs.remove(&self.sub);
            st.conn.as_ref().map(|(_, tx)| tx.clone())
        };
        if let (Some(tx), Ok(m)) = (
            conn,
            self.inner
                .frame(&ClientFrame::Unsubscribe { sub: self.sub }),
        ) {
            let _ = tx.try_send(m);
        }
    }
}

// ---------------------------------------------------------------------------
// Agent sessions

/// What the server said when it accepted an agent session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Welcome {
    /// The node.
    pub node: NodeId,
    /// The node's mTLS identity, when the session was opened with a
    /// bootstrap token. Store it and present it on the next connect.
    pub identity: Option<NodeIdentity>,
    /// How often to send `Heartbeat`.
    pub heartbeat_interval_ms: Millis,
}

/// How an agent session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The server closed it with this code (see [`crate::close_code`]).
    ClosedByServer {
        /// The close code (1005 when none was given).
        code: u16,
        /// The reason text.
        reason: String,
    },
    /// This side closed it (keepalive timeout 4005, `close()` 1000, …).
    ClosedHere {
        /// The close code.
        code: u16,
        /// The reason text.
        reason: String,
    },
    /// The connection failed without a close frame.
    Lost(String),
}

impl From<Ending> for SessionEnd {
    fn from(e: Ending) -> SessionEnd {
        match e {
            Ending::Remote(r) => SessionEnd::ClosedByServer {
                code: r.code,
                reason: r.reason,
            },
            Ending::Local(r) => SessionEnd::ClosedHere {
                code: r.code,
                reason: r.reason,
            },
            Ending::Lost(why) => SessionEnd::Lost(why),
        }
    }
}

/// Dials agent sessions (`wss://host:port/v1/agent`).
#[derive(Debug, Clone, Copy, Default)]
pub struct WsAgentClient;

impl WsAgentClient {
    /// Opens a session: sends `hello` (which must be [`AgentMsg::Hello`]),
    /// waits for `Welcome` and returns the session. A refusal comes back as
    /// [`WsError::Refused`] with its close code. To reconnect, call again
    /// (with the identity from the first `Welcome` in `tls` and no token).
    pub async fn connect(
        url: &str,
        tls: &ClientTlsConfig,
        hello: AgentMsg,
        cfg: WsConfig,
    ) -> Result<WsAgentSession, WsError> {
        if !matches!(hello, AgentMsg::Hello { .. }) {
            return Err(WsError::Protocol(
                "the first message must be Hello".to_owned(),
            ));
        }
        let dialer = Dialer::new(url, tls, cfg)?;
        let cfg = dialer.cfg.clone();
        let mut ws = dialer.dial_once().await?;
        let wire = to_message(&hello, cfg.max_message_bytes)
            .map_err(|e| WsError::Protocol(e.to_string()))?;
        ws.send(wire)
            .await
            .map_err(|e| WsError::Io(e.to_string()))?;
        let first = timeout(cfg.hello_timeout, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(Bytes::from(t)),
                    Some(Ok(Message::Binary(b))) => return Ok(b),
                    Some(Ok(Message::Close(f))) => {
                        return Err(match f {
                            Some(f) => WsError::Refused {
                                code: u16::from(f.code),
                                reason: f.reason.to_string(),
                            },
                            None => WsError::Refused {
                                code: 1005,
                                reason: String::new(),
                            },
                        });
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(WsError::Io(e.to_string())),
                    None => return Err(WsError::Io("closed before welcome".to_owned())),
                }
            }
        })
        .await
        .map_err(|_| WsError::Timeout(cfg.hello_timeout))??;
        let welcome = match decode_limited::<DaemonMsg>(&first, cfg.max_message_bytes) {
            Ok(DaemonMsg::Welcome {
                node,
                identity,
                heartbeat_interval_ms,
            }) => Welcome {
                node,
                identity,
                heartbeat_interval_ms,
            },
            Ok(other) => {
                return Err(WsError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
            Err(e) => return Err(WsError::Protocol(e.to_string())),
        };
        let (out_tx, out_rx) = mpsc::channel(cfg.send_queue.max(1));
        let (in_tx, in_rx) = mpsc::channel(cfg.send_queue.max(1));
        let (close_tx, close_rx) = oneshot::channel();
        let ended = Arc::new(Mutex::new(None));
        let ended_w = Arc::clone(&ended);
        let max = cfg.max_message_bytes;
        tokio::spawn(async move {
            let mut handler = AgentClientHandler { tx: in_tx, max };
            let ending = drive(ws, out_rx, close_rx, &cfg, &mut handler).await;
            debug!(?ending, "agent session ended");
            *ended_w.lock().unwrap_or_else(|e| e.into_inner()) = Some(SessionEnd::from(ending));
            // Dropping the handler (and its sender) ends `recv` after this.
            drop(handler);
        });
        Ok(WsAgentSession {
            welcome,
            sender: AgentSender { tx: out_tx, max },
            rx: in_rx,
            close: Some(close_tx),
            ended,
        })
    }
}

struct AgentClientHandler {
    tx: mpsc::Sender<DaemonMsg>,
    max: usize,
}

impl Handler for AgentClientHandler {
    async fn on_frame(&mut self, data: Bytes) -> Flow {
        match decode_limited::<DaemonMsg>(&data, self.max) {
            Ok(msg) => {
                if self.tx.send(msg).await.is_err() {
                    return Flow::Close(CloseReason::new(
                        crate::close_code::NORMAL,
                        "session dropped",
                    ));
                }
            }
            Err(e) => {
                warn!(error = %e, kind = e.kind(), "undecodable message from the daemon; ignored")
            }
        }
        Flow::Continue
    }
}

/// The sending half of an agent session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentSender {
    tx: mpsc::Sender<Message>,
    max: usize,
}

impl AgentSender {
    /// Queues a message, waiting while the send queue is full. Fails with
    /// `Closed` once the session has ended.
    pub async fn send(&self, msg: &AgentMsg) -> Result<(), TransportError> {
        let wire = to_message(msg, self.max)?;
        self.tx.send(wire).await.map_err(|_| TransportError::Closed)
    }

    /// Queues a message without waiting: `Backpressure` when full.
    pub fn try_send(&self, msg: &AgentMsg) -> Result<(), TransportError> {
        let wire = to_message(msg, self.max)?;
        self.tx.try_send(wire).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                TransportError::Backpressure("agent session".to_owned())
            }
            mpsc::error::TrySendError::Closed(_) => TransportError::Closed,
        })
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// An open agent session. Dropping it closes the connection (1000).
pub struct WsAgentSession {
    welcome: Welcome,
    sender: AgentSender,
    rx: mpsc::Receiver<DaemonMsg>,
    close: Option<oneshot::Sender<CloseReason>>,
    ended: Arc<Mutex<Option<SessionEnd>>>,
}

impl fmt::Debug for WsAgentSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsAgentSession")
            .field("node", &self.welcome.node)
            .finish_non_exhaustive()
    }
}

impl WsAgentSession {
    /// The server's `Welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// A sender for this session, for another task.
    pub fn sender(&self) -> AgentSender {
        self.sender.clone()
    }

    /// Sends a message (waits while the send queue is full).
    pub async fn send(&self, msg: &AgentMsg) -> Result<(), TransportError> {
        self.sender.send(msg).await
    }

    /// The next message from the daemon; `None` once the session ended (see
    /// [`WsAgentSession::ended`] for why).
    pub async fn recv(&mut self) -> Option<DaemonMsg> {
        self.rx.recv().await
    }

    /// Why the session ended, once it has.
    pub fn ended(&self) -> Option<SessionEnd> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Closes the session with 1000.
    pub fn close(&mut self) {
        if let Some(c) = self.close.take() {
            let _ = c.send(CloseReason::new(crate::close_code::NORMAL, "agent closed"));
        }
    }
}

impl Drop for WsAgentSession {
    fn drop(&mut self) {
        self.close();
    }
}
