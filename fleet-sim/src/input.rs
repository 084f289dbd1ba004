//! The simulator's input (`sim-input.json`): types, parsing with JSON paths
//! in every error, and validation into a [`Scenario`] ready to run.
//!
//! The schema is `fleet-sim/sim-input.schema.json`; an annotated example is
//! `fleet-sim/examples/sim-input.json`.

use std::collections::BTreeMap;

use fleet_core::billing::{BillingModel, BootLatency};
use fleet_core::ids::Millis;
use fleet_core::money::{HourlyPrice, Money};
use fleet_core::protocol::{Arch, MAX_LEASE_TTL_MS, Requirements};
use fleet_core::provider::{Offering, SpotTerms};
use fleet_core::strategy::{PoolSpec, StrategyConfig};
use fleet_core::{AffinityKey, InstanceType};
use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::price_books::{self, PriceBook};

/// The largest input file accepted.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;
/// The longest horizon: two leap years.
pub const MAX_HORIZON_HOURS: u64 = 2 * 8_784;
/// The most arrival buckets (`horizon / step`) held in memory.
pub const MAX_BUCKETS: u64 = 1 << 21;
/// The most arrivals one run may generate (about 100 bytes each, per strategy).
pub const MAX_ARRIVALS: u64 = 5_000_000;
/// The longest job: a claim's lease must cover it (leases end at 24 h).
pub const MAX_JOB_MS: Millis = MAX_LEASE_TTL_MS - 3_600_000;

/// The whole input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimInput {
    /// Simulated hours; arrivals happen in `[0, horizon)`.
    pub horizon_hours: u64,
    /// Arrival resolution: arrivals are counted per step (default 60 000 = per minute).
    #[serde(default = "default_step_ms")]
    pub step_ms: Millis,
    /// Seed of every random draw (arrivals, durations, boot jitter, interruptions).
    #[serde(default)]
    pub seed: u64,
    /// When claims arrive.
    pub forecast: Forecast,
    /// How long jobs hold a node and what they need.
    #[serde(default)]
    pub jobs: Jobs,
    /// The pool the strategies run: the same [`PoolSpec`] as the daemon's
    /// `[[pool]]`, defaults included (its `strategy` is replaced by each of
    /// `strategies` in turn).
    #[serde(default)]
    pub pool: PoolSpec,
    /// Prices, billing rules and latencies.
    pub provider: ProviderInput,
    /// The service level a strategy must meet to be ranked first.
    pub sla: Sla,
    /// Strategies to compare (default: the six with default parameters).
    #[serde(default = "StrategyConfig::all_defaults")]
    pub strategies: Vec<StrategyConfig>,
}

fn default_step_ms() -> Millis {
    60_000
}

/// The arrival forecast: a shaped rate or an explicit trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Forecast {
    /// Poisson arrivals at a shaped rate.
    Profile(Profile),
    /// Exactly these arrivals.
    Trace(Vec<TraceArrival>),
}

/// A rate shaped by hour of day and day of week, plus random spikes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Mean arrivals per hour before shaping (0: an idle forecast).
    pub rate_per_hour: f64,
    /// 24 multipliers of the rate, hour 0 first (the daily shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hour_of_day: Option<Vec<f64>>,
    /// 7 multipliers of the rate, Monday first (the weekly shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day_of_week: Option<Vec<f64>>,
    /// Rare bursts on top of the shaped rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spikes: Option<Spikes>,
}

/// Random bursts of arrivals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spikes {
    /// Expected spikes per week (they start at random steps).
    pub per_week: f64,
    /// How long one lasts.
    pub duration_minutes: u64,
    /// Extra arrivals per hour during a spike.
    pub rate_per_hour: f64,
}

/// One arrival of an explicit trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceArrival {
    /// Milliseconds after the start.
    pub at_ms: Millis,
    /// How long the job holds its node once granted.
    pub duration_ms: Millis,
    /// What it needs (default: `jobs.requirements`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<RequirementsInput>,
    /// Its claim's affinity key (a repository), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityKey>,
}

/// What a job needs from a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementsInput {
    /// Minimum vCPUs.
    #[serde(default)]
    pub cpus: u32,
    /// Minimum memory in MiB.
    #[serde(default)]
    pub memory_mb: u64,
    /// Required architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
}

