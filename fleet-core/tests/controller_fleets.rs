//! Two fleets with the same namespace and pool names on one cloud account
//! (one shared `MemoryProvider`): each creates and keeps only its own
//! instances; inventory, adoption and orphan collection never touch the
//! other's.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::*;
use fleet_core::controller::{Command, Controller, Event, ProviderCall, ProviderOutcome};
use fleet_core::memory::provider::MemoryProvider;
use fleet_core::provider::{
    BootSource, Instance, InstanceState, Market, NodeSpec, Provider, TAG_FLEET, TAG_NAMESPACE,
    TAG_NODE, TAG_POOL, TagFilter,
};
use fleet_core::store::Revision;
use fleet_core::strategy::StrategyConfig;
use fleet_core::{FleetId, Millis, NodeId};

/// One fleet's controller, its store acknowledging every write at once.
struct Fleet {
    controller: Controller,
    next_rev: u64,
}

impl Fleet {
    fn new(fleet_id: &str) -> Fleet {
        let mut spec = pool(StrategyConfig::default(), 4);
        // One node always up, so each fleet creates one without a claim.
        spec.min_nodes = 1;
        let mut config = config(spec);
        config.fleet_id = FleetId::new(fleet_id).unwrap();
        Fleet {
            controller: Controller::new(config, T0),
            next_rev: 1,
        }
    }

    /// Handles `event` at `now` and everything it leads to: store writes
    /// succeed, provider calls go to the shared provider.
    async fn drive(&mut self, provider: &MemoryProvider, event: Event, now: Millis) {
        let mut events = VecDeque::from([event]);
        while let Some(e) = events.pop_front() {
            for c in self.controller.handle(e, now) {
                match c {
                    Command::Persist { key, .. } => {
                        self.next_rev += 1;
                        events.push_back(Event::Persisted {
                            key,
                            result: Ok(Revision(self.next_rev)),
                        });
                    }
                    Command::Provider { op, call } => {
                        let result = match call {
                            ProviderCall::Create(spec) => {
                                provider.create(&spec).await.map(ProviderOutcome::Instance)
                            }
                            ProviderCall::Delete(r) => {
                                provider.delete(&r).await.map(|()| ProviderOutcome::Deleted)
                            }
                            other => panic!("unexpected call {other:?}"),
                        };
                        events.push_back(Event::ProviderDone { op, result });
                    }
                    _ => {}
                }
            }
        }
    }

    fn node_ids(&self) -> Vec<NodeId> {
        self.controller.nodes().map(|n| n.record.node).collect()
    }
}

/// Everything in the namespace, whoever's: what a provider that ignored
/// the fleet tag in a filter would list.
async fn whole_namespace(provider: &MemoryProvider) -> Vec<Instance> {
    let filter = TagFilter(BTreeMap::from([(
        TAG_NAMESPACE.to_owned(),
        "fleet".to_owned(),
    )]));
    provider.list(&filter).await.unwrap()
}

fn running(provider: &MemoryProvider, node: &NodeId) -> bool {
    provider
        .instance(node)
        .is_some_and(|i| i.state == InstanceState::Running)
}

#[tokio::test]
async fn fleets_sharing_a_namespace_keep_to_their_own_instances() {
    let provider = MemoryProvider::builder().offerings(offerings()).build();
    provider.set_now(T0);
    let mut a = Fleet::new("fleet-a");
    let mut b = Fleet::new("fleet-b");
    a.drive(&provider, Event::Tick, T0).await;
    b.drive(&provider, Event::Tick, T0).await;

    // Same pool, same epoch, same sequence: different node ids, each
    // instance tagged with its fleet.
    let (na, nb) = (a.node_ids(), b.node_ids());
    assert_eq!(na.len(), 1);
    assert_eq!(nb.len(), 1);
    assert_eq!(na[0].as_str(), "linux-fleet-a-1-1");
    assert_eq!(nb[0].as_str(), "linux-fleet-b-1-1");
    for (node, fleet) in [(&na[0], "fleet-a"), (&nb[0], "fleet-b")] {
        let i = provider.instance(node).expect("created");
        assert_eq!(i.tags.get(TAG_FLEET).map(String::as_str), Some(fleet));
        assert_eq!(i.tags.get(TAG_NAMESPACE).map(String::as_str), Some("fleet"));
    }

    // A stray instance of fleet A (created behind its back): A's orphan.
    let stray = NodeId::new("linux-fleet-a-9-9").unwrap();
    provider
        .create(&NodeSpec {
            node: stray.clone(),
            pool: fleet_core::PoolName::new("linux").unwrap(),
            instance_type: it("c7.large"),
            market: Market::OnDemand,
            source: BootSource::Image {
                image: "ami-base".to_owned(),
            },
            tags: BTreeMap::from([
                (TAG_NODE.to_owned(), stray.to_string()),
                (TAG_POOL.to_owned(), "linux".to_owned()),
                (TAG_NAMESPACE.to_owned(), "fleet".to_owned()),
                (TAG_FLEET.to_owned(), "fleet-a".to_owned()),
            ]),
            bootstrap_token: None,
        })
        .await
        .unwrap();

    // Both see the whole namespace, now and after the orphan age.
    for now in [T0 + 1_000, T0 + 700_000, T0 + 701_000] {
        provider.set_now(now);
        for f in [&mut a, &mut b] {
            let instances = whole_namespace(&provider).await;
            f.drive(&provider, Event::Inventory { instances }, now)
                .await;
            f.drive(&provider, Event::Tick, now).await;
        }
    }

    assert!(running(&provider, &na[0]), "A's node is alive");
    assert!(running(&provider, &nb[0]), "B's node is alive");
    assert!(!running(&provider, &stray), "A collected its own orphan");
    // Neither adopted the other's node nor the stray of the other.
    assert_eq!(a.node_ids(), na);
    assert_eq!(b.node_ids(), nb);
    for (f, mine) in [(&a, &na[0]), (&b, &nb[0])] {
        let n = f.controller.node(mine).unwrap();
        assert_eq!(
            n.record.provider_id,
            provider.instance(mine).map(|i| i.provider_id),
            "each fleet holds its own instance's provider id"
        );
    }
}
