//! The in-process transport: an embedder links the SDK and claims with no
//! network hop; tests and the simulator attach agents to it.
//!
//! [`InProcTransport`] is the control-plane side ([`Transport`]). From it
//! come the caller handles — [`InProcClaimClient`] ([`ClaimClient`]) and
//! [`InProcJobClient`] — and agent sessions ([`InProcAgent`]).
//!
//! Every message goes through the real codec: the sender runs
//! [`protocol::encode`](crate::protocol::encode) and the receiver
//! [`protocol::decode`](crate::protocol::decode), so the in-process path
//! exercises the same wire format and size limit
//! ([`MAX_MESSAGE_BYTES`]) as the network transports. Encoding is confined to
//! [`to_wire`] / [`from_wire`] and frames carry the body as [`Bytes`], so a
//! no-encode fast path only has to widen the body type.
//!
//! Queues are bounded where they protect memory: the control plane's inbox
//! (callers wait for room), each agent session and each revocation
//! subscription (the control plane gets [`TransportError::Backpressure`]
//! instead of waiting on a slow peer), and each call's reply queue.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use bytes::Bytes;
use futures_channel::mpsc;
use futures_core::Stream;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use futures_util::future::poll_fn;
use futures_util::lock::Mutex as AsyncMutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ids::{ClaimId, JobId, NodeId, Workspace};
use crate::protocol::{
    AgentMsg, ClaimGrant, ClaimMsg, ClaimRejection, ClaimReply, ClaimRequest, DaemonMsg,
    DecodeError, JobMsg, JobReply, MAX_MESSAGE_BYTES, PendingReason, Renewal, Revocation, TaskSpec,
    decode, encode,
};
use crate::transport::{
    ClaimClient, ClaimError, Inbound, Outbound, Peer, ReplyTo, Transport, TransportError,
};

/// Reply queue of one claim call: a call gets a few `Pending`s and one
/// answer, and the caller drains it while it waits.
const CLAIM_REPLY_QUEUE: usize = 16;

/// Prefix of every reply address this transport issues.
const REPLY_PREFIX: &str = "inproc.";

// ---------------------------------------------------------------------------
// Wire

/// Encodes a message exactly as a network transport would, refusing what no
/// peer's decoder would accept (the sender learns it at once, as with a NATS
/// `max_payload` or a WebSocket frame limit).
fn to_wire<T: Serialize>(msg: &T) -> Result<Bytes, TransportError> {
    let bytes = encode(msg).map_err(|e| TransportError::Io(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(TransportError::Decode(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        }));
    }
    Ok(Bytes::from(bytes))
}

/// Decodes a frame body with the protocol's decoder (and its size limit).
fn from_wire<T: DeserializeOwned>(body: &[u8]) -> Result<T, TransportError> {
    decode(body).map_err(TransportError::Decode)
}

/// A frame on its way to the control plane. The plane and the sender's
/// identity travel beside the encoded body, as a subject or a connection
/// would on a network transport.
enum UpFrame {
    Claim {
        reply: ReplyTo,
        body: Bytes,
    },
    Job {
        reply: ReplyTo,
        body: Bytes,
    },
    Agent {
        node: NodeId,
        session: u64,
        body: Bytes,
    },
    AgentGone {
        node: NodeId,
    },
}

// ---------------------------------------------------------------------------
// Shared routing state

/// Which plane a reply address belongs to, so a job reply is never decoded
/// as a claim reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    Claim,
    Job,
}

struct Route {
    plane: Plane,
    tx: mpsc::Sender<Bytes>,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// The inbox's master sender; every handle clones its own from it so
    /// each has its own slot in the bounded queue.
    up: Option<mpsc::Sender<UpFrame>>,
    routes: HashMap<ReplyTo, Route>,
    /// Reply addresses of `claim()` calls in progress, by claim.
    waiters: HashMap<(Workspace, ClaimId), Vec<ReplyTo>>,
    revocations: HashMap<Workspace, Vec<(u64, mpsc::Sender<Bytes>)>>,
    /// The current session of each node: (session id, downlink).
    agents: HashMap<NodeId, (u64, mpsc::Sender<Bytes>)>,
}

