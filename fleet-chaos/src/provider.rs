//! The daemon's cloud: the one [`MemoryProvider`] of the schedule seen
//! through a handle per daemon incarnation that adds latency, errors,
//! outages and crashes around each call. Each call that takes effect is
//! checked first (a `create` only once its node record is stored; no stop,
//! resize or delete under a stored claim or job), and powers the node's
//! simulated agent on or off.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::billing::BillingModel;
use fleet_core::ids::{InstanceType, NodeId};
use fleet_core::provider::{
    Capabilities, Instance, InstanceRef, InstanceState, NodeSpec, Offering, Provider,
    ProviderError, SnapshotRef, TagFilter,
};

use crate::sim::{Sim, T0};

/// One incarnation's handle on the cloud.
pub(crate) struct ChaosProvider {
    pub(crate) sim: Arc<Sim>,
    pub(crate) incarnation: u64,
    /// The provider's own description, read once (it never changes).
    pub(crate) capabilities: Capabilities,
    pub(crate) billing: BillingModel,
}

impl ChaosProvider {
    pub(crate) fn new(sim: Arc<Sim>, incarnation: u64) -> ChaosProvider {
        ChaosProvider {
            capabilities: sim.provider.capabilities().clone(),
            billing: sim.provider.billing().clone(),
            sim,
            incarnation,
        }
    }

