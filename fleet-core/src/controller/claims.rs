//! The claim state machine: request, grant, renew, release, expiry,
//! revocation, and arbitration rounds.

use std::collections::{BTreeMap, BTreeSet};

use super::cost::Holder;
use super::persist::{Effect, TimerKey};
use super::{Alert, Claim, Command, Controller, Node, Pool};
use crate::arbitrate::{
    ArbitrationInput, NodeCapacity, PendingClaim, Usage, arbitrate, service_key,
};
use crate::ids::{AffinityKey, ClaimId, Millis, NodeId, PoolName, Workspace};
use crate::money::{Money, Rounding};
use crate::protocol::{
    ClaimGrant, ClaimMsg, ClaimRecord, ClaimRejection, ClaimReply, ClaimRequest, ClaimState,
    DaemonMsg, Lease, MAX_LEASE_TTL_MS, NodeState, PendingReason, Record, Renewal, Requirements,
    Revocation, RevokeReason, SealedCredentials, x25519_recipient_key,
};
use crate::subjects::Subjects;
use crate::transport::{Outbound, Peer, ReplyTo};

impl Controller {
    pub(super) fn restore_claim(&mut self, mut rec: ClaimRecord, now: Millis) {
        if rec.state.holds_node() {
            // Fresh timer: downtime must not expire every lease at once.
            let fresh = now.saturating_add(rec.request.lease_ttl_ms);
            rec.expires_at = Some(rec.expires_at.map_or(fresh, |t| t.max(fresh)));
        }
        let id = rec.request.claim_id.clone();
        let pending = rec.state == ClaimState::Pending;
        if rec.state == ClaimState::Granted {
            // The grant may never have reached the caller (a crash between
            // the write and the send): publish it again; it is identical.
            self.startup.push(Effect::Grant { claim: id.clone() });
        }
        self.claims.insert(id, Claim::stored_record(rec), pending);
    }

    /// After restore: attach held claims to their nodes and arm timers.
    pub(super) fn relink_claims(&mut self, now: Millis) {
        let held: Vec<(ClaimId, Option<NodeId>)> = self
            .claims
            .iter()
            .filter(|(_, c)| c.rec.state.holds_node())
            .map(|(id, c)| (id.clone(), c.rec.node.clone()))
            .collect();
        for (claim, node) in held {
            if let Some(n) = node.as_ref().and_then(|n| self.nodes.get_mut(n)) {
                n.claims.insert(claim.clone());
                n.idle_since = None;
                let node = n.rec.node.clone();
                self.bill_hold(&node, Holder::Claim(claim.clone()), now);
            } else if let Some(c) = self.claims.get_mut(&claim) {
                // Its node is gone from the store: revoke on the first tick.
                c.rec.expires_at = Some(now);
            }
        }
        let ids: Vec<ClaimId> = self.claims.keys().cloned().collect();
        for id in ids {
            self.touch_claim(&id);
        }
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        for id in ids {
            self.touch_node(&id);
        }
    }

    pub(super) fn claim_deadline(&self, claim: &Claim) -> Option<Millis> {
        let rec = &claim.rec;
        match &rec.state {
            ClaimState::Pending if claim.durable && claim.reserved.is_none() => rec
                .request
                .max_wait_ms
                .map(|w| rec.enqueued_at.saturating_add(w)),
            ClaimState::Pending => None,
            ClaimState::Granted | ClaimState::Active => rec.expires_at,
            _ => rec
                .ended_at
                .map(|t| t.saturating_add(self.timing.claim_retention_ms)),
        }
    }

    pub(super) fn touch_claim(&mut self, id: &ClaimId) {
        let at = self.claims.get(id).and_then(|c| self.claim_deadline(c));
        self.timers.set_claim(id, at);
    }

    pub(super) fn on_claim(
        &mut self,
        msg: ClaimMsg,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        match msg {
            ClaimMsg::Request(req) => self.on_request(req, reply, now, out),
            ClaimMsg::Renew {
                workspace,
                claim_id,
            } => self.on_renew(&workspace, &claim_id, reply, now, out),
            ClaimMsg::Release {
                workspace,
                claim_id,
            } => self.on_release(&workspace, &claim_id, reply, now, out),
        }
    }

    fn reject(
        out: &mut Vec<Command>,
        reply: ReplyTo,
        claim: Option<ClaimId>,
        error: ClaimRejection,
    ) {
        out.push(Command::Send {
            to: Peer::Reply(reply),
            msg: Outbound::Claim(ClaimReply::Rejected {
                claim_id: claim,
                error,
            }),
        });
    }

    fn validate(&self, req: &ClaimRequest) -> Result<(), ClaimRejection> {
        if !self.pools.contains_key(&req.pool) {
            return Err(ClaimRejection::UnknownPool {
                pool: req.pool.to_string(),
            });
        }
        if req.lease_ttl_ms == 0 || req.lease_ttl_ms > MAX_LEASE_TTL_MS {
            return Err(ClaimRejection::Invalid {
                why: format!(
                    "lease_ttl_ms must be between 1 and {MAX_LEASE_TTL_MS}, got {}",
                    req.lease_ttl_ms
                ),
            });
        }
        if let Some(r) = &req.recipient {
            // The sealer takes X25519 recipients only: refuse now what it
            // would refuse after the claim has waited for a node.
            x25519_recipient_key(r).map_err(|e| ClaimRejection::Invalid {
                why: format!("recipient must be an age X25519 recipient (age1…): {e}"),
            })?;
        }
        Ok(())
    }