struct Shared {
    capacity: usize,
    next_id: AtomicU64,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, so a poisoned state is
        // still consistent; keep serving rather than cascade the panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn uplink(&self) -> Uplink {
        Uplink(AsyncMutex::new(self.lock().up.clone()))
    }

    /// Registers a fresh reply address (and, for a claim in progress, the
    /// claim it waits on).
    fn open_call(
        self: &Arc<Self>,
        plane: Plane,
        waiter: Option<(Workspace, ClaimId)>,
        queue: usize,
    ) -> Result<Call, TransportError> {
        let reply = ReplyTo(format!("{REPLY_PREFIX}{}", self.fresh_id()));
        let (tx, rx) = mpsc::channel(queue);
        let mut st = self.lock();
        if st.closed {
            return Err(TransportError::Closed);
        }
        st.routes.insert(reply.clone(), Route { plane, tx });
        if let Some(key) = &waiter {
            st.waiters
                .entry(key.clone())
                .or_default()
                .push(reply.clone());
        }
        drop(st);
        Ok(Call {
            shared: Arc::clone(self),
            reply,
            waiter,
            rx,
        })
    }

    fn close_call(&self, reply: &ReplyTo, waiter: Option<&(Workspace, ClaimId)>) {
        let mut st = self.lock();
        let route = st.routes.remove(reply);
        if let Some(key) = waiter
            && let Some(list) = st.waiters.get_mut(key)
        {
            list.retain(|r| r != reply);
            if list.is_empty() {
                st.waiters.remove(key);
            }
        }
        drop(st);
        drop(route);
    }

    /// Routes one outbound message. Never waits: a full peer queue is
    /// reported as backpressure so a slow caller cannot stall the control
    /// plane.
    fn deliver(&self, to: &Peer, msg: &Outbound) -> Result<(), TransportError> {
        let body = match msg {
            Outbound::Claim(m) => to_wire(m)?,
            Outbound::Job(m) => to_wire(m)?,
            Outbound::Agent(m) => to_wire(m)?,
        };
        let mut st = self.lock();
        if st.closed {
            return Err(TransportError::Closed);
        }
        match (to, msg) {
            (Peer::Reply(reply), Outbound::Claim(_) | Outbound::Job(_)) => {
                let plane = if matches!(msg, Outbound::Claim(_)) {
                    Plane::Claim
                } else {
                    Plane::Job
                };
                match st.routes.get_mut(reply) {
                    Some(route) if route.plane == plane => push(&mut route.tx, body, &reply.0),
                    Some(route) => Err(TransportError::NoPeer(format!(
                        "{} is a {:?}-plane reply address",
                        reply.0, route.plane
                    ))),
                    None => Err(TransportError::NoPeer(reply.0.clone())),
                }
            }
            (Peer::Claim(ws, id), Outbound::Claim(reply)) => {
                // A claim subject is a broadcast: zero listeners is not an
                // error (NATS cannot tell either); a full listener is.
                let mut result = Ok(());
                let State {
                    routes,
                    waiters,
                    revocations,
                    ..
                } = &mut *st;
                let who = format!("claim {ws}/{id}");
                for r in waiters.get(&(ws.clone(), id.clone())).into_iter().flatten() {
                    if let Some(route) = routes.get_mut(r)
                        && let Err(e) = push(&mut route.tx, body.clone(), &who)
                    {
                        result = Err(e);
                    }
                }
                if matches!(reply, ClaimReply::Revoked(_))
                    && let Some(subs) = revocations.get_mut(ws)
                {
                    subs.retain_mut(|(_, tx)| match push(tx, body.clone(), &who) {
                        Ok(()) => true,
                        Err(e @ TransportError::Backpressure(_)) => {
                            result = Err(e);
                            true
                        }
                        // The subscriber is gone; prune it.
                        Err(_) => false,
                    });
                }
                result
            }
            (Peer::Node(node), Outbound::Agent(_)) => match st.agents.get_mut(node) {
                Some((_, tx)) => push(tx, body, node.as_str()),
                None => Err(TransportError::NoPeer(format!("node {node}"))),
            },
            (to, _) => Err(TransportError::NoPeer(format!(
                "{to:?} does not take this kind of message"
            ))),
        }
    }

    /// Turns an inbox frame into an inbound message. Undecodable input never
    /// reaches the control plane: a caller gets a rejection, an agent
    /// session is closed (a network agent would be disconnected).
    fn open_frame(&self, frame: UpFrame) -> Option<Inbound> {
        match frame {
            UpFrame::Claim { reply, body } => match from_wire::<ClaimMsg>(&body) {
                Ok(msg) => Some(Inbound::Claim { msg, reply }),
                Err(e) => {
                    let answer = Outbound::Claim(ClaimReply::Rejected {
                        claim_id: None,
                        error: ClaimRejection::Invalid { why: e.to_string() },
                    });
                    // The caller may have given up; nothing else to do.
                    let _ = self.deliver(&Peer::Reply(reply), &answer);
                    None
                }
            },
            UpFrame::Job { reply, body } => match from_wire::<JobMsg>(&body) {
                Ok(msg) => Some(Inbound::Job { msg, reply }),
                Err(e) => {
                    let answer = Outbound::Job(JobReply::Rejected {
                        job: None,
                        why: e.to_string(),
                    });
                    let _ = self.deliver(&Peer::Reply(reply), &answer);
                    None
                }
            },
            UpFrame::Agent {
                node,
                session,
                body,
            } => match from_wire::<AgentMsg>(&body) {
                Ok(msg) => Some(Inbound::Agent { node, msg }),
                Err(_) => self
                    .end_session(&node, session)
                    .then_some(Inbound::AgentGone { node }),
            },
            UpFrame::AgentGone { node } => Some(Inbound::AgentGone { node }),
        }
    }

    fn is_current(&self, node: &NodeId, session: u64) -> bool {
        self.lock()
            .agents
            .get(node)
            .is_some_and(|(s, _)| *s == session)
    }

    /// Removes a node's session if `session` is still the current one.
    fn end_session(&self, node: &NodeId, session: u64) -> bool {
        let mut st = self.lock();
        if st.agents.get(node).is_some_and(|(s, _)| *s == session) {
            let old = st.agents.remove(node);
            drop(st);
            drop(old);
            true
        } else {
            false
        }
    }

    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        // Dropping every downlink ends every waiting call, stream and agent
        // session with `Closed`; drop them outside the lock because dropping
        // a sender wakes its receiver.
        let old = std::mem::take(&mut *st);
        st.closed = true;
        drop(st);
        drop(old);
    }
}

