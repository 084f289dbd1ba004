//! Strategy selection as configuration. (Filled in with the six strategies.)

use serde::{Deserialize, Serialize};

use super::Strategy;

/// Which strategy a pool runs, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum StrategyConfig {
    /// Placeholder until the six strategies land.
    ColdImage,
}

impl StrategyConfig {
    /// Builds the strategy.
    pub fn build(&self) -> Box<dyn Strategy> {
        unimplemented!()
    }
}
