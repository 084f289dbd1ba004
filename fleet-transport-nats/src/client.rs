//! The caller side of the claim plane over core NATS.
//!
//! [`NatsClaimClient::claim`] subscribes to the claim's `granted` and
//! `revoked` subjects *before* it publishes the request (so no grant can be
//! missed), publishes the request to `<ns>.claim.request.<ws>.<id>` with a
//! fresh reply inbox, accepts `Pending` acknowledgements on that inbox and
//! resolves on the first `Granted`, `Rejected` or `Revoked` from either.
//!
//! Re-sending is always the same request with the same claim id, which the
//! control plane treats as the same claim (it answers with the claim's
//! current state), so retries never create a second claim. It re-sends when
//! no answer came within the request timeout (up to `attempts` times), after
//! every reconnect, and every `pending_recheck` while the claim is pending.

use std::fmt;
use std::time::Duration;

use async_nats::{StatusCode, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::ids::{ClaimId, Workspace};
use fleet_core::protocol::{ClaimGrant, ClaimMsg, ClaimReply, ClaimRequest, Lease, Revocation};
use fleet_core::subjects::{ClaimVerb, Subjects};
use fleet_core::transport::{ClaimClient, ClaimError, TransportError};
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll, select_all};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::conn::{Connection, is_permission_violation, millis};
use crate::wire::{from_wire, publish_error, subscribe_error, to_wire};

/// Default number of sends before a request with no answer times out.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Default re-send interval while a claim is pending.
pub const DEFAULT_PENDING_RECHECK: Duration = Duration::from_secs(30);
/// How long `revocations` waits for the server to refuse its subscription.
const PERMISSION_GRACE: Duration = Duration::from_millis(100);

/// The claim plane's caller side over NATS. Cheap to clone.
#[derive(Clone)]
pub struct NatsClaimClient {
    conn: Connection,
    subjects: Subjects,
    attempts: u32,
    pending_recheck: Duration,
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

impl NatsClaimClient {
    /// A client on `conn` using `subjects`' namespace.
    pub fn new(conn: Connection, subjects: Subjects) -> NatsClaimClient {
        NatsClaimClient {
            conn,
            subjects,
            attempts: DEFAULT_ATTEMPTS,
            pending_recheck: DEFAULT_PENDING_RECHECK,
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

    async fn subscribe(&self, subject: String) -> Result<Subscriber, TransportError> {
        self.conn
            .client()
            .subscribe(subject.clone())
            .await
            .map_err(|e| subscribe_error(&subject, &e))
    }

    /// Publishes `msg` on `subject` with a fresh inbox and waits for a final
    /// answer on it (or, for `watch`ed subjects, a `Granted`/`Revoked` of
    /// this claim). `Pending` of this claim counts as an acknowledgement
    /// when `accept_pending`.
    async fn exchange<T>(
        &self,
        subject: String,
        id: &ClaimId,
        msg: &ClaimMsg,
        watch: Vec<String>,
        accept_pending: bool,
        decide: impl FnOnce(ClaimReply) -> Result<T, ClaimError>,
    ) -> Result<T, ClaimError> {
        let client = self.conn.client();
        let timeout = self.conn.request_timeout();
        let body = to_wire(msg)?;
        let mut errors = self.conn.server_errors();
        let mut reconnects = self.conn.reconnects();
        reconnects.borrow_and_update();
        // Subscribe before publishing: the server applies one connection's
        // operations in order, so a grant cannot overtake the subscription.
        let mut watched_subjects = watch.clone();
        let mut subs = Vec::with_capacity(watch.len());
        for s in watch {
            subs.push(self.subscribe(s).await?);
        }
        let mut watched: SelectAll<Subscriber> = select_all(subs);
        let mut watching = !watched.is_empty();
        let inbox = client.new_inbox();
        let mut replies = self.subscribe(inbox.clone()).await?;
        watched_subjects.push(inbox.clone());
        watched_subjects.push(subject.clone());

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
                m = replies.next() => {
                    let Some(m) = m else {
                        return Err(TransportError::Closed.into());
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
                m = watched.next(), if watching => {
                    let Some(m) = m else {
                        watching = false;
                        continue;
                    };
                    match from_wire::<ClaimReply>(&m.payload) {
                        Ok(r @ ClaimReply::Granted(_)) if reply_claim(&r) == Some(id) => return decide(r),
                        Ok(r @ ClaimReply::Revoked(_)) if reply_claim(&r) == Some(id) => return decide(r),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(subject = %m.subject, error = %e, "ignored an undecodable message on a claim subject"),
                    }
                }
                e = errors.recv(), if errors_open => match e {
                    Ok(text) if watched_subjects.iter().any(|s| is_permission_violation(&text, s)) => {
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

fn unexpected(call: &str, id: &ClaimId, reply: &ClaimReply) -> ClaimError {
    ClaimError::Unexpected(format!("{call} {id}: {reply:?}"))
}

/// The answers every call treats alike: a rejection or a revocation of this
/// claim; anything else is unexpected.
fn refusal(id: &ClaimId, reply: ClaimReply, call: &str) -> ClaimError {
    match reply {
        ClaimReply::Rejected { claim_id, error } if claim_id.as_ref().is_none_or(|c| c == id) => {
            ClaimError::Rejected(error)
        }
        ClaimReply::Revoked(r) if r.claim_id == *id => ClaimError::Revoked(r),
        other => unexpected(call, id, &other),
    }
}

#[async_trait]
impl ClaimClient for NatsClaimClient {
    async fn claim(&self, req: ClaimRequest) -> Result<ClaimGrant, ClaimError> {
        let ws = req.workspace.clone();
        let id = req.claim_id.clone();
        let subject = self.subjects.claim(ClaimVerb::Request, &ws, &id);
        let watch = vec![
            self.subjects.claim(ClaimVerb::Granted, &ws, &id),
            self.subjects.claim(ClaimVerb::Revoked, &ws, &id),
        ];
        let msg = ClaimMsg::Request(req);
        self.exchange(subject, &id, &msg, watch, true, |reply| match reply {
            ClaimReply::Granted(g) if g.claim_id == id && g.workspace == ws => Ok(g),
            other => Err(refusal(&id, other, "claim")),
        })
        .await
    }

    async fn renew(&self, workspace: &Workspace, id: &ClaimId) -> Result<Lease, ClaimError> {
        let subject = self.subjects.claim(ClaimVerb::Renew, workspace, id);
        let msg = ClaimMsg::Renew {
            workspace: workspace.clone(),
            claim_id: id.clone(),
        };
        self.exchange(subject, id, &msg, Vec::new(), false, |reply| match reply {
            ClaimReply::Renewed(lease) if lease.claim_id == *id => Ok(lease),
            other => Err(refusal(id, other, "renew")),
        })
        .await
    }

    async fn release(&self, workspace: &Workspace, id: &ClaimId) -> Result<(), ClaimError> {
        let subject = self.subjects.claim(ClaimVerb::Release, workspace, id);
        let msg = ClaimMsg::Release {
            workspace: workspace.clone(),
            claim_id: id.clone(),
        };
        self.exchange(subject, id, &msg, Vec::new(), false, |reply| match reply {
            ClaimReply::Released { claim_id } if claim_id == *id => Ok(()),
            other => Err(refusal(id, other, "release")),
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