    fn on_request(
        &mut self,
        req: ClaimRequest,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let id = req.claim_id.clone();
        if let Some(existing) = self.claims.get(&id) {
            if existing.rec.request != req {
                return Self::reject(out, reply, Some(id), ClaimRejection::IdReused);
            }
            // Idempotent retry: answer with where the claim is now.
            return self.answer_existing(&id, reply, now, out);
        }
        if let Err(e) = self.validate(&req) {
            return Self::reject(out, reply, Some(id), e);
        }
        if let Some(e) = self.budget_rejection(&req.workspace, now) {
            return Self::reject(out, reply, Some(id), e);
        }
        let reason = self
            .unsatisfiable(&req)
            .unwrap_or(PendingReason::WaitingForCapacity);
        let rec = ClaimRecord {
            request: req,
            state: ClaimState::Pending,
            enqueued_at: now,
            node: None,
            endpoint: None,
            granted_at: None,
            expires_at: None,
            credentials: None,
            pending_reason: Some(reason),
            ended_at: None,
            epoch: self.epoch,
        };
        self.claims.insert(
            id.clone(),
            Claim {
                rec,
                durable: false,
                reserved: None,
                affinity_until: None,
                budget_held: false,
                renewing: Vec::new(),
                unanswered: Some(reply),
                fresh: true,
                noted: None,
            },
            // Arbitrated in this round before it is written: a claim a
            // free node serves is written once, granted (`store_fresh`).
            true,
        );
        self.fresh.push(id);
        // Not demand yet (planning waits until it is stored): the pools
        // plan in this round only if arbitration gives it a node.
        self.arbitrate_due = true;
    }

    fn answer_existing(
        &mut self,
        id: &ClaimId,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(c) = self.claims.get(id) else {
            return;
        };
        if c.fresh {
            // Not written yet: the newest request gets the answer.
            if let Some(c) = self.claims.get_mut(id) {
                c.unanswered = Some(reply);
            }
            return;
        }
        let key = claim_key(&c.rec);
        if !c.durable || self.writes.pending(&key) {
            // Not yet stored, or moving on (a grant, an end) and not yet
            // stored: answer once it is, never before — a grant answered
            // from memory and lost in a crash would be granted again
            // elsewhere.
            let effect = Effect::ClaimAccepted {
                claim: id.clone(),
                reply,
            };
            if let Some(effect) = self.writes.attach(&key, effect) {
                self.run_effects(vec![effect], now, out);
            }
            return;
        }
        let msg = match &c.rec.state {
            ClaimState::Pending => ClaimReply::Pending {
                claim_id: id.clone(),
                reason: pending_reason(&c.rec),
            },
            ClaimState::Granted | ClaimState::Active => match self.grant_of(c) {
                Some(g) => ClaimReply::Granted(g),
                None => return,
            },
            ClaimState::Released => ClaimReply::Rejected {
                claim_id: Some(id.clone()),
                error: ClaimRejection::Ended,
            },
            ClaimState::Expired | ClaimState::Revoked { .. } => {
                ClaimReply::Revoked(revocation_of(&c.rec))
            }
        };
        out.push(Command::Send {
            to: Peer::Reply(reply),
            msg: Outbound::Claim(msg),
        });
    }

    /// Why no node of the pool could ever serve `req`, if so.
    fn unsatisfiable(&self, req: &ClaimRequest) -> Option<PendingReason> {
        unsatisfiable(&self.pools, req)
    }

    fn grant_of(&self, c: &Claim) -> Option<ClaimGrant> {
        let rec = &c.rec;
        Some(ClaimGrant {
            claim_id: rec.request.claim_id.clone(),
            workspace: rec.request.workspace.clone(),
            pool: rec.request.pool.clone(),
            node: rec.node.clone()?,
            endpoint: rec.endpoint.clone().unwrap_or_default(),
            lease: Lease {
                claim_id: rec.request.claim_id.clone(),
                expires_at: rec.expires_at?,
            },
            epoch: rec.epoch,
            credentials: rec.credentials.clone(),
        })
    }

    fn on_renew(
        &mut self,
        ws: &Workspace,
        id: &ClaimId,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(c) = in_workspace(&mut self.claims, ws, id) else {
            return Self::reject(out, reply, Some(id.clone()), ClaimRejection::UnknownClaim);
        };
        match c.rec.state {
            ClaimState::Granted | ClaimState::Active => {
                c.rec.state = ClaimState::Active;
                c.rec.expires_at = Some(now.saturating_add(c.rec.request.lease_ttl_ms));
                c.rec.epoch = self.epoch;
                let effect = Effect::Renewed {
                    claim: id.clone(),
                    reply,
                };
                self.save_claim(id, vec![effect], now, out);
            }
            ClaimState::Pending if !c.durable => {
                // Not stored yet: say nothing until it is.
                self.answer_existing(id, reply, now, out);
            }
            ClaimState::Pending => {
                let reason = pending_reason(&c.rec);
                out.push(Command::Send {
                    to: Peer::Reply(reply),
                    msg: Outbound::Claim(ClaimReply::Pending {
                        claim_id: id.clone(),
                        reason,
                    }),
                });
            }
            _ => Self::reject(out, reply, Some(id.clone()), ClaimRejection::Ended),
        }
    }