impl RequirementsInput {
    fn to_core(&self) -> Requirements {
        Requirements {
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            arch: self.arch,
            labels: BTreeMap::new(),
        }
    }
}

/// Jobs of a profile forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jobs {
    /// How long a job holds its node.
    pub duration: DurationDist,
    /// What every job needs.
    #[serde(default)]
    pub requirements: RequirementsInput,
    /// Cache affinity: each job's claim names one of this many keys
    /// (repositories), drawn uniformly; none: claims name no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_keys: Option<u32>,
}

impl Default for Jobs {
    fn default() -> Jobs {
        Jobs {
            duration: DurationDist::Lognormal {
                median_ms: 360_000,
                sigma: 0.5,
            },
            requirements: RequirementsInput::default(),
            affinity_keys: None,
        }
    }
}

/// The most affinity keys a forecast may draw from.
pub const MAX_AFFINITY_KEYS: u32 = 100_000;

/// A job duration distribution (clamped to 1 s ..= [`MAX_JOB_MS`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DurationDist {
    /// Always this long.
    Fixed {
        /// Duration.
        ms: Millis,
    },
    /// Uniform between two bounds.
    Uniform {
        /// Shortest.
        min_ms: Millis,
        /// Longest.
        max_ms: Millis,
    },
    /// Log-normal: half of the jobs are shorter than `median_ms`; `sigma` is
    /// the standard deviation of the log.
    Lognormal {
        /// Median.
        median_ms: Millis,
        /// Spread of the log (0.5: most jobs within ×0.4..×2.7 of the median).
        sigma: f64,
    },
}

/// The provider: a built-in price book, optionally amended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderInput {
    /// `aws` or `hetzner`.
    pub price_book: String,
    /// Offerings added to the book, or replacing the book's of the same type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offerings: Vec<OfferingInput>,
    /// Boot latencies replacing the book's (each field optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootInput>,
    /// Spot interruptions per 1000 instance-hours, `[low, high]`; each
    /// simulated day draws its rate from this band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_interruptions_per_1000h: Option<[f64; 2]>,
    /// Create calls refused for lack of capacity, per 1000 (default 0); the
    /// controller retries them with backoff as it would at a real provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_errors_per_1000_creates: Option<f64>,
}

/// An instance type for sale, prices as exact decimal dollars per hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferingInput {
    /// Type name.
    pub instance_type: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Architecture.
    #[serde(default = "default_arch")]
    pub arch: Arch,
    /// Root disk in GB.
    pub disk_gb: u32,
    /// On-demand $/hour, e.g. `"0.1785"`.
    pub on_demand: String,
    /// Spot $/hour, if sold as spot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<String>,
}

fn default_arch() -> Arch {
    Arch::X86_64
}

/// Boot latency per source: a base plus a uniform random spread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootInput {
    /// From the base image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ms: Option<Millis>,
    /// Extra 0..=spread on an image boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_spread_ms: Option<Millis>,
    /// From a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_ms: Option<Millis>,
    /// Extra 0..=spread on a snapshot boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_spread_ms: Option<Millis>,
    /// Starting a stopped node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_ms: Option<Millis>,
    /// Extra 0..=spread on a start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_spread_ms: Option<Millis>,
    /// A resize's downtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_ms: Option<Millis>,
    /// A stop, start or delete call (a node is billed running until its
    /// stop or delete completes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_ms: Option<Millis>,
    /// Taking a snapshot (it is billed from when it exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_take_ms: Option<Millis>,
}

/// The service level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// Which wait percentile is bounded (default 95).
    #[serde(default = "default_percentile")]
    pub percentile: f64,
    /// The bound, in milliseconds from request to grant.
    pub max_wait_ms: Millis,
}

fn default_percentile() -> f64 {
    95.0
}

/// A validated input, resolved against its price book, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The input as given (echoed in the result).
    pub input: SimInput,
    /// The price book after the input's amendments.
    pub book: PriceBook,
    /// The pool (its strategy is replaced per run).
    pub pool: PoolSpec,
    /// Requirements of profile jobs.
    pub requirements: Requirements,
    /// Horizon in milliseconds.
    pub horizon_ms: Millis,
}

/// Parses and validates an input file's bytes. Keys named `"$comment"`
/// are annotations and are ignored wherever they appear.
pub fn parse(bytes: &[u8]) -> Result<Scenario, SimError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(SimError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_INPUT_BYTES as u64,
        });
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| SimError::invalid("$", format!("not valid JSON: {e}")))?;
    strip_comments(&mut value);
    let input: SimInput = serde_path_to_error::deserialize(value)
        .map_err(|e| SimError::invalid(json_path(&e.path().to_string()), e.inner().to_string()))?;
    validate(input)
}

