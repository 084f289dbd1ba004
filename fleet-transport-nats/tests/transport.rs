//! The claim plane against a real nats-server.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/server.rs"]
mod server;

use std::sync::Arc;
use std::time::Duration;

use fleet_core::memory::store::MemoryStore;
use fleet_core::protocol::{ClaimRejection, ClaimReply, ClaimRequest, Requirements, decode};
use fleet_core::subjects::{ClaimVerb, Subjects};
use fleet_core::transport::{ClaimClient, ClaimError};
use fleet_core::{ClaimId, PoolName, Workspace};
use fleet_transport_nats::{NatsClaimClient, NatsConfig, NatsTransport, NatsTransportConfig};
use server::{NatsServer, ok};

async fn connect(server: &NatsServer) -> fleet_transport_nats::Connection {
    ok(NatsConfig::new(server.url()).connect().await, "connect")
}

/// The control-plane side under the default namespace.
async fn start_transport(server: &NatsServer) -> NatsTransport {
    ok(
        NatsTransport::start(
            &connect(server).await,
            Subjects::default(),
            NatsTransportConfig::default(),
        )
        .await,
        "start transport",
    )
}

fn request(ws: &str, id: &str) -> ClaimRequest {
    ClaimRequest {
        claim_id: ok(ClaimId::new(id), "claim id"),
        workspace: ok(Workspace::new(ws), "workspace"),
        pool: ok(PoolName::new(daemon::POOL), "pool"),
        requirements: Requirements::default(),
        priority: 0,
        lease_ttl_ms: 60_000,
        max_wait_ms: None,
        recipient: None,
        affinity: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_suite_passes_against_nats() {
    let server = NatsServer::start();
    let transport = start_transport(&server).await;
    let client = NatsClaimClient::new(connect(&server).await, Subjects::default());
    ok(
        tokio::time::timeout(
            Duration::from_secs(120),
            fleet_core::testkit::transport::transport_suite(&transport, &client),
        )
        .await,
        "transport suite hung",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_claim_returns_the_same_grant_and_garbage_is_refused() {
    let server = NatsServer::start();
    let transport = Arc::new(start_transport(&server).await);
    let store = Arc::new(MemoryStore::new());
    let daemon = daemon::spawn(transport.clone(), store);
    let client = NatsClaimClient::new(connect(&server).await, Subjects::default());

    let first = ok(
        tokio::time::timeout(Duration::from_secs(30), client.claim(request("ws-a", "c1"))).await,
        "claim timed out",
    );
    let first = ok(first, "first claim");
    let again = ok(client.claim(request("ws-a", "c1")).await, "retried claim");
    assert_eq!(first, again, "a retried request must return the same grant");

    // Garbage on claim subjects: an error reply, no panic, still serving.
    let raw = connect(&server).await;
    let subjects = Subjects::default();
    let ws = ok(Workspace::new("ws-a"), "ws");
    let id = ok(ClaimId::new("g1"), "id");
    let cases: Vec<(String, bytes::Bytes)> = vec![
        (
            subjects.claim(ClaimVerb::Request, &ws, &id),
            bytes::Bytes::from_static(b"\x00\xffnot json at all"),
        ),
        (
            subjects.claim(ClaimVerb::Request, &ws, &id),
            bytes::Bytes::from_static(br#"{"v":99,"msg":{}}"#),
        ),
        (
            subjects.claim(ClaimVerb::Renew, &ws, &id),
            bytes::Bytes::from_static(br#"{"v":1,"msg":{"type":"renew"}}"#),
        ),
        // Valid message, but the body names another workspace than the subject.
        (
            subjects.claim(ClaimVerb::Request, &ws, &ok(ClaimId::new("c9"), "id")),
            ok(
                fleet_core::protocol::encode(&fleet_core::protocol::ClaimMsg::Request(request(
                    "ws-b", "c9",
                ))),
                "encode",
            )
            .into(),
        ),
    ];
    for (subject, body) in cases {
        let reply = ok(
            raw.client().request(subject.clone(), body).await,
            "garbage request",
        );
        match decode::<ClaimReply>(&reply.payload) {
            Ok(ClaimReply::Rejected {
                error: ClaimRejection::Invalid { .. },
                ..
            }) => {}
            other => {
                panic!("garbage on {subject} must be answered Rejected/Invalid, got {other:?}")
            }
        }
    }
    // Without a reply subject: dropped and counted, nothing else.
    ok(
        raw.client()
            .publish(
                subjects.claim(ClaimVerb::Release, &ws, &id),
                bytes::Bytes::from_static(b"{{{"),
            )
            .await,
        "publish",
    );
    ok(raw.client().flush().await, "flush");
    let next = ok(
        client.claim(request("ws-a", "c2")).await,
        "claim after garbage",
    );
    assert_eq!(next.claim_id.as_str(), "c2");
    assert!(transport.rejected_count() >= 4, "refusals are counted");
    ok(client.release(&ws, &next.claim_id).await, "release");
    assert!(!daemon.is_finished(), "the daemon keeps serving");
    daemon.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_without_a_control_plane_is_no_peer() {
    let server = NatsServer::start();
    let client = NatsClaimClient::new(connect(&server).await, Subjects::default());
    match client.claim(request("ws-a", "lonely")).await {
        Err(ClaimError::Transport(e)) if e.kind() == "no_peer" => {}
        other => panic!("claim with no daemon must fail no_peer, got {other:?}"),
    }
}

/// `Released` is published on `<ns>.claim.released.<ws>.<id>` (as granted
/// and revoked are on theirs), not only answered to the releaser's inbox:
/// whoever watches a workspace's claims learns that one ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_published_on_the_released_subject() {
    use futures_util::StreamExt;

    let server = NatsServer::start();
    let transport = Arc::new(start_transport(&server).await);
    let daemon = daemon::spawn(transport.clone(), Arc::new(MemoryStore::new()));
    let subjects = Subjects::default();
    let ws = ok(Workspace::new("ws-a"), "ws");
    let id = ok(ClaimId::new("rel-1"), "id");
    let watcher = connect(&server).await;
    let mut released = ok(
        watcher
            .client()
            .subscribe(subjects.claim(ClaimVerb::Released, &ws, &id))
            .await,
        "subscribe to the released subject",
    );
    ok(watcher.client().flush().await, "flush");

    let client = NatsClaimClient::new(connect(&server).await, Subjects::default());
    let grant = ok(
        ok(
            tokio::time::timeout(
                Duration::from_secs(30),
                client.claim(request("ws-a", "rel-1")),
            )
            .await,
            "claim timed out",
        ),
        "claim",
    );
    ok(client.release(&ws, &grant.claim_id).await, "release");
    // A guard only: the message is published as the release is confirmed.
    let msg = ok(
        tokio::time::timeout(Duration::from_secs(10), released.next()).await,
        "nothing on the released subject",
    )
    .unwrap_or_else(|| panic!("released subscription ended"));
    match decode::<ClaimReply>(&msg.payload) {
        Ok(ClaimReply::Released { claim_id }) => assert_eq!(claim_id, id),
        other => panic!("expected Released on {}, got {other:?}", msg.subject),
    }
    daemon.abort();
}

fn job_spec(ws: &str, id: &str) -> fleet_core::protocol::TaskSpec {
    ok(
        serde_json::from_value(serde_json::json!({
            "id": id, "workspace": ws, "pool": daemon::POOL, "argv": ["make"]
        })),
        "task spec",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_travel_on_their_subjects_and_watchers_hear_every_reply() {
    use fleet_core::protocol::{JobMsg, JobReply, Receipt, TaskResult, WorkerEvent};
    use fleet_core::transport::{Inbound, Outbound, Peer, Transport};
    use futures_util::StreamExt as _;

    let server = NatsServer::start();
    let transport = start_transport(&server).await;
    let client = NatsClaimClient::new(connect(&server).await, Subjects::default());
    let ws = ok(Workspace::new("ws-a"), "ws");
    let job = ok(fleet_core::JobId::new("j1"), "job");
    let mut watch = ok(client.watch_job(&ws, job.as_str()).await, "watch");
    let spec = job_spec("ws-a", "j1");
    let mut replies = ok(
        client.job(JobMsg::Submit(Box::new(spec.clone()))).await,
        "submit",
    );

    let inbound = ok(
        tokio::time::timeout(Duration::from_secs(10), transport.recv()).await,
        "recv timed out",
    );
    let Ok(Inbound::Job { msg, reply }) = inbound else {
        panic!("expected a job message, got {inbound:?}");
    };
    assert_eq!(msg, JobMsg::Submit(Box::new(spec)));
    let sent = [
        JobReply::Accepted { job: job.clone() },
        JobReply::Event {
            job: job.clone(),
            attempt: 1,
            event: WorkerEvent::Running,
        },
        JobReply::Finished(Receipt {
            job: job.clone(),
            node: None,
            attempts: 1,
            completed_at: 5,
            result: TaskResult::Pass,
            exit_code: Some(0),
            reason: None,
            artifacts: Vec::new(),
            score: None,
        }),
    ];
    let to = Peer::Reply(reply);
    for r in &sent {
        ok(transport.send(&to, Outbound::Job(r.clone())).await, "send");
    }
    for stream in [&mut replies, &mut watch] {
        let got: Vec<JobReply> = ok(
            tokio::time::timeout(Duration::from_secs(10), stream.take(3).collect()).await,
            "replies timed out",
        );
        assert_eq!(got, sent);
    }
    // A claim reply never goes to a job's inbox, nor a job reply anywhere
    // the transport did not issue.
    let stray = Peer::Reply(fleet_core::transport::ReplyTo("_INBOX.nobody".into()));
    let accepted = Outbound::Job(JobReply::Accepted { job: job.clone() });
    assert!(transport.send(&stray, accepted).await.is_err());

    // A cancel for another workspace than its subject's is refused at the
    // transport, with the reason.
    let raw = connect(&server).await;
    let subjects = Subjects::default();
    let body = ok(
        fleet_core::protocol::encode(&JobMsg::Cancel {
            workspace: ok(Workspace::new("ws-b"), "ws"),
            job: job.clone(),
        }),
        "encode",
    );
    let subject = subjects.job(fleet_core::subjects::JobVerb::Cancel, &ws, job.as_str());
    // The transport checks messages as `recv` takes them: keep it taking.
    let answer = tokio::select! {
        answer = raw.client().request(subject, body.into()) => ok(answer, "request"),
        other = transport.recv() => panic!("a refused message reached the controller: {other:?}"),
    };
    match decode::<JobReply>(&answer.payload) {
        Ok(JobReply::Rejected { job: Some(j), why }) => {
            assert_eq!(j, job);
            assert!(why.contains("body names ws-b/j1"), "{why}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(transport.rejected_count(), 1);
}
