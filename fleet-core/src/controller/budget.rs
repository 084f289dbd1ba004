//! Workspace budgets: the most spend attributed to a workspace (see
//! `cost.rs`) in one UTC hour or day, from its quota's `hourly_budget` and
//! `daily_budget`, for claims and jobs alike.
//!
//! A window's spend is the workspace's attributed total now minus its total
//! when the window began: the controller wakes at every hour boundary to
//! take that base while any workspace has a budget. A workspace past a
//! budget gets no new node slot: its waiting claims wait with
//! [`PendingReason::BudgetExhausted`] (or, with `over_budget = "reject"`,
//! new requests are rejected with [`ClaimRejection::BudgetExhausted`]) and
//! its queued jobs stay queued, until the window resets; no node is bought
//! for them meanwhile. Claims and jobs already holding nodes run on: a
//! budget stops new spending, it does not take work away. The bases live
//! in the leader's memory like the ledger itself: a new leader starts its
//! windows from its own start.

use std::collections::BTreeMap;

use super::Controller;
use crate::arbitrate::OverBudget;
use crate::ids::{Millis, Workspace};
use crate::money::Money;
use crate::protocol::{BudgetExceeded, ClaimRejection, PendingReason};

const HOUR: Millis = 3_600_000;
const DAY: Millis = 24 * HOUR;

/// Where a workspace's windows began and what it had spent then.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Windows {
    hour: (Millis, Money),
    day: (Millis, Money),
}

impl Controller {
    fn budgeted(&self) -> impl Iterator<Item = &Workspace> {
        self.quotas
            .iter()
            .filter(|(_, q)| q.hourly_budget.is_some() || q.daily_budget.is_some())
            .map(|(ws, _)| ws)
    }

    /// Starts the windows that began by `now` (their base: the spend now).
    pub(super) fn roll_budget_windows(&mut self, now: Millis) {
        let workspaces: Vec<Workspace> = self.budgeted().cloned().collect();
        for ws in workspaces {
            let spent = self.ledger.workspace_spend(&ws, now);
            let w = self.budgets.entry(ws).or_default();
            let (hour, day) = (now - now % HOUR, now - now % DAY);
            if w.hour.0 != hour {
                w.hour = (hour, spent);
            }
            if w.day.0 != day {
                w.day = (day, spent);
            }
        }
    }

    /// When windows next begin, while any workspace has a budget.
    pub(super) fn next_budget_window(&self, now: Millis) -> Option<Millis> {
        self.budgeted().next().map(|_| now - now % HOUR + HOUR)
    }

    /// The budget `ws` has spent, if any (the daily one first).
    pub(super) fn budget_exceeded(&self, ws: &Workspace, now: Millis) -> Option<BudgetExceeded> {
        let q = self.quotas.get(ws)?;
        if q.hourly_budget.is_none() && q.daily_budget.is_none() {
            return None;
        }
        let spent = self.ledger.workspace_spend(ws, now);
        let w = self.budgets.get(ws).copied().unwrap_or_default();
        let check = |window: &str, cap: Option<Money>, base: (Millis, Money), len: Millis| {
            let cap = cap?;
            let used = spent.saturating_sub(base.1);
            (used >= cap).then(|| BudgetExceeded {
                window: window.to_owned(),
                cap_micros: cap.micros(),
                spent_micros: used.micros(),
                resets_at: now - now % len + len,
            })
        };
        check("daily", q.daily_budget, w.day, DAY)
            .or_else(|| check("hourly", q.hourly_budget, w.hour, HOUR))
    }

    /// The workspaces over a budget now, with the budget spent: worked out
    /// once per round (a workspace's spend walks the ledger's held nodes),
    /// not once per waiting claim or job.
    pub(super) fn over_budget(&self, now: Millis) -> BTreeMap<Workspace, BudgetExceeded> {
        self.budgeted()
            .filter_map(|ws| Some((ws.clone(), self.budget_exceeded(ws, now)?)))
            .collect()
    }

    /// Whether a new request of `ws` is refused for its budget.
    pub(super) fn budget_rejection(&self, ws: &Workspace, now: Millis) -> Option<ClaimRejection> {
        let q = self.quotas.get(ws)?;
        if q.over_budget != OverBudget::Reject {
            return None;
        }
        self.budget_exceeded(ws, now)
            .map(|budget| ClaimRejection::BudgetExhausted { budget })
    }

    /// Marks the waiting claims whose workspace is over budget (they are
    /// offered no node and none is bought for them) and says why. Returns
    /// whether any workspace has a budget (then holds may have changed).
    pub(super) fn hold_for_budgets(&mut self, now: Millis) -> bool {
        if self.budgeted().next().is_none() {
            return false;
        }
        let over = self.over_budget(now);
        for (_, c) in self.claims.pending_mut() {
            let budget = over.get(&c.rec.request.workspace);
            c.budget_held = budget.is_some();
            if let Some(budget) = budget {
                c.rec.pending_reason = Some(PendingReason::BudgetExhausted {
                    budget: budget.clone(),
                });
            }
        }
        true
    }
}
