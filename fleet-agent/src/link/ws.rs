//! The WebSocket connector: agent sessions over `fleet-transport-ws`
//! (`wss://host:port/v1/agent`).
//!
//! - **Trust.** The daemon's TLS certificate is verified against `ca_file`
//!   (read once, when the connector is built) and, once the node has its
//!   identity, the identity's pool CA too. With neither, a `wss` session
//!   cannot be verified and [`connector_for`]'s connector refuses to dial.
//! - **Authentication.** Without an identity the `Hello` carries the
//!   bootstrap token; with one, the identity's certificate and key are the
//!   mTLS client certificate and any token in the `Hello` is dropped.
//! - **Server name.** The URL's host (the daemon's certificate names
//!   `localhost` and its listen address).
//! - **Errors.** A close before `Welcome` with 4003 and a definitive
//!   [`AgentRefusal`] reason (`bad_token`, …) is [`LinkError::Denied`]: the
//!   agent stops. Any other close before `Welcome` (1013 `unavailable`,
//!   1008, …) or an HTTP 401/403 on the upgrade is [`LinkError::Refused`],
//!   retried; socket, TLS and
//!   handshake failures and timeouts are [`LinkError::Unreachable`]; a URL
//!   or TLS material that can never work is [`LinkError::Unsupported`].
//!
//! A URL without a path gets [`fleet_transport_ws::AGENT_PATH`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use fleet_core::protocol::{AgentMsg, AgentRefusal, DaemonMsg, NodeIdentity};
use fleet_transport_ws::{
    AGENT_PATH, AgentSender, ClientIdentity, ClientTlsConfig, WsAgentClient, WsAgentSession,
    WsConfig, WsError,
};

use super::{Connector, Link, LinkError, Welcome};

/// Dials the daemon's agent endpoint over TLS WebSocket.
#[derive(Clone)]
pub struct WsConnector {
    url: String,
    ca_pem: Option<String>,
    cfg: WsConfig,
}

impl fmt::Debug for WsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConnector")
            .field("url", &self.url)
            .field("ca", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl WsConnector {
    /// A connector for `url` (`wss://…`; a missing path becomes
    /// `/v1/agent`), trusting `ca_pem` (PEM of the CA that signed the
    /// daemon's certificate) and, once it has one, the node identity's CA.
    pub fn new(url: &str, ca_pem: Option<String>, cfg: WsConfig) -> Result<WsConnector, LinkError> {
        Ok(WsConnector {
            url: normalize_url(url)?,
            ca_pem,
            cfg,
        })
    }

    /// The URL dialed.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn tls(&self, identity: Option<&NodeIdentity>) -> Result<ClientTlsConfig, LinkError> {
        let mut ca_pem = String::new();
        if let Some(ca) = &self.ca_pem {
            ca_pem.push_str(ca.trim_end());
            ca_pem.push('\n');
        }
        if let Some(id) = identity {
            ca_pem.push_str(id.ca_pem.trim_end());
            ca_pem.push('\n');
        }
        if ca_pem.trim().is_empty() {
            return Err(LinkError::Unsupported(format!(
                "{}: no CA to verify the daemon with (set ca_file until the node has an identity)",
                self.url
            )));
        }
        Ok(ClientTlsConfig {
            ca_pem,
            identity: identity.map(|id| ClientIdentity {
                cert_pem: id.cert_pem.clone(),
                key_pem: id.key_pem.clone(),
            }),
            // The URL's host: the daemon's certificate names it.
            server_name: None,
        })
    }
}

/// `wss://host:port` → `wss://host:port/v1/agent`; `ws://` is refused (the
/// transport is TLS only).
fn normalize_url(url: &str) -> Result<String, LinkError> {
    let Some(rest) = url.strip_prefix("wss://") else {
        return Err(LinkError::Unsupported(format!(
            "{url}: the WebSocket transport needs wss:// (TLS)"
        )));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(LinkError::Unsupported(format!("{url}: no host")));
    }
    let path = &rest[authority.len()..];
    if path.is_empty() || path == "/" {
        Ok(format!("wss://{authority}{AGENT_PATH}"))
    } else {
        Ok(url.to_owned())
    }
}

/// Maps a dial/handshake failure to the agent's error kinds.
pub fn map_error(e: WsError) -> LinkError {
    match e {
        WsError::Refused { code, reason } => match definitive(code, &reason) {
            Some(refusal) => LinkError::Denied(refusal),
            None if reason.is_empty() => {
                LinkError::Refused(format!("closed with code {code} before Welcome"))
            }
            None => LinkError::Refused(format!("{reason} (close code {code})")),
        },
        WsError::Io(why) => {
            // tungstenite reports a refused upgrade as "HTTP error: 401 …".
            let refused_http = ["HTTP error: 401", "HTTP error: 403"]
                .iter()
                .any(|p| why.contains(p));
            if refused_http || why.contains("closed before welcome") {
                LinkError::Refused(why)
            } else {
                LinkError::Unreachable(why)
            }
        }
        WsError::Timeout(d) => LinkError::Unreachable(format!("no Welcome within {d:?}")),
        WsError::Protocol(why) => LinkError::Protocol(why),
        WsError::TlsConfig(why) => LinkError::Unsupported(format!("TLS configuration: {why}")),
        WsError::Url { url, why } => LinkError::Unsupported(format!("{url}: {why}")),
        other => LinkError::Unreachable(other.to_string()),
    }
}

