//! Human output: aligned tables, money, times. Renderers take the API's
//! answers as their `fleet_core::protocol` types; an enum is shown by its
//! wire name, an absent value as `-`.

use std::collections::BTreeMap;

use fleet_core::protocol::{
    ClaimRecord, ClaimState, CostReport, JobRecord, NodeStatus, PoolInfo, StatusSummary,
};
use serde::Serialize;
use serde_json::Value;

/// Renders rows under headers, columns aligned (two spaces apart), no
/// trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(old) => *old = (*old).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Micro-dollars as `$1.234567` (`-$0.000001`).
pub fn money(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}${}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// Milliseconds since the Unix epoch as UTC `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(ms: u64) -> String {
    fleet_core::time::Utc::from_millis(ms).to_string()
}

/// A duration in ms as `1h02m`, `4m05s`, `12s`, `250ms`.
pub fn duration(ms: u64) -> String {
    fleet_core::time::duration(ms)
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An expiry relative to `now`: `2024-…Z (in 4m05s)` or `(… ago)`.
pub fn expiry(at: u64, now: u64) -> String {
    if at >= now {
        format!("{} (in {})", utc(at), duration(at - now))
    } else {
        format!("{} ({} ago)", utc(at), duration(now - at))
    }
}

/// A one-word rendering of a value: strings as is, numbers, `yes`/`no`,
/// `-` for null/missing, a tagged enum by its tag (`state`, `type`, `kind`,
/// `name`) or its single key, arrays comma-joined.
pub fn label(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(a)) if a.is_empty() => "-".to_owned(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| label(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(o)) => {
            for tag in ["state", "type", "kind", "name"] {
                if let Some(Value::String(s)) = o.get(tag) {
                    return s.clone();
                }
            }
            if o.len() == 1
                && let Some(k) = o.keys().next()
            {
                return k.clone();
            }
            Value::Object(o.clone()).to_string()
        }
    }
}

/// A value by its wire name (`on_demand`, `node_lost`), through
/// [`label`].
pub fn tag<T: Serialize>(v: &T) -> String {
    label(serde_json::to_value(v).ok().as_ref())
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn counts(by_name: &BTreeMap<String, u64>) -> String {
    if by_name.is_empty() {
        return "-".to_owned();
    }
    by_name
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `GET /v1/status`.
pub fn status(s: &StatusSummary) -> String {
    // A daemon from before fleet ids says none: no line then.
    let fleet = s.fleet_id.as_ref().map(|f| ("fleet", f.to_string()));
    let rows = fleet.into_iter().chain([
        ("epoch", s.epoch.0.to_string()),
        ("leader", if s.leader { "yes" } else { "no" }.to_owned()),
        ("pools", s.pools.to_string()),
        ("nodes", counts(&s.nodes)),
        ("claims", counts(&s.claims)),
        ("jobs", counts(&s.jobs)),
        ("cost", money(s.cost_micros.micros())),
    ]);
    let mut out = String::new();
    for (name, value) in rows {
        out.push_str(&format!("{name:<8}{value}\n"));
    }
    out
}

/// `GET /v1/diagnose`: the findings, then nodes and waiting claims.
pub fn diagnosis(d: &fleet_core::protocol::Diagnosis) -> String {
    let mut out = String::new();
    if d.findings.is_empty() {
        out.push_str("nothing needs a look\n");
    }
    for f in &d.findings {
        out.push_str(&format!(
            "{:<8}{}: {}\n",
            tag(&f.severity),
            f.subject,
            f.what
        ));
    }
    out.push('\n');
    let nodes: Vec<Vec<String>> = d
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.to_string(),
                n.pool.to_string(),
                n.state.name().to_owned(),
                if n.connected { "yes" } else { "no" }.to_owned(),
                format!("{} s", n.silent_ms / 1_000),
                n.agent_version.clone().unwrap_or_else(|| "-".to_owned()),
                n.claims.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE", "POOL", "STATE", "SESSION", "SILENT", "AGENT", "CLAIMS",
        ],
        &nodes,
    ));
    if !d.waiting.is_empty() {
        out.push('\n');
        let waiting: Vec<Vec<String>> = d
            .waiting
            .iter()
            .map(|w| {
                vec![
                    w.claim.to_string(),
                    w.workspace.to_string(),
                    w.pool.to_string(),
                    format!("{} s", w.waiting_ms / 1_000),
                    tag(&w.reason),
                ]
            })
            .collect();
        out.push_str(&table(
            &["CLAIM", "WORKSPACE", "POOL", "WAITING", "WHY"],
            &waiting,
        ));
    }
    out
}

