//! Arrivals from a forecast: deterministic for a seed.
//!
//! A profile is sampled per step (per minute by default): the step's rate is
//! `rate_per_hour × hour_of_day[h] × day_of_week[d]` (+ a spike's rate while
//! one runs), its count a Poisson draw, and each arrival gets a whole-second
//! offset inside the step and a duration from the job distribution. The
//! simulated time starts on a Monday at 00:00.

use fleet_core::AffinityKey;
use fleet_core::ids::Millis;
use fleet_core::protocol::Requirements;

use crate::input::{DurationDist, Forecast, MAX_JOB_MS, Scenario, trace_requirements};
use crate::rng::Rng;

/// One job arriving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// Milliseconds after the start.
    pub at_ms: Millis,
    /// How long it holds its node once granted.
    pub duration_ms: Millis,
    /// Index into [`Arrivals::requirements`].
    pub requirements: usize,
    /// Index into [`Arrivals::affinity`], if its claim names a key.
    pub affinity: Option<usize>,
}

/// Every arrival of a run, in time order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Arrivals {
    /// The arrivals.
    pub jobs: Vec<Arrival>,
    /// The distinct requirements they use.
    pub requirements: Vec<Requirements>,
    /// The distinct affinity keys they name.
    pub affinity: Vec<AffinityKey>,
}

const HOUR: Millis = 3_600_000;
const WEEK: Millis = 7 * 24 * HOUR;

/// Generates the arrivals of `s`.
pub fn arrivals(s: &Scenario) -> Arrivals {
    let input = &s.input;
    match &input.forecast {
        Forecast::Trace(t) => {
            let mut reqs: Vec<Requirements> = Vec::new();
            let mut keys: Vec<AffinityKey> = Vec::new();
            let mut jobs: Vec<Arrival> = t
                .iter()
                .map(|a| {
                    let r = trace_requirements(a, &s.requirements);
                    let idx = match reqs.iter().position(|x| *x == r) {
                        Some(i) => i,
                        None => {
                            reqs.push(r);
                            reqs.len() - 1
                        }
                    };
                    let affinity = a.affinity.as_ref().map(|k| {
                        keys.iter().position(|x| x == k).unwrap_or_else(|| {
                            keys.push(k.clone());
                            keys.len() - 1
                        })
                    });
                    Arrival {
                        at_ms: a.at_ms,
                        duration_ms: a.duration_ms,
                        requirements: idx,
                        affinity,
                    }
                })
                .collect();
            // Stable: equal times keep the trace's order.
            jobs.sort_by_key(|a| a.at_ms);
            Arrivals {
                jobs,
                requirements: reqs,
                affinity: keys,
            }
        }
        Forecast::Profile(p) => {
            let mut counts = Rng::new(input.seed, 1);
            let mut offsets = Rng::new(input.seed, 2);
            let mut durations = Rng::new(input.seed, 3);
            let mut spikes = Rng::new(input.seed, 4);
            // Its own stream: naming keys changes no other draw.
            let mut repos = Rng::new(input.seed, 9);
            let keys = input.jobs.affinity_keys.unwrap_or(0);
            let step = input.step_ms;
            let mut jobs = Vec::new();
            let mut spike_until: Millis = 0;
            let mut t = 0;
            while t < s.horizon_ms {
                let hour = ((t / HOUR) % 24) as usize;
                let day = ((t % WEEK) / (24 * HOUR)) as usize;
                let mut rate = p.rate_per_hour;
                if let Some(h) = &p.hour_of_day {
                    rate *= h.get(hour).copied().unwrap_or(1.0);
                }
                if let Some(d) = &p.day_of_week {
                    rate *= d.get(day).copied().unwrap_or(1.0);
                }
                if let Some(sp) = &p.spikes {
                    let start_p = sp.per_week * step as f64 / WEEK as f64;
                    if t >= spike_until && spikes.unit() < start_p {
                        spike_until = t + sp.duration_minutes * 60_000;
                    }
                    if t < spike_until {
                        rate += sp.rate_per_hour;
                    }
                }
                let len = step.min(s.horizon_ms - t);
                let n = counts.poisson(rate * len as f64 / HOUR as f64);
                let mut at: Vec<Millis> = (0..n)
                    .map(|_| t + offsets.below(len / 1_000) * 1_000)
                    .collect();
                at.sort_unstable();
                for at_ms in at {
                    jobs.push(Arrival {
                        at_ms,
                        duration_ms: duration(&input.jobs.duration, &mut durations),
                        requirements: 0,
                        affinity: (keys > 0).then(|| repos.below(u64::from(keys)) as usize),
                    });
                }
                t += step;
            }
            Arrivals {
                jobs,
                requirements: vec![s.requirements.clone()],
                affinity: (0..keys).filter_map(|i| repo_key(i).ok()).collect(),
            }
        }
    }
}

/// The name of the `i`th simulated repository.
fn repo_key(i: u32) -> Result<AffinityKey, fleet_core::ids::IdError> {
    AffinityKey::new(format!("repo-{i}"))
}

/// One duration from `d`, whole seconds, clamped to 1 s ..= [`MAX_JOB_MS`].
fn duration(d: &DurationDist, rng: &mut Rng) -> Millis {
    let ms = match *d {
        DurationDist::Fixed { ms } => ms as f64,
        DurationDist::Uniform { min_ms, max_ms } => {
            (min_ms + rng.below(max_ms - min_ms + 1)) as f64
        }
        DurationDist::Lognormal { median_ms, sigma } => {
            median_ms as f64 * (sigma * rng.normal()).exp()
        }
    };
    let secs = (ms / 1_000.0)
        .round()
        .clamp(1.0, (MAX_JOB_MS / 1_000) as f64);
    secs as Millis * 1_000
}
