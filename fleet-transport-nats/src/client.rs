//! The caller side of the claim plane over core NATS.
//!
//! [`NatsClaimClient::claim`] makes sure this client is subscribed to the
//! workspace's `granted` and `revoked` subjects *before* it publishes the
//! request (so no grant can be missed), publishes the request to
//! `<ns>.claim.request.<ws>.<id>` as a NATS request, accepts a `Pending`
//! acknowledgement as its answer and resolves on the first `Granted`,
//! `Rejected` or `Revoked` of this claim from either (in whichever order
//! they come).
//!
//! Nothing is subscribed per call:
//! - answers come through one long-lived inbox subscription per client,
//!   `<inbox_prefix>.<nuid>.*`, each call using its own token under it as
//!   its reply subject (every answer to it, `Pending` first or not, reaches
//!   the call), so a per-workspace inbox prefix still confines the replies;
//! - grants and revocations come through one subscription per workspace to
//!   `<ns>.claim.{granted,revoked}.<ws>.*`, made by the workspace's first
//!   claim and kept for the client's lifetime (shared by its clones).
//!
//! A task per subscription hands each message to the calls registered for
//! its last subject token (the call's token, or the claim id). Calls
//! register, and the subscriptions are sent, before the request is
//! published on the same connection; the server applies one connection's
//! operations in order, so no answer or grant can overtake them. A refused
//! subscription fails the waiting calls with `Permission` and is tried again
//! by the next call.
//!
//! Re-sending is always the same request with the same claim id, which the
//! control plane treats as the same claim (it answers with the claim's
//! current state), so retries never create a second claim. It re-sends when
//! no answer came within the request timeout (up to `attempts` times), after
//! every reconnect, and every `pending_recheck` while the claim is pending.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Message, StatusCode, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::ids::{ClaimId, Workspace};
use fleet_core::protocol::{
    ClaimGrant, ClaimMsg, ClaimReply, ClaimRequest, JobMsg, JobReply, Renewal, Revocation,
};
use fleet_core::subjects::{ClaimVerb, JobVerb, Subjects};
use fleet_core::transport::{ClaimClient, ClaimError, JobClient, TransportError};
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, select_all};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::{Connection, is_permission_violation, millis};
use crate::wire::{from_wire, publish_error, subscribe_error, to_wire};

/// Default number of sends before a request with no answer times out.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Default re-send interval while a claim is pending.
pub const DEFAULT_PENDING_RECHECK: Duration = Duration::from_secs(30);
/// How long `revocations` waits for the server to refuse its subscription.
const PERMISSION_GRACE: Duration = Duration::from_millis(100);

/// The claim plane's caller side over NATS. Cheap to clone; clones share
/// the reply inbox and the per-workspace grant/revocation subscriptions.
#[derive(Clone)]
pub struct NatsClaimClient {
    conn: Connection,
    subjects: Subjects,
    attempts: u32,
    pending_recheck: Duration,
    muxes: Arc<tokio::sync::Mutex<HashMap<MuxKey, Arc<Mux>>>>,
    next_token: Arc<AtomicU64>,
}

impl fmt::Debug for NatsClaimClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsClaimClient")
            .field("namespace", &self.subjects.namespace())
            .field("attempts", &self.attempts)
            .field("pending_recheck", &self.pending_recheck)
            .finish_non_exhaustive()
    }
}

/// Why a subscription stopped.
#[derive(Debug, Clone)]
enum Ended {
    /// The server refused one of its subscriptions (the error line).
    Refused(String),
    /// The connection is closed.
    Closed,
}

/// What a subscription hands a waiting call.
#[derive(Debug)]
enum Delivery {
    Msg(Message),
    Ended(Ended),
}

/// The calls waiting on one shared subscription, by last subject token.
#[derive(Default)]
struct Waiters {
    next_key: u64,
    by_token: HashMap<String, Vec<(u64, mpsc::UnboundedSender<Delivery>)>>,
    ended: Option<Ended>,
}