    /// Latency, then an outage, an injected error or a crash before the
    /// call takes effect.
    async fn enter(&self, op: &'static str, node: Option<&NodeId>) -> Result<(), ProviderError> {
        let sim = &self.sim;
        sim.park_unless_alive(self.incarnation).await;
        let f = &sim.plan.faults;
        let latency = sim.with(|st, at| {
            if st.faults(at) {
                st.rng
                    .range(f.provider_latency_ms.0, f.provider_latency_ms.1)
            } else {
                f.provider_latency_ms.0
            }
        });
        tokio::time::sleep(Duration::from_millis(latency)).await;
        sim.park_unless_alive(self.incarnation).await;
        let inc = self.incarnation;
        let fate = sim.with(|st, at| {
            if !st.faults(at) {
                return Ok(true);
            }
            let node = node.map_or(String::new(), |n| format!(" {n}"));
            if f.provider_outages
                .iter()
                .any(|(from, len)| (*from..from + len).contains(&at))
            {
                st.step(at, format_args!("provider {op}{node}: outage"));
                return Err(ProviderError::Transient("provider outage".into()));
            }
            if st.rng.chance(f.provider_error) {
                let e = match st.rng.range(0, 2) {
                    0 => ProviderError::RateLimited("injected".into()),
                    1 if matches!(op, "create" | "resize") => {
                        ProviderError::Capacity("injected: no capacity".into())
                    }
                    _ => ProviderError::Transient("injected".into()),
                };
                st.step(at, format_args!("provider {op}{node}: {e}"));
                st.count("provider errors");
                return Err(e);
            }
            let mutates = !matches!(op, "list" | "offerings");
            if mutates
                && st.rng.chance(f.crash_provider.0)
                && st.crash(
                    at,
                    inc,
                    "crashes before a provider call",
                    format_args!("before provider {op}{node} took effect"),
                )
            {
                return Ok(false);
            }
            Ok(true)
        })?;
        if !fate {
            sim.crashed.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// The call is about to take effect: checks, the provider's clock.
    fn before(&self, op: &'static str, node: &NodeId) {
        self.sim.with(|st, at| {
            self.sim.provider.set_now(T0 + at);
            if op == "delete" && !st.check.tracks(node) {
                st.count("orphans collected");
            }
            let bad = st.check.provider_call(op, node);
            st.violations(at, bad);
        });
    }

    /// The call took effect (or failed at the provider): the agent follows
    /// the instance's power; then maybe a crash before the daemon records
    /// the result, or an error that hides that it took effect.
    async fn exit<T: std::fmt::Debug>(
        &self,
        op: &'static str,
        node: &NodeId,
        was: Option<InstanceState>,
        result: Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let sim = &self.sim;
        let now = sim.provider.instance(node).map(|i| i.state);
        let running = |s: Option<InstanceState>| s == Some(InstanceState::Running);
        if running(now) && !running(was) {
            crate::agent::boot(sim, node);
        } else if !running(now) && running(was) {
            sim.power_off(node);
        }
        let f = &sim.plan.faults;
        let inc = self.incarnation;
        let fate = sim.with(|st, at| {
            match &result {
                Ok(v) => {
                    st.count(match op {
                        "create" => "provider creates",
                        "start" => "provider starts",
                        "stop" => "provider stops",
                        "resize" => "provider resizes",
                        "snapshot" => "provider snapshots",
                        "delete" => "provider deletes",
                        _ => "provider calls",
                    });
                    st.step(at, format_args!("provider {op} {node}: {v:?}"))
                }
                Err(e) => st.step(at, format_args!("provider {op} {node}: {e}")),
            }
            if result.is_err() || !st.faults(at) {
                return Ok(true);
            }
            if st.rng.chance(f.crash_provider.1)
                && st.crash(
                    at,
                    inc,
                    "crashes after a provider call, before it was recorded",
                    format_args!(
                        "after provider {op} {node} returned, before the daemon recorded it"
                    ),
                )
            {
                return Ok(false);
            }
            if st.rng.chance(f.provider_error_after) {
                st.count("provider errors after the call took effect");
                st.step(
                    at,
                    format_args!("provider {op} {node}: took effect, reported failed"),
                );
                // A create answered "no capacity" that launched anyway
                // leaves an instance no record tracks: an orphan.
                return Err(if op == "create" && st.rng.chance(333) {
                    ProviderError::Capacity("injected after the instance launched".into())
                } else {
                    ProviderError::Transient("injected after the call took effect".into())
                });
            }
            Ok(true)
        })?;
        if !fate {
            sim.crashed.notify_one();
            std::future::pending::<()>().await;
        }
        result
    }

    fn state_of(&self, node: &NodeId) -> Option<InstanceState> {
        self.sim.provider.instance(node).map(|i| i.state)
    }
}

#[async_trait]
impl Provider for ChaosProvider {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn billing(&self) -> &BillingModel {
        &self.billing
    }

    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        self.enter("offerings", None).await?;
        self.sim.provider.offerings().await
    }

    async fn create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError> {
        self.enter("create", Some(&spec.node)).await?;
        self.before("create", &spec.node);
        let was = self.state_of(&spec.node);
        let result = self.sim.provider.create(spec).await;
        self.exit("create", &spec.node, was, result).await
    }

    async fn start(&self, i: &InstanceRef) -> Result<Instance, ProviderError> {
        self.enter("start", Some(&i.node)).await?;
        self.before("start", &i.node);
        let was = self.state_of(&i.node);
        let result = self.sim.provider.start(i).await;
        self.exit("start", &i.node, was, result).await
    }

    async fn stop(&self, i: &InstanceRef) -> Result<Instance, ProviderError> {
        self.enter("stop", Some(&i.node)).await?;
        self.before("stop", &i.node);
        let was = self.state_of(&i.node);
        let result = self.sim.provider.stop(i).await;
        self.exit("stop", &i.node, was, result).await
    }

    async fn resize(&self, i: &InstanceRef, to: &InstanceType) -> Result<Instance, ProviderError> {
        self.enter("resize", Some(&i.node)).await?;
        self.before("resize", &i.node);
        let was = self.state_of(&i.node);
        let result = self.sim.provider.resize(i, to).await;
        self.exit("resize", &i.node, was, result).await
    }

    async fn snapshot(&self, i: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        self.enter("snapshot", Some(&i.node)).await?;
        self.before("snapshot", &i.node);
        let was = self.state_of(&i.node);
        let result = self.sim.provider.snapshot(i).await;
        self.exit("snapshot", &i.node, was, result).await
    }

    async fn delete(&self, i: &InstanceRef) -> Result<(), ProviderError> {
        self.enter("delete", Some(&i.node)).await?;
        self.before("delete", &i.node);
        let was = self.state_of(&i.node);
        let result = self.sim.provider.delete(i).await;
        self.exit("delete", &i.node, was, result).await
    }

    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        self.enter("list", None).await?;
        self.sim.provider.list(tags).await
    }
}
