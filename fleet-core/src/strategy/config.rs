//! Strategy selection as configuration: which of the six planners a pool
//! runs, with its parameters, as a tagged serde enum
//! (`{ "kind": "cold_snapshot", "idle_timeout_ms": 30000 }`).

use serde::{Deserialize, Serialize};

use super::{AlwaysOnResize, ColdImage, ColdSnapshot, Hybrid, Spot, StoppedPool, Strategy};

/// Which strategy a pool runs, with its parameters. Every parameter may be
/// left out and takes the default documented on its strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum StrategyConfig {
    /// See [`ColdImage`].
    ColdImage(ColdImage),
    /// See [`ColdSnapshot`].
    ColdSnapshot(ColdSnapshot),
    /// See [`AlwaysOnResize`].
    AlwaysOnResize(AlwaysOnResize),
    /// See [`StoppedPool`].
    StoppedPool(StoppedPool),
    /// See [`Spot`].
    Spot(Spot),
    /// See [`Hybrid`].
    Hybrid(Hybrid),
}

impl Default for StrategyConfig {
    /// Cold boots from the image: nothing runs while nothing is asked for.
    fn default() -> StrategyConfig {
        StrategyConfig::ColdImage(ColdImage::default())
    }
}

impl StrategyConfig {
    /// Builds the strategy.
    pub fn build(&self) -> Box<dyn Strategy> {
        match self {
            StrategyConfig::ColdImage(s) => Box::new(s.clone()),
            StrategyConfig::ColdSnapshot(s) => Box::new(s.clone()),
            StrategyConfig::AlwaysOnResize(s) => Box::new(s.clone()),
            StrategyConfig::StoppedPool(s) => Box::new(s.clone()),
            StrategyConfig::Spot(s) => Box::new(s.clone()),
            StrategyConfig::Hybrid(s) => Box::new(s.clone()),
        }
    }

    /// The strategy's name, as in `kind` and in [`StrategyInfo::name`](super::StrategyInfo::name).
    pub fn name(&self) -> &'static str {
        match self {
            StrategyConfig::ColdImage(_) => "cold_image",
            StrategyConfig::ColdSnapshot(_) => "cold_snapshot",
            StrategyConfig::AlwaysOnResize(_) => "always_on_resize",
            StrategyConfig::StoppedPool(_) => "stopped_pool",
            StrategyConfig::Spot(_) => "spot",
            StrategyConfig::Hybrid(_) => "hybrid",
        }
    }

    /// The six strategies with default parameters, in a fixed order (what
    /// the simulator ranks when asked for "all").
    pub fn all_defaults() -> Vec<StrategyConfig> {
        vec![
            StrategyConfig::ColdImage(ColdImage::default()),
            StrategyConfig::ColdSnapshot(ColdSnapshot::default()),
            StrategyConfig::AlwaysOnResize(AlwaysOnResize::default()),
            StrategyConfig::StoppedPool(StoppedPool::default()),
            StrategyConfig::Spot(Spot::default()),
            StrategyConfig::Hybrid(Hybrid::default()),
        ]
    }
}

macro_rules! into_config {
    ($($t:ident),*) => {$(
        impl From<$t> for StrategyConfig {
            fn from(s: $t) -> StrategyConfig {
                StrategyConfig::$t(s)
            }
        }
    )*};
}
into_config!(
    ColdImage,
    ColdSnapshot,
    AlwaysOnResize,
    StoppedPool,
    Spot,
    Hybrid
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_serde_tag_and_describe() {
        for c in StrategyConfig::all_defaults() {
            let json = serde_json::to_value(&c).unwrap_or_default();
            assert_eq!(json["kind"], c.name());
        }
    }

    #[test]
    fn parameters_default_and_unknown_fields_are_refused() {
        let c: Result<StrategyConfig, _> =
            serde_json::from_str(r#"{"kind":"cold_snapshot","idle_timeout_ms":5}"#);
        assert_eq!(
            c.ok(),
            Some(StrategyConfig::ColdSnapshot(ColdSnapshot {
                idle_timeout_ms: 5,
                ..ColdSnapshot::default()
            }))
        );
        let bad: Result<StrategyConfig, _> =
            serde_json::from_str(r#"{"kind":"spot","idle_timeout":5}"#);
        assert!(bad.is_err());
        let unknown: Result<StrategyConfig, _> = serde_json::from_str(r#"{"kind":"warm"}"#);
        assert!(unknown.is_err());
        let bare: Result<StrategyConfig, _> = serde_json::from_str(r#"{"kind":"hybrid"}"#);
        assert_eq!(bare.ok(), Some(StrategyConfig::Hybrid(Hybrid::default())));
    }
}