fn lock(w: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    // Nothing panics while the lock is held; a poisoned map is consistent.
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which shared subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MuxKey {
    /// The client's reply inbox.
    Inbox,
    /// A workspace's `granted` and `revoked` subjects.
    Workspace(Workspace),
}

/// Long-lived subscriptions and the task handing their messages to the
/// calls registered for the message subject's last token.
struct Mux {
    /// For the inbox: `<inbox_prefix>.<nuid>`, the calls' reply subject
    /// prefix.
    base: String,
    waiters: Arc<Mutex<Waiters>>,
    task: JoinHandle<()>,
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mux {
    /// Subscribes to `subjects` and starts dispatching.
    async fn start(
        conn: &Connection,
        base: String,
        subjects: Vec<String>,
    ) -> Result<Mux, TransportError> {
        // Listen for refusals before subscribing.
        let mut errors = conn.server_errors();
        let mut subs = Vec::with_capacity(subjects.len());
        for s in &subjects {
            subs.push(
                conn.client()
                    .subscribe(s.clone())
                    .await
                    .map_err(|e| subscribe_error(s, &e))?,
            );
        }
        let mut subs = select_all(subs);
        // Not needed for ordering (requests go out on the same connection
        // after the SUBs), but puts the SUBs on the wire now.
        conn.client()
            .flush()
            .await
            .map_err(|e| TransportError::Io(format!("flush: {e}")))?;
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let shared = Arc::clone(&waiters);
        let task = tokio::spawn(async move {
            let mut errors_open = true;
            loop {
                tokio::select! {
                    m = subs.next() => match m {
                        Some(m) => dispatch(&shared, m),
                        None => return end(&shared, Ended::Closed),
                    },
                    e = errors.recv(), if errors_open => match e {
                        Ok(text) if subjects.iter().any(|s| is_permission_violation(&text, s)) => {
                            return end(&shared, Ended::Refused(text));
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => errors_open = false,
                    },
                }
            }
        });
        Ok(Mux {
            base,
            waiters,
            task,
        })
    }

    /// Registers a call waiting for messages whose last subject token is
    /// `token`; why the subscription ended, once it has.
    fn register(&self, token: &str) -> Result<Registration, Ended> {
        let mut w = lock(&self.waiters);
        if let Some(why) = &w.ended {
            return Err(why.clone());
        }
        let key = w.next_key;
        w.next_key = w.next_key.wrapping_add(1);
        let (tx, rx) = mpsc::unbounded_channel();
        w.by_token
            .entry(token.to_owned())
            .or_default()
            .push((key, tx));
        Ok(Registration {
            waiters: Arc::clone(&self.waiters),
            token: token.to_owned(),
            key,
            rx,
        })
    }
}

/// A call's place in a shared subscription; leaves it on drop.
struct Registration {
    waiters: Arc<Mutex<Waiters>>,
    token: String,
    key: u64,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut w = lock(&self.waiters);
        if let Some(list) = w.by_token.get_mut(&self.token) {
            list.retain(|(k, _)| *k != self.key);
            if list.is_empty() {
                w.by_token.remove(&self.token);
            }
        }
    }
}

async fn next_delivery(reg: &mut Option<Registration>) -> Option<Delivery> {
    match reg {
        Some(r) => r.rx.recv().await,
        None => std::future::pending().await,
    }
}

fn dispatch(waiters: &Mutex<Waiters>, m: Message) {
    let token = m.subject.as_str().rsplit('.').next().unwrap_or_default();
    let w = lock(waiters);
    match w.by_token.get(token).map(Vec::as_slice) {
        Some([(_, tx)]) => {
            let _ = tx.send(Delivery::Msg(m));
        }
        Some(list) => {
            for (_, tx) in list {
                let _ = tx.send(Delivery::Msg(m.clone()));
            }
        }
        None => {}
    }
}

fn end(waiters: &Mutex<Waiters>, why: Ended) {
    let mut w = lock(waiters);
    for (_, list) in w.by_token.drain() {
        for (_, tx) in list {
            let _ = tx.send(Delivery::Ended(why.clone()));
        }
    }
    w.ended = Some(why);
}

impl NatsClaimClient {
    /// A client on `conn` using `subjects`' namespace.
    pub fn new(conn: Connection, subjects: Subjects) -> NatsClaimClient {
        NatsClaimClient {
            conn,
            subjects,
            attempts: DEFAULT_ATTEMPTS,
            pending_recheck: DEFAULT_PENDING_RECHECK,
            muxes: Arc::default(),
            next_token: Arc::default(),
        }
    }

    /// Sends before a request with no answer fails with `Timeout` (min 1).
    pub fn with_attempts(mut self, attempts: u32) -> NatsClaimClient {
        self.attempts = attempts.max(1);
        self
    }

    /// Re-send interval while a claim is pending.
    pub fn with_pending_recheck(mut self, every: Duration) -> NatsClaimClient {
        self.pending_recheck = every;
        self
    }

    /// Sends a job-plane message on its subject
    /// (`<ns>.job.<verb>.<workspace>.<job>`) with a reply inbox of its
    /// own; the stream yields every answer to it (`accepted` or
    /// `rejected`, then for a submit its events, output and `finished`)
    /// until it is dropped. The message is sent once: a submit is
    /// idempotent by job id, so a caller that lost its stream submits
    /// again to hear the rest (or watches
    /// `<ns>.job.events.<workspace>.<job>`).
    pub async fn job(&self, msg: JobMsg) -> Result<BoxStream<'static, JobReply>, TransportError> {
        let subject = self.subjects.job_msg(&msg);
        let inbox = self.conn.client().new_inbox();
        let sub = self.subscribe(inbox.clone()).await?;
        let body = to_wire(&msg)?;
        self.conn
            .client()
            .publish_with_reply(subject.clone(), inbox, body)
            .await
            .map_err(|e| publish_error(&subject, &e))?;
        Ok(decode_job_replies(sub))
    }

    /// Every reply about one job — or, given a run's id, about the run and
    /// all its tasks — as its submitter gets them, for as long as the
    /// stream is kept; subscribed before this returns.
    pub async fn watch_job(
        &self,
        workspace: &Workspace,
        job: &str,
    ) -> Result<BoxStream<'static, JobReply>, TransportError> {
        let subject = self.subjects.job(JobVerb::Events, workspace, job);
        let sub = self.subscribe(subject).await?;
        self.conn.sync().await?;
        Ok(decode_job_replies(sub))
    }

    async fn subscribe(&self, subject: String) -> Result<Subscriber, TransportError> {
        self.conn
            .client()
            .subscribe(subject.clone())
            .await
            .map_err(|e| subscribe_error(&subject, &e))
    }

    /// Registers a call for `token` on the shared subscription `key`,
    /// subscribing first if this client is not (or no longer) subscribed.
    /// Returns the registration and the subscription's base subject. When
    /// this returns, the subscription precedes any later publish on this
    /// connection.
    async fn register(
        &self,
        key: MuxKey,
        token: &str,
    ) -> Result<(Registration, String), TransportError> {
        let mut muxes = self.muxes.lock().await;
        if let Some(mux) = muxes.get(&key)
            && let Ok(reg) = mux.register(token)
        {
            return Ok((reg, mux.base.clone()));
        }
        muxes.remove(&key);
        let mux = match &key {
            MuxKey::Inbox => {
                let base = self.conn.client().new_inbox();
                let all = format!("{base}.*");
                Mux::start(&self.conn, base, vec![all]).await?
            }
            MuxKey::Workspace(ws) => {
                let subjects = [ClaimVerb::Granted, ClaimVerb::Revoked]
                    .map(|v| self.subjects.claim_workspace_wildcard(v, ws))
                    .to_vec();
                Mux::start(&self.conn, String::new(), subjects).await?
            }
        };
        // The server may refuse the subscription before this call gets to
        // register (its error races the registration): report that refusal.
        let reg = mux.register(token).map_err(|why| match why {
            Ended::Refused(text) => TransportError::Permission(text),
            Ended::Closed => TransportError::Closed,
        })?;
        let base = mux.base.clone();
        muxes.insert(key, Arc::new(mux));
        Ok((reg, base))
    }

    /// Publishes `msg` on `subject` with this call's reply subject and waits
    /// for a final answer on it
    /// (or, with `watch`, a `Granted`/`Revoked` of this claim on the
    /// workspace's subjects). `Pending` of this claim counts as an
    /// acknowledgement when `accept_pending`.
    async fn exchange<T>(
        &self,
        subject: String,
        id: &ClaimId,
        msg: &ClaimMsg,
        watch: Option<&Workspace>,
        accept_pending: bool,
        decide: impl FnOnce(ClaimReply) -> Result<T, ClaimError>,
    ) -> Result<T, ClaimError> {
        let client = self.conn.client();
        let timeout = self.conn.request_timeout();
        let body = to_wire(msg)?;
        let mut errors = self.conn.server_errors();
        let mut reconnects = self.conn.reconnects();
        reconnects.borrow_and_update();
        // Registered (and subscribed) before the request is published.
        let token = self.next_token.fetch_add(1, Ordering::Relaxed).to_string();
        let (mut replies, base) = self.register(MuxKey::Inbox, &token).await?;
        let inbox = format!("{base}.{token}");
        let mut watched = match watch {
            Some(ws) => Some(
                self.register(MuxKey::Workspace(ws.clone()), id.as_str())
                    .await?
                    .0,
            ),
            None => None,
        };
        let mut watching = watched.is_some();

        let send = |body: Bytes| {
            let subject = subject.clone();
            let inbox = inbox.clone();
            async move {
                client
                    .publish_with_reply(subject.clone(), inbox, body)
                    .await
                    .map_err(|e| publish_error(&subject, &e))
            }
        };
        send(body.clone()).await?;
        let mut sent: u32 = 1;
        let mut acked = false;
        let mut deadline = Instant::now() + timeout;
        let (mut errors_open, mut reconnects_open) = (true, true);
        loop {
            tokio::select! {
                d = replies.rx.recv() => {
                    let m = match d {
                        Some(Delivery::Msg(m)) => m,
                        Some(Delivery::Ended(Ended::Refused(text))) => {
                            return Err(TransportError::Permission(text).into());
                        }
                        Some(Delivery::Ended(Ended::Closed)) | None => {
                            return Err(TransportError::Closed.into());
                        }
                    };
                    if m.status == Some(StatusCode::NO_RESPONDERS) {
                        if acked {
                            // The control plane is restarting; the periodic
                            // re-send finds it again.
                            continue;
                        }
                        return Err(TransportError::NoPeer(format!(
                            "no control plane subscribes to {subject}"
                        )).into());
                    }
                    if m.status.is_some() && m.payload.is_empty() {
                        continue;
                    }
                    match from_wire::<ClaimReply>(&m.payload)? {
                        ClaimReply::Pending { claim_id, reason } if accept_pending && claim_id == *id => {
                            tracing::debug!(claim = %id, ?reason, "claim pending");
                            acked = true;
                            deadline = Instant::now() + self.pending_recheck;
                        }
                        other => return decide(other),
                    }
                }
                d = next_delivery(&mut watched), if watching => match d {
                    Some(Delivery::Msg(m)) => match from_wire::<ClaimReply>(&m.payload) {
                        Ok(r @ (ClaimReply::Granted(_) | ClaimReply::Revoked(_)))
                            if reply_claim(&r) == Some(id) => return decide(r),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(subject = %m.subject, error = %e, "ignored an undecodable message on a claim subject"),
                    },
                    Some(Delivery::Ended(Ended::Refused(text))) => {
                        return Err(TransportError::Permission(text).into());
                    }
                    Some(Delivery::Ended(Ended::Closed)) | None => watching = false,
                },
                e = errors.recv(), if errors_open => match e {
                    Ok(text) if is_permission_violation(&text, &subject) => {
                        return Err(TransportError::Permission(text).into());
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => errors_open = false,
                },
                r = reconnects.changed(), if reconnects_open => match r {
                    Ok(()) => {
                        tracing::info!(claim = %id, "reconnected; re-sending the same request");
                        send(body.clone()).await?;
                    }
                    Err(_) => reconnects_open = false,
                },
                () = tokio::time::sleep_until(deadline) => {
                    if !acked && sent >= self.attempts {
                        return Err(TransportError::Timeout(millis(timeout).saturating_mul(u64::from(sent))).into());
                    }
                    sent = sent.saturating_add(1);
                    tracing::debug!(claim = %id, sent, acked, "re-sending the same request");
                    send(body.clone()).await?;
                    deadline = Instant::now() + if acked { self.pending_recheck } else { timeout };
                }
            }
        }
    }
}

fn reply_claim(reply: &ClaimReply) -> Option<&ClaimId> {
    match reply {
        ClaimReply::Granted(g) => Some(&g.claim_id),
        ClaimReply::Revoked(r) => Some(&r.claim_id),
        ClaimReply::Pending { claim_id, .. } | ClaimReply::Released { claim_id } => Some(claim_id),
        ClaimReply::Renewed(l) => Some(&l.claim_id),
        ClaimReply::Rejected { claim_id, .. } => claim_id.as_ref(),
        _ => None,
    }
}

#[async_trait]
impl JobClient for NatsClaimClient {
    async fn send(&self, msg: JobMsg) -> Result<BoxStream<'static, JobReply>, TransportError> {
        self.job(msg).await
    }
}