/// The refusal a close frame names, when it is definitive and sent with
/// its own close code (4003); anything else may pass and is retried.
fn definitive(code: u16, reason: &str) -> Option<AgentRefusal> {
    AgentRefusal::parse(reason).filter(|r| r.is_definitive() && r.close_code() == code)
}

#[async_trait]
impl Connector for WsConnector {
    async fn connect(
        &self,
        mut hello: AgentMsg,
        identity: Option<&NodeIdentity>,
    ) -> Result<(Welcome, Box<dyn Link>), LinkError> {
        if !matches!(hello, AgentMsg::Hello { .. }) {
            return Err(LinkError::Protocol(
                "first message must be Hello".to_owned(),
            ));
        }
        if identity.is_some()
            && let AgentMsg::Hello {
                bootstrap_token, ..
            } = &mut hello
        {
            // The certificate authenticates; a token would only be spent.
            *bootstrap_token = None;
        }
        let tls = self.tls(identity)?;
        let session = WsAgentClient::connect(&self.url, &tls, hello, self.cfg.clone())
            .await
            .map_err(map_error)?;
        let w = session.welcome();
        let welcome = Welcome {
            node: w.node.clone(),
            identity: w.identity.clone(),
            heartbeat_interval_ms: w.heartbeat_interval_ms,
        };
        let sender = session.sender();
        Ok((welcome, Box::new(WsLink { sender, session })))
    }
}

/// An open session. The transport reads the socket on a task of its own
/// and queues decoded messages on a channel, so `recv` (a channel receive)
/// is cancel-safe. Dropping the link closes the session (1000).
struct WsLink {
    sender: AgentSender,
    session: WsAgentSession,
}

#[async_trait]
impl Link for WsLink {
    async fn send(&self, msg: AgentMsg) -> Result<(), LinkError> {
        self.sender.send(&msg).await.map_err(LinkError::from)
    }

    async fn recv(&mut self) -> Option<DaemonMsg> {
        let msg = self.session.recv().await;
        if msg.is_none() {
            tracing::info!(end = ?self.session.ended(), "WebSocket session with the daemon ended");
        }
        msg
    }
}

/// The connector for a `wss://` daemon URL, trusting the CA in `ca_file`
/// (read now) and the node identity's CA once there is one.
pub fn connector_for(url: &str, ca_file: Option<&Path>) -> Result<Arc<dyn Connector>, LinkError> {
    let ca_pem = match ca_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| LinkError::Unsupported(format!("ca_file {}: {e}", path.display())))?,
        ),
    };
    Ok(Arc::new(WsConnector::new(
        url,
        ca_pem,
        WsConfig::default(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_agent_path_and_need_tls() {
        assert_eq!(
            normalize_url("wss://127.0.0.1:7443").ok().as_deref(),
            Some("wss://127.0.0.1:7443/v1/agent")
        );
        assert_eq!(
            normalize_url("wss://h:1/").ok().as_deref(),
            Some("wss://h:1/v1/agent")
        );
        assert_eq!(
            normalize_url("wss://h:1/custom").ok().as_deref(),
            Some("wss://h:1/custom")
        );
        assert!(matches!(
            normalize_url("ws://h:1"),
            Err(LinkError::Unsupported(_))
        ));
    }

    #[test]
    fn refusals_and_failures_map_to_their_kinds() {
        let denied = map_error(WsError::Refused {
            code: 4003,
            reason: "bad_token".into(),
        });
        assert_eq!(denied, LinkError::Denied(AgentRefusal::BadToken));
        assert!(!denied.is_retryable());
        // Not definitive: for now, unknown to this agent, or a reason
        // under another code.
        for (code, reason) in [
            (1013, "unavailable"),
            (4003, "unavailable"),
            (4003, "a_reason_from_a_newer_daemon"),
            (1008, "bad_token"),
            (4003, ""),
        ] {
            let e = map_error(WsError::Refused {
                code,
                reason: reason.into(),
            });
            assert_eq!(e.kind(), "refused", "{code} {reason}");
            assert!(e.is_retryable(), "{code} {reason}");
        }
        assert_eq!(
            map_error(WsError::Io("WebSocket x: HTTP error: 403 Forbidden".into())).kind(),
            "refused"
        );
        assert_eq!(
            map_error(WsError::Io("closed before welcome".into())).kind(),
            "refused"
        );
        assert_eq!(
            map_error(WsError::Io("connect x: connection refused".into())).kind(),
            "unreachable"
        );
        assert_eq!(
            map_error(WsError::Timeout(std::time::Duration::from_secs(1))).kind(),
            "unreachable"
        );
    }
}
