//! A minimal daemon loop for tests and the benchmark: the real
//! [`Controller`] driven over a [`Transport`] and a [`Store`], with an
//! instant in-process "provider" whose nodes' agents say hello at once.
//! It stands in for fleet-daemon's driver, which is not built yet.
#![allow(
    dead_code,
    reason = "shared by several test crates and the bench; each uses a part, so `expect` would be unfulfilled in some"
)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fleet_core::billing::BillingModel;
use fleet_core::controller::{
    Command, Controller, ControllerConfig, Event, ProviderCall, ProviderOutcome, Timing,
};
use fleet_core::money::HourlyPrice;
use fleet_core::protocol::{AgentMsg, Arch, NodeResources, SealedCredentials, encode};
use fleet_core::provider::{Capabilities, Instance, InstanceState, Offering};
use fleet_core::store::{Revision, Store, StoreError};
use fleet_core::strategy::{PoolSpec, StrategyConfig};
use fleet_core::transport::{Inbound, Transport};
use fleet_core::{Epoch, FleetId, InstanceType, Millis, PoolName};
use tokio::task::JoinHandle;

/// The pool the mini daemon serves.
pub(crate) const POOL: &str = "bench-pool";

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// One pool of always-on nodes, one node kept warm, many slots per node.
pub(crate) fn config() -> ControllerConfig {
    let instance_type = InstanceType::new("c7i.xlarge").unwrap_or_else(|e| panic!("{e}"));
    let offering = Offering {
        instance_type: instance_type.clone(),
        cpus: 4,
        memory_mb: 8192,
        arch: Arch::X86_64,
        disk_gb: 40,
        on_demand: HourlyPrice::from_micros(178_500),
        spot: None,
    };
    ControllerConfig {
        pools: vec![PoolSpec {
            name: PoolName::new(POOL).unwrap_or_else(|e| panic!("{e}")),
            strategy: StrategyConfig::all_defaults()
                .into_iter()
                .find(|s| s.name().contains("always"))
                .unwrap_or_default(),
            instance_types: vec![instance_type],
            image: "img".to_owned(),
            labels: BTreeMap::new(),
            min_nodes: 1,
            max_nodes: 1,
            slots_per_node: 1_000,
            max_uses: None,
            schedule: Vec::new(),
            affinity_wait_ms: 0,
            revision: String::new(),
            drift_replacements: 1,
        }],
        quotas: BTreeMap::new(),
        offerings: vec![offering],
        capabilities: Capabilities::all(),
        billing: BillingModel::ec2(),
        epoch: Epoch(1),
        namespace: "fleet".to_owned(),
        fleet_id: FleetId::new("nats-test").unwrap_or_else(|e| panic!("{e}")),
        timing: Timing::default(),
    }
}

/// Spawns the loop; abort the handle to stop it.
pub(crate) fn spawn(transport: Arc<dyn Transport>, store: Arc<dyn Store>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut controller = Controller::new(config(), now_ms());
        let mut queue = VecDeque::from([Event::Tick]);
        let mut next_instance = 0u64;
        loop {
            while let Some(ev) = queue.pop_front() {
                for c in controller.handle(ev, now_ms()) {
                    perform(c, &*transport, &*store, &mut queue, &mut next_instance).await;
                }
            }
            let wait = controller
                .next_deadline()
                .map(|d| Duration::from_millis(d.saturating_sub(now_ms())))
                .unwrap_or(Duration::from_secs(1));
            tokio::select! {
                r = transport.recv() => match r {
                    Ok(Inbound::Claim { msg, reply }) => queue.push_back(Event::Claim { msg, reply }),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "mini daemon: transport closed");
                        return;
                    }
                },
                () = tokio::time::sleep(wait) => queue.push_back(Event::Tick),
            }
        }
    })
}

async fn perform(
    c: Command,
    transport: &dyn Transport,
    store: &dyn Store,
    queue: &mut VecDeque<Event>,
    next_instance: &mut u64,
) {
    match c {
        Command::Persist {
            key,
            value,
            expected,
            ..
        } => {
            let result = match (value, expected) {
                (Some(v), e) => match encode(&v) {
                    Ok(bytes) => {
                        let bytes = Bytes::from(bytes);
                        match e {
                            None => store.create(&key, bytes).await,
                            Some(rev) => store.update(&key, bytes, rev).await,
                        }
                    }
                    Err(err) => Err(StoreError::Corrupt(err.to_string())),
                },
                (None, Some(rev)) => store.delete(&key, rev).await.map(|()| rev),
                (None, None) => Ok(Revision(0)),
            };
            queue.push_back(Event::Persisted { key, result });
        }
        Command::Provider { op, call } => {
            let result = match call {
                ProviderCall::Create(spec) => {
                    *next_instance += 1;
                    let node = spec.node.clone();
                    queue.push_back(Event::Agent {
                        node: node.clone(),
                        msg: AgentMsg::Hello {
                            node: node.clone(),
                            agent_version: "mini".to_owned(),
                            bootstrap_token: None,
                            resources: NodeResources {
                                cpus: 4,
                                memory_mb: 8192,
                                arch: Arch::X86_64,
                                labels: BTreeMap::new(),
                            },
                            gateway: Some(format!("{node}.mini:7443")),
                            seen_commands: Vec::new(),
                        },
                    });
                    Ok(ProviderOutcome::Instance(Instance {
                        node,
                        provider_id: format!("i-{next_instance}"),
                        instance_type: spec.instance_type,
                        market: spec.market,
                        state: InstanceState::Running,
                        address: None,
                        tags: spec.tags,
                        created_at: now_ms(),
                    }))
                }
                ProviderCall::Delete(_) => Ok(ProviderOutcome::Deleted),
                other => Err(fleet_core::provider::ProviderError::Unsupported(format!(
                    "mini daemon: {}",
                    other.name()
                ))),
            };
            // The create answer must come before the agent's hello.
            let at = queue.len().saturating_sub(usize::from(matches!(
                &result,
                Ok(ProviderOutcome::Instance(_))
            )));
            queue.insert(at, Event::ProviderDone { op, result });
        }
        Command::Send { to, msg } => {
            if let Err(e) = transport.send(&to, msg).await {
                tracing::debug!(error = %e, ?to, "mini daemon: send failed");
            }
        }
        Command::IssueCredentials {
            claim, recipient, ..
        } => {
            queue.push_back(Event::CredentialsIssued {
                claim,
                result: Ok(SealedCredentials {
                    format: "mini".to_owned(),
                    ciphertext: format!("sealed-for-{recipient}"),
                    signature: String::new(),
                    signer: String::new(),
                    expires_at: 0,
                }),
            });
        }
        _ => {}
    }
}