    fn on_release(
        &mut self,
        ws: &Workspace,
        id: &ClaimId,
        reply: ReplyTo,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(c) = in_workspace(&mut self.claims, ws, id) else {
            return Self::reject(out, reply, Some(id.clone()), ClaimRejection::UnknownClaim);
        };
        if c.rec.state.is_terminal() {
            // Already over: releasing again is a no-op that still confirms.
            out.push(Command::Send {
                to: Peer::Reply(reply),
                msg: Outbound::Claim(ClaimReply::Released {
                    claim_id: id.clone(),
                }),
            });
            return;
        }
        self.end_claim(id, ClaimState::Released, Some(reply), now, out);
    }

    /// Ends a claim (released, expired, revoked): stores it, then frees its
    /// slot and notifies.
    pub(super) fn end_claim(
        &mut self,
        id: &ClaimId,
        state: ClaimState,
        reply: Option<ReplyTo>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(c) = self.claims.get_mut(id) else {
            return;
        };
        if c.rec.state.is_terminal() {
            return;
        }
        if let Some(node) = c.reserved.take() {
            // Never stored as granted: the slot is freed at once.
            if let Some(n) = self.nodes.get_mut(&node) {
                n.claims.remove(id);
                if n.occupied() == 0 {
                    n.idle_since = Some(now);
                }
            }
            self.bill_release(&node, &Holder::Claim(id.clone()), now);
            self.decide_again();
        }
        let Some(c) = self.claims.get_mut(id) else {
            return;
        };
        c.rec.state = state;
        c.rec.ended_at = Some(now);
        c.rec.pending_reason = None;
        c.rec.epoch = self.epoch;
        let effect = Effect::ClaimEnded {
            claim: id.clone(),
            reply,
        };
        self.save_claim(id, vec![effect], now, out);
    }

    /// Queues the write of a claim's record with effects to run once stored.
    pub(super) fn save_claim(
        &mut self,
        id: &ClaimId,
        effects: Vec<Effect>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let epoch = self.epoch;
        let Some(c) = self.claims.get_mut(id) else {
            return;
        };
        // Every write carries its writer's epoch (a driver tells its own
        // writes from another leader's by it).
        c.rec.epoch = epoch;
        let pending = c.rec.state == ClaimState::Pending;
        let key = claim_key(&c.rec);
        let value = Some(Record::Claim(c.rec.clone()));
        self.claims.set_pending(id, pending);
        if let Some(done) = self.writes.write(key, value, effects, out) {
            self.run_effects(done, now, out);
        }
        self.touch_claim(id);
        self.note_claim(id, now);
    }

    /// Writes the claims requested in this round that it did not grant,
    /// `pending`; they are acknowledged once stored. One the round
    /// granted is written once, as granted, when its grant is committed.
    pub(super) fn store_fresh(&mut self, now: Millis, out: &mut Vec<Command>) {
        for id in std::mem::take(&mut self.fresh) {
            let Some(c) = self.claims.get_mut(&id) else {
                continue;
            };
            if !c.fresh || c.reserved.is_some() || c.rec.state != ClaimState::Pending {
                continue;
            }
            c.fresh = false;
            let Some(reply) = c.unanswered.take() else {
                continue;
            };
            let effect = Effect::ClaimAccepted {
                claim: id.clone(),
                reply,
            };
            self.save_claim(&id, vec![effect], now, out);
        }
    }

    /// Acknowledges the claims accepted in this round that it did not
    /// grant: `pending`, with the reason the round left.
    pub(super) fn send_acks(&mut self, now: Millis, out: &mut Vec<Command>) {
        for (claim, reply) in std::mem::take(&mut self.acks) {
            let Some(c) = self.claims.get(&claim) else {
                continue;
            };
            if c.reserved.is_some() {
                // Granted: the grant is the answer, once stored.
                if let Some(c) = self.claims.get_mut(&claim) {
                    c.unanswered = Some(reply);
                }
                continue;
            }
            if c.rec.state != ClaimState::Pending {
                // It ended in this round: answer with how.
                self.answer_existing(&claim, reply, now, out);
                continue;
            }
            out.push(Command::Send {
                to: Peer::Reply(reply),
                msg: Outbound::Claim(ClaimReply::Pending {
                    claim_id: claim,
                    reason: pending_reason(&c.rec),
                }),
            });
        }
    }

