//! The conformance suite every [`Transport`] + [`ClaimClient`] pair runs:
//! in-process now, WebSocket and NATS over real sockets.
//!
//! [`transport_suite`] plays a minimal scripted control plane on the server
//! side and checks what the client sees. It spawns nothing: both sides run
//! concurrently inside the suite's own future (`futures_util::future::join`),
//! so it works under any executor.
//!
//! # Requirements it checks
//!
//! - A request reaches the control plane with every field intact; a grant
//!   reaches the caller with every field intact, credentials included.
//! - `Pending` replies keep `claim()` waiting; a later `Granted` resolves it,
//!   whether sent to the reply address or to `Peer::Claim(ws, id)`.
//! - `Rejected` → `ClaimError::Rejected` with the same rejection; an answer
//!   of the wrong kind → `ClaimError::Unexpected`.
//! - `renew` → the lease; `release` → `Ok(())`.
//! - A revocation sent to `Peer::Claim(ws, id)` reaches a subscriber of
//!   `revocations(ws)` and never a subscriber of another workspace. The
//!   subscription must be live when `revocations` returns.
//! - `Released` sent to `Peer::Claim(ws, id)` (the controller announces
//!   every release there) is accepted (`Ok`, or an error of kind
//!   `"no_peer"`) and never reaches a subscriber of `revocations(ws)`.
//! - 100 concurrent claims from one client each get their own grant: reply
//!   routing never crosses.
//! - `send` to a `ReplyTo` the transport never issued returns an error whose
//!   [`kind`](crate::transport::TransportError::kind) is `"no_peer"`; a
//!   transport must not silently drop it, so the control plane learns the
//!   caller is gone.
//! - Sending to `Peer::Claim` with no listener is *not* required to fail
//!   (it is a broadcast; NATS cannot know), and the suite does not rely on
//!   either behavior.
//!
//! Claim ids and workspaces are unique per run, so runs may share a server.

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::future::{join, join_all};

use crate::ids::{ClaimId, Epoch, NodeId, PoolName, Workspace};
use crate::protocol::{
    Arch, ClaimGrant, ClaimMsg, ClaimRejection, ClaimReply, ClaimRequest, Lease, PendingReason,
    Renewal, Requirements, Revocation, RevokeReason, SealedCredentials,
};
use crate::transport::{ClaimClient, ClaimError, Inbound, Outbound, Peer, ReplyTo, Transport};

/// Runs every transport conformance check; panics with a message naming the
/// violated requirement.
///
/// `server` and `client` must be connected to each other and to nothing
/// else that sends claim traffic to `server` during the run. The suite waits
/// for messages without a deadline (it has no clock), so wrap it in your
/// runtime's timeout to turn a lost message into a failure instead of a hang.
///
/// # Example
///
/// A backend crate runs it from its tests:
///
/// ```
/// use fleet_core::memory::transport::InProcTransport;
/// use fleet_core::testkit::transport::transport_suite;
///
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() {
///     let server = InProcTransport::new(64);
///     let client = server.claim_client();
///     tokio::time::timeout(
///         std::time::Duration::from_secs(30),
///         transport_suite(&server, &client),
///     )
///     .await
///     .expect("transport suite hung");
/// }
/// ```
pub async fn transport_suite(server: &dyn Transport, client: &dyn ClaimClient) {
    let run = Run::new();
    grant_round_trip(server, client, &run).await;
    pending_then_granted(server, client, &run).await;
    granted_via_claim_subject(server, client, &run).await;
    rejected(server, client, &run).await;
    renew_and_release(server, client, &run).await;
    unexpected_reply(server, client, &run).await;
    revocations_stay_in_their_workspace(server, client, &run).await;
    a_release_is_no_revocation(server, client, &run).await;
    concurrent_claims_route_replies(server, client, &run, 100).await;
    unknown_reply_address_is_no_peer(server, &run).await;
}

/// Names unique to one suite run, so runs can share a server.
struct Run {
    tag: String,
    next: AtomicU64,
}

impl Run {
    fn new() -> Run {
        // RandomState is seeded from OS randomness once per process; hashing
        // a process-wide counter makes each run's tag differ without a clock.
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let mut h = RandomState::new().build_hasher();
        h.write_u64(RUNS.fetch_add(1, Ordering::Relaxed));
        Run {
            tag: format!("{:012x}", h.finish() & 0xffff_ffff_ffff),
            next: AtomicU64::new(0),
        }
    }

    fn claim_id(&self) -> ClaimId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        valid(ClaimId::new(format!("conf-{}-{n}", self.tag)), "claim id")
    }

    fn workspace(&self, name: &str) -> Workspace {
        valid(
            Workspace::new(format!("conf-{name}-{}", self.tag)),
            "workspace",
        )
    }
}

