//! Human output: aligned tables, money, times. Renderers take the API's JSON
//! (`serde_json::Value`) so a field the daemon adds or drops never breaks
//! the CLI; a missing field shows as `-`.

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
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
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

/// The value at a `/`-separated path.
pub fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/').try_fold(v, |v, key| v.get(key))
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

fn cell(v: &Value, path: &str) -> String {
    label(at(v, path))
}

fn time_cell(v: &Value, path: &str, now: u64) -> String {
    match at(v, path).and_then(Value::as_u64) {
        Some(ms) => expiry(ms, now),
        None => "-".to_owned(),
    }
}

fn counts(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|(k, n)| format!("{k}={}", label(Some(n))))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "-".to_owned(),
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// `GET /v1/status`.
pub fn status(v: &Value) -> String {
    let rows = vec![
        vec!["epoch".to_owned(), cell(v, "epoch")],
        vec!["leader".to_owned(), cell(v, "leader")],
        vec!["pools".to_owned(), cell(v, "pools")],
        vec!["nodes".to_owned(), counts(v.get("nodes"))],
        vec!["claims".to_owned(), counts(v.get("claims"))],
        vec!["jobs".to_owned(), counts(v.get("jobs"))],
        vec![
            "cost".to_owned(),
            v.get("cost_micros")
                .and_then(Value::as_i64)
                .map(money)
                .unwrap_or_else(|| "-".to_owned()),
        ],
    ];
    let mut out = String::new();
    for r in rows {
        out.push_str(&format!("{:<8}{}\n", r[0], r[1]));
    }
    out
}

/// `GET /v1/pools`.
pub fn pools(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|p| {
            vec![
                cell(p, "name"),
                cell(p, "strategy"),
                cell(p, "instance_types"),
                cell(p, "min_nodes"),
                cell(p, "max_nodes"),
                cell(p, "slots_per_node"),
            ]
        })
        .collect();
    table(
        &["POOL", "STRATEGY", "INSTANCE TYPES", "MIN", "MAX", "SLOTS"],
        &rows,
    )
}

/// `GET /v1/nodes` (`NodeStatus` list).
pub fn nodes(v: &Value, now: u64) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|n| {
            let seen = match n.get("last_seen").and_then(Value::as_u64) {
                Some(ms) if ms > 0 && ms <= now => format!("{} ago", duration(now - ms)),
                _ => "-".to_owned(),
            };
            vec![
                cell(n, "record/node"),
                cell(n, "record/pool"),
                cell(n, "state"),
                cell(n, "record/instance_type"),
                cell(n, "record/market"),
                cell(n, "connected"),
                cell(n, "claims"),
                cell(n, "record/endpoint"),
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

/// `GET /v1/claims` (`ClaimRecord` list).
pub fn claims(v: &Value, now: u64) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|c| {
            let mut state = cell(c, "state/state");
            if let Some(r) = at(c, "state/reason") {
                state = format!("{state} ({})", label(Some(r)));
            }
            vec![
                cell(c, "request/claim_id"),
                cell(c, "request/workspace"),
                cell(c, "request/pool"),
                state,
                cell(c, "node"),
                cell(c, "endpoint"),
                time_cell(c, "expires_at", now),
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

/// `GET /v1/jobs` (`JobRecord` list).
pub fn jobs(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v).iter().map(job_row).collect();
    table(
        &[
            "JOB",
            "WORKSPACE",
            "POOL",
            "STATE",
            "ATTEMPTS",
            "RESULT",
            "EXIT",
            "COMMAND",
        ],
        &rows,
    )
}

fn job_row(j: &Value) -> Vec<String> {
    let argv = at(j, "spec/argv")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "-".to_owned());
    let argv = if argv.chars().count() > 40 {
        format!("{}…", argv.chars().take(39).collect::<String>())
    } else {
        argv
    };
    vec![
        cell(j, "spec/id"),
        cell(j, "spec/workspace"),
        cell(j, "spec/pool"),
        cell(j, "state/state"),
        cell(j, "attempts"),
        cell(j, "receipt/result"),
        cell(j, "receipt/exit_code"),
        argv,
    ]
}

/// `GET /v1/costs` (`CostReport`).
pub fn cost(v: &Value) -> String {
    let mut total = 0i64;
    let mut rows: Vec<Vec<String>> = Vec::new();
    if let Some(pools) = v.get("pools").and_then(Value::as_object) {
        for (name, p) in pools {
            let m = |k: &str| p.get(k).and_then(Value::as_i64).unwrap_or(0);
            let pool_total = m("running")
                .saturating_add(m("stopped"))
                .saturating_add(m("snapshots"));
            total = total.saturating_add(pool_total);
            let hours = |k: &str| {
                let ms = p.get(k).and_then(Value::as_u64).unwrap_or(0);
                format!("{:.2}", ms as f64 / 3_600_000.0)
            };
            let boots: u64 = p
                .get("boots")
                .and_then(Value::as_object)
                .map(|b| b.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            rows.push(vec![
                name.clone(),
                money(m("running")),
                money(m("stopped")),
                money(m("snapshots")),
                money(pool_total),
                hours("running_ms"),
                hours("stopped_ms"),
                boots.to_string(),
                cell(p, "interruptions"),
                cell(p, "lost"),
            ]);
        }
    }
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
        ],
        &rows,
    );
    out.push_str(&format!("total {}", money(total)));
    if let Some(t) = v.get("at").and_then(Value::as_u64) {
        out.push_str(&format!(" at {}", utc(t)));
    }
    out.push('\n');
    out
}
