//! The fleet control plane: drives the core controller with a redb store, transports, a provider, an HTTP API and a CA; plus fleetctl.

pub mod ca;
pub mod lease;
pub mod seal;
pub mod store;