/// Removes every `"$comment"` key (the JSON Schema convention for
/// annotations), so an input can explain itself.
fn strip_comments(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("$comment");
            m.values_mut().for_each(strip_comments);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_comments),
        _ => {}
    }
}

fn json_path(serde_path: &str) -> String {
    match serde_path {
        "" | "." => "$".to_owned(),
        p if p.starts_with('[') => format!("${p}"),
        p => format!("$.{p}"),
    }
}

fn check(ok: bool, path: &str, message: impl FnOnce() -> String) -> Result<(), SimError> {
    if ok {
        Ok(())
    } else {
        Err(SimError::invalid(path, message()))
    }
}

fn rate(x: f64, path: &str) -> Result<(), SimError> {
    check(x.is_finite() && x >= 0.0, path, || {
        format!("must be a finite number >= 0, got {x}")
    })
}

/// Checks every field and resolves the price book.
pub fn validate(input: SimInput) -> Result<Scenario, SimError> {
    let h = input.horizon_hours;
    check(h > 0 && h <= MAX_HORIZON_HOURS, "$.horizon_hours", || {
        format!("must be between 1 and {MAX_HORIZON_HOURS}, got {h}")
    })?;
    let step = input.step_ms;
    check((1_000..=3_600_000).contains(&step), "$.step_ms", || {
        format!("must be between 1000 and 3600000, got {step}")
    })?;
    let horizon_ms = h * 3_600_000;
    let buckets = horizon_ms.div_ceil(step);
    check(buckets <= MAX_BUCKETS, "$.horizon_hours", || {
        format!(
            "{h} h at {step} ms steps is {buckets} steps; too large for memory (limit {MAX_BUCKETS})"
        )
    })?;
    validate_forecast(&input, horizon_ms)?;
    validate_jobs(&input.jobs)?;
    let s = &input.sla;
    check(
        s.percentile.is_finite() && s.percentile > 0.0 && s.percentile <= 100.0,
        "$.sla.percentile",
        || format!("must be in (0, 100], got {}", s.percentile),
    )?;
    check(!input.strategies.is_empty(), "$.strategies", || {
        "at least one strategy is needed".to_owned()
    })?;
    let book = resolve_book(&input.provider)?;
    let (pool, requirements) = resolve_pool(&input, &book)?;
    Ok(Scenario {
        requirements,
        book,
        pool,
        horizon_ms,
        input,
    })
}

fn validate_forecast(input: &SimInput, horizon_ms: Millis) -> Result<(), SimError> {
    match &input.forecast {
        Forecast::Profile(p) => {
            let base = "$.forecast.profile";
            rate(p.rate_per_hour, &format!("{base}.rate_per_hour"))?;
            let mut peak = 1.0f64;
            for (name, len, shape) in [
                ("hour_of_day", 24, &p.hour_of_day),
                ("day_of_week", 7, &p.day_of_week),
            ] {
                if let Some(v) = shape {
                    let path = format!("{base}.{name}");
                    check(v.len() == len, &path, || {
                        format!("needs exactly {len} multipliers, got {}", v.len())
                    })?;
                    for (i, x) in v.iter().enumerate() {
                        rate(*x, &format!("{path}[{i}]"))?;
                    }
                    peak *= v.iter().copied().fold(0.0, f64::max);
                }
            }
            let mut worst = p.rate_per_hour * peak;
            if let Some(s) = &p.spikes {
                rate(s.per_week, &format!("{base}.spikes.per_week"))?;
                rate(s.rate_per_hour, &format!("{base}.spikes.rate_per_hour"))?;
                check(
                    s.duration_minutes > 0 && s.duration_minutes <= 7 * 24 * 60,
                    &format!("{base}.spikes.duration_minutes"),
                    || format!("must be between 1 and 10080, got {}", s.duration_minutes),
                )?;
                worst += s.rate_per_hour;
            }
            // An upper bound of the arrivals, so a typo in a rate is refused
            // before it fills memory.
            let bound = worst * horizon_ms as f64 / 3_600_000.0;
            check(
                bound <= MAX_ARRIVALS as f64,
                &format!("{base}.rate_per_hour"),
                || {
                    format!(
                        "up to {bound:.0} arrivals over the horizon; too large for memory (limit {MAX_ARRIVALS})"
                    )
                },
            )?;
        }
        Forecast::Trace(t) => {
            check(!t.is_empty(), "$.forecast.trace", || {
                "empty forecast: the trace has no arrivals (use a profile with rate_per_hour 0 for an idle run)".to_owned()
            })?;
            check(t.len() as u64 <= MAX_ARRIVALS, "$.forecast.trace", || {
                format!("{} arrivals; the limit is {MAX_ARRIVALS}", t.len())
            })?;
            for (i, a) in t.iter().enumerate() {
                check(
                    a.at_ms < horizon_ms,
                    &format!("$.forecast.trace[{i}].at_ms"),
                    || format!("{} is not before the horizon ({horizon_ms} ms)", a.at_ms),
                )?;
                job_ms(a.duration_ms, &format!("$.forecast.trace[{i}].duration_ms"))?;
            }
        }
    }
    Ok(())
}