/// `GET /v1/leader`: who leads and until when, then the followers.
pub fn leader(l: &fleet_core::protocol::LeaderInfo, now: u64) -> String {
    let mut out = match &l.lease {
        Some(lease) => {
            let left = lease.expires_at.saturating_sub(now);
            let until = if left == 0 {
                format!("lapsed at {}", utc(lease.expires_at))
            } else {
                format!(
                    "until {} ({:.1} s)",
                    utc(lease.expires_at),
                    left as f64 / 1000.0
                )
            };
            format!(
                "leader    {} (epoch {}) {until}\n",
                lease.holder, lease.epoch.0
            )
        }
        None => "leader    unknown: this daemon cannot read the lease's store\n".to_owned(),
    };
    out.push_str(&format!(
        "this      {} ({})\n",
        l.this_daemon,
        if l.leader { "leads" } else { "follows" }
    ));
    let rows: Vec<Vec<String>> = l
        .followers
        .iter()
        .map(|f| vec![f.holder.clone(), utc(f.seen_at)])
        .collect();
    out.push_str(&table(&["FOLLOWER", "SEEN"], &rows));
    out
}

/// `GET /v1/replay-status`: what was recovered, then the steps.
pub fn replay_status(r: &fleet_core::protocol::ReplayStatus) -> String {
    let at = |t: Option<u64>| t.map_or_else(|| "-".to_owned(), utc);
    let rows = [
        ("epoch", r.epoch.0.to_string()),
        ("started", utc(r.started_at)),
        ("ready", at(r.ready_at)),
        ("records", counts(&r.records)),
        (
            "nodes",
            format!(
                "{} restored, {} adopted, {} gone",
                r.nodes_restored, r.nodes_adopted, r.nodes_vanished
            ),
        ),
        (
            "orphans",
            format!(
                "{} found, {} collected",
                r.orphans_found, r.orphans_collected
            ),
        ),
        (
            "grants",
            format!("{} published again", r.grants_republished),
        ),
        ("jobs", format!("{} requeued", r.jobs_requeued)),
        ("inventory", at(r.first_inventory_at)),
    ];
    let mut out = String::new();
    for (name, value) in rows {
        out.push_str(&format!("{name:<10}{value}\n"));
    }
    let steps: Vec<Vec<String>> = r
        .steps
        .iter()
        .map(|s| vec![s.step.clone(), format!("{} ms", s.ms)])
        .collect();
    out.push_str(&table(&["STEP", "TOOK"], &steps));
    out
}

/// What a strategy saw, in a line.
fn plan_inputs(i: &fleet_core::protocol::PlanInputs) -> String {
    let mut out = format!("{} waiting", i.waiting);
    if let Some(w) = i.oldest_wait_ms {
        out.push_str(&format!(" (oldest {})", duration(w)));
    }
    out.push_str(&format!(", {} free slot(s), nodes ", i.free_slots));
    out.push_str(&if i.nodes.is_empty() {
        "none".to_owned()
    } else {
        counts(&i.nodes)
    });
    if !i.short_of.is_empty() {
        let short: Vec<&str> = i.short_of.iter().map(|t| t.as_str()).collect();
        out.push_str(&format!(", short of {}", short.join(",")));
    }
    if let Some(t) = i.create_backoff_until {
        out.push_str(&format!(", creates back off until {}", utc(t)));
    }
    out
}

