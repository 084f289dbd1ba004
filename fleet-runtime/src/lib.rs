//! # fleet-runtime
//!
//! The tokio driver around the sans-IO [`fleet_core::controller::Controller`]
//! and what an embedder links to run a fleet inside its own process: the
//! store, the provider and the transports are whatever it passes in (the
//! runtime links no database, no HTTP server, no cloud SDK and no NATS).
//!
//! ```no_run
//! # async fn demo(
//! #     pool: fleet_core::strategy::PoolSpec,
//! #     provider: std::sync::Arc<dyn fleet_core::Provider>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use fleet_runtime::Fleet;
//! let fleet = Fleet::builder().provider(provider).pool(pool).start().await?;
//! let client = fleet.client(); // in-process ClaimClient, no network hop
//! # Ok(()) }
//! ```
//!
//! Beside the driver: the leader [`lease`] (epoch fencing on shared
//! stores), the pool [`ca`], credential [`seal`]ing (age to the caller,
//! signed with the daemon's Ed25519 key) and the [`credentials`] issuer
//! that combines them, and single-use bootstrap [`tokens`] for new nodes.

pub mod ca;
mod commit;
pub mod credentials;
pub mod driver;
mod joblog;
pub mod lease;
pub mod metrics;
pub mod seal;
pub mod tokens;

pub use driver::{
    AlertSink, ArtifactPiece, ArtifactSink, Fleet, FleetBuilder, RuntimeError, Status, SystemClock,
};