fn valid<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("transport suite built an invalid {what}: {e}"),
    }
}

fn request(run: &Run, ws: &Workspace, id: &ClaimId) -> ClaimRequest {
    ClaimRequest {
        claim_id: id.clone(),
        workspace: ws.clone(),
        pool: valid(PoolName::new("conf-pool"), "pool"),
        requirements: Requirements {
            cpus: 8,
            memory_mb: 16_384,
            arch: Some(Arch::Aarch64),
            labels: BTreeMap::from([
                ("disk".to_owned(), "nvme".to_owned()),
                ("run".to_owned(), run.tag.clone()),
            ]),
        },
        priority: -7,
        lease_ttl_ms: 123_456,
        max_wait_ms: Some(9_999),
        recipient: Some("age1conformancerecipient0000000000000000000000000000000000".to_owned()),
        affinity: None,
    }
}

fn grant_for(req: &ClaimRequest) -> ClaimGrant {
    ClaimGrant {
        claim_id: req.claim_id.clone(),
        workspace: req.workspace.clone(),
        pool: req.pool.clone(),
        node: valid(NodeId::new(format!("n-{}", req.claim_id)), "node id"),
        endpoint: format!("{}.nodes.invalid:7443", req.claim_id),
        lease: Lease {
            claim_id: req.claim_id.clone(),
            expires_at: 1_700_000_000_000,
        },
        epoch: Epoch(42),
        credentials: Some(SealedCredentials {
            format: "fleet-credentials-v1".to_owned(),
            ciphertext: format!(
                "-----BEGIN AGE ENCRYPTED FILE-----\n{}\n-----END AGE ENCRYPTED FILE-----\n",
                req.claim_id
            ),
            signature: "c2lnbmF0dXJl".to_owned(),
            signer: "c2lnbmVy".to_owned(),
            expires_at: 1_700_000_000_000,
        }),
    }
}

/// The next inbound claim message, or a panic saying what was expected.
async fn next_claim(server: &dyn Transport, expecting: &str) -> (ClaimMsg, ReplyTo) {
    match server.recv().await {
        Ok(Inbound::Claim { msg, reply }) => (msg, reply),
        Ok(other) => panic!("transport suite: expected {expecting}, server received {other:?}"),
        Err(e) => panic!("transport suite: expected {expecting}, server recv failed: {e}"),
    }
}

async fn reply(server: &dyn Transport, to: &Peer, msg: ClaimReply, what: &str) {
    if let Err(e) = server.send(to, Outbound::Claim(msg)).await {
        panic!("transport suite: sending {what} to {to:?} failed: {e}");
    }
}

/// Gives the other side of a `join` a chance to run (so "later" means the
/// client is already waiting), without a timer.
async fn yield_a_few() {
    for _ in 0..8 {
        YieldNow(false).await;
    }
}

struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

async fn grant_round_trip(server: &dyn Transport, client: &dyn ClaimClient, run: &Run) {
    let ws = run.workspace("a");
    let req = request(run, &ws, &run.claim_id());
    let want = grant_for(&req);
    let (_, got) = join(
        async {
            let (msg, to) = next_claim(server, "a claim request").await;
            assert_eq!(
                msg,
                ClaimMsg::Request(req.clone()),
                "request → grant: the request must reach the control plane with every field intact"
            );
            reply(
                server,
                &Peer::Reply(to),
                ClaimReply::Granted(want.clone()),
                "grant",
            )
            .await;
        },
        client.claim(req.clone()),
    )
    .await;
    assert_eq!(
        got,
        Ok(want),
        "request → grant: claim() must return the grant with every field (credentials included) intact"
    );
}

async fn pending_then_granted(server: &dyn Transport, client: &dyn ClaimClient, run: &Run) {
    let ws = run.workspace("a");
    let req = request(run, &ws, &run.claim_id());
    let want = grant_for(&req);
    let (_, got) = join(
        async {
            let (msg, to) = next_claim(server, "a claim request").await;
            assert_eq!(
                msg,
                ClaimMsg::Request(req.clone()),
                "pending → granted: the control plane received a stale or duplicated request"
            );
            let to = Peer::Reply(to);
            for reason in [
                PendingReason::WaitingForCapacity,
                PendingReason::PoolAtCapacity { max_nodes: 3 },
            ] {
                let pending = ClaimReply::Pending {
                    claim_id: req.claim_id.clone(),
                    reason,
                };
                reply(server, &to, pending, "pending").await;
                yield_a_few().await;
            }
            reply(server, &to, ClaimReply::Granted(want.clone()), "grant").await;
        },
        client.claim(req.clone()),
    )
    .await;
    assert_eq!(
        got,
        Ok(want),
        "pending → granted: claim() must keep waiting through Pending and resolve with the later grant"
    );
}

