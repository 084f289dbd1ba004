//! # fleet-core
//!
//! The shared heart of fleet: the wire protocol and store schema, the one file
//! that names subjects and keys, the traits every backend implements
//! ([`Store`], [`Provider`], [`Transport`], [`ClaimClient`]), and the pure
//! decision code — [`arbitrate`](arbitrate::arbitrate), the cost math in
//! [`billing`], the six [`strategy`] planners and the sans-IO
//! [`Controller`](controller::Controller).
//!
//! This crate does no I/O: no runtime, no sockets, no files, no clocks. Time
//! is passed in as [`Millis`]. The daemon drives the controller with real
//! I/O, the simulator with virtual time, the tests with faults.

pub mod arbitrate;
pub mod billing;
pub mod clock;
pub mod config;
pub mod controller;
#[cfg(feature = "harness")]
pub mod harness;
pub mod ids;
pub mod memory;
pub mod money;
pub mod protocol;
pub mod provider;
pub mod schedule;
pub mod store;
pub mod strategy;
pub mod subjects;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod time;
pub mod transport;

pub use ids::{
    AffinityKey, ClaimId, CommandId, Epoch, FleetId, InstanceType, JobId, Millis, NodeId, OpId,
    PoolName, RunId, Workspace,
};
pub use money::Money;
pub use provider::Provider;
pub use store::Store;
pub use strategy::Strategy;
pub use transport::{ClaimClient, Transport};
