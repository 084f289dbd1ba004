//! The lease rules of a claimed spec as plain functions of the claim, the
//! agent and the time (no I/O, no clock): what an agent writes when it
//! claims, renews, settles or takes over a spec, and what it may do with a
//! claim it finds. The loop in [`super`] performs each as a conditional
//! write on the version it read, so of two agents acting on one version
//! only one succeeds.

use fleet_core::ids::Millis;
use fleet_core::protocol::{QueueClaim, QueueLease, QueueOutcome, QueueRecord, QueueResult};

/// The lease settings every transition needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// How long a lease lasts from its last renewal.
    pub lease_ms: u64,
    /// Runs a spec gets (the first claim and the take-overs) before the
    /// agent that finds its lease lapsed again files it as failed.
    pub max_attempts: u64,
    /// Whether this agent takes over lapsed leases at all.
    pub take_over: bool,
}

fn lease(agent: &str, fencing: u64, now: Millis, rules: &Rules) -> QueueLease {
    QueueLease {
        agent: agent.to_owned(),
        fencing,
        acquired_at: now,
        renewed_at: now,
        expires_at: now.saturating_add(rules.lease_ms),
    }
}

/// The first claim of a spec: fencing 1.
pub fn claim(
    spec_id: &str,
    spec: serde_json::Value,
    agent: &str,
    now: Millis,
    rules: &Rules,
) -> QueueClaim {
    QueueClaim {
        spec_id: spec_id.to_owned(),
        spec,
        lease: lease(agent, 1, now, rules),
        result: None,
    }
}

/// The claim of a spec that will not run (not JSON, too large): settled as
/// failed from the start.
pub fn refused(
    spec_id: &str,
    spec: serde_json::Value,
    agent: &str,
    now: Millis,
    reason: String,
    rules: &Rules,
) -> QueueClaim {
    let outcome = QueueOutcome::Failed {
        exit_code: None,
        reason,
    };
    settle(&claim(spec_id, spec, agent, now, rules), outcome, now, now)
}

/// The holder's renewal.
pub fn renew(claim: &QueueClaim, now: Millis, rules: &Rules) -> QueueClaim {
    let mut next = claim.clone();
    next.lease.renewed_at = now;
    next.lease.expires_at = now.saturating_add(rules.lease_ms);
    next
}

/// The holder's result: the claim settled, to be filed.
pub fn settle(
    claim: &QueueClaim,
    outcome: QueueOutcome,
    started_at: Millis,
    ended_at: Millis,
) -> QueueClaim {
    let mut next = claim.clone();
    next.result = Some(QueueResult {
        outcome,
        started_at,
        ended_at,
    });
    next
}

/// What an agent may do with a claim it found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// It is settled: file this record (any agent may).
    File(QueueRecord),
    /// Its holder's lease runs until then: leave it.
    Held {
        /// When it lapses unless renewed.
        expires_at: Millis,
    },
    /// Its lease lapsed but this agent does not take over.
    Lapsed,
    /// Its lease lapsed: write this claim (fencing one higher, this agent's
    /// lease) and run the spec.
    TakeOver(QueueClaim),
    /// Its lease lapsed at the last attempt: write this settled claim (a
    /// failure, under a fencing one higher) and file it.
    GiveUp(QueueClaim),
}