fn job_ms(ms: Millis, path: &str) -> Result<(), SimError> {
    check((1_000..=MAX_JOB_MS).contains(&ms), path, || {
        format!("must be between 1000 and {MAX_JOB_MS} ms, got {ms}")
    })
}

fn validate_jobs(jobs: &Jobs) -> Result<(), SimError> {
    if let Some(k) = jobs.affinity_keys {
        check(
            (1..=MAX_AFFINITY_KEYS).contains(&k),
            "$.jobs.affinity_keys",
            || format!("must be between 1 and {MAX_AFFINITY_KEYS}, got {k}"),
        )?;
    }
    let base = "$.jobs.duration";
    match &jobs.duration {
        DurationDist::Fixed { ms } => job_ms(*ms, &format!("{base}.ms")),
        DurationDist::Uniform { min_ms, max_ms } => {
            job_ms(*min_ms, &format!("{base}.min_ms"))?;
            job_ms(*max_ms, &format!("{base}.max_ms"))?;
            check(min_ms <= max_ms, &format!("{base}.max_ms"), || {
                format!("{max_ms} is below min_ms {min_ms}")
            })
        }
        DurationDist::Lognormal { median_ms, sigma } => {
            job_ms(*median_ms, &format!("{base}.median_ms"))?;
            check(
                sigma.is_finite() && (0.0..=3.0).contains(sigma),
                &format!("{base}.sigma"),
                || format!("must be between 0 and 3, got {sigma}"),
            )
        }
    }
}

fn price(s: &str, path: &str) -> Result<HourlyPrice, SimError> {
    let m: Money = s
        .parse()
        .map_err(|e| SimError::invalid(path, format!("not a dollar amount ({e}): {s:?}")))?;
    check(m >= Money::ZERO, path, || {
        format!("must not be negative, got {s}")
    })?;
    Ok(HourlyPrice(m))
}

fn resolve_book(p: &ProviderInput) -> Result<PriceBook, SimError> {
    let mut book = price_books::preset(&p.price_book).ok_or_else(|| {
        SimError::invalid(
            "$.provider.price_book",
            format!(
                "unknown price book {:?}; known: {}",
                p.price_book,
                price_books::NAMES.join(", ")
            ),
        )
    })?;
    let band = p
        .spot_interruptions_per_1000h
        .unwrap_or(book.spot_interruptions_per_1000h);
    for (i, x) in band.iter().enumerate() {
        rate(*x, &format!("$.provider.spot_interruptions_per_1000h[{i}]"))?;
    }
    check(
        band[0] <= band[1] && band[1] <= 1000.0,
        "$.provider.spot_interruptions_per_1000h",
        || format!("needs low <= high <= 1000, got {band:?}"),
    )?;
    book.spot_interruptions_per_1000h = band;
    if let Some(c) = p.capacity_errors_per_1000_creates {
        let path = "$.provider.capacity_errors_per_1000_creates";
        rate(c, path)?;
        check(c <= 1000.0, path, || {
            format!("must be at most 1000, got {c}")
        })?;
        book.capacity_errors_per_million = (c * 1000.0).round() as u64;
    }
    for (i, o) in p.offerings.iter().enumerate() {
        let base = format!("$.provider.offerings[{i}]");
        let t = InstanceType::new(o.instance_type.clone())
            .map_err(|e| SimError::invalid(format!("{base}.instance_type"), e.to_string()))?;
        check(o.cpus > 0, &format!("{base}.cpus"), || {
            "must be > 0".to_owned()
        })?;
        let on_demand = price(&o.on_demand, &format!("{base}.on_demand"))?;
        let spot = match &o.spot {
            Some(s) => Some(price(s, &format!("{base}.spot"))?),
            None => None,
        };
        let offering = Offering {
            instance_type: t,
            cpus: o.cpus,
            memory_mb: o.memory_mb,
            arch: o.arch,
            disk_gb: o.disk_gb,
            on_demand,
            spot: spot.map(|price| SpotTerms {
                price,
                interruptions_per_1000h: 0,
            }),
        };
        book.offerings
            .retain(|x| x.instance_type != offering.instance_type);
        book.offerings.push(offering);
    }
    // Strategies read the expected rate off the offering; the band's midpoint.
    let mid = ((band[0] + band[1]) / 2.0).round() as u32;
    for o in &mut book.offerings {
        if let Some(s) = &mut o.spot {
            s.interruptions_per_1000h = mid;
        }
    }
    if let Some(b) = &p.boot {
        apply_boot(&mut book.billing, &mut book.boot_spread, b);
    }
    Ok(book)
}

