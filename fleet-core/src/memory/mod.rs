//! In-memory implementations of the core traits: a revisioned
//! [`store::MemoryStore`] and an in-process [`transport::InProcTransport`]
//! with its claim, job and agent clients (what an embedder uses for a fleet
//! without a network hop). With feature `harness`, the fault-injecting
//! [`provider::MemoryProvider`] and [`faulty::FaultyStore`] the tests and the
//! simulator use.

#[cfg(feature = "harness")]
pub mod faulty;
#[cfg(feature = "harness")]
pub mod provider;
pub mod store;
pub mod transport;
