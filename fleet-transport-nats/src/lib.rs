//! fleet's claim plane on NATS subjects and its [`Store`](fleet_core::Store)
//! on JetStream KV.
//!
//! - [`NatsConfig`] → [`Connection`]: URLs, credentials (creds file, nkey
//!   seed file, token), TLS, a per-workspace inbox prefix.
//! - [`NatsTransport`]: the control plane's [`Transport`](fleet_core::Transport)
//!   (queue-subscribed to `<ns>.claim.{request,renew,release}.*.*`).
//! - [`NatsClaimClient`]: a caller's [`ClaimClient`](fleet_core::ClaimClient).
//! - [`NatsKvStore`] with [`KvConfig`]: the store on a KV bucket.
//!
//! Every subject comes from [`fleet_core::subjects::Subjects`]; every payload
//! goes through [`fleet_core::protocol::encode`]/[`decode`](fleet_core::protocol::decode).
//! See the crate README for the options, bucket settings, the durability
//! caveat and a permissions example.

mod client;
mod conn;
mod store;
mod transport;
mod wire;

pub use client::{DEFAULT_ATTEMPTS, DEFAULT_PENDING_RECHECK, NatsClaimClient};
pub use conn::{ConnectError, Connection, DEFAULT_REQUEST_TIMEOUT_MS, NatsConfig};
pub use store::{KvConfig, NatsKvStore};
pub use transport::{NatsTransport, NatsTransportConfig};
