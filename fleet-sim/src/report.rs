//! The result: per-strategy figures, the ranking, and its renderings (JSON,
//! a text table, an SVG chart drawn by hand).
//!
//! Output is deterministic: ordered containers only, money as integer
//! micro-dollars (and as exact dollar strings), every float rounded to
//! three decimals.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fleet_core::ids::Millis;
use fleet_core::money::Money;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use crate::error::SimError;
use crate::input::Scenario;
use crate::run::{RunOutcome, boots_by_source};

const HOUR: f64 = 3_600_000.0;

/// Everything `result.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// The simulator and its version.
    pub simulator: String,
    /// What was simulated.
    pub scenario: ScenarioSummary,
    /// One entry per strategy, in the input's order.
    pub strategies: Vec<StrategyResult>,
    /// Cheapest strategy meeting the SLA first, then the others.
    pub ranking: Vec<RankEntry>,
}

/// What was simulated.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    /// The seed.
    pub seed: u64,
    /// Simulated hours.
    pub horizon_hours: u64,
    /// Arrival resolution.
    pub step_ms: Millis,
    /// The price book.
    pub price_book: String,
    /// The pool's instance types.
    pub instance_types: Vec<String>,
    /// Pool limits.
    pub min_nodes: u32,
    /// Pool limits.
    pub max_nodes: u32,
    /// Jobs per node.
    pub slots_per_node: u32,
    /// Jobs in the forecast.
    pub arrivals: u64,
    /// The SLA.
    pub sla: SlaSpec,
}

/// The SLA as asked.
#[derive(Debug, Clone, Serialize)]
pub struct SlaSpec {
    /// The bounded percentile.
    pub percentile: f64,
    /// Its bound in seconds.
    pub max_wait_s: f64,
}

/// One strategy's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    /// Unique id: the strategy's name, with `#2`… for repeats.
    pub id: String,
    /// The strategy's name.
    pub name: String,
    /// Its configuration.
    pub parameters: serde_json::Value,
    /// What it declares an idle pool costs.
    pub idle_cost: IdleCostOut,
    /// The bill.
    pub cost: CostOut,
    /// Job counts.
    pub jobs: JobsOut,
    /// Waits from first request to grant, in seconds.
    pub wait_s: WaitOut,
    /// Node-hours by state.
    pub node_hours: NodeHours,
    /// Nodes brought up, per boot source.
    pub boots: BTreeMap<String, u64>,
    /// Spot interruptions.
    pub interruptions: u64,
    /// Nodes lost.
    pub lost: u64,
    /// Create calls refused for capacity (each retried by the controller).
    pub capacity_errors: u64,
    /// Whether the SLA was met.
    pub sla: SlaOut,
    /// Hours the bill covers (horizon, or until the last job finished).
    pub accounted_hours: f64,
    /// Controller events handled.
    pub controller_steps: u64,
    /// Cache affinity, when the jobs name keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityOut>,
    /// `[hours from start, total micro-dollars]` at regular times.
    pub cost_over_time: Vec<(f64, i64)>,
}

/// How often a claim naming an affinity key landed on a node that last
/// served the same key.
#[derive(Debug, Clone, Serialize)]
pub struct AffinityOut {
    /// Grants of claims that named a key.
    pub grants: u64,
    /// Of them, on a node whose last claim named the same key.
    pub hits: u64,
    /// `hits / grants` (0 with no grant).
    pub hit_rate: f64,
}

/// Idle cost, as declared by `describe()`: `setup` over the first
/// `settle_ms` from a fresh start, then `per_hour`.
#[derive(Debug, Clone, Serialize)]
pub struct IdleCostOut {
    /// Paid while the pool settles (boots, the wait before a stop, a snapshot).
    pub setup_micros: i64,
    /// How long it settles.
    pub settle_ms: u64,
    /// Paid per idle hour after that.
    pub per_hour_micros: i64,
}

