//! Results the daemon never heard of — a store write that timed out after
//! it landed, a job's final event lost with the agent's connection — do
//! not stop the control loop or strand the work. Both were found by
//! `fleet-chaos`.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_core::controller::Timing;
use fleet_core::memory::faulty::FaultyStore;
use fleet_core::memory::provider::MemoryProvider;
use fleet_core::memory::store::MemoryStore;
use fleet_core::protocol::{
    AgentMsg, DaemonMsg, JobReply, JobState, Record, TaskSpec, WorkerEvent, decode,
};
use fleet_core::provider::InstanceState;
use fleet_core::store::Store;
use fleet_core::transport::ClaimClient;
use fleet_core::{CommandId, JobId, PoolName, Workspace};
use fleet_runtime::Fleet;
use futures_util::StreamExt;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_that_landed_does_not_stop_the_control_loop() {
    let provider = MemoryProvider::ec2_like();
    let store = FaultyStore::new(MemoryStore::new());
    let fleet = Arc::new(
        Fleet::builder()
            .store(Arc::new(store.clone()))
            .provider(Arc::new(provider.clone()))
            .pool(pool(1, 2))
            .timing(Timing {
                store_retry_ms: 20,
                ..Timing::default()
            })
            .start()
            .await
            .unwrap(),
    );
    boot_agents(&fleet, provider);
    // The claim's first write lands and is reported failed, as after a
    // timeout: its retry meets the record it wrote.
    store.fail_next_after_apply(1);
    let grant = tokio::time::timeout(WAIT, fleet.client().claim(request_for("c1", 60_000)))
        .await
        .expect("granted in time: the retry wrote on top of its own record")
        .unwrap();
    assert_eq!(grant.claim_id.as_str(), "c1");
    assert!(fleet.is_ready(), "the control loop runs on");
}

async fn next_run(agent: &mut fleet_core::memory::transport::InProcAgent) -> CommandId {
    loop {
        match agent.recv().await {
            Some(DaemonMsg::Run(spec)) => return spec.id,
            Some(_) => {}
            None => panic!("the session ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_event_lost_with_the_agents_connection_still_finishes_the_job() {
    let provider = MemoryProvider::ec2_like();
    let store = MemoryStore::new();
    let fleet = Fleet::builder()
        .store(Arc::new(store.clone()))
        .provider(Arc::new(provider.clone()))
        .pool(pool(1, 1))
        .start()
        .await
        .unwrap();
    let job = JobId::new("j1").unwrap();
    let spec = TaskSpec {
        id: job.clone(),
        workspace: Workspace::new("ci").unwrap(),
        pool: PoolName::new("linux").unwrap(),
        argv: vec!["make".to_owned()],
        env: BTreeMap::new(),
        cwd: None,
        timeout_ms: None,
        retry: Default::default(),
        alert: None,
        scorer: None,
        priority: 0,
        requirements: Default::default(),
    };
    let mut events = fleet.job_client().submit(spec).await.unwrap();
    let node = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(i) = provider
                .instances()
                .into_iter()
                .find(|i| i.state == InstanceState::Running)
            {
                return i.node;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a node for the job");

    let mut agent = fleet.connect_agent(node.clone());
    agent
        .send(support::hello(&node, "127.0.0.1:40001", Vec::new()))
        .await
        .unwrap();
    let cmd = tokio::time::timeout(WAIT, next_run(&mut agent))
        .await
        .unwrap();
    for (seq, event) in [(1, WorkerEvent::Starting), (2, WorkerEvent::Running)] {
        let msg = AgentMsg::Event {
            command: cmd.clone(),
            seq,
            event,
        };
        agent.send(msg).await.unwrap();
    }
    // Stored as running, then the command completes — and the connection
    // breaks under the `completed` event: the daemon never gets it.
    tokio::time::timeout(WAIT, async {
        loop {
            let running = store.list("jobs.").await.unwrap().iter().any(|(_, v)| {
                matches!(decode::<Record>(&v.value), Ok(Record::Job(j)) if matches!(j.state, JobState::Running { .. }))
            });
            if running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("stored as running");
    agent.close();
    drop(agent);

    // The agent reconnects: it has seen the command. The daemon asks again
    // for every attempt the node holds, and the agent answers a command it
    // has seen with its last event, as fleet-agent's ledger does.
    let mut agent = fleet.connect_agent(node.clone());
    agent
        .send(support::hello(&node, "127.0.0.1:40001", vec![cmd.clone()]))
        .await
        .unwrap();
    let again = tokio::time::timeout(WAIT, next_run(&mut agent))
        .await
        .expect("the daemon re-sends the run of the attempt the node holds");
    assert_eq!(again, cmd);
    let done = AgentMsg::Event {
        command: cmd.clone(),
        seq: 3,
        event: WorkerEvent::Completed {
            exit_code: Some(0),
            summary: None,
            verdict: None,
        },
    };
    agent.send(done).await.unwrap();
    let receipt = tokio::time::timeout(WAIT, async {
        while let Some(reply) = events.next().await {
            if let JobReply::Finished(r) = reply {
                return r;
            }
        }
        panic!("the job's events ended without a receipt");
    })
    .await
    .expect("the job finished");
    assert_eq!(receipt.exit_code, Some(0));
    assert_eq!(receipt.attempts, 1, "not run again");
}
