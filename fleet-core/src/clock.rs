//! Where a driver reads the time. Nothing in this crate reads a clock: the
//! controller and strategies are handed `now`. The trait lives here so that
//! the runtime and the backends that stamp times (the local provider) agree
//! on one source, and tests can hand both a virtual one.

use crate::ids::Millis;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;
}