/// `GET /v1/pools/<pool>/explain`.
pub fn explain_pool(e: &fleet_core::protocol::PoolExplain) -> String {
    let params = if e.parameters.is_empty() {
        "-".to_owned()
    } else {
        e.parameters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        "pool      {}\nstrategy  {}: {}\nparams    {params}\n",
        e.pool, e.strategy, e.summary
    );
    match (e.planned_at, &e.inputs) {
        (Some(at), Some(i)) => {
            out.push_str(&format!(
                "planned   {} seeing {}\n",
                utc(at),
                plan_inputs(i)
            ));
        }
        _ => out.push_str("planned   not yet\n"),
    }
    if let Some(w) = e.wake_at {
        out.push_str(&format!("next plan {} at the latest\n", utc(w)));
    }
    if e.decisions.is_empty() {
        out.push_str("no decisions kept\n");
        return out;
    }
    let rows: Vec<Vec<String>> = e
        .decisions
        .iter()
        .map(|d| {
            let why = match &d.refused {
                Some(r) => format!("{} — refused: {r}", d.why),
                None => d.why.clone(),
            };
            vec![
                utc(d.at),
                d.action.clone(),
                or_dash(d.node.as_ref()),
                or_dash(d.instance_type.as_ref()),
                d.hourly_micros.map_or("-".to_owned(), money),
                why,
                plan_inputs(&d.inputs),
            ]
        })
        .collect();
    out.push_str(&table(
        &["TIME", "ACTION", "NODE", "TYPE", "$/H", "WHY", "SAW"],
        &rows,
    ));
    out
}

/// `GET /v1/claims/<claim>/history`.
pub fn claim_history(h: &fleet_core::protocol::ClaimHistory) -> String {
    let first = h.transitions.first().map_or(0, |t| t.at);
    let rows: Vec<Vec<String>> = h
        .transitions
        .iter()
        .map(|t| {
            vec![
                utc(t.at),
                format!("+{}", duration(t.at.saturating_sub(first))),
                t.workspace.to_string(),
                t.state.clone(),
                or_dash(t.node.as_ref()),
                t.reason.clone(),
            ]
        })
        .collect();
    format!(
        "claim {}\n{}",
        h.claim,
        table(
            &["TIME", "AFTER", "WORKSPACE", "STATE", "NODE", "WHY"],
            &rows
        )
    )
}