#[async_trait]
impl ClaimClient for NatsClaimClient {
    async fn claim(&self, req: ClaimRequest) -> Result<ClaimGrant, ClaimError> {
        let ws = req.workspace.clone();
        let id = req.claim_id.clone();
        let subject = self.subjects.claim(ClaimVerb::Request, &ws, &id);
        let msg = ClaimMsg::Request(req);
        self.exchange(subject, &id, &msg, Some(&ws), true, |reply| match reply {
            ClaimReply::Granted(g) if g.claim_id == id && g.workspace == ws => Ok(g),
            other => Err(ClaimError::from_reply(&id, other, "claim")),
        })
        .await
    }

    async fn renew(&self, workspace: &Workspace, id: &ClaimId) -> Result<Renewal, ClaimError> {
        let subject = self.subjects.claim(ClaimVerb::Renew, workspace, id);
        let msg = ClaimMsg::Renew {
            workspace: workspace.clone(),
            claim_id: id.clone(),
        };
        self.exchange(subject, id, &msg, None, false, |reply| match reply {
            ClaimReply::Renewed(renewal) if renewal.claim_id == *id => Ok(renewal),
            other => Err(ClaimError::from_reply(id, other, "renew")),
        })
        .await
    }

    async fn release(&self, workspace: &Workspace, id: &ClaimId) -> Result<(), ClaimError> {
        let subject = self.subjects.claim(ClaimVerb::Release, workspace, id);
        let msg = ClaimMsg::Release {
            workspace: workspace.clone(),
            claim_id: id.clone(),
        };
        self.exchange(subject, id, &msg, None, false, |reply| match reply {
            ClaimReply::Released { claim_id } if claim_id == *id => Ok(()),
            other => Err(ClaimError::from_reply(id, other, "release")),
        })
        .await
    }

