//! The claim plane (`/v1/claims`): a caller's connection, the requests and
//! revocation subscriptions it has open, the scope check its token allows,
//! and routing replies, grants and revocations back to those requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fleet_core::ids::{ClaimId, Workspace};
use fleet_core::protocol::{ClaimMsg, ClaimRejection, ClaimReply, JobReply};
use fleet_core::transport::{Inbound, Outbound, ReplyTo, TransportError};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Bytes;
use tracing::{debug, warn};

use super::{Shared, State, Ws, close_now};
use crate::auth::ClaimScope;
use crate::config::close_code;
use crate::conn::{CloseReason, Flow, Handler, Queued, drive, queue_error, to_message};
use crate::frame::{ClientFrame, ServerFrame, Undecodable, read_client_frame};

const REPLY_PREFIX: &str = "ws-";

/// What a claim-plane request number is open for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Open {
    Claim(Option<(Workspace, ClaimId)>),
    Job,
}

pub(super) struct ClaimConn {
    tx: mpsc::Sender<Queued>,
    open: HashMap<u64, Open>,
    subs: HashMap<u64, Workspace>,
    pub(super) close: Option<oneshot::Sender<CloseReason>>,
}

impl Shared {
    fn claim_frame(&self, frame: &ServerFrame) -> Result<Queued, TransportError> {
        to_message(frame, self.cfg.max_message_bytes).map(Queued::from)
    }

    /// Sends a claim or job reply to the request `reply` names, if it is
    /// still open and was opened for that plane.
    pub(super) fn deliver_reply(
        &self,
        reply: &ReplyTo,
        msg: &Outbound,
    ) -> Result<(), TransportError> {
        let Some((conn, req)) = parse_reply(reply) else {
            return Err(TransportError::NoPeer(reply.0.clone()));
        };
        let frame = match msg {
            Outbound::Claim(m) => ServerFrame::Reply {
                req,
                msg: m.clone(),
            },
            Outbound::Job(m) => ServerFrame::JobReply {
                req,
                msg: m.clone(),
            },
            _ => return Err(TransportError::NoPeer(reply.0.clone())),
        };
        let wire = self.claim_frame(&frame)?;
        let st = self.lock();
        if st.closed {
            return Err(TransportError::Closed);
        }
        let Some(c) = st.conns.get(&conn) else {
            return Err(TransportError::NoPeer(reply.0.clone()));
        };
        match (c.open.get(&req), msg) {
            (Some(Open::Claim(_)), Outbound::Claim(_)) | (Some(Open::Job), Outbound::Job(_)) => {
                c.tx.try_send(wire).map_err(|e| queue_error(e, &reply.0))
            }
            (Some(_), _) => Err(TransportError::NoPeer(format!(
                "{} belongs to the other plane",
                reply.0
            ))),
            (None, _) => Err(TransportError::NoPeer(reply.0.clone())),
        }
    }

    /// Sends a claim's reply to every open request for it and, for a
    /// revocation, to every subscription to its workspace.
    pub(super) fn deliver_to_claim(
        &self,
        ws: &Workspace,
        id: &ClaimId,
        reply: &ClaimReply,
    ) -> Result<(), TransportError> {
        let who = format!("claim {ws}/{id}");
        let st = self.lock();
        if st.closed {
            return Err(TransportError::Closed);
        }
        let mut result = Ok(());
        for (conn, req) in st
            .waiters
            .get(&(ws.clone(), id.clone()))
            .into_iter()
            .flatten()
        {
            if let Some(c) = st.conns.get(conn) {
                let wire = self.claim_frame(&ServerFrame::Reply {
                    req: *req,
                    msg: reply.clone(),
                })?;
                if let Err(e @ TransportError::Backpressure(_)) =
                    c.tx.try_send(wire).map_err(|e| queue_error(e, &who))
                {
                    result = Err(e);
                }
            }
        }
        if let ClaimReply::Revoked(rev) = reply {
            for (conn, sub) in st.subs.get(ws).into_iter().flatten() {
                if let Some(c) = st.conns.get(conn) {
                    let wire = self.claim_frame(&ServerFrame::Revocation {
                        sub: *sub,
                        msg: rev.clone(),
                    })?;
                    if let Err(e @ TransportError::Backpressure(_)) =
                        c.tx.try_send(wire).map_err(|e| queue_error(e, &who))
                    {
                        result = Err(e);
                    }
                }
            }
        }
        result
    }

    fn send_to_conn(&self, conn: u64, frame: &ServerFrame) {
        let Ok(wire) = self.claim_frame(frame) else {
            return;
        };
        if let Some(c) = self.lock().conns.get(&conn)
            && c.tx.try_send(wire).is_err()
        {
            debug!(conn, "could not queue a control frame");
        }
    }