/// `GET /v1/pools`.
pub fn pools(pools: &[PoolInfo]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let types = if p.instance_types.is_empty() {
                "-".to_owned()
            } else {
                p.instance_types
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            vec![
                p.name.to_string(),
                p.strategy.kind.clone(),
                types,
                p.min_nodes.to_string(),
                p.max_nodes.to_string(),
                p.slots_per_node.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &["POOL", "STRATEGY", "INSTANCE TYPES", "MIN", "MAX", "SLOTS"],
        &rows,
    );
    // Why a pool's new nodes are not of the type it prefers, for now.
    for p in pools {
        for s in &p.shortages {
            let instead = match &s.using {
                Some(t) => format!("using {t}"),
                None => "no other type fits, retrying".to_owned(),
            };
            out.push_str(&format!(
                "{}: {} ({}): insufficient capacity since {}, {instead} until {}\n",
                p.name,
                s.instance_type,
                tag(&s.market),
                utc(s.since),
                utc(s.until),
            ));
        }
    }
    out
}

/// `GET /v1/nodes`.
pub fn nodes(nodes: &[NodeStatus], now: u64) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let seen = match n.last_seen {
                ms if ms > 0 && ms <= now => format!("{} ago", duration(now - ms)),
                _ => "-".to_owned(),
            };
            let claims = if n.claims.is_empty() {
                "-".to_owned()
            } else {
                n.claims
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            vec![
                n.record.node.to_string(),
                n.record.pool.to_string(),
                n.state.name().to_owned(),
                n.record.instance_type.to_string(),
                tag(&n.record.market),
                if n.connected { "yes" } else { "no" }.to_owned(),
                claims,
                or_dash(n.record.endpoint.as_deref()),
                seen,
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "POOL",
            "STATE",
            "TYPE",
            "MARKET",
            "CONNECTED",
            "CLAIMS",
            "ENDPOINT",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// A claim's state for a table: its name, and why for a revoked one.
pub fn claim_state(state: &ClaimState) -> String {
    match state {
        ClaimState::Revoked { reason } => format!("revoked ({})", tag(reason)),
        other => other.name().to_owned(),
    }
}

/// When a claim's lease runs out; for an ended claim (released, expired,
/// revoked) when it ended, since its lease no longer means anything.
pub fn claim_expiry(c: &ClaimRecord, now: u64) -> String {
    if c.state.is_terminal() {
        return match c.ended_at {
            Some(at) => format!("ended {}", expiry(at, now)),
            None => "-".to_owned(),
        };
    }
    match c.expires_at {
        Some(at) => expiry(at, now),
        None => "-".to_owned(),
    }
}

/// `GET /v1/claims`.
pub fn claims(claims: &[ClaimRecord], now: u64) -> String {
    let rows: Vec<Vec<String>> = claims
        .iter()
        .map(|c| {
            vec![
                c.request.claim_id.to_string(),
                c.request.workspace.to_string(),
                c.request.pool.to_string(),
                claim_state(&c.state),
                or_dash(c.node.as_ref()),
                or_dash(c.endpoint.as_deref()),
                claim_expiry(c, now),
            ]
        })
        .collect();
    table(
        &[
            "CLAIM",
            "WORKSPACE",
            "POOL",
            "STATE",
            "NODE",
            "ENDPOINT",
            "EXPIRES",
        ],
        &rows,
    )
}

/// `GET /v1/jobs/<ws>/<job>/artifacts`.
pub fn artifacts(list: &[fleet_core::protocol::ArtifactInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.size_bytes.to_string(),
                a.attempt.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "BYTES", "ATTEMPT"], &rows)
}

/// A score as `value/max` (or the value alone when unbounded).
pub fn score(s: &fleet_core::protocol::Score) -> String {
    match s.max {
        Some(max) => format!("{}/{max}", s.value),
        None => s.value.to_string(),
    }
}

/// `GET /v1/jobs`.
pub fn jobs(jobs: &[JobRecord]) -> String {
    let rows: Vec<Vec<String>> = jobs.iter().map(job_row).collect();
    table(
        &[
            "JOB",
            "WORKSPACE",
            "POOL",
            "STATE",
            "ATTEMPTS",
            "RESULT",
            "SCORE",
            "EXIT",
            "COMMAND",
        ],
        &rows,
    )
}

fn job_row(j: &JobRecord) -> Vec<String> {
    let argv = if j.spec.argv.is_empty() {
        "-".to_owned()
    } else {
        j.spec.argv.join(" ")
    };
    let argv = if argv.chars().count() > 40 {
        format!("{}…", argv.chars().take(39).collect::<String>())
    } else {
        argv
    };
    vec![
        j.spec.id.to_string(),
        j.spec.workspace.to_string(),
        j.spec.pool.to_string(),
        j.state.name().to_owned(),
        j.attempts.to_string(),
        j.receipt
            .as_ref()
            .map_or_else(|| "-".to_owned(), |r| tag(&r.result)),
        j.receipt
            .as_ref()
            .and_then(|r| r.score.as_ref())
            .map_or_else(|| "-".to_owned(), score),
        or_dash(j.receipt.as_ref().and_then(|r| r.exit_code)),
        argv,
    ]
}

/// `GET /v1/runs`: one line per run, its tasks counted by state.
pub fn runs(runs: &[fleet_core::protocol::RunInfo]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
            for t in &r.tasks {
                *by_state.entry(t.state.as_str()).or_default() += 1;
            }
            let tasks = by_state
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                r.id.to_string(),
                r.workspace.to_string(),
                r.status.to_string(),
                tasks,
                if r.name.is_empty() {
                    "-".to_owned()
                } else {
                    r.name.clone()
                },
            ]
        })
        .collect();
    table(&["RUN", "WORKSPACE", "STATUS", "TASKS", "NAME"], &rows)
}

/// `GET /v1/runs/<ws>/<run>`: the run, then one line per task.
pub fn run(r: &fleet_core::protocol::RunInfo) -> String {
    let mut out = format!(
        "run {} ({}) in {}: {}\n",
        r.id,
        if r.name.is_empty() { "-" } else { &r.name },
        r.workspace,
        r.status
    );
    let rows: Vec<Vec<String>> = r
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.job.to_string(),
                t.pool.to_string(),
                t.state.clone(),
                t.attempts.to_string(),
                t.result.as_ref().map_or_else(|| "-".to_owned(), tag),
                t.score.as_ref().map_or_else(|| "-".to_owned(), score),
            ]
        })
        .collect();
    out.push_str(&table(
        &["TASK", "POOL", "STATE", "ATTEMPTS", "RESULT", "SCORE"],
        &rows,
    ));
    out
}

