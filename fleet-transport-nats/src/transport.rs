//! The control-plane side of the claim plane over core NATS.
//!
//! [`NatsTransport`] queue-subscribes (so several daemons share the load) to
//! `<ns>.claim.{request,renew,release}.*.*`; [`Transport::recv`] takes the
//! next message straight from those subscriptions (no task or channel in
//! between), decodes it with the protocol codec and returns it with the
//! message's reply inbox as its [`ReplyTo`]. A message that does not decode, or whose
//! body names another workspace, claim or verb than its subject, is answered
//! with `Rejected { Invalid }` (when it has a reply subject), logged and
//! dropped; it never reaches the controller. Because the subject's workspace
//! must match the body's, a server permission on a workspace's subjects
//! also confines what that workspace can ask for.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, Message, Subscriber};
use async_trait::async_trait;
use fleet_core::protocol::{ClaimMsg, ClaimRejection, ClaimReply};
use fleet_core::subjects::{ClaimVerb, Subjects};
use fleet_core::transport::{Inbound, Outbound, Peer, ReplyTo, Transport, TransportError};
use futures_util::StreamExt;
use futures_util::stream::{SelectAll, select_all};

use crate::conn::Connection;
use crate::wire::{from_wire, publish_error, subscribe_error, to_wire};

/// Tuning of the control-plane side.
#[derive(Debug, Clone)]
pub struct NatsTransportConfig {
    /// The queue group every daemon of one deployment joins.
    pub queue_group: String,
    /// How long a reply inbox stays addressable after its last message.
    pub reply_ttl: Duration,
    /// The most reply inboxes remembered; the oldest are forgotten first.
    pub max_reply_addresses: usize,
    /// Unused: messages wait in the NATS subscriptions themselves (the
    /// client library's subscription capacity) until [`Transport::recv`]
    /// takes them. Kept so existing configurations still build.
    pub inbound_queue: usize,
}

impl Default for NatsTransportConfig {
    fn default() -> Self {
        NatsTransportConfig {
            queue_group: "fleet-daemon".to_owned(),
            reply_ttl: Duration::from_secs(600),
            max_reply_addresses: 100_000,
            inbound_queue: 1_024,
        }
    }
}

