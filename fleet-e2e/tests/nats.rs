//! The daemon configured with NATS for the claim plane and JetStream KV for
//! its store, against a real nats-server: claims survive a daemon crash
//! because the records live in the bucket.

mod common;
#[path = "../../fleet-transport-nats/tests/common/server.rs"]
mod nats_server;

use std::time::Duration;

use common::*;
use fleet_core::subjects::Subjects;
use fleet_core::transport::ClaimClient;
use fleet_transport_nats::{NatsClaimClient, NatsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_claims_on_nats_and_keeps_them_in_jetstream_kv() {
    let nats = nats_server::NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let extra = format!(
        "[transport.nats]\nurls = [{url:?}]\n[store.nats]\nreplicas = 1\n",
        url = nats.url()
    );
    let mut d = Daemon::start(dir.path(), &extra);
    let conn = NatsConfig::new(nats.url())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = NatsClaimClient::new(conn.clone(), Subjects::default());
    let grant = tokio::time::timeout(Duration::from_secs(60), client.claim(request("n1", None)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no grant over NATS; see {}/daemon.log",
                dir.path().display()
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !dir.path().join("data/fleet.redb").exists(),
        "the store is NATS, not redb"
    );

    d.crash_and_restart();
    // A retry after the crash returns the same grant: the claim was in KV.
    let again = tokio::time::timeout(Duration::from_secs(60), client.claim(request("n1", None)))
        .await
        .unwrap_or_else(|_| panic!("no answer after the restart"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.node, grant.node);
    assert_eq!(again.claim_id, grant.claim_id);
    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_client_claims_over_nats_and_uses_the_node() {
    let nats = nats_server::NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let extra = format!("[transport.nats]\nurls = [{url:?}]\n", url = nats.url());
    let d = Daemon::start(dir.path(), &extra);
    let signer = std::fs::read_to_string(&d.discovery.signer_file)
        .ok()
        .and_then(|s| fleet_client::SignerKey::from_base64(&s).ok())
        .unwrap_or_else(|| panic!("the daemon's signer key"));
    let fleet = fleet_client::FleetClient::connect_nats(
        &fleet_client::NatsConfig::new(nats.url()),
        &d.discovery.namespace,
        signer,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let claim = tokio::time::timeout(Duration::from_secs(60), fleet.claim(request("nc1", None)))
        .await
        .unwrap_or_else(|_| panic!("no grant over NATS"))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = claim
        .exec(&fleet_client::ExecRequest::new(["echo", "over-nats"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout, b"over-nats\n");
    claim.release().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        d.claim_state("nc1").await,
        Some(serde_json::json!("released"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_over_nats_runs_and_is_scored_like_one_over_websocket() {
    use fleet_core::protocol::{JobMsg, JobReply, TaskResult, TaskSpec, WorkerEvent};
    use futures_util::StreamExt as _;

    let nats = nats_server::NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let extra = format!("[transport.nats]\nurls = [{url:?}]\n", url = nats.url());
    let mut d = Daemon::start(dir.path(), &extra);
    let conn = NatsConfig::new(nats.url())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = NatsClaimClient::new(conn, Subjects::default());
    let spec: TaskSpec = serde_json::from_value(serde_json::json!({
        "id": "nj1", "workspace": "ci", "pool": "default",
        "argv": ["sh", "-c", "echo 'test result: ok' > log-nj1"],
        "scorer": { "kind": "regex_match", "path": "log-nj1", "pattern": "result: ok" }
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let ws = spec.workspace.clone();
    let job = spec.id.clone();
    let watch = client
        .watch_job(&ws, job.as_str())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let replies = client
        .job(JobMsg::Submit(Box::new(spec)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let until_finished = |mut s: futures_util::stream::BoxStream<'static, JobReply>| async move {
        let mut seen = Vec::new();
        while let Some(r) = s.next().await {
            let end = matches!(r, JobReply::Finished(_));
            seen.push(r);
            if end {
                break;
            }
        }
        seen
    };
    let seen = tokio::time::timeout(Duration::from_secs(90), until_finished(replies))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the job did not finish; see {}/daemon.log",
                dir.path().display()
            )
        });
    assert!(
        matches!(seen.first(), Some(JobReply::Accepted { .. })),
        "{seen:?}"
    );
    assert!(seen.iter().any(|r| matches!(
        r,
        JobReply::Event {
            event: WorkerEvent::Running,
            ..
        }
    )));
    let Some(JobReply::Finished(receipt)) = seen.last() else {
        panic!("{seen:?}")
    };
    assert_eq!(receipt.result, TaskResult::Pass);
    assert_eq!(
        receipt.score.as_ref().and_then(|s| s.notes.as_deref()),
        Some("log-nj1:1 matches")
    );
    // A watcher on the job's events subject heard the same.
    let watched = tokio::time::timeout(Duration::from_secs(10), until_finished(watch))
        .await
        .unwrap_or_else(|_| panic!("the watcher missed the end"));
    assert_eq!(watched.last(), seen.last());
    // A cancel of the finished job over NATS is answered too.
    let mut answer = client
        .job(JobMsg::Cancel { workspace: ws, job })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = tokio::time::timeout(Duration::from_secs(10), answer.next()).await;
    assert!(
        matches!(first, Ok(Some(JobReply::Accepted { .. }))),
        "{first:?}"
    );

    // A run over NATS, through fleet-client's job plane: its status and its
    // task's receipt come back on the submit's inbox.
    let jobs = fleet_client::Jobs::new(std::sync::Arc::new(client));
    let run: fleet_core::protocol::RunSpec = serde_json::from_value(serde_json::json!({
        "id": "nr1", "workspace": "ci",
        "tasks": [{ "id": "nr1-a", "workspace": "ci", "pool": "default", "argv": ["true"],
                    "scorer": { "kind": "exit_code" } }],
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let mut replies = jobs.submit_run(run).await.unwrap_or_else(|e| panic!("{e}"));
    let mut statuses = Vec::new();
    let mut receipt = None;
    let mut all = Vec::new();
    let heard = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(r) = replies.next().await {
            all.push(r.clone());
            match r {
                JobReply::Run { status, .. } => statuses.push(status),
                JobReply::Finished(r) => receipt = Some(r),
                _ => {}
            }
            // The run ends after its task's receipt, never ahead of it.
            if statuses.last().is_some_and(|s| s.is_terminal()) {
                break;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "the run did not end: {all:?}");
    assert_eq!(
        statuses.last(),
        Some(&fleet_core::protocol::RunStatus::Completed)
    );
    assert_eq!(receipt.map(|r| r.result), Some(TaskResult::Pass), "{all:?}");
    d.stop();
}

/// The JetStream KV equivalent of a restore: a backup of a daemon whose
/// records live in one NATS server's bucket is restored into a new data
/// dir, and the daemon started there on another server's empty bucket
/// writes the records into it: the same grant answers a retry, the release
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_kv_fleet_restores_into_an_empty_bucket() {
    let first = nats_server::NatsServer::start();
    let dir_a = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let extra = format!(
        "[transport.nats]\nurls = [{url:?}]\n[store.nats]\nreplicas = 1\n",
        url = first.url()
    );
    let mut a = Daemon::start(dir_a.path(), &extra);
    let ws_client = a.claim_client().await;
    let grant = tokio::time::timeout(
        Duration::from_secs(60),
        ws_client.claim(request("k1", None)),
    )
    .await
    .unwrap_or_else(|_| panic!("no grant"))
    .unwrap_or_else(|e| panic!("{e}"));
    let keys = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = keys.path().join("ops.key");
    let file = keys.path().join("fleet.age");
    let path = |p: &std::path::Path| p.display().to_string();
    let recipient = ok(&fleetctl(&a, &["backup-key", &path(&key)], 30))
        .trim()
        .to_owned();
    ok(&fleetctl(
        &a,
        &["backup", "--recipient", &recipient, "--out", &path(&file)],
        60,
    ));
    a.kill9();

    let second = nats_server::NatsServer::start();
    let dir_b = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data_b = path(&dir_b.path().join("data"));
    let restored = fleetctl_offline(&[
        "--data-dir",
        &data_b,
        "restore",
        "--identity",
        &path(&key),
        &path(&file),
    ]);
    assert!(ok(&restored).contains("1 claim"));
    let mut b = a.restored(dir_b.path(), &[(&first.url(), &second.url())]);
    assert!(
        !dir_b.path().join("data/fleet.redb").exists(),
        "KV, not redb"
    );
    let conn = NatsConfig::new(second.url())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = NatsClaimClient::new(conn, Subjects::default());
    let again = tokio::time::timeout(Duration::from_secs(60), client.claim(request("k1", None)))
        .await
        .unwrap_or_else(|_| panic!("no answer from the restored daemon"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (again.node, again.claim_id),
        (grant.node, grant.claim_id.clone())
    );
    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    b.stop();
}