    pub(super) fn claim_effect(&mut self, effect: Effect, now: Millis, out: &mut Vec<Command>) {
        match effect {
            Effect::ClaimAccepted { claim, reply } => {
                let Some(c) = self.claims.get_mut(&claim) else {
                    return;
                };
                c.durable = true;
                // Stored: now demand for its pool's plan.
                self.plan_due = true;
                if c.rec.state == ClaimState::Pending {
                    // Answered after this round: a claim the round grants
                    // gets its grant as the first answer, not a `pending`
                    // just before it.
                    self.acks.push((claim.clone(), reply));
                } else {
                    // It moved on before the ack went out; answer with
                    // where it is now.
                    self.answer_existing(&claim, reply, now, out);
                }
                self.touch_claim(&claim);
                // Arbitration saw it in the round that accepted it, but not
                // in the rounds while it was written (neither fresh nor
                // stored): it looks again if a slot is free now.
                if self.any_free_slot() {
                    self.arbitrate_due = true;
                }
            }
            Effect::Grant { claim } => {
                let unanswered = self.claims.get_mut(&claim).and_then(Claim::stored);
                let Some(c) = self.claims.get(&claim) else {
                    return;
                };
                if !c.rec.state.holds_node() {
                    return;
                }
                let Some(grant) = self.grant_of(c) else {
                    return;
                };
                out.push(Command::Send {
                    to: Peer::Node(grant.node.clone()),
                    msg: Outbound::Agent(DaemonMsg::Activate {
                        claim_id: claim.clone(),
                        expires_at: grant.lease.expires_at,
                    }),
                });
                if let Some(reply) = unanswered {
                    out.push(Command::Send {
                        to: Peer::Reply(reply),
                        msg: Outbound::Claim(ClaimReply::Granted(grant.clone())),
                    });
                }
                out.push(Command::Send {
                    to: Peer::Claim(grant.workspace.clone(), claim.clone()),
                    msg: Outbound::Claim(ClaimReply::Granted(grant)),
                });
            }
            Effect::Renewed { claim, reply } => {
                let Some(c) = self.claims.get_mut(&claim) else {
                    return;
                };
                let (Some(node), Some(expires_at)) = (c.rec.node.clone(), c.rec.expires_at) else {
                    return;
                };
                if !c.rec.state.holds_node() {
                    return Self::reject(out, reply, Some(claim), ClaimRejection::Ended);
                }
                out.push(Command::Send {
                    to: Peer::Node(node.clone()),
                    msg: Outbound::Agent(DaemonMsg::Activate {
                        claim_id: claim.clone(),
                        expires_at,
                    }),
                });
                // A certificate cannot be extended: a claim that was given
                // credentials gets new ones that last as long as the lease.
                let outlived = c
                    .rec
                    .credentials
                    .as_ref()
                    .is_some_and(|s| s.expires_at < expires_at);
                match c.rec.request.recipient.clone() {
                    Some(recipient) if outlived => {
                        c.renewing.push((reply, expires_at));
                        out.push(Command::IssueCredentials {
                            claim: claim.clone(),
                            workspace: c.rec.request.workspace.clone(),
                            node,
                            endpoint: c.rec.endpoint.clone().unwrap_or_default(),
                            recipient,
                            expires_at,
                        });
                    }
                    _ => out.push(Command::Send {
                        to: Peer::Reply(reply),
                        msg: Outbound::Claim(ClaimReply::Renewed(Renewal {
                            claim_id: claim,
                            expires_at,
                            credentials: c.rec.credentials.clone(),
                        })),
                    }),
                }
            }
            Effect::ClaimEnded { claim, reply } => {
                let Some(c) = self.claims.get(&claim) else {
                    return;
                };
                let rec = c.rec.clone();
                if let Some(node) = &rec.node {
                    self.bill_release(node, &Holder::Claim(claim.clone()), now);
                    if let Some(n) = self.nodes.get_mut(node) {
                        if n.claims.remove(&claim) && n.occupied() == 0 {
                            n.idle_since = Some(now);
                        }
                        out.push(Command::Send {
                            to: Peer::Node(node.clone()),
                            msg: Outbound::Agent(DaemonMsg::Deactivate {
                                claim_id: claim.clone(),
                            }),
                        });
                    }
                    self.decide_again();
                }
                let released = ClaimReply::Released {
                    claim_id: claim.clone(),
                };
                if let Some(reply) = reply {
                    out.push(Command::Send {
                        to: Peer::Reply(reply),
                        msg: Outbound::Claim(released.clone()),
                    });
                }
                // The end goes where the grant went, so whoever follows the
                // claim (not only whoever released it) learns of it: NATS
                // publishes it on `<ns>.claim.{released,revoked}.<ws>.<id>`.
                let end = if rec.state == ClaimState::Released {
                    released
                } else {
                    ClaimReply::Revoked(revocation_of(&rec))
                };
                // A request granted at once and not told `pending` learns
                // of the end (its grant failed) on its own reply too.
                if let Some(reply) = self.claims.get_mut(&claim).and_then(Claim::stored) {
                    out.push(Command::Send {
                        to: Peer::Reply(reply),
                        msg: Outbound::Claim(end.clone()),
                    });
                }
                out.push(Command::Send {
                    to: Peer::Claim(rec.request.workspace.clone(), claim),
                    msg: Outbound::Claim(end),
                });
            }
            Effect::ClaimForgotten { claim }
                if self
                    .claims
                    .get(&claim)
                    .is_some_and(|c| c.rec.state.is_terminal()) =>
            {
                self.claims.remove(&claim);
                self.ledger.forget(&Holder::Claim(claim.clone()));
                self.timers.set(TimerKey::Claim(claim), None);
            }
            _ => {}
        }
    }