    fn remove_conn(&self, conn: u64) {
        let mut st = self.lock();
        let Some(c) = st.conns.remove(&conn) else {
            return;
        };
        for open in c.open.values() {
            if let Open::Claim(Some(key)) = open {
                remove_pair(&mut st.waiters, key, conn, None);
            }
        }
        for ws in c.subs.values() {
            remove_pair(&mut st.subs, ws, conn, None);
        }
        drop(st);
        drop(c);
    }
}

fn remove_pair<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Vec<(u64, u64)>>,
    key: &K,
    conn: u64,
    n: Option<u64>,
) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|(c, m)| !(*c == conn && n.is_none_or(|n| n == *m)));
        if list.is_empty() {
            map.remove(key);
        }
    }
}

fn parse_reply(reply: &ReplyTo) -> Option<(u64, u64)> {
    let rest = reply.0.strip_prefix(REPLY_PREFIX)?;
    let (conn, req) = rest.split_once('-')?;
    Some((conn.parse().ok()?, req.parse().ok()?))
}

pub(super) async fn claims_session(
    ws: Ws,
    peer: SocketAddr,
    scope: ClaimScope,
    shared: Arc<Shared>,
) {
    let cfg = &shared.cfg;
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(cfg.send_queue.max(1));
    let (close_tx, close_rx) = oneshot::channel();
    let closed = {
        let mut st = shared.lock();
        st.closed || {
            st.conns.insert(
                conn,
                ClaimConn {
                    tx,
                    open: HashMap::new(),
                    subs: HashMap::new(),
                    close: Some(close_tx),
                },
            );
            false
        }
    };
    if closed {
        return close_now(
            ws,
            CloseReason::new(close_code::GOING_AWAY, "server shutting down"),
        )
        .await;
    }
    debug!(conn, %peer, "claim-plane client connected");
    let mut handler = ClaimsHandler {
        shared: Arc::clone(&shared),
        conn,
        scope,
    };
    let ending = drive(ws, rx, close_rx, cfg, &mut handler).await;
    shared.remove_conn(conn);
    debug!(conn, %peer, ?ending, "claim-plane client disconnected");
}

struct ClaimsHandler {
    shared: Arc<Shared>,
    conn: u64,
    /// The workspaces this connection's token covers.
    scope: ClaimScope,
}

impl ClaimsHandler {
    fn reply_to(&self, req: u64) -> ReplyTo {
        ReplyTo(format!("{REPLY_PREFIX}{}-{req}", self.conn))
    }

    /// Registers an open request; false when the connection has too many.
    fn open(&self, req: u64, what: Open) -> bool {
        let mut st = self.shared.lock();
        let State { conns, waiters, .. } = &mut *st;
        let Some(c) = conns.get_mut(&self.conn) else {
            return false;
        };
        if c.open.len() >= self.shared.cfg.max_open_requests && !c.open.contains_key(&req) {
            return false;
        }
        if let Open::Claim(Some(key)) = &what {
            waiters
                .entry(key.clone())
                .or_default()
                .push((self.conn, req));
        }
        if let Some(Open::Claim(Some(old))) = c.open.insert(req, what) {
            remove_pair(waiters, &old, self.conn, Some(req));
        }
        true
    }

    fn done(&self, req: u64) {
        let mut st = self.shared.lock();
        let State { conns, waiters, .. } = &mut *st;
        if let Some(c) = conns.get_mut(&self.conn)
            && let Some(Open::Claim(Some(key))) = c.open.remove(&req)
        {
            remove_pair(waiters, &key, self.conn, Some(req));
        }
    }

    fn subscribe(&self, sub: u64, ws: Workspace) {
        let mut st = self.shared.lock();
        let State { conns, subs, .. } = &mut *st;
        if let Some(c) = conns.get_mut(&self.conn) {
            if let Some(old) = c.subs.insert(sub, ws.clone()) {
                remove_pair(subs, &old, self.conn, Some(sub));
            }
            subs.entry(ws).or_default().push((self.conn, sub));
        }
    }

    fn unsubscribe(&self, sub: u64) {
        let mut st = self.shared.lock();
        let State { conns, subs, .. } = &mut *st;
        if let Some(c) = conns.get_mut(&self.conn)
            && let Some(ws) = c.subs.remove(&sub)
        {
            remove_pair(subs, &ws, self.conn, Some(sub));
        }
    }