fn push(tx: &mut mpsc::Sender<Bytes>, body: Bytes, who: &str) -> Result<(), TransportError> {
    tx.try_send(body).map_err(|e| {
        if e.is_full() {
            TransportError::Backpressure(who.to_owned())
        } else {
            TransportError::NoPeer(who.to_owned())
        }
    })
}

/// One handle's sender into the control plane's bounded inbox. It is kept
/// (not cloned per message) so the bound holds; the async lock makes
/// concurrent callers on one handle queue for it fairly.
struct Uplink(AsyncMutex<Option<mpsc::Sender<UpFrame>>>);

impl Uplink {
    async fn send(&self, frame: UpFrame) -> Result<(), TransportError> {
        let mut guard = self.0.lock().await;
        let Some(tx) = guard.as_mut() else {
            return Err(TransportError::Closed);
        };
        // A dropped inbox wakes parked senders with an error, so a close
        // never leaves a caller waiting for room.
        poll_fn(|cx| tx.poll_ready(cx))
            .await
            .map_err(|_| TransportError::Closed)?;
        tx.start_send(frame).map_err(|_| TransportError::Closed)
    }
}

/// A registered reply address and its queue; unregisters on drop so a
/// cancelled call leaves nothing behind and later sends get `NoPeer`.
struct Call {
    shared: Arc<Shared>,
    reply: ReplyTo,
    waiter: Option<(Workspace, ClaimId)>,
    rx: mpsc::Receiver<Bytes>,
}

