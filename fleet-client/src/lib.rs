//! # fleet-client
//!
//! What a program that claims fleet nodes links — a build tool, a CI
//! runner, `fleetctl`. No server-side dependency: claim over the daemon's
//! TLS WebSocket (or NATS with feature `nats`, or an embedded fleet's
//! in-process transport), verify the grant's sealed credentials against the
//! pinned daemon key **before** decrypting them, connect to the node's
//! mTLS gateway, run commands and move files through the exec API, renew in
//! the background, watch revocations, release.
//!
//! The wire it speaks is in `fleet_core::protocol` and PROTOCOL.md; a
//! client in another language needs nothing else.
//!
//! - [`client`]: [`FleetClient`] and [`Claim`];
//! - [`jobs`]: the job plane — jobs and runs ([`Jobs`]);
//! - [`credentials`]: opening a sealed bundle ([`open`](credentials::open));
//! - [`discovery`]: finding the daemon on this host (`daemon.json`);
//! - [`gateway`]: the mTLS connection to a node;
//! - [`exec`]: the exec API over that connection.

pub mod client;
pub mod credentials;
pub mod discovery;
pub mod exec;
pub mod gateway;
pub mod jobs;

pub use client::{
    Claim, ClientConfig, ClientError, DEFAULT_CONNECT_ATTEMPTS, FleetClient, claims_url,
    connect_claim_plane,
};
pub use credentials::SignerKey;
pub use discovery::read_discovery;
pub use exec::{ExecClient, ExecError, ExecRequest, ExecResult};
/// NATS connection settings, for [`FleetClient::connect_nats`].
#[cfg(feature = "nats")]
pub use fleet_transport_nats::NatsConfig;
pub use jobs::{JobReplies, Jobs};