/// `GET /v1/costs?by=pool`: per pool, what it cost, and (last) the part of
/// running attributed to claims and jobs and the idle rest.
pub fn cost(report: &CostReport) -> String {
    let hours = |ms: u64| format!("{:.2}", ms as f64 / 3_600_000.0);
    let rows: Vec<Vec<String>> = report
        .pools
        .iter()
        .map(|(name, p)| {
            vec![
                name.to_string(),
                money(p.running.micros()),
                money(p.stopped.micros()),
                money(p.snapshots.micros()),
                money(p.total().micros()),
                hours(p.running_ms),
                hours(p.stopped_ms),
                p.boots.values().sum::<u64>().to_string(),
                p.interruptions.to_string(),
                p.lost.to_string(),
                money(p.attributed.micros()),
                money(p.idle.micros()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "POOL",
            "RUNNING",
            "STOPPED",
            "SNAPSHOTS",
            "TOTAL",
            "RUN H",
            "STOP H",
            "BOOTS",
            "INTERRUPTIONS",
            "LOST",
            // Last, so the columns scripts already read keep their places.
            "ATTRIBUTED",
            "IDLE",
        ],
        &rows,
    );
    out.push_str(&total_line(report));
    out
}

/// The line under a cost table: the fleet's total and when it was taken.
fn total_line(report: &CostReport) -> String {
    format!(
        "total {} at {}\n",
        money(report.total().micros()),
        utc(report.at)
    )
}

/// `GET /v1/costs?by=workspace`: one row per workspace and pool, then each
/// pool's cost no workspace carries (idle running, stopped, snapshots), so
/// the rows add up to the total.
pub fn cost_by_workspace(report: &CostReport) -> String {
    let hours = |ms: u64| format!("{:.2}", ms as f64 / 3_600_000.0);
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (ws, w) in &report.workspaces {
        for (pool, cost) in &w.pools {
            rows.push(vec![
                ws.to_string(),
                pool.to_string(),
                money(cost.micros()),
                hours(w.held_ms),
                w.claims.to_string(),
                w.jobs.to_string(),
            ]);
        }
    }
    for (pool, p) in &report.pools {
        let rest = p.idle + p.stopped + p.snapshots;
        rows.push(vec![
            "(unattributed)".to_owned(),
            pool.to_string(),
            money(rest.micros()),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
        ]);
    }
    let mut out = table(
        &["WORKSPACE", "POOL", "COST", "HELD H", "CLAIMS", "JOBS"],
        &rows,
    );
    out.push_str(&total_line(report));
    out
}

/// `GET /v1/costs?by=claim`: one row per claim and job the daemon keeps.
pub fn cost_by_claim(report: &CostReport) -> String {
    let row = |kind: &str, id: String, h: &fleet_core::protocol::HeldCost| {
        vec![
            kind.to_owned(),
            id,
            h.workspace.to_string(),
            h.pool.to_string(),
            money(h.cost.micros()),
            duration(h.held_ms),
            if h.holding { "holding" } else { "ended" }.to_owned(),
        ]
    };
    let rows: Vec<Vec<String>> = report
        .claims
        .iter()
        .map(|(id, h)| row("claim", id.to_string(), h))
        .chain(
            report
                .jobs
                .iter()
                .map(|(id, h)| row("job", id.to_string(), h)),
        )
        .collect();
    let mut out = table(
        &["KIND", "ID", "WORKSPACE", "POOL", "COST", "HELD", "STATE"],
        &rows,
    );
    let listed: fleet_core::money::Money = report
        .claims
        .values()
        .chain(report.jobs.values())
        .map(|h| h.cost)
        .sum();
    out.push_str(&format!(
        "listed {} of {} attributed at {} (ended claims the daemon no longer keeps count only in their workspace)\n",
        money(listed.micros()),
        money(report.pools.values().map(|p| p.attributed).sum::<fleet_core::money::Money>().micros()),
        utc(report.at)
    ));
    out
}