fn apply_boot(billing: &mut BillingModel, spread: &mut BootLatency, b: &BootInput) {
    let set = |slot: &mut Millis, v: Option<Millis>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut billing.boot.image_ms, b.image_ms);
    set(&mut billing.boot.snapshot_ms, b.snapshot_ms);
    set(&mut billing.boot.stopped_ms, b.stopped_ms);
    set(&mut billing.boot.resize_ms, b.resize_ms);
    set(&mut billing.calls.api_ms, b.api_ms);
    set(&mut billing.calls.snapshot_ms, b.snapshot_take_ms);
    set(&mut spread.image_ms, b.image_spread_ms);
    set(&mut spread.snapshot_ms, b.snapshot_spread_ms);
    set(&mut spread.stopped_ms, b.stopped_spread_ms);
}

fn resolve_pool(input: &SimInput, book: &PriceBook) -> Result<(PoolSpec, Requirements), SimError> {
    let mut pool = input.pool.clone();
    pool.validate().map_err(|e| pool_error(&e))?;
    for (i, t) in pool.instance_types.iter().enumerate() {
        check(
            book.offerings.iter().any(|o| &o.instance_type == t),
            &format!("$.pool.instance_types[{i}]"),
            || {
                format!(
                    "{t} is not in the {} price book; it has: {}",
                    book.name,
                    book.offerings
                        .iter()
                        .map(|o| o.instance_type.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        )?;
    }
    // As the daemon does: no type named, the cheapest the provider sells.
    pool.resolve(&book.offerings).map_err(|e| pool_error(&e))?;
    let types = pool.instance_types.clone();
    let requirements = input.jobs.requirements.to_core();
    let fits = |r: &Requirements| {
        types.iter().any(|t| {
            book.offerings
                .iter()
                .any(|o| &o.instance_type == t && r.satisfied_by(&o.resources(&BTreeMap::new())))
        })
    };
    check(fits(&requirements), "$.jobs.requirements", || {
        "no instance type of the pool meets these requirements: every job would wait forever"
            .to_owned()
    })?;
    if let Forecast::Trace(t) = &input.forecast {
        for (i, a) in t.iter().enumerate() {
            if let Some(r) = &a.requirements {
                check(
                    fits(&r.to_core()),
                    &format!("$.forecast.trace[{i}].requirements"),
                    || "no instance type of the pool meets these requirements".to_owned(),
                )?;
            }
        }
    }
    Ok((pool, requirements))
}

/// A pool setting the simulator cannot use, at its JSON path.
fn pool_error(e: &fleet_core::config::ConfigError) -> SimError {
    match e {
        fleet_core::config::ConfigError::Invalid { key, why, .. } => {
            SimError::invalid(format!("$.pool.{key}"), why.clone())
        }
        other => SimError::invalid("$.pool", other.to_string()),
    }
}

/// Requirements of trace arrival `a` (its own, or the jobs' default).
pub(crate) fn trace_requirements(a: &TraceArrival, default: &Requirements) -> Requirements {
    a.requirements
        .as_ref()
        .map_or_else(|| default.clone(), RequirementsInput::to_core)
}