    pub(super) fn claim_timer(&mut self, id: &ClaimId, now: Millis, out: &mut Vec<Command>) {
        let Some(c) = self.claims.get(id) else {
            return;
        };
        let Some(due) = self.claim_deadline(c) else {
            return;
        };
        if due > now {
            // Re-arm: the deadline moved (renewed) since the timer was set.
            self.touch_claim(id);
            return;
        }
        match &c.rec.state {
            ClaimState::Pending => self.end_claim(id, ClaimState::Expired, None, now, out),
            ClaimState::Granted | ClaimState::Active => {
                let node_known = c
                    .rec
                    .node
                    .as_ref()
                    .is_some_and(|n| self.nodes.contains_key(n));
                let state = if node_known {
                    ClaimState::Expired
                } else {
                    ClaimState::Revoked {
                        reason: RevokeReason::NodeLost,
                    }
                };
                self.end_claim(id, state, None, now, out);
            }
            _ => {
                let key = claim_key(&c.rec);
                let effect = Effect::ClaimForgotten { claim: id.clone() };
                if let Some(done) = self.writes.write(key, None, vec![effect], out) {
                    self.run_effects(done, now, out);
                }
            }
        }
    }

    pub(super) fn on_credentials(
        &mut self,
        claim: ClaimId,
        result: Result<SealedCredentials, String>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(c) = self.claims.get(&claim) else {
            return; // released or expired meanwhile
        };
        let Some(node) = c.reserved.clone() else {
            return self.on_renewal_credentials(claim, result, now, out);
        };
        match result {
            Ok(sealed) => self.commit_grant(&claim, &node, Some(sealed), now, out),
            Err(error) => {
                out.push(Command::Alert(Alert::CredentialsFailed {
                    claim: claim.clone(),
                    error: error.clone(),
                }));
                let state = ClaimState::Revoked {
                    reason: RevokeReason::Operator {
                        note: format!("credentials could not be issued: {error}"),
                    },
                };
                self.end_claim(&claim, state, None, now, out);
            }
        }
    }

