//! Limits, timeouts and the crate's error types.

use std::time::Duration;

use fleet_core::ids::Millis;
use fleet_core::protocol::{DEFAULT_HEARTBEAT_INTERVAL_MS, MAX_MESSAGE_BYTES};
use fleet_core::transport::TransportError;

/// Limits and timers shared by the server and the clients.
///
/// Build it from [`WsConfig::default`] and change fields:
/// `let mut c = WsConfig::default(); c.ping_interval = Duration::from_secs(5);`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WsConfig {
    /// The largest WebSocket message (and frame) accepted; larger ones close
    /// the connection with 1009. Default [`MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
    /// Messages queued for one connection before senders get
    /// [`TransportError::Backpressure`]. Default 256.
    pub send_queue: usize,
    /// Inbound messages the server buffers for [`fleet_core::transport::Transport::recv`];
    /// when full, connections stop being read. Default 4096.
    pub inbox_capacity: usize,
    /// How often each side pings an idle peer. Default 15 s.
    pub ping_interval: Duration,
    /// How long past a ping interval a silent peer is tolerated before the
    /// connection is closed as dead (4005). Default 10 s.
    pub pong_timeout: Duration,
    /// TLS + WebSocket handshake, and the wait for an agent's `Hello` (and
    /// the client's wait for `Welcome`). Default 10 s.
    pub hello_timeout: Duration,
    /// Heartbeat interval the server announces in `Welcome`.
    pub heartbeat_interval_ms: Millis,
    /// Client: how long a `renew`/`release`/subscribe waits for its answer.
    /// Default 30 s.
    pub request_timeout: Duration,
    /// Client: dial attempts per call before giving up (with doubling
    /// backoff from 100 ms). Default 5.
    pub connect_attempts: u32,
    /// Server: requests one claim-plane connection may keep open (not yet
    /// `done`). Default 1024.
    pub max_open_requests: usize,
    /// Server: close an agent connection whose send queue is full (4004), so
    /// it reconnects and resumes instead of silently missing messages.
    /// Default true.
    pub close_slow_agents: bool,
    /// Client: the bearer token sent on the claim-plane WebSocket upgrade
    /// (`Authorization: Bearer …`), for servers that check one. Default none.
    pub bearer_token: Option<fleet_core::protocol::Secret>,
    /// Client: the local address to dial from (a host with several
    /// addresses, or many sessions to one server: each source address has
    /// its own ~28 000 ephemeral ports). Default: the system's choice.
    pub local_address: Option<std::net::IpAddr>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_message_bytes: MAX_MESSAGE_BYTES,
            send_queue: 256,
            inbox_capacity: 4096,
            ping_interval: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            request_timeout: Duration::from_secs(30),
            connect_attempts: 5,
            max_open_requests: 1024,
            close_slow_agents: true,
            bearer_token: None,
            local_address: None,
        }
    }
}

/// WebSocket close codes this crate sends (RFC 6455 and private-use 4xxx).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// WebSocket protocol violation.
    pub const PROTOCOL: u16 = 1002;
    /// An agent sent a message that does not decode (garbage, wrong protocol
    /// version, unknown type). Claim-plane connections are not closed for
    /// this; they get an error frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The first agent frame was not `Hello`.
    pub const POLICY: u16 = 1008;
    /// A message exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Internal server error.
    pub const INTERNAL: u16 = 1011;
    /// A newer session for the same node replaced this one.
    pub const REPLACED: u16 = 4001;
    /// No `Hello` within the hello timeout.
    pub const HELLO_TIMEOUT: u16 = 4002;
    /// The agent could not be authenticated, for good (the reason is a
    /// [`fleet_core::protocol::AgentRefusal`]); a claim client's token was
    /// refused.
    pub const AUTH_REFUSED: u16 = fleet_core::protocol::CLOSE_AGENT_REFUSED;
    /// The agent could not be authenticated now (its credentials were not
    /// judged; reason `unavailable`): try again later.
    pub const TRY_AGAIN_LATER: u16 = fleet_core::protocol::CLOSE_TRY_AGAIN_LATER;
    /// The peer did not read its messages fast enough.
    pub const SLOW_CONSUMER: u16 = 4004;
    /// Nothing heard from the peer within the keepalive window.
    pub const KEEPALIVE_TIMEOUT: u16 = 4005;
}

/// A failure of this crate's setup, dialing or session handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// A certificate or key could not be read or used.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// A URL could not be used.
    #[error("bad URL {url}: {why}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// Socket, TLS or WebSocket handshake failure.
    #[error("connection: {0}")]
    Io(String),
    /// The peer closed the session with a code (see [`close_code`]).
    #[error("refused with close code {code}: {reason}")]
    Refused {
        /// The close code.
        code: u16,
        /// The reason text.
        reason: String,
    },
    /// The peer answered with something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl WsError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            WsError::TlsConfig(_) => "tls_config",
            WsError::Url { .. } => "url",
            WsError::Io(_) => "io",
            WsError::Refused { .. } => "refused",
            WsError::Protocol(_) => "protocol",
            WsError::Timeout(_) => "timeout",
        }
    }

    /// Whether trying again later may succeed (a refusal because the session
    /// was replaced or the server went away may; a refused token will not).
    pub fn is_retryable(&self) -> bool {
        match self {
            WsError::Io(_) | WsError::Timeout(_) => true,
            WsError::Refused { code, .. } => !matches!(
                *code,
                close_code::AUTH_REFUSED | close_code::POLICY | close_code::INVALID_PAYLOAD
            ),
            WsError::TlsConfig(_) | WsError::Url { .. } | WsError::Protocol(_) => false,
        }
    }
}

impl From<WsError> for TransportError {
    fn from(e: WsError) -> TransportError {
        match e {
            WsError::Timeout(d) => {
                TransportError::Timeout(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
            WsError::Refused {
                code: close_code::AUTH_REFUSED,
                reason,
            } => TransportError::Permission(reason),
            other => TransportError::Io(other.to_string()),
        }
    }
}
