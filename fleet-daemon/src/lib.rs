//! # fleet-daemon
//!
//! The fleet control plane: the driver that runs the sans-IO
//! [`fleet_core::controller::Controller`] with real I/O (store, provider,
//! transports, credentials), and what an embedder links:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use fleet_daemon::driver::Fleet;
//! # let pool: fleet_core::strategy::PoolSpec = unimplemented!();
//! let fleet = Fleet::builder().pool(pool).start().await?;
//! let client = fleet.client(); // in-process ClaimClient, no network hop
//! # Ok(()) }
//! ```

pub mod auth;
pub mod ca;
pub mod config;
pub mod driver;
pub mod http;
pub mod lease;
pub mod local;
pub mod metrics;
pub mod seal;
pub mod serve;
pub mod store;