    /// Credentials minted for a renewal: stored with the claim, then the
    /// renewals they cover are confirmed with them. A failure leaves the
    /// lease renewed and the previous certificate in place.
    fn on_renewal_credentials(
        &mut self,
        claim: ClaimId,
        result: Result<SealedCredentials, String>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let epoch = self.epoch;
        let Some(c) = self.claims.get_mut(&claim) else {
            return;
        };
        if c.renewing.is_empty() {
            return;
        }
        if !c.rec.state.holds_node() {
            for (reply, _) in std::mem::take(&mut c.renewing) {
                Self::reject(out, reply, Some(claim.clone()), ClaimRejection::Ended);
            }
            return;
        }
        match result {
            Ok(sealed) => {
                let covered = sealed.expires_at;
                if c.rec
                    .credentials
                    .as_ref()
                    .is_none_or(|s| s.expires_at < covered)
                {
                    c.rec.credentials = Some(sealed);
                }
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut c.renewing)
                    .into_iter()
                    .partition(|(_, asked)| *asked <= covered);
                c.renewing = waiting;
                if ready.is_empty() {
                    return;
                }
                c.rec.epoch = epoch;
                let effects = ready
                    .into_iter()
                    .map(|(reply, _)| Effect::Renewed {
                        claim: claim.clone(),
                        reply,
                    })
                    .collect();
                self.save_claim(&claim, effects, now, out);
            }
            Err(error) => {
                let expires_at = c.rec.expires_at.unwrap_or(now);
                for (reply, _) in std::mem::take(&mut c.renewing) {
                    out.push(Command::Send {
                        to: Peer::Reply(reply),
                        msg: Outbound::Claim(ClaimReply::Renewed(Renewal {
                            claim_id: claim.clone(),
                            expires_at,
                            credentials: None,
                        })),
                    });
                }
                out.push(Command::Alert(Alert::CredentialsFailed { claim, error }));
            }
        }
    }

    fn commit_grant(
        &mut self,
        id: &ClaimId,
        node: &NodeId,
        credentials: Option<SealedCredentials>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let endpoint = self.nodes.get(node).and_then(|n| n.rec.endpoint.clone());
        let Some(c) = self.claims.get_mut(id) else {
            return;
        };
        c.reserved = None;
        c.rec.state = ClaimState::Granted;
        c.rec.node = Some(node.clone());
        c.rec.endpoint = endpoint;
        c.rec.granted_at = Some(now);
        let fresh = now.saturating_add(c.rec.request.lease_ttl_ms);
        c.rec.expires_at = Some(c.rec.expires_at.unwrap_or(fresh));
        c.rec.credentials = credentials;
        c.rec.pending_reason = None;
        c.rec.epoch = self.epoch;
        self.save_claim(id, vec![Effect::Grant { claim: id.clone() }], now, out);
    }

    /// One arbitration round over durable pending claims and free slots.
    /// Claims with an affinity key are first offered the free nodes that
    /// last served their key (`affinity.rs`); the rest go through one
    /// [`arbitrate`] round.
    pub(super) fn arbitrate_round(&mut self, now: Millis, out: &mut Vec<Command>) -> bool {
        if self.claims.pending_len() == 0 {
            return false;
        }
        let mut capacity = self.capacity();
        // A hold takes a claim out of its pool's demand (or puts it back).
        let held = self.hold_for_affinity(&capacity, now) | self.hold_for_budgets(now);
        if capacity.iter().all(|n| n.free_slots == 0) {
            // Nothing can be granted (most events while nodes boot): only
            // refresh why each claim waits, without an arbitration round.
            // Read in one pass; the few that change are written after.
            let mut reasons = WaitReasons::new(self);
            let changed: Vec<(ClaimId, PendingReason)> = self
                .claims
                .pending()
                .filter(|(_, c)| c.reserved.is_none() && !c.budget_held)
                .filter_map(|(id, c)| {
                    let reason = reasons.changed(c, PendingReason::WaitingForCapacity)?;
                    Some((id.clone(), reason))
                })
                .collect();
            self.set_reasons(changed, now);
            return held;
        }
        if self.quotas.is_empty()
            && let Some(granted) = self.arbitrate_unlimited(&mut capacity, now, out)
        {
            return held || granted;
        }
        let mut keyed: Vec<(usize, AffinityKey)> = Vec::new();
        let pending: Vec<PendingClaim> = self
            .claims
            .pending()
            .map(|(_, c)| c)
            .filter(|c| c.arbitrable())
            .enumerate()
            .map(|(i, c)| {
                if let Some(key) = &c.rec.request.affinity {
                    keyed.push((i, key.clone()));
                }
                c.pending_claim()
            })
            .collect();
        if pending.is_empty() {
            return held;
        }
        let mut usage = self.usage(&capacity);
        let affine = self.affine_grants(&pending, &keyed, &mut capacity, &mut usage);
        let rest: Vec<PendingClaim> = if affine.is_empty() {
            pending
        } else {
            let granted: BTreeSet<&ClaimId> = affine.iter().map(|a| &a.claim).collect();
            pending
                .into_iter()
                .filter(|c| !granted.contains(&c.id))
                .collect()
        };
        let outcome = arbitrate(ArbitrationInput {
            claims: &rest,
            nodes: &capacity,
            quotas: &self.quotas,
            usage: &usage,
        });
        // As in the all-busy path: read each waiting claim once, write
        // back only the reasons that changed.
        let mut reasons = WaitReasons::new(self);
        let changed: Vec<(ClaimId, PendingReason)> = outcome
            .waiting
            .into_iter()
            .filter_map(|(claim, reason)| {
                let reason = reasons.changed(self.claims.get(&claim)?, reason)?;
                Some((claim, reason))
            })
            .collect();
        self.set_reasons(changed, now);
        let granted = !affine.is_empty() || !outcome.grants.is_empty();
        for a in affine.into_iter().chain(outcome.grants) {
            self.grant(&a.claim, &a.node, now, out);
        }
        held || granted
    }

    /// The round without quotas or affinity keys, fed to `arbitrate` only
    /// as far down the service order as free slots last: `arbitrate` goes
    /// down that order greedily, so its grants for a prefix do not depend
    /// on the claims after it, and without quotas every claim it leaves
    /// waits for capacity. A long queue (a pool sized below its peaks) was
    /// arbitrated whole on every round that freed one slot: 39 % of such a
    /// simulated year. Returns whether it granted, or `None` (nothing
    /// done) when a waiting claim names an affinity key.
    fn arbitrate_unlimited(
        &mut self,
        capacity: &mut [NodeCapacity],
        now: Millis,
        out: &mut Vec<Command>,
    ) -> Option<bool> {
        let mut waiting: Vec<&Claim> = self
            .claims
            .pending()
            .map(|(_, c)| &**c)
            .filter(|c| c.arbitrable())
            .collect();
        if waiting.iter().any(|c| c.rec.request.affinity.is_some()) {
            return None;
        }
        // `arbitrate`'s service order (ids are unique here).
        waiting.sort_unstable_by_key(|c| {
            let r = &c.rec;
            service_key(r.request.priority, r.enqueued_at, &r.request.claim_id)
        });
        let mut free: u64 = capacity.iter().map(|n| u64::from(n.free_slots)).sum();
        let mut grants = Vec::new();
        let mut fed = 0;
        while free > 0 && fed < waiting.len() {
            // Twice the free slots: most claims fit, a few may not.
            let take = usize::try_from(free.saturating_mul(2))
                .unwrap_or(usize::MAX)
                .max(16);
            let chunk = &waiting[fed..waiting.len().min(fed.saturating_add(take))];
            fed += chunk.len();
            let claims: Vec<PendingClaim> = chunk.iter().map(|c| c.pending_claim()).collect();
            let outcome = arbitrate(ArbitrationInput {
                claims: &claims,
                nodes: capacity,
                quotas: &self.quotas,
                usage: &BTreeMap::new(),
            });
            for g in &outcome.grants {
                if let Some(n) = capacity.iter_mut().find(|n| n.id == g.node) {
                    n.free_slots = n.free_slots.saturating_sub(1);
                }
                free -= 1;
            }
            grants.extend(outcome.grants);
        }
        // Everyone not granted waits for capacity, in service order.
        let granted: BTreeSet<&ClaimId> = grants.iter().map(|a| &a.claim).collect();
        let mut reasons = WaitReasons::new(self);
        let changed: Vec<(ClaimId, PendingReason)> = waiting
            .iter()
            .filter(|c| !granted.contains(&c.rec.request.claim_id))
            .filter_map(|c| {
                let reason = reasons.changed(c, PendingReason::WaitingForCapacity)?;
                Some((c.rec.request.claim_id.clone(), reason))
            })
            .collect();
        self.set_reasons(changed, now);
        let any = !grants.is_empty();
        for a in grants {
            self.grant(&a.claim, &a.node, now, out);
        }
        Some(any)
    }

    /// Writes the waiting reasons that changed into their claims.
    fn set_reasons(&mut self, changed: Vec<(ClaimId, PendingReason)>, now: Millis) {
        for (claim, reason) in changed {
            if let Some(c) = self.claims.get_mut(&claim) {
                c.rec.pending_reason = Some(reason);
                self.note_claim(&claim, now);
            }
        }
    }

    /// Gives `node` to the pending claim `claim`: reserves it, and either
    /// asks for credentials or commits the grant.
    fn grant(&mut self, claim: &ClaimId, node: &NodeId, now: Millis, out: &mut Vec<Command>) {
        let Some(c) = self.claims.get_mut(claim) else {
            return;
        };
        c.reserved = Some(node.clone());
        // The lease starts now: the credentials minted for it and the
        // grant must name the same expiry (the seal signs it).
        let expires_at = now.saturating_add(c.rec.request.lease_ttl_ms);
        c.rec.expires_at = Some(expires_at);
        let recipient = c.rec.request.recipient.clone();
        let workspace = c.rec.request.workspace.clone();
        let affinity = c.rec.request.affinity.clone();
        if let Some(n) = self.nodes.get_mut(node) {
            n.claims.insert(claim.clone());
            n.idle_since = None;
            if let Some(key) = affinity {
                if n.last_affinity.as_ref() == Some(&key) {
                    self.affinity.hits += 1;
                } else {
                    self.affinity.misses += 1;
                }
                n.last_affinity = Some(key);
            }
        }
        self.bill_hold(node, Holder::Claim(claim.clone()), now);
        self.count_use(node, now, out);
        let endpoint = self
            .nodes
            .get(node)
            .and_then(|n| n.rec.endpoint.clone())
            .unwrap_or_default();
        match recipient {
            Some(recipient) => out.push(Command::IssueCredentials {
                claim: claim.clone(),
                workspace,
                node: node.clone(),
                endpoint,
                recipient,
                expires_at,
            }),
            None => self.commit_grant(claim, node, None, now, out),
        }
        self.touch_claim(claim);
    }

    /// Counts a claim or job given to `node`. Where the pool recycles
    /// nodes after `max_uses`, the count is written at once, so a new
    /// leader does not give a node more than its share.
    pub(super) fn count_use(&mut self, node: &NodeId, now: Millis, out: &mut Vec<Command>) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        n.rec.uses = n.rec.uses.saturating_add(1);
        let limited = self
            .pools
            .get(&n.rec.pool)
            .is_some_and(|p| p.spec.max_uses.is_some());
        if limited {
            self.save_node(node, Vec::new(), now, out);
        }
    }

    /// Whether a ready, connected node has a slot free (retiring ones
    /// included: a yes only means arbitration looks).
    fn any_free_slot(&self) -> bool {
        self.nodes.values().any(|n| {
            n.rec.state == NodeState::Ready
                && n.connected
                && self
                    .pools
                    .get(&n.rec.pool)
                    .is_some_and(|p| n.occupied() < p.spec.slots_per_node as usize)
        })
    }

    /// Free slots of ready, connected nodes, for an arbitration round.
    pub(super) fn capacity(&self) -> Vec<NodeCapacity> {
        let mut capacity = Vec::new();
        let retiring: BTreeSet<NodeId> =
            self.pools.values().flat_map(|p| self.retiring(p)).collect();
        for n in self.nodes.values() {
            if n.rec.state != NodeState::Ready || !n.connected {
                continue;
            }
            let Some(pool) = self.pools.get(&n.rec.pool) else {
                continue;
            };
            let Some(offering) = pool
                .offerings
                .iter()
                .find(|o| o.instance_type == n.rec.instance_type)
            else {
                continue;
            };
            if retiring.contains(&n.rec.node) {
                // Served its share, or drifted: it is replaced once idle.
                continue;
            }
            let slots = pool.spec.slots_per_node;
            capacity.push(NodeCapacity {
                id: n.rec.node.clone(),
                pool: n.rec.pool.clone(),
                resources: offering.resources(&pool.spec.labels),
                slots,
                free_slots: slots.saturating_sub(u32::try_from(n.occupied()).unwrap_or(u32::MAX)),
                price: offering.price(n.rec.market).unwrap_or(offering.on_demand),
            });
        }
        capacity
    }

    /// Per-workspace holdings: claims held and their share of node prices.
    /// Arbitration reads them only against a quota (a claim count or a
    /// dollar cap): without any, none are counted (a lookup of every held
    /// claim in every round).
    pub(super) fn usage(&self, capacity: &[NodeCapacity]) -> BTreeMap<Workspace, Usage> {
        if self.quotas.is_empty() {
            return BTreeMap::new();
        }
        let price: BTreeMap<&NodeId, (Money, u32)> = capacity
            .iter()
            .map(|n| (&n.id, (n.price.0, n.slots)))
            .collect();
        let mut usage: BTreeMap<Workspace, Usage> = BTreeMap::new();
        // Held and reserved claims are exactly the claims nodes hold; a
        // running job holds a slot the same way.
        for n in self.nodes.values() {
            let claims = n
                .claims
                .iter()
                .filter_map(|id| self.claims.get(id))
                .map(|c| &c.rec.request.workspace);
            let jobs = n
                .jobs
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .map(|j| &j.rec.spec.workspace);
            for workspace in claims.chain(jobs) {
                let u = usage.entry(workspace.clone()).or_default();
                u.claims += 1;
                if let Some((p, slots)) = price.get(&n.rec.node) {
                    let share = p
                        .mul_div(1, u64::from((*slots).max(1)), Rounding::Up)
                        .unwrap_or(*p);
                    u.hourly_spend = u.hourly_spend.saturating_add(share);
                }
            }
        }
        usage
    }
}

