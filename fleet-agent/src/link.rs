//! The agent's connection to the daemon, behind two small traits so any
//! transport plugs in: [`Connector`] opens a session (sends `Hello`, waits for
//! `Welcome`) and returns a [`Link`] that carries the session's messages.
//!
//! Implementations here: [`InProcTransport`] (tests and embedders) and
//! [`tcp::TcpConnector`] (length-prefixed envelopes over loopback TCP, for
//! tests and local development). The WebSocket connector
//! ([`ws::connector_for`]) is where `fleet-transport-ws`'s `WsAgentClient` is
//! wired in.

use std::time::Duration;

use async_trait::async_trait;
use fleet_core::ids::{Millis, NodeId};
use fleet_core::memory::transport::{InProcAgent, InProcTransport};
use fleet_core::protocol::{AgentMsg, AgentRefusal, DaemonMsg, NodeIdentity};
use fleet_core::transport::TransportError;

/// How long a connector waits for `Welcome` after `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The daemon refused the session, maybe for now (it could not
    /// decide, or said something this agent does not know).
    #[error("daemon refused the session: {0}")]
    Refused(String),
    /// The daemon refused these credentials for good (an unknown or used
    /// bootstrap token, a certificate of another node, …): connecting
    /// again with them cannot succeed.
    #[error("the daemon refused this agent for good ({0}): {explain}", explain = .0.explain())]
    Denied(AgentRefusal),
    /// The daemon could not be reached or the connection broke.
    #[error("daemon unreachable: {0}")]
    Unreachable(String),
    /// The daemon answered with something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The link is closed.
    #[error("link closed")]
    Closed,
    /// This build cannot speak the configured transport.
    #[error("unsupported transport: {0}")]
    Unsupported(String),
}

impl LinkError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Refused(_) => "refused",
            LinkError::Denied(_) => "denied",
            LinkError::Unreachable(_) => "unreachable",
            LinkError::Protocol(_) => "protocol",
            LinkError::Closed => "closed",
            LinkError::Unsupported(_) => "unsupported",
        }
    }

    /// Whether reconnecting may help: not after a definitive refusal or
    /// with a transport this build lacks. Every other failure (network,
    /// a daemon restarting, a refusal for now) is retried with backoff.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, LinkError::Unsupported(_) | LinkError::Denied(_))
    }
}

impl From<TransportError> for LinkError {
    fn from(e: TransportError) -> LinkError {
        match e {
            TransportError::Closed => LinkError::Closed,
            TransportError::Permission(why) => LinkError::Refused(why),
            TransportError::Decode(d) => LinkError::Protocol(d.to_string()),
            other => LinkError::Unreachable(other.to_string()),
        }
    }
}

/// The daemon's `Welcome`, unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The node the daemon accepted.
    pub node: NodeId,
    /// The node's mTLS identity, when this session was a bootstrap.
    pub identity: Option<NodeIdentity>,
    /// The daemon's heartbeat interval.
    pub heartbeat_interval_ms: Millis,
}

impl Welcome {
    /// Unpacks a `DaemonMsg::Welcome`; anything else is a protocol error.
    pub fn from_msg(msg: Option<DaemonMsg>) -> Result<Welcome, LinkError> {
        match msg {
            Some(DaemonMsg::Welcome {
                node,
                identity,
                heartbeat_interval_ms,
            }) => Ok(Welcome {
                node,
                identity,
                heartbeat_interval_ms,
            }),
            Some(other) => Err(LinkError::Protocol(format!(
                "expected Welcome, got {}",
                msg_name(&other)
            ))),
            None => Err(LinkError::Refused(
                "session closed before Welcome".to_owned(),
            )),
        }
    }
}

/// A name for a daemon message in logs (never its contents).
pub fn msg_name(msg: &DaemonMsg) -> &'static str {
    match msg {
        DaemonMsg::Welcome { .. } => "welcome",
        DaemonMsg::Run(_) => "run",
        DaemonMsg::Cancel { .. } => "cancel",
        DaemonMsg::Activate { .. } => "activate",
        DaemonMsg::Deactivate { .. } => "deactivate",
        DaemonMsg::Drain => "drain",
        _ => "unknown",
    }
}

/// One open session with the daemon.
///
/// `recv` must be cancel-safe: the session loop polls it in a `select!`
/// beside timers and its outbox, and drops it when another branch wins.
#[async_trait]
pub trait Link: Send {
    /// Sends one message.
    async fn send(&self, msg: AgentMsg) -> Result<(), LinkError>;
    /// The next message, or `None` once the session ended.
    async fn recv(&mut self) -> Option<DaemonMsg>;
}

/// Opens sessions with the daemon.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Connects, sends `hello` (which carries the bootstrap token when
    /// `identity` is `None`), and waits for `Welcome`. With an `identity`
    /// the connector authenticates with it (mTLS client certificate).
    async fn connect(
        &self,
        hello: AgentMsg,
        identity: Option<&NodeIdentity>,
    ) -> Result<(Welcome, Box<dyn Link>), LinkError>;
}

fn hello_node(hello: &AgentMsg) -> Result<NodeId, LinkError> {
    match hello {
        AgentMsg::Hello { node, .. } => Ok(node.clone()),
        _ => Err(LinkError::Protocol(
            "first message must be Hello".to_owned(),
        )),
    }
}

