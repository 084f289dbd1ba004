//! In-memory implementations of the core traits, usable by every test, the
//! simulator and embedders: a revisioned [`store::MemoryStore`], a
//! fault-injecting [`provider::MemoryProvider`] and an in-process
//! [`transport::InProcTransport`] with its claim client.

pub mod provider;
pub mod store;
pub mod transport;