/// Judges a claim found in `claimed/` at `now` (the lease lapses once
/// `now` is past `expires_at`).
pub fn found(claim: &QueueClaim, agent: &str, now: Millis, rules: &Rules) -> Found {
    if let Some(record) = claim.record() {
        return Found::File(record);
    }
    if now <= claim.lease.expires_at {
        return Found::Held {
            expires_at: claim.lease.expires_at,
        };
    }
    if !rules.take_over {
        return Found::Lapsed;
    }
    let mut next = claim.clone();
    next.lease = lease(agent, claim.lease.fencing.saturating_add(1), now, rules);
    if claim.lease.fencing >= rules.max_attempts {
        let reason = format!(
            "the lease lapsed at attempt {} of {} (agent {} stopped renewing it at {})",
            claim.lease.fencing, rules.max_attempts, claim.lease.agent, claim.lease.renewed_at
        );
        let outcome = QueueOutcome::Failed {
            exit_code: None,
            reason,
        };
        return Found::GiveUp(settle(&next, outcome, now, now));
    }
    Found::TakeOver(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(take_over: bool) -> impl Strategy<Value = Rules> {
        (1u64..100_000, 1u64..6).prop_map(move |(lease_ms, max_attempts)| Rules {
            lease_ms,
            max_attempts,
            take_over,
        })
    }

    fn running() -> impl Strategy<Value = QueueClaim> {
        (1u64..10, 0u64..1_000_000, 0u64..100_000).prop_map(|(fencing, at, lease)| QueueClaim {
            spec_id: "s".into(),
            spec: serde_json::json!({"spec": {}}),
            lease: QueueLease {
                agent: "old/1".into(),
                fencing,
                acquired_at: at,
                renewed_at: at,
                expires_at: at + lease,
            },
            result: None,
        })
    }

    proptest! {
        #[test]
        fn a_held_lease_is_never_taken(c in running(), r in rules(true), back in 0u64..100_000) {
            let now = c.lease.expires_at.saturating_sub(back);
            prop_assert_eq!(found(&c, "new/2", now, &r), Found::Held { expires_at: c.lease.expires_at });
        }

        #[test]
        fn a_lapsed_lease_is_taken_with_the_next_fencing_number_or_given_up(
            c in running(), r in rules(true), after in 1u64..100_000,
        ) {
            let now = c.lease.expires_at + after;
            match found(&c, "new/2", now, &r) {
                Found::TakeOver(next) => {
                    prop_assert!(c.lease.fencing < r.max_attempts);
                    prop_assert_eq!(next.lease.fencing, c.lease.fencing + 1);
                    prop_assert_eq!(next.lease.agent.as_str(), "new/2");
                    prop_assert_eq!(next.lease.expires_at, now + r.lease_ms);
                    prop_assert_eq!(next.result, None);
                    prop_assert_eq!(next.spec, c.spec);
                }
                Found::GiveUp(next) => {
                    prop_assert!(c.lease.fencing >= r.max_attempts);
                    prop_assert_eq!(next.lease.fencing, c.lease.fencing + 1);
                    let record = next.record().unwrap_or_else(|| panic!("settled"));
                    prop_assert_eq!(record.outcome.dir(), "failed");
                    prop_assert_eq!(record.agent.as_str(), "new/2");
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }

        #[test]
        fn without_take_over_a_lapsed_lease_is_left(c in running(), r in rules(false), after in 1u64..100_000) {
            prop_assert_eq!(found(&c, "new/2", c.lease.expires_at + after, &r), Found::Lapsed);
        }

        #[test]
        fn a_settled_claim_is_only_filed_under_its_holders_fencing(
            c in running(), r in rules(true), code in any::<i32>(), after in 0u64..10_000_000,
        ) {
            let outcome = if code == 0 {
                QueueOutcome::Completed { exit_code: 0 }
            } else {
                QueueOutcome::Failed { exit_code: Some(code), reason: format!("exited with {code}") }
            };
            let settled = settle(&c, outcome.clone(), c.lease.renewed_at, c.lease.renewed_at + 1);
            match found(&settled, "new/2", c.lease.renewed_at + after, &r) {
                Found::File(record) => {
                    prop_assert_eq!(record.fencing, c.lease.fencing);
                    prop_assert_eq!(record.agent, c.lease.agent);
                    prop_assert_eq!(record.outcome, outcome);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }

        #[test]
        fn a_renewal_keeps_the_holder_and_moves_the_expiry(c in running(), r in rules(true), later in 0u64..100_000) {
            let now = c.lease.renewed_at + later;
            let next = renew(&c, now, &r);
            prop_assert_eq!((&next.lease.agent, next.lease.fencing, next.lease.acquired_at),
                            (&c.lease.agent, c.lease.fencing, c.lease.acquired_at));
            prop_assert_eq!((next.lease.renewed_at, next.lease.expires_at), (now, now + r.lease_ms));
            prop_assert_eq!(next.result, None);
        }
    }

    #[test]
    fn a_refused_spec_is_settled_failed_at_fencing_one() {
        let r = Rules {
            lease_ms: 1000,
            max_attempts: 3,
            take_over: true,
        };
        let c = refused(
            "g",
            serde_json::json!("not json"),
            "a/1",
            5,
            "not JSON".into(),
            &r,
        );
        let record = c.record().unwrap_or_else(|| panic!("settled"));
        assert_eq!(
            (record.fencing, record.started_at, record.ended_at),
            (1, 5, 5)
        );
        assert_eq!(
            record.outcome,
            QueueOutcome::Failed {
                exit_code: None,
                reason: "not JSON".into()
            }
        );
    }
}