impl Call {
    async fn next<T: DeserializeOwned>(&mut self) -> Result<T, TransportError> {
        match self.rx.next().await {
            Some(body) => from_wire(&body),
            None => Err(TransportError::Closed),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.shared.close_call(&self.reply, self.waiter.as_ref());
    }
}

// ---------------------------------------------------------------------------
// Control-plane side

struct Inbox {
    rx: Option<mpsc::Receiver<UpFrame>>,
    /// The waker of a `recv` in progress, so `close` can end it.
    waker: Option<Waker>,
}

/// The in-process transport's control-plane side.
///
/// Create it with [`InProcTransport::new`], hand [`claim_client`]s to
/// callers and drive the control plane with [`Transport::recv`] /
/// [`Transport::send`]. Dropping it (or [`close`]) ends every client call
/// and agent session with [`TransportError::Closed`].
///
/// [`claim_client`]: InProcTransport::claim_client
/// [`close`]: InProcTransport::close
pub struct InProcTransport {
    shared: Arc<Shared>,
    inbox: Mutex<Inbox>,
    /// Serializes concurrent `recv` callers: the inbox keeps one waker.
    turn: AsyncMutex<()>,
}

impl fmt::Debug for InProcTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcTransport")
            .field("capacity", &self.shared.capacity)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl InProcTransport {
    /// A transport whose inbox and per-peer queues hold `capacity` messages
    /// (plus one per connected handle).
    pub fn new(capacity: usize) -> InProcTransport {
        let (tx, rx) = mpsc::channel(capacity);
        let state = State {
            up: Some(tx),
            ..State::default()
        };
        InProcTransport {
            shared: Arc::new(Shared {
                capacity,
                next_id: AtomicU64::new(1),
                state: Mutex::new(state),
            }),
            inbox: Mutex::new(Inbox {
                rx: Some(rx),
                waker: None,
            }),
            turn: AsyncMutex::new(()),
        }
    }

    /// A caller handle for the claim plane. Cheap to clone; clones share one
    /// slot in the inbox, separate handles have one each.
    pub fn claim_client(&self) -> InProcClaimClient {
        InProcClaimClient {
            shared: Arc::clone(&self.shared),
            up: Arc::new(self.shared.uplink()),
        }
    }

    /// A submitter handle for the job plane.
    pub fn job_client(&self) -> InProcJobClient {
        InProcJobClient {
            shared: Arc::clone(&self.shared),
            up: Arc::new(self.shared.uplink()),
        }
    }

    /// Opens an agent session for `node`. A second session for the same
    /// node displaces the first (the old one's `recv` ends; it emits no
    /// `AgentGone`, since the node is still connected).
    pub fn connect_agent(&self, node: NodeId) -> InProcAgent {
        let session = self.shared.fresh_id();
        let (tx, rx) = mpsc::channel(self.shared.capacity);
        let mut st = self.shared.lock();
        let (up, gone, displaced) = match st.up.clone() {
            Some(up) if !st.closed => {
                let displaced = st.agents.insert(node.clone(), (session, tx));
                (Some(up.clone()), Some(up), displaced)
            }
            // Closed: the session is born dead (`recv` ends, `send` fails).
            _ => (None, None, None),
        };
        drop(st);
        drop(displaced);
        InProcAgent {
            node,
            session,
            shared: Arc::clone(&self.shared),
            up: Uplink(AsyncMutex::new(up)),
            gone,
            down: rx,
            last_error: None,
        }
    }

    /// Shuts the transport down: `recv` returns `Closed`, every waiting
    /// client call fails with `Closed`, agent sessions end. Idempotent.
    pub fn close(&self) {
        self.shared.close();
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        // Dropping the receiver wakes senders parked on a full inbox.
        let rx = inbox.rx.take();
        let waker = inbox.waker.take();
        drop(inbox);
        drop(rx);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether [`close`](InProcTransport::close) ran.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Result<UpFrame, TransportError>> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rx) = inbox.rx.as_mut() else {
            return Poll::Ready(Err(TransportError::Closed));
        };
        match rx.poll_next_unpin(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Ok(frame)),
            Poll::Ready(None) => Poll::Ready(Err(TransportError::Closed)),
            Poll::Pending => {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for InProcTransport {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl Transport for InProcTransport {
    async fn recv(&self) -> Result<Inbound, TransportError> {
        let _turn = self.turn.lock().await;
        loop {
            let frame = poll_fn(|cx| self.poll_frame(cx)).await?;
            if let Some(inbound) = self.shared.open_frame(frame) {
                return Ok(inbound);
            }
        }
    }

    async fn send(&self, to: &Peer, msg: Outbound) -> Result<(), TransportError> {
        self.shared.deliver(to, &msg)
    }
}

// ---------------------------------------------------------------------------
// Claim plane

/// The in-process [`ClaimClient`]. Cheap to clone.
#[derive(Clone)]
pub struct InProcClaimClient {
    shared: Arc<Shared>,
    up: Arc<Uplink>,
}

impl fmt::Debug for InProcClaimClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcClaimClient").finish_non_exhaustive()
    }
}

impl InProcClaimClient {
    /// [`ClaimClient::claim`], calling `on_pending` with each `Pending`
    /// reason while the claim waits.
    pub async fn claim_observed(
        &self,
        req: ClaimRequest,
        mut on_pending: impl FnMut(&PendingReason) + Send,
    ) -> Result<ClaimGrant, ClaimError> {
        let ws = req.workspace.clone();
        let id = req.claim_id.clone();
        let mut call = self.shared.open_call(
            Plane::Claim,
            Some((ws.clone(), id.clone())),
            CLAIM_REPLY_QUEUE,
        )?;
        let body = to_wire(&ClaimMsg::Request(req))?;
        self.up
            .send(UpFrame::Claim {
                reply: call.reply.clone(),
                body,
            })
            .await?;
        loop {
            match call.next::<ClaimReply>().await? {
                ClaimReply::Pending { claim_id, reason } if claim_id == id => on_pending(&reason),
                ClaimReply::Granted(g) if g.claim_id == id && g.workspace == ws => return Ok(g),
                ClaimReply::Rejected { claim_id, error }
                    if claim_id.as_ref().is_none_or(|c| *c == id) =>
                {
                    return Err(ClaimError::Rejected(error));
                }
                ClaimReply::Revoked(r) if r.claim_id == id => return Err(ClaimError::Revoked(r)),
                other => return Err(ClaimError::Unexpected(format!("claim {id}: {other:?}"))),
            }
        }
    }

    /// Sends one claim message and waits for its single answer.
    async fn call_once(&self, msg: ClaimMsg) -> Result<ClaimReply, ClaimError> {
        let mut call = self
            .shared
            .open_call(Plane::Claim, None, CLAIM_REPLY_QUEUE)?;
        let body = to_wire(&msg)?;
        self.up
            .send(UpFrame::Claim {
                reply: call.reply.clone(),
                body,
            })
            .await?;
        Ok(call.next::<ClaimReply>().await?)
    }
}

#[async_trait]
impl ClaimClient for InProcClaimClient {
    async fn claim(&self, req: ClaimRequest) -> Result<ClaimGrant, ClaimError> {
        self.claim_observed(req, |_| {}).await
    }

    async fn renew(&self, workspace: &Workspace, id: &ClaimId) -> Result<Renewal, ClaimError> {
        let msg = ClaimMsg::Renew {
            workspace: workspace.clone(),
            claim_id: id.clone(),
        };
        match self.call_once(msg).await? {
            ClaimReply::Renewed(renewal) if renewal.claim_id == *id => Ok(renewal),
            other => Err(ClaimError::from_reply(id, other, "renew")),
        }
    }

    async fn release(&self, workspace: &Workspace, id: &ClaimId) -> Result<(), ClaimError> {
        let msg = ClaimMsg::Release {
            workspace: workspace.clone(),
            claim_id: id.clone(),
        };
        match self.call_once(msg).await? {
            ClaimReply::Released { claim_id } if claim_id == *id => Ok(()),
            other => Err(ClaimError::from_reply(id, other, "release")),
        }
    }

    async fn revocations(
        &self,
        workspace: &Workspace,
    ) -> Result<BoxStream<'static, Revocation>, ClaimError> {
        let sub = self.shared.fresh_id();
        let (tx, rx) = mpsc::channel(self.shared.capacity);
        let mut st = self.shared.lock();
        if st.closed {
            return Err(TransportError::Closed.into());
        }
        st.revocations
            .entry(workspace.clone())
            .or_default()
            .push((sub, tx));
        drop(st);
        Ok(Box::pin(RevocationStream {
            shared: Arc::clone(&self.shared),
            workspace: workspace.clone(),
            sub,
            rx,
        }))
    }
}

/// Revocations of one workspace; unsubscribes on drop.
struct RevocationStream {
    shared: Arc<Shared>,
    workspace: Workspace,
    sub: u64,
    rx: mpsc::Receiver<Bytes>,
}

impl Stream for RevocationStream {
    type Item = Revocation;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Revocation>> {
        loop {
            match self.rx.poll_next_unpin(cx) {
                Poll::Ready(Some(body)) => match from_wire::<ClaimReply>(&body) {
                    // Routing is by the peer's workspace; checking the body
                    // too means a mis-addressed revocation never reaches
                    // another tenant.
                    Ok(ClaimReply::Revoked(r)) if r.workspace == self.workspace => {
                        return Poll::Ready(Some(r));
                    }
                    // The item type cannot carry an error; anything else
                    // here is not a revocation of this workspace.
                    _ => continue,
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for RevocationStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let old = st.revocations.get_mut(&self.workspace).and_then(|subs| {
            let at = subs.iter().position(|(s, _)| *s == self.sub)?;
            Some(subs.swap_remove(at))
        });
        if st
            .revocations
            .get(&self.workspace)
            .is_some_and(|s| s.is_empty())
        {
            st.revocations.remove(&self.workspace);
        }
        drop(st);
        drop(old);
    }
}

// ---------------------------------------------------------------------------
// Job plane

/// Why a job-plane call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The control plane refused it.
    #[error("rejected: {why}")]
    Rejected {
        /// The job, when the control plane named one.
        job: Option<JobId>,
        /// Why.
        why: String,
    },
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The control plane answered with something this call did not expect.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl JobError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::Rejected { .. } => "rejected",
            JobError::Transport(t) => t.kind(),
            JobError::Unexpected(_) => "unexpected",
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Transport(t) => t.is_retryable(),
            JobError::Rejected { .. } | JobError::Unexpected(_) => false,
        }
    }
}

/// The in-process job-plane submitter. Cheap to clone.
#[derive(Clone)]
pub struct InProcJobClient {
    shared: Arc<Shared>,
    up: Arc<Uplink>,
}

impl fmt::Debug for InProcJobClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcJobClient").finish_non_exhaustive()
    }
}

