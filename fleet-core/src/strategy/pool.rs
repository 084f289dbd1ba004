//! [`PoolSpec`]: the one definition of a pool. The daemon's `[[pool]]`, the
//! simulator's `pool` and an embedder's `Fleet::builder().pool(…)` are this
//! type, so their defaults and their validation cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::ids::{InstanceType, Millis, PoolName};
use crate::protocol::{PoolInfo, StrategyParams};
use crate::provider::Offering;
use crate::schedule::SchedulePeriod;
use crate::strategy::StrategyConfig;

/// A pool as configured. Every field has a default, so an empty table is
/// the default pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The pool (default `default`).
    #[serde(default = "PoolSpec::default_name")]
    pub name: PoolName,
    /// How its nodes live (default: cold boots from the image, see
    /// [`StrategyConfig::default`]).
    #[serde(default)]
    pub strategy: StrategyConfig,
    /// Instance types it may run, in order of preference (the first is the
    /// baseline size). Empty: the provider's cheapest on-demand offering,
    /// chosen when the fleet starts ([`PoolSpec::resolve`]).
    #[serde(default)]
    pub instance_types: Vec<InstanceType>,
    /// The base image new nodes boot from (default `default`; the local
    /// provider ignores it).
    #[serde(default = "PoolSpec::default_image")]
    pub image: String,
    /// Labels every node of the pool carries.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Nodes never fewer than this (counting stopped ones).
    #[serde(default)]
    pub min_nodes: u32,
    /// Nodes never more than this (default 4).
    #[serde(default = "PoolSpec::default_max_nodes")]
    pub max_nodes: u32,
    /// Claims one node serves at once (default 1).
    #[serde(default = "PoolSpec::default_slots")]
    pub slots_per_node: u32,
    /// Claims (and jobs) a node serves in its life before it is recycled:
    /// it takes no more and is deleted once idle, and a fresh node takes
    /// its place (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    /// The revision of what nodes are launched with beyond `image` and
    /// `instance_types` — the agent's configuration, the provider's user
    /// data — as the operator names it (any text; default empty). Nodes
    /// created under another revision have drifted and are replaced.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// Drifted nodes (another image, a type the pool no longer runs, an
    /// older snapshot, another `revision`) replaced at once, at most
    /// (default 1; 0: drifted nodes are kept). An idle one takes no new
    /// claim once chosen and is deleted, a busy one once its claim ends;
    /// the strategy replaces it like any missing node.
    #[serde(
        default = "PoolSpec::default_drift",
        skip_serializing_if = "PoolSpec::is_default_drift"
    )]
    pub drift_replacements: u32,
    /// How long a claim with an affinity key may wait for a busy node that
    /// last served its key before it takes any node (default 0: it only
    /// prefers such a node among the free ones).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub affinity_wait_ms: Millis,
    /// Scheduled capacity: idle nodes kept ready and the idle timeout by
    /// time of day (see [`crate::schedule`]). The last matching period
    /// wins; outside all of them no spare nodes are kept and the
    /// strategy's own idle timeout holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<SchedulePeriod>,
}

impl Default for PoolSpec {
    fn default() -> PoolSpec {
        PoolSpec {
            name: PoolSpec::default_name(),
            strategy: StrategyConfig::default(),
            instance_types: Vec::new(),
            image: PoolSpec::default_image(),
            labels: BTreeMap::new(),
            min_nodes: 0,
            max_nodes: PoolSpec::default_max_nodes(),
            slots_per_node: PoolSpec::default_slots(),
            max_uses: None,
            revision: String::new(),
            drift_replacements: PoolSpec::default_drift(),
            affinity_wait_ms: 0,
            schedule: Vec::new(),
        }
    }
}

impl From<&PoolSpec> for PoolInfo {
    /// The pool as the HTTP API shows it; the strategy's parameters keep the
    /// shape they have in the config.
    fn from(p: &PoolSpec) -> PoolInfo {
        PoolInfo {
            name: p.name.clone(),
            strategy: StrategyParams::from(&p.strategy),
            instance_types: p.instance_types.clone(),
            image: p.image.clone(),
            labels: p.labels.clone(),
            min_nodes: p.min_nodes,
            max_nodes: p.max_nodes,
            slots_per_node: p.slots_per_node,
            max_uses: p.max_uses,
            revision: p.revision.clone(),
            drift_replacements: p.drift_replacements,
            affinity_wait_ms: p.affinity_wait_ms,
            schedule: p.schedule.iter().map(|s| s.spec().clone()).collect(),
            // Live state, not configuration: the status API fills it in.
            shortages: Vec::new(),
        }
    }
}

impl From<&StrategyConfig> for StrategyParams {
    fn from(s: &StrategyConfig) -> StrategyParams {
        // A strategy's parameters are a struct of plain fields, so this
        // cannot fail; were it to, the kind alone is still right.
        let mut params = match serde_json::to_value(s) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        params.remove("kind");
        StrategyParams {
            kind: s.name().to_owned(),
            params,
        }
    }
}

fn is_zero(ms: &Millis) -> bool {
    *ms == 0
}

impl PoolSpec {
    /// The most nodes a pool may have.
    pub const MAX_NODES_LIMIT: u32 = 10_000;
    /// The most claims one node may serve at once.
    pub const MAX_SLOTS_LIMIT: u32 = 1_000;
    /// The most periods a pool's schedule may have.
    pub const MAX_SCHEDULE_PERIODS: usize = 16;