async fn granted_via_claim_subject(server: &dyn Transport, client: &dyn ClaimClient, run: &Run) {
    let ws = run.workspace("a");
    let req = request(run, &ws, &run.claim_id());
    let want = grant_for(&req);
    let (_, got) = join(
        async {
            let (_, to) = next_claim(server, "a claim request").await;
            let pending = ClaimReply::Pending {
                claim_id: req.claim_id.clone(),
                reason: PendingReason::WaitingForCapacity,
            };
            reply(server, &Peer::Reply(to), pending, "pending").await;
            yield_a_few().await;
            let subject = Peer::Claim(req.workspace.clone(), req.claim_id.clone());
            reply(server, &subject, ClaimReply::Granted(want.clone()), "grant").await;
        },
        client.claim(req.clone()),
    )
    .await;
    assert_eq!(
        got,
        Ok(want),
        "grant to Peer::Claim(ws, id) must reach the claim() waiting on that id"
    );
}

async fn rejected(server: &dyn Transport, client: &dyn ClaimClient, run: &Run) {
    let ws = run.workspace("a");
    let req = request(run, &ws, &run.claim_id());
    let why = ClaimRejection::UnknownPool {
        pool: "conf-pool".to_owned(),
    };
    let (_, got) = join(
        async {
            let (_, to) = next_claim(server, "a claim request").await;
            let rejected = ClaimReply::Rejected {
                claim_id: Some(req.claim_id.clone()),
                error: why.clone(),
            };
            reply(server, &Peer::Reply(to), rejected, "rejection").await;
        },
        client.claim(req.clone()),
    )
    .await;
    assert_eq!(
        got,
        Err(ClaimError::Rejected(why)),
        "Rejected must surface as ClaimError::Rejected with the same rejection"
    );
}

async fn renew_and_release(server: &dyn Transport, client: &dyn ClaimClient, run: &Run) {
    let ws = run.workspace("a");
    let id = run.claim_id();
    let renewal = Renewal {
        claim_id: id.clone(),
        expires_at: 1_700_000_300_000,
        credentials: Some(SealedCredentials {
            format: "test".to_owned(),
            ciphertext: "renewed".to_owned(),
            signature: "sig".to_owned(),
            signer: "key".to_owned(),
            expires_at: 1_700_000_300_000,
        }),
    };
    let (_, got) = join(
        async {
            let (msg, to) = next_claim(server, "a renew").await;
            assert_eq!(
                msg,
                ClaimMsg::Renew {
                    workspace: ws.clone(),
                    claim_id: id.clone()
                },
                "renew must reach the control plane as ClaimMsg::Renew for the same claim"
            );
            reply(
                server,
                &Peer::Reply(to),
                ClaimReply::Renewed(renewal.clone()),
                "renewal",
            )
            .await;
        },
        client.renew(&ws, &id),
    )
    .await;
    assert_eq!(
        got,
        Ok(renewal),
        "renew must return the lease and credentials from Renewed"
    );

    let (_, got) = join(
        async {
            let (msg, to) = next_claim(server, "a release").await;
            assert_eq!(
                msg,
                ClaimMsg::Release {
                    workspace: ws.clone(),
                    claim_id: id.clone()
                },
                "release must reach the control plane as ClaimMsg::Release for the same claim"
            );
            let released = ClaimReply::Released {
                claim_id: id.clone(),
            };
            reply(server, &Peer::Reply(to), released, "released").await;
        },
        client.release(&ws, &id),
    )
    .await;
    assert_eq!(got, Ok(()), "release must return Ok(()) on Released");
}

async fn unexpected_reply(server: &dyn Transport, client: &dyn ClaimClient, run: &Run) {
    let ws = run.workspace("a");
    let id = run.claim_id();
    let (_, got) = join(
        async {
            let (_, to) = next_claim(server, "a renew").await;
            let wrong = ClaimReply::Released {
                claim_id: id.clone(),
            };
            reply(server, &Peer::Reply(to), wrong, "a wrong-kind answer").await;
        },
        client.renew(&ws, &id),
    )
    .await;
    assert!(
        matches!(got, Err(ClaimError::Unexpected(_))),
        "renew answered with Released must be ClaimError::Unexpected, got {got:?}"
    );
}