/// The bill.
#[derive(Debug, Clone, Serialize)]
pub struct CostOut {
    /// Total, micro-dollars.
    pub total_micros: i64,
    /// Total, dollars.
    pub total_usd: String,
    /// Running time billed.
    pub running_micros: i64,
    /// Stopped time billed.
    pub stopped_micros: i64,
    /// Snapshot storage billed.
    pub snapshots_micros: i64,
    /// Total per served job (0 when none was served).
    pub per_job_micros: i64,
    /// The same in dollars.
    pub per_job_usd: String,
}

/// Job counts.
#[derive(Debug, Clone, Serialize)]
pub struct JobsOut {
    /// Arrived.
    pub arrived: u64,
    /// Ran to completion.
    pub served: u64,
    /// Still waiting or running at the end.
    pub unserved: u64,
    /// Requested again after a revocation.
    pub requeues: u64,
}

/// Wait statistics in seconds (nearest-rank percentiles).
#[derive(Debug, Clone, Serialize)]
pub struct WaitOut {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Longest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Node-hours by state.
#[derive(Debug, Clone, Serialize)]
pub struct NodeHours {
    /// Billed as running (booting, ready, busy, stopping).
    pub running: f64,
    /// Stopped.
    pub stopped: f64,
    /// Held by jobs.
    pub busy: f64,
    /// Running but not held by a job.
    pub idle_running: f64,
}

/// The SLA verdict.
#[derive(Debug, Clone, Serialize)]
pub struct SlaOut {
    /// Met or not.
    pub met: bool,
    /// The wait at the SLA's percentile, seconds.
    pub wait_s: f64,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A place in the ranking.
#[derive(Debug, Clone, Serialize)]
pub struct RankEntry {
    /// 1 is best.
    pub rank: usize,
    /// The strategy id.
    pub strategy: String,
    /// Its total bill.
    pub total_usd: String,
    /// Whether it meets the SLA.
    pub meets_sla: bool,
    /// Why it is here.
    pub reason: String,
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn secs(ms: Millis) -> f64 {
    r3(ms as f64 / 1000.0)
}

fn hours(ms: u64) -> f64 {
    r3(ms as f64 / HOUR)
}

/// The nearest-rank percentile `p` of sorted `v` (0 when empty).
pub fn percentile(v: &[Millis], p: f64) -> Millis {
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Builds the result from the runs.
pub fn build(s: &Scenario, runs: &[RunOutcome]) -> SimResult {
    let sla = &s.input.sla;
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    let strategies: Vec<StrategyResult> = runs
        .iter()
        .map(|r| {
            let name = r.strategy.name();
            let n = seen.entry(name).or_default();
            *n += 1;
            let id = if *n == 1 {
                name.to_owned()
            } else {
                format!("{name}#{n}")
            };
            strategy_result(s, r, id)
        })
        .collect();
    let _ = sla;
    let ranking = rank(&strategies);
    SimResult {
        simulator: format!("fleet-sim {}", env!("CARGO_PKG_VERSION")),
        scenario: ScenarioSummary {
            seed: s.input.seed,
            horizon_hours: s.input.horizon_hours,
            step_ms: s.input.step_ms,
            price_book: s.book.name.clone(),
            instance_types: s
                .pool
                .instance_types
                .iter()
                .map(ToString::to_string)
                .collect(),
            min_nodes: s.pool.min_nodes,
            max_nodes: s.pool.max_nodes,
            slots_per_node: s.pool.slots_per_node,
            arrivals: runs.first().map_or(0, |r| r.arrived),
            sla: SlaSpec {
                percentile: r3(s.input.sla.percentile),
                max_wait_s: secs(s.input.sla.max_wait_ms),
            },
        },
        strategies,
        ranking,
    }
}

fn strategy_result(s: &Scenario, r: &RunOutcome, id: String) -> StrategyResult {
    let c = &r.cost;
    let total = c.total();
    let per_job = if r.served > 0 {
        Money::from_micros(total.micros() / r.served as i64)
    } else {
        Money::ZERO
    };
    let w = &r.waits_ms;
    let mean = if w.is_empty() {
        0.0
    } else {
        w.iter().map(|x| *x as f64).sum::<f64>() / w.len() as f64 / 1000.0
    };
    let sla = &s.input.sla;
    let at = percentile(w, sla.percentile);
    let reason = if r.unserved > 0 {
        Some(format!(
            "{} job(s) never finished within {} h after the horizon",
            r.unserved,
            crate::run::MAX_DRAIN_MS / 3_600_000
        ))
    } else if at > sla.max_wait_ms {
        Some(format!(
            "p{} wait {} s > {} s",
            r3(sla.percentile),
            secs(at),
            secs(sla.max_wait_ms)
        ))
    } else {
        None
    };
    StrategyResult {
        id,
        name: r.strategy.name().to_owned(),
        parameters: serde_json::to_value(&r.strategy).unwrap_or(serde_json::Value::Null),
        idle_cost: IdleCostOut {
            setup_micros: r.info.idle_cost.setup.micros(),
            settle_ms: r.info.idle_cost.settle_ms,
            per_hour_micros: r.info.idle_cost.per_hour.micros(),
        },
        cost: CostOut {
            total_micros: total.micros(),
            total_usd: total.to_string(),
            running_micros: c.running.micros(),
            stopped_micros: c.stopped.micros(),
            snapshots_micros: c.snapshots.micros(),
            per_job_micros: per_job.micros(),
            per_job_usd: per_job.to_string(),
        },
        jobs: JobsOut {
            arrived: r.arrived,
            served: r.served,
            unserved: r.unserved,
            requeues: r.requeues,
        },
        wait_s: WaitOut {
            p50: secs(percentile(w, 50.0)),
            p95: secs(percentile(w, 95.0)),
            p99: secs(percentile(w, 99.0)),
            max: secs(w.last().copied().unwrap_or(0)),
            mean: r3(mean),
        },
        node_hours: NodeHours {
            running: hours(c.running_ms),
            stopped: hours(c.stopped_ms),
            busy: hours(r.busy_ms),
            idle_running: hours(c.running_ms.saturating_sub(r.busy_ms)),
        },
        boots: boots_by_source(c),
        interruptions: c.interruptions,
        lost: c.lost,
        capacity_errors: r.capacity_errors,
        sla: SlaOut {
            met: reason.is_none(),
            wait_s: secs(at),
            reason,
        },
        accounted_hours: hours(r.end_ms),
        controller_steps: r.steps,
        affinity: {
            let a = r.affinity;
            let grants = a.hits + a.misses;
            (grants > 0).then(|| AffinityOut {
                grants,
                hits: a.hits,
                hit_rate: a.hits as f64 / grants as f64,
            })
        },
        cost_over_time: r
            .series
            .iter()
            .map(|(t, m)| (hours(*t), m.micros()))
            .collect(),
    }
}

/// Why a strategy ranks where it does: `best` is the cheapest that meets
/// the SLA (id, total), `miss` why this one misses it, if it does; `words`
/// name what is ranked and how a miss is put.
pub(crate) fn rank_reason(
    best: Option<&(String, i64)>,
    id: &str,
    total_micros: i64,
    miss: Option<&str>,
    words: (&str, &str),
) -> String {
    let (what, missed) = words;
    match (best, miss) {
        (Some((b, _)), None) if b == id => format!("cheapest {what} that meets the SLA"),
        (Some((b, cost)), None) => format!(
            "meets the SLA but costs {} more than {b}",
            Money::from_micros(total_micros - cost)
        ),
        (None, None) => "meets the SLA".to_owned(),
        (_, Some(why)) => format!("{missed}: {why}"),
    }
}

/// Cheapest meeting the SLA first; then the others meeting it by cost;
/// then those missing it by cost. Ties break on the id.
pub fn rank(strategies: &[StrategyResult]) -> Vec<RankEntry> {
    let mut order: Vec<&StrategyResult> = strategies.iter().collect();
    order.sort_by(|a, b| {
        b.sla
            .met
            .cmp(&a.sla.met)
            .then(a.cost.total_micros.cmp(&b.cost.total_micros))
            .then(a.id.cmp(&b.id))
    });
    let best = order
        .first()
        .filter(|b| b.sla.met)
        .map(|b| (b.id.clone(), b.cost.total_micros));
    order
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let reason = rank_reason(
                best.as_ref(),
                &r.id,
                r.cost.total_micros,
                r.sla.reason.as_deref(),
                ("strategy", "misses the SLA"),
            );
            RankEntry {
                rank: i + 1,
                strategy: r.id.clone(),
                total_usd: r.cost.total_usd.clone(),
                meets_sla: r.sla.met,
                reason,
            }
        })
        .collect()
}

/// The ranking as a text table.
pub fn table(result: &SimResult) -> String {
    let mut out = String::new();
    let sc = &result.scenario;
    let _ = writeln!(
        out,
        "{} h on {} {} · {} jobs · SLA p{} wait <= {} s · seed {}",
        sc.horizon_hours,
        sc.price_book,
        sc.instance_types.join("/"),
        sc.arrivals,
        sc.sla.percentile,
        sc.sla.max_wait_s,
        sc.seed
    );
    let _ = writeln!(
        out,
        "{:>4}  {:<18} {:>14} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>6}  SLA",
        "rank",
        "strategy",
        "total $",
        "$/job",
        "p50 s",
        "p95 s",
        "p99 s",
        "max s",
        "run h",
        "stop h",
        "boots",
        "intr",
    );
    let by_id: BTreeMap<&str, &StrategyResult> = result
        .strategies
        .iter()
        .map(|s| (s.id.as_str(), s))
        .collect();
    for e in &result.ranking {
        let Some(s) = by_id.get(e.strategy.as_str()) else {
            continue;
        };
        let boots: u64 = s.boots.values().sum();
        let _ = writeln!(
            out,
            "{:>4}  {:<18} {:>14} {:>11} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>6}  {}",
            e.rank,
            s.id,
            dollars(s.cost.total_micros, 2),
            dollars(s.cost.per_job_micros, 4),
            s.wait_s.p50,
            s.wait_s.p95,
            s.wait_s.p99,
            s.wait_s.max,
            s.node_hours.running,
            s.node_hours.stopped,
            boots,
            s.interruptions,
            if s.sla.met { "met" } else { "MISSED" }
        );
    }
    for e in &result.ranking {
        let _ = writeln!(out, "  {}. {}: {}", e.rank, e.strategy, e.reason);
    }
    for s in &result.strategies {
        if let Some(a) = &s.affinity {
            let _ = writeln!(
                out,
                "  {}: cache affinity: {} of {} grants on a node that last served the same key ({:.1} %)",
                s.id,
                a.hits,
                a.grants,
                a.hit_rate * 100.0
            );
        }
    }
    for s in result.strategies.iter().filter(|s| s.capacity_errors > 0) {
        let _ = writeln!(
            out,
            "  {}: {} create call(s) refused for capacity, retried with backoff",
            s.id, s.capacity_errors
        );
    }
    out
}

/// Micro-dollars as dollars with `places` decimals (integer math, rounded half up).
fn dollars(micros: i64, places: u32) -> String {
    let unit = 10i64.pow(6 - places);
    let q = (micros + unit / 2).div_euclid(unit);
    let scale = 10i64.pow(places);
    format!(
        "{}.{:0width$}",
        q / scale,
        (q % scale).abs(),
        width = places as usize
    )
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// Two panels, drawn with plotters: total cost vs wait at the SLA
/// percentile per strategy (the SLA bound dashed; waits span seconds to
/// hours, so that axis is logarithmic with ticks at powers of ten), and
/// cumulative cost over time. Axes get round ticks, strategies a legend in
/// the frame rather than free labels that could run past its edge.
pub fn svg(result: &SimResult) -> Result<String, SimError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let (left, right) = root.split_horizontally(500);
        cost_vs_wait(&left, result).map_err(chart_error)?;
        cost_over_time(&right, result).map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(out)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn chart_error(e: DrawingAreaErrorKind<std::io::Error>) -> SimError {
    SimError::Chart(e.to_string())
}

/// The waits on the log axis start here: a wait of 0 s is drawn at it.
const MIN_WAIT_S: f64 = 0.1;

/// The highest total cost, in dollars, with a tenth of headroom.
fn max_cost(result: &SimResult) -> f64 {
    let max = result
        .strategies
        .iter()
        .map(|s| s.cost.total_micros)
        .max()
        .unwrap_or(0)
        .max(1) as f64
        / 1e6;
    max * 1.1
}

fn cost_vs_wait(area: &Area<'_>, result: &SimResult) -> Drawn {
    let pct = result.scenario.sla.percentile;
    let max_wait = result
        .strategies
        .iter()
        .map(|s| s.sla.wait_s)
        .fold(result.scenario.sla.max_wait_s, f64::max)
        .max(1.0)
        * 1.5;
    // Headroom above the costliest point keeps the legend clear of it.
    let top = max_cost(result) * 1.4;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("Cost vs p{pct} wait"), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((MIN_WAIT_S..max_wait).log_scale(), 0.0..top)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(format!("p{pct} wait (s, log scale)"))
        .y_desc("total cost ($)")
        .x_label_formatter(&|v| round_label(*v))
        .y_label_formatter(&|v| round_label(*v))
        .draw()?;
    let sla = result.scenario.sla.max_wait_s.max(MIN_WAIT_S);
    chart
        .draw_series(DashedLineSeries::new(
            [(sla, 0.0), (sla, top)],
            4,
            3,
            ShapeStyle::from(&RGBColor(0xa9, 0xa9, 0xa9)),
        ))?
        .label(format!(
            "SLA {} s",
            round_label(result.scenario.sla.max_wait_s)
        ))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RGBColor(0xa9, 0xa9, 0xa9)));
    for (i, s) in result.strategies.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let at = (
            s.sla.wait_s.max(MIN_WAIT_S),
            s.cost.total_micros as f64 / 1e6,
        );
        chart
            .draw_series([Circle::new(at, 5, color.filled())])?
            .label(s.id.as_str())
            .legend(move |(x, y)| Circle::new((x + 7, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

fn cost_over_time(area: &Area<'_>, result: &SimResult) -> Drawn {
    let max_t = result
        .strategies
        .iter()
        .flat_map(|s| s.cost_over_time.last().map(|p| p.0))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption("Cost over time", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_cost(result))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("hours")
        .y_desc("cost so far ($)")
        .x_label_formatter(&|v| round_label(*v))
        .y_label_formatter(&|v| round_label(*v))
        .draw()?;
    for (i, s) in result.strategies.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = s.cost_over_time.iter().map(|(t, m)| (*t, *m as f64 / 1e6));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(s.id.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// A tick or legend value as written: no trailing zeros, no float noise
/// (`0.30000000000000004` is `0.3`).
fn round_label(v: f64) -> String {
    let rounded = (v * 1e6).round() / 1e6;
    let text = format!("{rounded:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Millis> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 95.0), 95);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 95.0), 0);
        assert_eq!(percentile(&[7], 1.0), 7);
    }

    #[test]
    fn labels_are_written_without_float_noise() {
        assert_eq!(round_label(0.1 + 0.2), "0.3");
        assert_eq!(round_label(100.0), "100");
        assert_eq!(round_label(2.5), "2.5");
        assert_eq!(round_label(0.0), "0");
        assert_eq!(round_label(-0.0000001), "0");
    }

    #[test]
    fn dollars_round_half_up() {
        assert_eq!(dollars(1_234_567, 2), "1.23");
        assert_eq!(dollars(1_235_000, 2), "1.24");
        assert_eq!(dollars(5_000, 4), "0.0050");
        assert_eq!(dollars(0, 2), "0.00");
    }
}
