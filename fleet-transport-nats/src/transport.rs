//! The control-plane side of the claim and job planes over core NATS.
//!
//! [`NatsTransport`] queue-subscribes (so several daemons share the load) to
//! `<ns>.claim.{request,renew,release}.*.*` and
//! `<ns>.job.{submit,cancel,verdict}.*.*`; [`Transport::recv`] takes the
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
use fleet_core::protocol::{ClaimMsg, ClaimRejection, ClaimReply, JobMsg, JobReply};
use fleet_core::subjects::{ClaimVerb, JobVerb, Subjects};
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
/// never issued fails with `NoPeer` instead of publishing anywhere; for a
/// job message's inbox, also the job, whose events subject gets every
/// reply too.
struct ReplyBook {
    ttl: Duration,
    max: usize,
    live: HashMap<String, (Instant, Option<JobTarget>)>,
    order: VecDeque<(Instant, String)>,
}

/// The workspace and job (or run) a job message's reply inbox is for.
type JobTarget = (fleet_core::Workspace, String);

impl ReplyBook {
    fn new(ttl: Duration, max: usize) -> ReplyBook {
        ReplyBook {
            ttl,
            max: max.max(1),
            live: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, reply: &str, now: Instant, job: Option<JobTarget>) {
        let expires = now + self.ttl;
        self.live.insert(reply.to_owned(), (expires, job));
        self.order.push_back((expires, reply.to_owned()));
        while let Some((at, _)) = self.order.front() {
            if *at > now && self.live.len() <= self.max {
                break;
            }
            if let Some((at, name)) = self.order.pop_front()
                && self.live.get(&name).map(|e| e.0) == Some(at)
            {
                self.live.remove(&name);
            }
        }
    }

    fn contains(&self, reply: &str, now: Instant) -> bool {
        self.live.get(reply).is_some_and(|(at, _)| *at > now)
    }

    /// A live job inbox's job, its life extended: a job's submitter hears
    /// from it for as long as the job runs, well past the TTL.
    fn job_reply(&mut self, reply: &str, now: Instant) -> Option<Option<JobTarget>> {
        let (at, job) = self.live.get(reply)?.clone();
        if at <= now {
            return None;
        }
        if job.is_some() && at < now + self.ttl / 2 {
            self.insert(reply, now, job.clone());
        }
        Some(job)
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
        let claim_subjects = [ClaimVerb::Request, ClaimVerb::Renew, ClaimVerb::Release]
            .map(|verb| subjects.claim_wildcard(verb));
        let job_subjects = JobVerb::REQUESTS.map(|verb| subjects.job_wildcard(verb));
        for subject in claim_subjects.into_iter().chain(job_subjects) {
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
    /// Checks one message: the claim or job message to hand to the
    /// controller, or `None` when it was refused (and answered, if it can
    /// be).
    fn check(&self, msg: Message) -> Option<Inbound> {
        if self.subjects.parse_job(msg.subject.as_str()).is_some() {
            return self.check_job(msg);
        }
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
        lock(&self.book).insert(&reply, Instant::now(), None);
        Some(Inbound::Claim {
            msg: body,
            reply: ReplyTo(reply),
        })
    }

    /// Checks a job-plane message: its subject's verb, workspace and job
    /// must be the body's.
    fn check_job(&self, msg: Message) -> Option<Inbound> {
        let subject = msg.subject.as_str();
        let reply = msg.reply.as_ref().map(|r| r.as_str().to_owned());
        let parsed = self.subjects.parse_job(subject);
        let checked = parsed
            .clone()
            .ok_or_else(|| "not a job subject".to_owned())
            .and_then(|(verb, ws, job)| {
                let body: JobMsg = from_wire(&msg.payload).map_err(|e| e.to_string())?;
                if JobVerb::of(&body) != verb {
                    return Err(format!(
                        "a {} subject carries another message",
                        verb.token()
                    ));
                }
                let (body_ws, body_job) = body.target();
                if *body_ws != ws || *body_job != job {
                    return Err(format!(
                        "subject names {ws}/{job}, body names {body_ws}/{body_job}"
                    ));
                }
                Ok((ws, job, body))
            });
        // A run's id is not a job's: the refusal names no job then.
        let job = parsed
            .filter(|(verb, _, _)| *verb != JobVerb::Run)
            .and_then(|(_, _, job)| fleet_core::JobId::new(job).ok());
        let Some(reply) = reply else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject, "job message without a reply subject; dropped");
            return None;
        };
        match checked {
            Ok((ws, job, body)) => {
                lock(&self.book).insert(&reply, Instant::now(), Some((ws, job)));
                Some(Inbound::Job {
                    msg: body,
                    reply: ReplyTo(reply),
                })
            }
            Err(why) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject, len = msg.payload.len(), why = %why, "refused job message");
                self.answer(reply, &JobReply::Rejected { job, why });
                None
            }
        }
    }

    /// Answers a refused message `Rejected { Invalid }` from a task of its
    /// own, so `recv` has no await point but the subscriptions (and stays
    /// cancel-safe).
    fn reject(&self, reply: String, claim_id: Option<fleet_core::ClaimId>, why: String) {
        let answer = ClaimReply::Rejected {
            claim_id,
            error: ClaimRejection::Invalid { why },
        };
        self.answer(reply, &answer);
    }

    /// Publishes `answer` to `reply` from a task of its own (`recv` stays
    /// cancel-safe).
    fn answer<M: serde::Serialize>(&self, reply: String, answer: &M) {
        match to_wire(answer) {
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
            (Peer::Reply(reply), Outbound::Job(m)) => {
                let Some(job) = lock(&self.book).job_reply(&reply.0, Instant::now()) else {
                    return Err(TransportError::NoPeer(format!(
                        "reply address {} was not issued by this transport (or expired)",
                        reply.0
                    )));
                };
                let body = to_wire(m)?;
                // Watchers of the job hear what its submitter hears.
                if let Some((ws, job)) = job {
                    let events = self.subjects.job(JobVerb::Events, &ws, &job);
                    self.publish(events, body.clone()).await?;
                }
                self.publish(reply.0.clone(), body).await
            }
            (to, _) => Err(TransportError::NoPeer(format!(
                "{to:?}: the NATS transport serves the claim and job planes only"
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
        book.insert("a", now, None);
        book.insert("b", now, None);
        book.insert("c", now, None);
        assert!(!book.contains("a", now), "over capacity, the oldest goes");
        assert!(book.contains("b", now) && book.contains("c", now));
        assert!(!book.contains("c", now + Duration::from_secs(11)));
        assert!(!book.contains("never", now));
        // Re-inserting refreshes; the stale queue entry must not evict it.
        book.insert("b", now + Duration::from_secs(5), None);
        book.insert("d", now + Duration::from_secs(12), None);
        assert!(book.contains("b", now + Duration::from_secs(12)));
        assert!(book.contains("d", now + Duration::from_secs(12)));
    }

    #[test]
    fn a_job_inbox_lives_while_replies_flow() {
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut book = ReplyBook::new(ttl, 100);
        let job = (
            fleet_core::Workspace::new("ws").unwrap_or_else(|_| unreachable!()),
            "j1".to_owned(),
        );
        book.insert("claim", now, None);
        book.insert("job", now, Some(job.clone()));
        // A reply every 6 s keeps the job's inbox for a minute.
        for i in 1..=10 {
            let at = now + Duration::from_secs(6 * i);
            assert_eq!(book.job_reply("job", at), Some(Some(job.clone())), "at {i}");
        }
        assert_eq!(book.job_reply("claim", now + Duration::from_secs(60)), None);
        // Silence for longer than the TTL ends it.
        assert_eq!(book.job_reply("job", now + Duration::from_secs(75)), None);
    }
}