    /// Answers a frame for a workspace outside this connection's scope; true
    /// when it was (and must go no further).
    fn forbidden(&self, frame: &ClientFrame) -> bool {
        let (workspace, answer) = match frame {
            ClientFrame::Claim { req, msg } => (
                msg.workspace(),
                ServerFrame::Reply {
                    req: *req,
                    msg: ClaimReply::Rejected {
                        claim_id: Some(msg.claim_id().clone()),
                        error: ClaimRejection::Forbidden {
                            workspace: msg.workspace().to_string(),
                        },
                    },
                },
            ),
            ClientFrame::Job { req, msg } => {
                let (workspace, _) = msg.target();
                (
                    workspace,
                    ServerFrame::JobReply {
                        req: *req,
                        msg: JobReply::Rejected {
                            job: msg.job().cloned(),
                            why: format!("not allowed in workspace {workspace}"),
                        },
                    },
                )
            }
            ClientFrame::SubscribeRevocations { sub, workspace } => (
                workspace,
                ServerFrame::Error {
                    req: Some(*sub),
                    kind: "forbidden".to_owned(),
                    why: format!("not allowed in workspace {workspace}"),
                },
            ),
            _ => return false,
        };
        if self.scope.allows(workspace) {
            return false;
        }
        warn!(conn = self.conn, %workspace, "claim-plane frame outside the token's workspaces refused");
        self.shared.send_to_conn(self.conn, &answer);
        true
    }

    fn refuse(&self, kind: Option<&str>, req: Option<u64>, err_kind: &str, why: String) {
        let frame = match (kind, req) {
            (Some("claim"), Some(req)) => ServerFrame::Reply {
                req,
                msg: ClaimReply::Rejected {
                    claim_id: None,
                    error: ClaimRejection::Invalid { why },
                },
            },
            (Some("job"), Some(req)) => ServerFrame::JobReply {
                req,
                msg: JobReply::Rejected { job: None, why },
            },
            _ => ServerFrame::Error {
                req,
                kind: err_kind.to_owned(),
                why,
            },
        };
        self.shared.send_to_conn(self.conn, &frame);
    }
}

impl Handler for ClaimsHandler {
    async fn on_frame(&mut self, data: Bytes) -> Flow {
        let frame = match read_client_frame(&data, self.shared.cfg.max_message_bytes) {
            Ok(f) => f,
            Err(Undecodable { error, kind, req }) => {
                warn!(conn = self.conn, error = %error, kind = error.kind(), "undecodable claim-plane frame");
                self.refuse(kind.as_deref(), req, error.kind(), error.to_string());
                return Flow::Continue;
            }
        };
        if self.forbidden(&frame) {
            return Flow::Continue;
        }
        let inbound = match frame {
            ClientFrame::Claim { req, msg } => {
                let key = match &msg {
                    ClaimMsg::Request(r) => Some((r.workspace.clone(), r.claim_id.clone())),
                    _ => None,
                };
                if !self.open(req, Open::Claim(key)) {
                    self.shared.send_to_conn(
                        self.conn,
                        &ServerFrame::Reply {
                            req,
                            msg: ClaimReply::Rejected {
                                claim_id: Some(msg.claim_id().clone()),
                                error: ClaimRejection::Overloaded,
                            },
                        },
                    );
                    return Flow::Continue;
                }
                Inbound::Claim {
                    msg,
                    reply: self.reply_to(req),
                }
            }
            ClientFrame::Job { req, msg } => {
                if !self.open(req, Open::Job) {
                    self.refuse(
                        Some("job"),
                        Some(req),
                        "limit",
                        "too many open requests".to_owned(),
                    );
                    return Flow::Continue;
                }
                Inbound::Job {
                    msg,
                    reply: self.reply_to(req),
                }
            }
            ClientFrame::Done { req } => {
                self.done(req);
                return Flow::Continue;
            }
            ClientFrame::SubscribeRevocations { sub, workspace } => {
                self.subscribe(sub, workspace);
                self.shared
                    .send_to_conn(self.conn, &ServerFrame::Subscribed { sub });
                return Flow::Continue;
            }
            ClientFrame::Unsubscribe { sub } => {
                self.unsubscribe(sub);
                return Flow::Continue;
            }
            other => {
                warn!(conn = self.conn, frame = ?other, "claim-plane frame this server does not handle");
                self.refuse(
                    None,
                    None,
                    "unknown_variant",
                    "frame not handled".to_owned(),
                );
                return Flow::Continue;
            }
        };
        if self.shared.inbox.send(inbound).await.is_err() {
            return Flow::Close(CloseReason::new(
                close_code::GOING_AWAY,
                "server shutting down",
            ));
        }
        Flow::Continue
    }
}