impl InProcJobClient {
    /// Submits a task and waits for `Accepted`. The returned stream carries
    /// the job's later replies (sent to the submit's reply address); drop it
    /// to stop listening.
    pub async fn submit(&self, spec: TaskSpec) -> Result<JobEvents, JobError> {
        let job = spec.id.clone();
        let mut call = self
            .shared
            .open_call(Plane::Job, None, self.shared.capacity.max(1))?;
        let body = to_wire(&JobMsg::Submit(Box::new(spec)))?;
        self.up
            .send(UpFrame::Job {
                reply: call.reply.clone(),
                body,
            })
            .await?;
        match call.next::<JobReply>().await? {
            JobReply::Accepted { job: j } if j == job => Ok(JobEvents {
                job,
                call,
                done: false,
            }),
            JobReply::Rejected { job: j, why } if j.as_ref().is_none_or(|j| *j == job) => {
                Err(JobError::Rejected { job: j, why })
            }
            other => Err(JobError::Unexpected(format!("submit {job}: {other:?}"))),
        }
    }
}

#[async_trait]
impl crate::transport::JobClient for InProcJobClient {
    async fn send(&self, msg: JobMsg) -> Result<BoxStream<'static, JobReply>, TransportError> {
        let call = self
            .shared
            .open_call(Plane::Job, None, self.shared.capacity.max(1))?;
        let body = to_wire(&msg)?;
        self.up
            .send(UpFrame::Job {
                reply: call.reply.clone(),
                body,
            })
            .await?;
        // The call (its reply address) lives as long as the stream; a body
        // this build cannot read ends it, as a network client would.
        Ok(Box::pin(futures_util::stream::unfold(
            call,
            |mut call| async move {
                let body = call.rx.next().await?;
                let reply = from_wire::<JobReply>(&body).ok()?;
                Some((reply, call))
            },
        )))
    }
}

