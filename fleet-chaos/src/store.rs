//! The daemon's store: the one [`MemoryStore`] of the schedule (it outlives
//! every daemon, as a disk or a KV cluster does) seen through a handle per
//! daemon incarnation that adds latency, errors, outages and crashes, and
//! hands every write that lands to the checker.
//!
//! A crash is the death of the process: a handle of a dead incarnation
//! never returns again, so nothing it was doing completes and nothing it
//! would do next happens.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::protocol::{Record, decode};
use fleet_core::store::{Key, Revision, Store, StoreError, Versioned, WatchEvent};
use futures_core::stream::BoxStream;

use crate::sim::Sim;

/// One incarnation's handle on the store.
pub(crate) struct ChaosStore {
    pub(crate) sim: Arc<Sim>,
    pub(crate) incarnation: u64,
}

enum Fate {
    Go,
    Fail(&'static str),
    Crash,
}

impl ChaosStore {
    /// Latency, then an outage, an injected error or a crash before the
    /// call reaches the store.
    async fn enter(&self, op: &str, key: &str, write: bool) -> Result<(), StoreError> {
        let sim = &self.sim;
        sim.park_unless_alive(self.incarnation).await;
        let f = &sim.plan.faults;
        let latency = sim.with(|st, at| {
            if st.faults(at) {
                st.rng.range(0, f.store_latency_ms)
            } else {
                0
            }
        });
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
            sim.park_unless_alive(self.incarnation).await;
        }
        let fate = sim.with(|st, at| {
            if !st.faults(at) {
                return Fate::Go;
            }
            if f.store_outages
                .iter()
                .any(|(from, len)| (*from..from + len).contains(&at))
            {
                return Fate::Fail("store outage");
            }
            if st.rng.chance(f.store_error) {
                return Fate::Fail("injected store error");
            }
            if write && st.rng.chance(f.crash_store.0) {
                let inc = self.incarnation;
                if st.crash(
                    at,
                    inc,
                    "crashes before a store write",
                    format_args!("before store {op} {key} applied"),
                ) {
                    return Fate::Crash;
                }
            }
            Fate::Go
        });
        match fate {
            Fate::Go => Ok(()),
            Fate::Fail(why) => {
                sim.with(|st, at| {
                    st.count("store errors");
                    st.step(at, format_args!("store {op} {key}: {why}"));
                });
                Err(StoreError::Unavailable(why.to_owned()))
            }
            Fate::Crash => {
                sim.crashed.notify_one();
                std::future::pending().await
            }
        }
    }

    /// A write landed: the checker sees it; then maybe a crash before the
    /// daemon hears of it, or an error that hides that it landed.
    async fn landed<T>(
        &self,
        op: &str,
        key: &Key,
        value: Option<&Bytes>,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let sim = &self.sim;
        let f = &sim.plan.faults;
        let fate = sim.with(|st, at| {
            match &result {
                Ok(_) => {
                    let record = match value.map(|v| decode::<Record>(v)) {
                        Some(Ok(r)) => Some(r),
                        Some(Err(e)) => {
                            st.violations(
                                at,
                                vec![format!("unreadable record written to {key}: {e}")],
                            );
                            return Fate::Go;
                        }
                        None => None,
                    };
                    st.count("store writes");
                    st.step(
                        at,
                        format_args!("store {op} {key}: {}", brief(record.as_ref())),
                    );
                    let bad = st.check.store_write(key, record);
                    st.violations(at, bad);
                }
                Err(e) => {
                    st.step(at, format_args!("store {op} {key}: {e}"));
                    return Fate::Go;
                }
            }
            if !st.faults(at) {
                return Fate::Go;
            }
            let inc = self.incarnation;
            if st.rng.chance(f.crash_store.1)
                && st.crash(
                    at,
                    inc,
                    "crashes after a store write, before its ack",
                    format_args!("after store {op} {key} applied, before its ack"),
                )
            {
                return Fate::Crash;
            }
            if st.rng.chance(f.store_error_after) {
                st.count("store writes applied and reported failed");
                st.step(
                    at,
                    format_args!("store {op} {key}: applied, reported failed"),
                );
                return Fate::Fail("injected error after the write applied");
            }
            Fate::Go
        });
        match fate {
            Fate::Go => result,
            Fate::Fail(why) => Err(StoreError::Unavailable(why.to_owned())),
            Fate::Crash => {
                sim.crashed.notify_one();
                std::future::pending().await
            }
        }
    }
}

fn brief(record: Option<&Record>) -> String {
    match record {
        None => "deleted".to_owned(),
        Some(Record::Claim(c)) => format!("{} on {:?}", c.state.name(), c.node),
        Some(Record::Node(n)) => {
            format!("{} {:?} {}", n.state.name(), n.provider_id, n.instance_type)
        }
        Some(Record::Job(j)) => format!("{:?} attempt {}", j.state, j.attempts),
        Some(Record::Pool(p)) => format!("pool snapshot {:?}", p.snapshot.as_ref().map(|s| &s.id)),
        Some(other) => format!("{other:?}"),
    }
}

#[async_trait]
impl Store for ChaosStore {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        self.enter("get", key.as_str(), false).await?;
        self.sim.store.get(key).await
    }

    async fn create(&self, key: &Key, value: Bytes) -> Result<Revision, StoreError> {
        self.enter("create", key.as_str(), true).await?;
        let result = self.sim.store.create(key, value.clone()).await;
        self.landed("create", key, Some(&value), result).await
    }

    async fn update(
        &self,
        key: &Key,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.enter("update", key.as_str(), true).await?;
        let result = self.sim.store.update(key, value.clone(), expected).await;
        self.landed("update", key, Some(&value), result).await
    }

    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        self.enter("delete", key.as_str(), true).await?;
        let result = self.sim.store.delete(key, expected).await;
        self.landed("delete", key, None, result).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError> {
        self.enter("list", prefix, false).await?;
        self.sim.store.list(prefix).await
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        self.enter("watch", prefix, false).await?;
        self.sim.store.watch(prefix).await
    }
}