/// Refines arbitration's "waiting for capacity" with what the pools know,
/// over one round: which pools are at `max_nodes` is counted once, when
/// first asked (a count per waiting claim was a scan of every node each,
/// measured on a simulated year: 0.6 % of its instructions).
struct WaitReasons<'a> {
    pools: &'a BTreeMap<PoolName, Pool>,
    nodes: &'a BTreeMap<NodeId, Node>,
    /// Pools whose live nodes reached `max_nodes`, with it.
    full: Option<Vec<(&'a PoolName, u32)>>,
    /// Whether a pool sells a type for these requirements, per pair asked
    /// this round: many waiting claims share a few (a pool lookup and a
    /// scan of its offerings per claim was 3 % of a queueing year).
    unsatisfiable: Vec<(PoolName, Requirements, Option<PendingReason>)>,
}

impl<'a> WaitReasons<'a> {
    fn new(c: &'a Controller) -> WaitReasons<'a> {
        WaitReasons {
            pools: &c.pools,
            nodes: &c.nodes,
            full: None,
            unsatisfiable: Vec::new(),
        }
    }

    /// Why `c` waits, given arbitration's `reason`, if that is not what
    /// its record says already.
    fn changed(&mut self, c: &Claim, reason: PendingReason) -> Option<PendingReason> {
        let reason = self.explain(c, reason);
        (c.rec.pending_reason.as_ref() != Some(&reason)).then_some(reason)
    }

    /// Why `c` waits, given arbitration's `reason`.
    fn explain(&mut self, c: &Claim, reason: PendingReason) -> PendingReason {
        if reason != PendingReason::WaitingForCapacity {
            return reason;
        }
        let req = &c.rec.request;
        let known = self
            .unsatisfiable
            .iter()
            .find(|(pool, r, _)| *pool == req.pool && *r == req.requirements);
        let verdict = match known {
            Some((_, _, verdict)) => verdict.clone(),
            None => {
                let verdict = unsatisfiable(self.pools, req);
                self.unsatisfiable.push((
                    req.pool.clone(),
                    req.requirements.clone(),
                    verdict.clone(),
                ));
                verdict
            }
        };
        if let Some(r) = verdict {
            return r;
        }
        let (pools, nodes) = (self.pools, self.nodes);
        let full = self.full.get_or_insert_with(|| {
            let mut live: BTreeMap<&PoolName, usize> = BTreeMap::new();
            for n in nodes.values() {
                if !matches!(n.rec.state, NodeState::Gone) {
                    *live.entry(&n.rec.pool).or_insert(0) += 1;
                }
            }
            pools
                .values()
                .filter(|p| {
                    live.get(&p.spec.name).copied().unwrap_or(0) >= p.spec.max_nodes as usize
                })
                .map(|p| (&p.spec.name, p.spec.max_nodes))
                .collect()
        });
        match full.iter().find(|(pool, _)| **pool == c.rec.request.pool) {
            Some((_, max_nodes)) => PendingReason::PoolAtCapacity {
                max_nodes: *max_nodes,
            },
            None => reason,
        }
    }
}

/// Why no node of its pool could ever serve `req`, if so.
fn unsatisfiable(pools: &BTreeMap<PoolName, Pool>, req: &ClaimRequest) -> Option<PendingReason> {
    let pool = pools.get(&req.pool)?;
    let fits = pool
        .offerings
        .iter()
        .any(|o| o.serves(&req.requirements, &pool.spec.labels));
    if fits {
        return None;
    }
    let r = &req.requirements;
    Some(PendingReason::Unsatisfiable {
        why: format!(
            "no instance type of pool {} offers cpus>={}, memory_mb>={}{}{}",
            req.pool,
            r.cpus,
            r.memory_mb,
            r.arch.map(|a| format!(", arch={a:?}")).unwrap_or_default(),
            if r.labels.is_empty() {
                String::new()
            } else {
                format!(", labels={:?}", r.labels)
            }
        ),
    })
}

pub(super) fn claim_key(rec: &ClaimRecord) -> crate::store::Key {
    Subjects::claim_key(&rec.request.workspace, &rec.request.claim_id)
}

fn pending_reason(rec: &ClaimRecord) -> PendingReason {
    rec.pending_reason
        .clone()
        .unwrap_or(PendingReason::WaitingForCapacity)
}

fn revocation_of(rec: &ClaimRecord) -> Revocation {
    let reason = match &rec.state {
        ClaimState::Revoked { reason } => reason.clone(),
        ClaimState::Expired if rec.node.is_none() => RevokeReason::WaitExceeded,
        _ => RevokeReason::Expired,
    };
    Revocation {
        claim_id: rec.request.claim_id.clone(),
        workspace: rec.request.workspace.clone(),
        node: rec.node.clone(),
        reason,
    }
}

/// The claim `id` if it belongs to `ws`: a caller may only renew or
/// release its own workspace's claims (another's reads as unknown).
fn in_workspace<'a>(
    claims: &'a mut super::claim_table::ClaimTable,
    ws: &Workspace,
    id: &ClaimId,
) -> Option<&'a mut Claim> {
    claims
        .get_mut(id)
        .filter(|c| &c.rec.request.workspace == ws)
}