/// An accepted job's replies: `Event`s, then `Finished` (after which the
/// stream ends). Ends early if the transport closes.
pub struct JobEvents {
    job: JobId,
    call: Call,
    done: bool,
}

impl fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobEvents")
            .field("job", &self.job)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl JobEvents {
    /// The accepted job.
    pub fn job(&self) -> &JobId {
        &self.job
    }
}

impl Stream for JobEvents {
    type Item = JobReply;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobReply>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.call.rx.poll_next_unpin(cx) {
            Poll::Ready(Some(body)) => match from_wire::<JobReply>(&body) {
                Ok(reply) => {
                    self.done = matches!(reply, JobReply::Finished(_) | JobReply::Rejected { .. });
                    Poll::Ready(Some(reply))
                }
                // A body this build cannot read ends the stream, as a
                // network client would drop the subscription.
                Err(_) => {
                    self.done = true;
                    Poll::Ready(None)
                }
            },
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

// ---------------------------------------------------------------------------
// Agent sessions

/// One node agent's session, as the agent sees it (tests and the simulator
/// play the agent). Dropping it or [`close`](InProcAgent::close) gives the
/// control plane `Inbound::AgentGone`.
pub struct InProcAgent {
    node: NodeId,
    session: u64,
    shared: Arc<Shared>,
    up: Uplink,
    /// A sender kept unused so `AgentGone` always has a slot in the bounded
    /// inbox, even when dropped from sync code with the inbox full.
    gone: Option<mpsc::Sender<UpFrame>>,
    down: mpsc::Receiver<Bytes>,
    last_error: Option<TransportError>,
}

impl fmt::Debug for InProcAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcAgent")
            .field("node", &self.node)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl InProcAgent {
    /// The node this session speaks for.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Sends a message; it arrives as `Inbound::Agent { node, msg }`.
    /// Waits for room in the control plane's inbox.
    pub async fn send(&self, msg: AgentMsg) -> Result<(), TransportError> {
        // A closed or displaced session must not speak for the node.
        if !self.shared.is_current(&self.node, self.session) {
            return Err(TransportError::Closed);
        }
        let body = to_wire(&msg)?;
        self.up
            .send(UpFrame::Agent {
                node: self.node.clone(),
                session: self.session,
                body,
            })
            .await
    }

    /// The next message the control plane sent to `Peer::Node(node)`, or
    /// `None` once the session ended (closed, displaced, transport closed,
    /// or an undecodable message — see [`last_error`](InProcAgent::last_error)).
    pub async fn recv(&mut self) -> Option<DaemonMsg> {
        let body = self.down.next().await?;
        match from_wire(&body) {
            Ok(msg) => Some(msg),
            Err(e) => {
                self.last_error = Some(e);
                self.close();
                None
            }
        }
    }

    /// Why the session ended on its own, if it did.
    pub fn last_error(&self) -> Option<&TransportError> {
        self.last_error.as_ref()
    }

    /// Ends the session. Idempotent.
    pub fn close(&mut self) {
        let gone = self.gone.take();
        if self.shared.end_session(&self.node, self.session)
            && let Some(mut gone) = gone
        {
            // Cannot fail for lack of room (this sender's reserved slot);
            // fails only when the transport is closed, when nobody listens.
            let _ = gone.try_send(UpFrame::AgentGone {
                node: self.node.clone(),
            });
        }
        self.down.close();
    }
}

impl Drop for InProcAgent {
    fn drop(&mut self) {
        self.close();
    }
}
