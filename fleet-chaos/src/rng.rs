//! The one source of randomness of a schedule: every draw (a fault, a
//! latency, a client's script) comes from it, in the order the single-thread
//! runtime runs the code that draws, so a seed replays the same schedule.

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded generator (ChaCha8: the same draws on every platform and
/// version of the crate).
#[derive(Debug, Clone)]
pub(crate) struct Rng(ChaCha8Rng);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// True with probability `per_mille / 1000`.
    pub(crate) fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.0.gen_range(0..1000) < per_mille
    }

    /// A uniform draw in `lo..=hi` (`lo` when the range is empty).
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            self.0.gen_range(lo..=hi)
        }
    }

    /// A uniform draw in `lo..=hi` as a `u32`.
    pub(crate) fn range32(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            lo
        } else {
            self.0.gen_range(lo..=hi)
        }
    }
}
