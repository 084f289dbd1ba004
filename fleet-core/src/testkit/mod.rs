//! Conformance suites every implementation of a core trait runs against
//! itself (feature `testkit`). A new backend passes these before it is done.

pub mod provider;
pub mod store;
pub mod transport;
