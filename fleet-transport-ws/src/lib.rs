//! fleet Transport over WebSocket with TLS (tokio-tungstenite, rustls).
//!
//! One TLS listener ([`WsServer`], the control-plane [`Transport`]) serves two
//! URL paths:
//!
//! - `/v1/agent` — agent sessions ([`WsAgentClient`] on the node side);
//! - `/v1/claims` — claim-plane callers ([`WsClaimClient`], a
//!   [`ClaimClient`]).
//!
//! [`Transport`]: fleet_core::transport::Transport
//! [`ClaimClient`]: fleet_core::transport::ClaimClient
//!
//! # Frame format
//!
//! Every WebSocket data message (text, UTF-8 JSON; binary frames with the
//! same bytes are accepted) is one fleet-core envelope,
//! `{"v": 1, "msg": …}`, written and read with
//! [`fleet_core::protocol::encode`] / [`decode`](fleet_core::protocol::decode).
//! A message larger than [`fleet_core::protocol::MAX_MESSAGE_BYTES`] (1 MiB)
//! closes the connection with 1009.
//!
//! **`/v1/agent`.** Agent → server: `AgentMsg` (`{"v":1,"msg":{"type":
//! "hello", "node": …}}`). The first message must be `hello`, within the
//! hello timeout. Server → agent: `DaemonMsg`; the first is always `welcome`
//! (with `identity` when the session was opened with a bootstrap token).
//! The server closes the session — and the control plane sees `AgentGone` —
//! on an undecodable message (1007), a first message other than `hello`
//! (1008), a refused authentication (4003 for good, 1013 when the
//! authenticator could not decide; the reason names the
//! `fleet_core::protocol::AgentRefusal`), a newer session for the same node
//! (4001, no `AgentGone` for the old one), a full send queue (4004), or
//! silence for `ping_interval + pong_timeout` (4005). See [`close_code`].
//!
//! **`/v1/claims`.** Client → server ([`frame::ClientFrame`]):
//!
//! ```text
//! {"v":1,"msg":{"type":"claim","req":7,"msg":{"type":"request", …ClaimRequest}}}
//! {"v":1,"msg":{"type":"claim","req":8,"msg":{"type":"renew","workspace":"w","claim_id":"c"}}}
//! {"v":1,"msg":{"type":"job","req":9,"msg":{"type":"submit", …TaskSpec}}}
//! {"v":1,"msg":{"type":"done","req":7}}
//! {"v":1,"msg":{"type":"subscribe_revocations","sub":10,"workspace":"w"}}
//! {"v":1,"msg":{"type":"unsubscribe","sub":10}}
//! ```
//!
//! Server → client ([`frame::ServerFrame`]):
//!
//! ```text
//! {"v":1,"msg":{"type":"reply","req":7,"msg":{"type":"pending", …}}}
//! {"v":1,"msg":{"type":"reply","req":7,"msg":{"type":"granted", …ClaimGrant}}}
//! {"v":1,"msg":{"type":"job_reply","req":9,"msg":{"type":"accepted","job":"j"}}}
//! {"v":1,"msg":{"type":"subscribed","sub":10}}
//! {"v":1,"msg":{"type":"revocation","sub":10,"msg":{ …Revocation}}}
//! {"v":1,"msg":{"type":"error","req":7,"kind":"malformed","why":"…"}}
//! ```
//!
//! **Claim-plane authentication.** The server's [`ClaimAuth`] looks at the
//! upgrade request's `Authorization: Bearer <token>` header (the client sends
//! [`WsConfig::bearer_token`]) and either refuses the upgrade with HTTP 401
//! or admits the client with a [`ClaimScope`]. A `claim` or `job` frame for
//! a workspace outside the scope is answered with `rejected` (`forbidden`
//! for claims), a `subscribe_revocations` with an `error` frame of kind
//! `forbidden`; nothing reaches the control plane. [`WsServer::bind`] admits
//! everyone ([`OpenClaims`]); [`WsServer::bind_with_claim_auth`] takes the
//! policy.
//!
//! `req` and `sub` are chosen by the client, unique among its open ones. The
//! control plane addresses a request as `ReplyTo("ws-<connection>-<req>")`;
//! it stays valid until the client sends `done` (send it when a call is
//! finished; at most `max_open_requests` may be open) or disconnects, after
//! which sends to it fail with `no_peer`. A grant or revocation sent to
//! `Peer::Claim(workspace, id)` reaches every open `request` for that claim
//! and, for revocations, every subscription to the workspace. A frame that
//! does not decode (garbage, wrong `v`, unknown type) does not close the
//! connection: a `claim`/`job` frame whose `req` can still be read is
//! answered with `rejected` (`invalid`), anything else with an `error`
//! frame.
//!
//! # Keepalive
//!
//! Both sides ping every `ping_interval` and close (4005) a peer that sent
//! nothing — not even a pong — for `ping_interval + pong_timeout`, so a
//! half-open connection ends in `AgentGone` within that window.
//!
//! # TLS
//!
//! rustls with the ring provider. The server may verify client
//! certificates against a CA ([`ServerTlsConfig::client_ca_pem`]) while still
//! admitting clients without one; an agent's verified `fleet://node/<id>`
//! URI SAN is passed to [`AgentAuth`], which decides.

mod auth;
mod client;
mod config;
mod conn;
pub mod frame;
#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod fuzz;
mod server;
mod tls;
mod utls;

pub use auth::{
    AgentAuth, AgentHelloInfo, AuthError, ClaimAuth, ClaimAuthError, ClaimScope, OpenClaims,
    StaticAgentAuth,
};
pub use client::{AgentSender, SessionEnd, Welcome, WsAgentClient, WsAgentSession, WsClaimClient};
pub use config::{WsConfig, WsError, close_code};
pub use server::{AGENT_PATH, CLAIMS_PATH, WsServer};
pub use tls::{ClientIdentity, ClientTlsConfig, ServerTlsConfig};