/// Reply inboxes this transport has received, so `send` to an address it
/// never issued fails with `NoPeer` instead of publishing anywhere.
struct ReplyBook {
    ttl: Duration,
    max: usize,
    live: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl ReplyBook {
    fn new(ttl: Duration, max: usize) -> ReplyBook {
        ReplyBook {
            ttl,
            max: max.max(1),
            live: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, reply: &str, now: Instant) {
        let expires = now + self.ttl;
        self.live.insert(reply.to_owned(), expires);
        self.order.push_back((expires, reply.to_owned()));
        while let Some((at, _)) = self.order.front() {
            if *at > now && self.live.len() <= self.max {
                break;
            }
            if let Some((at, name)) = self.order.pop_front()
                && self.live.get(&name) == Some(&at)
            {
                self.live.remove(&name);
            }
        }
    }

    fn contains(&self, reply: &str, now: Instant) -> bool {
        self.live.get(reply).is_some_and(|at| *at > now)
    }
}

/// The claim plane's control-plane side over NATS.
pub struct NatsTransport {
    client: Client,
    subjects: Subjects,
    subs: tokio::sync::Mutex<SelectAll<Subscriber>>,
    book: Mutex<ReplyBook>,
    rejected: AtomicU64,
}

impl fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransport")
            .field("namespace", &self.subjects.namespace())
            .field("rejected", &self.rejected_count())
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// Subscribes to the claim subjects under `subjects`' namespace and
    /// returns once the server has the subscriptions in place.
    pub async fn start(
        conn: &Connection,
        subjects: Subjects,
        config: NatsTransportConfig,
    ) -> Result<NatsTransport, TransportError> {
        let client = conn.client().clone();
        let mut subs = Vec::new();
        for verb in [ClaimVerb::Request, ClaimVerb::Renew, ClaimVerb::Release] {
            let subject = subjects.claim_wildcard(verb);
            subs.push(
                client
                    .queue_subscribe(subject.clone(), config.queue_group.clone())
                    .await
                    .map_err(|e| subscribe_error(&subject, &e))?,
            );
        }
        let transport = NatsTransport {
            client,
            subjects,
            subs: tokio::sync::Mutex::new(select_all(subs)),
            book: Mutex::new(ReplyBook::new(config.reply_ttl, config.max_reply_addresses)),
            rejected: AtomicU64::new(0),
        };
        conn.sync().await?;
        Ok(transport)
    }

    /// Messages refused so far (undecodable, inconsistent, or without a
    /// reply subject).
    pub fn rejected_count(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    async fn publish(&self, subject: String, body: bytes::Bytes) -> Result<(), TransportError> {
        self.client
            .publish(subject.clone(), body)
            .await
            .map_err(|e| publish_error(&subject, &e))
    }
}

impl NatsTransport {
    /// Checks one message: the claim message to hand to the controller, or
    /// `None` when it was refused (and answered, if it can be).
    fn check(&self, msg: Message) -> Option<Inbound> {
        let subject = msg.subject.as_str();
        let reply = msg.reply.as_ref().map(|r| r.as_str().to_owned());
        let checked = self
            .subjects
            .parse_claim(subject)
            .ok_or_else(|| "not a claim subject".to_owned())
            .and_then(|(verb, ws, id)| {
                let body: ClaimMsg = from_wire(&msg.payload).map_err(|e| e.to_string())?;
                let verb_ok = matches!(
                    (verb, &body),
                    (ClaimVerb::Request, ClaimMsg::Request(_))
                        | (ClaimVerb::Renew, ClaimMsg::Renew { .. })
                        | (ClaimVerb::Release, ClaimMsg::Release { .. })
                );
                if !verb_ok {
                    return Err(format!(
                        "a {} subject carries another message",
                        verb.token()
                    ));
                }
                if *body.workspace() != ws || *body.claim_id() != id {
                    return Err(format!(
                        "subject names {ws}/{id}, body names {}/{}",
                        body.workspace(),
                        body.claim_id()
                    ));
                }
                Ok((id, body))
            });
        let (claim_id, body) = match checked {
            Ok(ok) => ok,
            Err(why) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject, len = msg.payload.len(), why = %why, "refused claim message");
                if let Some(reply) = reply {
                    let claim_id = self.subjects.parse_claim(subject).map(|(_, _, id)| id);
                    self.reject(reply, claim_id, why);
                }
                return None;
            }
        };
        let Some(reply) = reply else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject, claim = %claim_id, "claim message without a reply subject; dropped");
            return None;
        };
        lock(&self.book).insert(&reply, Instant::now());
        Some(Inbound::Claim {
            msg: body,
            reply: ReplyTo(reply),
        })
    }

    /// Answers a refused message `Rejected { Invalid }` from a task of its
    /// own, so `recv` has no await point but the subscriptions (and stays
    /// cancel-safe).
    fn reject(&self, reply: String, claim_id: Option<fleet_core::ClaimId>, why: String) {
        let answer = ClaimReply::Rejected {
            claim_id,
            error: ClaimRejection::Invalid { why },
        };
        match to_wire(&answer) {
            Ok(body) => {
                let client = self.client.clone();
                tokio::spawn(async move {
                    if let Err(e) = client.publish(reply, body).await {
                        tracing::debug!(error = %e, "could not answer a refused message");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "could not encode a rejection"),
        }
    }
}

fn lock(book: &Mutex<ReplyBook>) -> std::sync::MutexGuard<'_, ReplyBook> {
    // Nothing panics while the lock is held; a poisoned book is consistent.
    book.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Transport for NatsTransport {
    async fn recv(&self) -> Result<Inbound, TransportError> {
        // Cancel-safe: the only await points are the lock and the
        // subscriptions' `next`, and a message is handled without awaiting.
        let mut subs = self.subs.lock().await;
        loop {
            let msg = subs.next().await.ok_or(TransportError::Closed)?;
            if let Some(inbound) = self.check(msg) {
                return Ok(inbound);
            }
        }
    }

    async fn send(&self, to: &Peer, msg: Outbound) -> Result<(), TransportError> {
        match (to, &msg) {
            (Peer::Reply(reply), Outbound::Claim(m)) => {
                if !lock(&self.book).contains(&reply.0, Instant::now()) {
                    return Err(TransportError::NoPeer(format!(
                        "reply address {} was not issued by this transport (or expired)",
                        reply.0
                    )));
                }
                let body = to_wire(m)?;
                self.publish(reply.0.clone(), body).await
            }
            (Peer::Claim(ws, id), Outbound::Claim(m)) => {
                let verb = match m {
                    ClaimReply::Granted(_) => ClaimVerb::Granted,
                    ClaimReply::Revoked(_) => ClaimVerb::Revoked,
                    ClaimReply::Released { .. } => ClaimVerb::Released,
                    other => {
                        return Err(TransportError::NoPeer(format!(
                            "no claim subject carries {other:?}; answer the reply address"
                        )));
                    }
                };
                let body = to_wire(m)?;
                self.publish(self.subjects.claim(verb, ws, id), body).await
            }
            (to, _) => Err(TransportError::NoPeer(format!(
                "{to:?}: the NATS transport serves the claim plane only"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_book_forgets_expired_and_oldest() {
        let now = Instant::now();
        let mut book = ReplyBook::new(Duration::from_secs(10), 2);
        book.insert("a", now);
        book.insert("b", now);
        book.insert("c", now);
        assert!(!book.contains("a", now), "over capacity, the oldest goes");
        assert!(book.contains("b", now) && book.contains("c", now));
        assert!(!book.contains("c", now + Duration::from_secs(11)));
        assert!(!book.contains("never", now));
        // Re-inserting refreshes; the stale queue entry must not evict it.
        book.insert("b", now + Duration::from_secs(5));
        book.insert("d", now + Duration::from_secs(12));
        assert!(book.contains("b", now + Duration::from_secs(12)));
        assert!(book.contains("d", now + Duration::from_secs(12)));
    }
}