    async fn revocations(
        &self,
        workspace: &Workspace,
    ) -> Result<BoxStream<'static, Revocation>, ClaimError> {
        let subject = self
            .subjects
            .claim_workspace_wildcard(ClaimVerb::Revoked, workspace);
        let mut errors = self.conn.server_errors();
        let sub = self.subscribe(subject.clone()).await?;
        // Make sure the server has the subscription before returning, so a
        // revocation published right after is not missed.
        self.conn.sync().await?;
        let refused = tokio::time::timeout(PERMISSION_GRACE, async {
            loop {
                match errors.recv().await {
                    Ok(text) if is_permission_violation(&text, &subject) => return Some(text),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
            }
        })
        .await;
        if let Ok(Some(text)) = refused {
            return Err(TransportError::Permission(text).into());
        }
        let ws = workspace.clone();
        Ok(sub
            .filter_map(move |m| {
                let out = match from_wire::<ClaimReply>(&m.payload) {
                    // Checking the body too means a mis-addressed revocation
                    // never reaches another tenant.
                    Ok(ClaimReply::Revoked(r)) if r.workspace == ws => Some(r),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(subject = %m.subject, error = %e, "ignored an undecodable revocation");
                        None
                    }
                };
                std::future::ready(out)
            })
            .boxed())
    }
}

fn decode_job_replies(sub: Subscriber) -> BoxStream<'static, JobReply> {
    sub.filter_map(|m| {
        let out = match from_wire::<JobReply>(&m.payload) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(subject = %m.subject, error = %e, "ignored an undecodable job reply");
                None
            }
        };
        std::future::ready(out)
    })
    .boxed()
}