#[async_trait]
impl Link for InProcAgent {
    async fn send(&self, msg: AgentMsg) -> Result<(), LinkError> {
        InProcAgent::send(self, msg).await.map_err(LinkError::from)
    }

    async fn recv(&mut self) -> Option<DaemonMsg> {
        InProcAgent::recv(self).await
    }
}

/// The in-process transport has no certificates: the identity is ignored
/// and the daemon side decides from `Hello` alone.
#[async_trait]
impl Connector for InProcTransport {
    async fn connect(
        &self,
        hello: AgentMsg,
        _identity: Option<&NodeIdentity>,
    ) -> Result<(Welcome, Box<dyn Link>), LinkError> {
        let node = hello_node(&hello)?;
        if self.is_closed() {
            return Err(LinkError::Unreachable("transport closed".to_owned()));
        }
        let mut agent = self.connect_agent(node);
        agent.send(hello).await.map_err(LinkError::from)?;
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, agent.recv())
            .await
            .map_err(|_| LinkError::Unreachable("no Welcome in time".to_owned()))?;
        let welcome = match (first, agent.last_error()) {
            (None, Some(e)) => return Err(LinkError::Protocol(e.to_string())),
            (first, _) => Welcome::from_msg(first)?,
        };
        Ok((welcome, Box::new(agent)))
    }
}

pub mod tcp {
    //! Protocol envelopes over plain loopback TCP: each frame is a 4-byte
    //! big-endian length and a body encoded with `fleet_core::protocol::encode`
    //! (decoded with its size limit). No TLS and no authentication: for
    //! tests and local development only, and the config accepts it on
    //! loopback addresses only.

    use std::net::SocketAddr;

    use async_trait::async_trait;
    use fleet_core::protocol::{AgentMsg, DaemonMsg, MAX_MESSAGE_BYTES, NodeIdentity};
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::sync::{Mutex, mpsc};

    use super::{Connector, HANDSHAKE_TIMEOUT, Link, LinkError, Welcome};

    /// Writes one frame.
    pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), LinkError>
    where
        W: tokio::io::AsyncWrite + Unpin,
        T: Serialize,
    {
        let body =
            fleet_core::protocol::encode(msg).map_err(|e| LinkError::Protocol(e.to_string()))?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&l| l as usize <= MAX_MESSAGE_BYTES)
            .ok_or_else(|| LinkError::Protocol("message too large".to_owned()))?;
        let io = |e: std::io::Error| LinkError::Unreachable(e.to_string());
        w.write_all(&len.to_be_bytes()).await.map_err(io)?;
        w.write_all(&body).await.map_err(io)?;
        w.flush().await.map_err(io)
    }

    /// Reads one frame; `Ok(None)` at a clean end of stream.
    pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, LinkError>
    where
        R: tokio::io::AsyncRead + Unpin,
        T: DeserializeOwned,
    {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(LinkError::Unreachable(e.to_string())),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE_BYTES {
            return Err(LinkError::Protocol(format!("frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)
            .await
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        fleet_core::protocol::decode(&body)
            .map(Some)
            .map_err(|e| LinkError::Protocol(e.to_string()))
    }

    /// Dials `fleet+tcp://addr`.
    #[derive(Debug, Clone)]
    pub struct TcpConnector {
        addr: SocketAddr,
    }

    impl TcpConnector {
        /// A connector for `addr`.
        pub fn new(addr: SocketAddr) -> TcpConnector {
            TcpConnector { addr }
        }
    }

    /// A session over TCP. Reads run on a task of their own so `recv` is
    /// cancel-safe (a half-read frame is never lost).
    struct TcpLink {
        write: Mutex<OwnedWriteHalf>,
        down: mpsc::Receiver<DaemonMsg>,
    }

    #[async_trait]
    impl Link for TcpLink {
        async fn send(&self, msg: AgentMsg) -> Result<(), LinkError> {
            write_frame(&mut *self.write.lock().await, &msg).await
        }

        async fn recv(&mut self) -> Option<DaemonMsg> {
            self.down.recv().await
        }
    }

    async fn pump(mut read: OwnedReadHalf, tx: mpsc::Sender<DaemonMsg>) {
        loop {
            match read_frame::<_, DaemonMsg>(&mut read).await {
                Ok(Some(msg)) => {
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "tcp link: dropping session");
                    return;
                }
            }
        }
    }

    #[async_trait]
    impl Connector for TcpConnector {
        async fn connect(
            &self,
            hello: AgentMsg,
            _identity: Option<&NodeIdentity>,
        ) -> Result<(Welcome, Box<dyn Link>), LinkError> {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| LinkError::Unreachable(format!("{}: {e}", self.addr)))?;
            let (mut read, mut write) = stream.into_split();
            write_frame(&mut write, &hello).await?;
            let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut read))
                .await
                .map_err(|_| LinkError::Unreachable("no Welcome in time".to_owned()))??;
            let welcome = Welcome::from_msg(first)?;
            let (tx, down) = mpsc::channel(64);
            tokio::spawn(pump(read, tx));
            Ok((
                welcome,
                Box::new(TcpLink {
                    write: Mutex::new(write),
                    down,
                }),
            ))
        }
    }
}

pub mod ws;