async fn revocations_stay_in_their_workspace(
    server: &dyn Transport,
    client: &dyn ClaimClient,
    run: &Run,
) {
    let (ws_a, ws_b) = (run.workspace("a"), run.workspace("b"));
    let subscribe = |ws: Workspace| async move {
        match client.revocations(&ws).await {
            Ok(s) => s,
            Err(e) => panic!("transport suite: revocations({ws}) failed: {e}"),
        }
    };
    let mut sub_a = subscribe(ws_a.clone()).await;
    let mut sub_b = subscribe(ws_b.clone()).await;
    let revocation = |ws: &Workspace, reason| Revocation {
        claim_id: run.claim_id(),
        workspace: ws.clone(),
        node: Some(valid(NodeId::new("n-revoked"), "node id")),
        reason,
    };
    let rev_a = revocation(&ws_a, RevokeReason::SpotInterrupted { deadline: 77 });
    let rev_b = revocation(&ws_b, RevokeReason::NodeLost);
    let rev_a2 = revocation(
        &ws_a,
        RevokeReason::Operator {
            note: "bye".to_owned(),
        },
    );
    for r in [&rev_a, &rev_b, &rev_a2] {
        let to = Peer::Claim(r.workspace.clone(), r.claim_id.clone());
        reply(server, &to, ClaimReply::Revoked(r.clone()), "revocation").await;
    }
    // Per-subscriber order is preserved, so the first item each stream
    // yields shows whether another workspace's revocation leaked into it.
    assert_eq!(
        sub_b.next().await,
        Some(rev_b),
        "revocations(ws) must deliver that workspace's revocation and no other workspace's"
    );
    assert_eq!(
        sub_a.next().await,
        Some(rev_a),
        "a revocation sent to Peer::Claim(ws, id) must reach revocations(ws)"
    );
    assert_eq!(
        sub_a.next().await,
        Some(rev_a2),
        "revocations(ws) must not deliver another workspace's revocation"
    );
}

async fn a_release_is_no_revocation(server: &dyn Transport, client: &dyn ClaimClient, run: &Run) {
    let ws = run.workspace("a");
    let mut sub = match client.revocations(&ws).await {
        Ok(s) => s,
        Err(e) => panic!("transport suite: revocations({ws}) failed: {e}"),
    };
    let released = run.claim_id();
    let to = Peer::Claim(ws.clone(), released.clone());
    let msg = Outbound::Claim(ClaimReply::Released { claim_id: released });
    match server.send(&to, msg).await {
        Ok(()) => {}
        Err(e) if e.kind() == "no_peer" => {}
        Err(e) => panic!("transport suite: Released to {to:?} must be accepted, got {e}"),
    }
    let rev = Revocation {
        claim_id: run.claim_id(),
        workspace: ws.clone(),
        node: None,
        reason: RevokeReason::Expired,
    };
    let to = Peer::Claim(ws.clone(), rev.claim_id.clone());
    reply(server, &to, ClaimReply::Revoked(rev.clone()), "revocation").await;
    // Per-subscriber order is preserved: a leaked release would come first.
    assert_eq!(
        sub.next().await,
        Some(rev),
        "a Released sent to Peer::Claim(ws, id) must not reach revocations(ws)"
    );
}

async fn concurrent_claims_route_replies(
    server: &dyn Transport,
    client: &dyn ClaimClient,
    run: &Run,
    n: usize,
) {
    let ws = run.workspace("a");
    let reqs: Vec<ClaimRequest> = (0..n).map(|_| request(run, &ws, &run.claim_id())).collect();
    let (_, results) = join(
        async {
            let mut pending = Vec::with_capacity(n);
            for _ in 0..n {
                match next_claim(server, "one of the concurrent claim requests").await {
                    (ClaimMsg::Request(req), to) => pending.push((req, to)),
                    (other, _) => {
                        panic!("transport suite: expected a claim request, got {other:?}")
                    }
                }
            }
            // Answer in reverse arrival order so a transport that routes by
            // position rather than by address is caught.
            for (req, to) in pending.into_iter().rev() {
                reply(
                    server,
                    &Peer::Reply(to),
                    ClaimReply::Granted(grant_for(&req)),
                    "grant",
                )
                .await;
            }
        },
        join_all(reqs.iter().cloned().map(|r| client.claim(r))),
    )
    .await;
    for (req, got) in reqs.iter().zip(results) {
        assert_eq!(
            got,
            Ok(grant_for(req)),
            "{n} concurrent claims: each claim() must get its own grant (reply routing crossed)"
        );
    }
}

async fn unknown_reply_address_is_no_peer(server: &dyn Transport, run: &Run) {
    let to = Peer::Reply(ReplyTo(format!(
        "fleet-conformance-never-issued-{}",
        run.tag
    )));
    let msg = Outbound::Claim(ClaimReply::Released {
        claim_id: run.claim_id(),
    });
    match server.send(&to, msg).await {
        Err(e) if e.kind() == "no_peer" => {}
        other => panic!(
            "send to a never-issued reply address must fail with kind \"no_peer\", got {other:?}"
        ),
    }
}