    fn default_name() -> PoolName {
        PoolName::new("default").unwrap_or_else(|_| unreachable!("a valid literal"))
    }

    fn default_image() -> String {
        "default".to_owned()
    }

    fn default_max_nodes() -> u32 {
        4
    }

    fn default_slots() -> u32 {
        1
    }

    fn default_drift() -> u32 {
        1
    }

    fn is_default_drift(n: &u32) -> bool {
        *n == Self::default_drift()
    }

    /// Checks the numbers; the error's key is the field's name (callers
    /// prefix it with where the pool was written: `pool[0].`, `$.pool.`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_nodes == 0 || self.max_nodes > Self::MAX_NODES_LIMIT {
            return Err(ConfigError::invalid(
                "max_nodes",
                format!(
                    "must be between 1 and {}, got {}",
                    Self::MAX_NODES_LIMIT,
                    self.max_nodes
                ),
            ));
        }
        if self.min_nodes > self.max_nodes {
            return Err(ConfigError::invalid(
                "min_nodes",
                format!("{} is above max_nodes {}", self.min_nodes, self.max_nodes),
            ));
        }
        if self.slots_per_node == 0 || self.slots_per_node > Self::MAX_SLOTS_LIMIT {
            return Err(ConfigError::invalid(
                "slots_per_node",
                format!(
                    "must be between 1 and {}, got {}",
                    Self::MAX_SLOTS_LIMIT,
                    self.slots_per_node
                ),
            ));
        }
        if self.max_uses == Some(0) {
            return Err(ConfigError::invalid(
                "max_uses",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if self.schedule.len() > Self::MAX_SCHEDULE_PERIODS {
            return Err(ConfigError::invalid(
                "schedule",
                format!(
                    "{} periods; at most {}",
                    self.schedule.len(),
                    Self::MAX_SCHEDULE_PERIODS
                ),
            ));
        }
        Ok(())
    }

    /// Fills an empty `instance_types` with the cheapest on-demand offering
    /// (ties by name); a pool that names its types is left as it is.
    pub fn resolve(&mut self, offerings: &[Offering]) -> Result<(), ConfigError> {
        if !self.instance_types.is_empty() {
            return Ok(());
        }
        let cheapest = offerings
            .iter()
            .min_by(|a, b| {
                a.on_demand
                    .cmp(&b.on_demand)
                    .then_with(|| a.instance_type.cmp(&b.instance_type))
            })
            .ok_or_else(|| {
                ConfigError::invalid(
                    "instance_types",
                    "none given and the provider sells none to choose from",
                )
            })?;
        self.instance_types = vec![cheapest.instance_type.clone()];
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{HourlyPrice, Money};
    use crate::protocol::Arch;

    fn offering(t: &str, micros: i64) -> Offering {
        Offering {
            instance_type: InstanceType::new(t).unwrap_or_else(|e| panic!("{e}")),
            cpus: 2,
            memory_mb: 4_096,
            arch: Arch::X86_64,
            disk_gb: 0,
            on_demand: HourlyPrice(Money::from_micros(micros)),
            spot: None,
        }
    }

    #[test]
    fn an_empty_table_is_the_default_pool() {
        let parsed: PoolSpec = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, PoolSpec::default());
        assert!(parsed.validate().is_ok());
        let unknown = serde_json::from_str::<PoolSpec>(r#"{"max_node": 3}"#);
        assert!(unknown.is_err(), "a misspelt key is refused");
    }

    #[test]
    fn validation_names_the_field() {
        let key = |p: PoolSpec| match p.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            key(PoolSpec {
                max_nodes: 0,
                ..PoolSpec::default()
            }),
            "max_nodes"
        );
        assert_eq!(
            key(PoolSpec {
                max_nodes: 10_001,
                ..PoolSpec::default()
            }),
            "max_nodes"
        );
        assert_eq!(
            key(PoolSpec {
                min_nodes: 5,
                ..PoolSpec::default()
            }),
            "min_nodes"
        );
        assert_eq!(
            key(PoolSpec {
                slots_per_node: 0,
                ..PoolSpec::default()
            }),
            "slots_per_node"
        );
    }

    #[test]
    fn an_empty_type_list_becomes_the_cheapest_offering() {
        let offerings = [
            offering("big", 300),
            offering("b-small", 100),
            offering("a-small", 100),
        ];
        let mut p = PoolSpec::default();
        p.resolve(&offerings).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.instance_types, [offerings[2].instance_type.clone()]);
        let mut named = PoolSpec {
            instance_types: vec![offerings[0].instance_type.clone()],
            ..PoolSpec::default()
        };
        named.resolve(&offerings).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(named.instance_types, [offerings[0].instance_type.clone()]);
        assert!(PoolSpec::default().resolve(&[]).is_err());
    }

    #[test]
    fn the_api_shows_a_pool_as_its_config_says_it() {
        for kind in [
            "cold_image",
            "cold_snapshot",
            "always_on_resize",
            "stopped_pool",
            "spot",
            "hybrid",
        ] {
            let spec: PoolSpec = serde_json::from_value(serde_json::json!({
                "name": "p", "strategy": { "kind": kind }, "labels": { "team": "ci" },
            }))
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
            let info = PoolInfo::from(&spec);
            assert_eq!(info.strategy.kind, kind);
            let shown = serde_json::to_value(&info).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                shown,
                serde_json::to_value(&spec).unwrap_or_else(|e| panic!("{e}")),
                "{kind}"
            );
            let back: PoolInfo = serde_json::from_value(shown).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, info);
        }
    }
}
