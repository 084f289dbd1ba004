//! Scheduled capacity: a pool's idle-capacity policy by time of day.
//!
//! A pool's `schedule` is a list of [`SchedulePeriod`]s, each a set of cron
//! expressions in an IANA time zone with the policy that holds while one of
//! them matches: idle nodes kept ready (`min_idle`, or `scale_factor` times
//! the nodes in use, up to `scale_factor_limit`) and how long an idle node
//! waits before it goes (`idle_time_ms`). The last matching period wins;
//! outside all periods the pool keeps no spare nodes and its strategy's own
//! idle timeout holds. This is the shape GitLab's taskscaler gives its
//! `[[runners.autoscaler.policy]]`, so a runner's policy moves over as is.
//!
//! The controller evaluates the schedule at its `now` ([`Schedule::at`]) and
//! hands the resulting [`Capacity`] to the pool's strategy in its
//! [`PoolView`](crate::strategy::PoolView); it plans again when the next
//! period starts or ends. Nothing here reads a clock or a file: the zone
//! database is compiled in.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Timelike};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::ids::Millis;

const MINUTE: Millis = 60_000;
/// How far ahead the next change of period is searched for. A schedule
/// that changes less often is simply looked at again after this long.
pub const LOOKAHEAD_MS: Millis = 8 * 24 * 3_600_000;
/// The most cron expressions one pool's schedule may hold in all.
pub const MAX_EXPRESSIONS: usize = 64;

/// A multiple of the nodes in use, to three decimals (`0.5`: one idle node
/// for every two busy ones). Kept in thousandths so configurations compare
/// and round-trip exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScaleFactor(u32);

impl ScaleFactor {
    /// The largest factor accepted.
    pub const MAX: f64 = 100.0;

    /// `x`, rounded to thousandths, if it is a number in `0..=100`.
    pub fn new(x: f64) -> Option<ScaleFactor> {
        (x.is_finite() && (0.0..=Self::MAX).contains(&x))
            // In range, so the product fits a u32 exactly.
            .then(|| ScaleFactor((x * 1000.0).round() as u32))
    }

    /// The factor as a number.
    pub fn get(self) -> f64 {
        f64::from(self.0) / 1000.0
    }

    /// `ceil(n × factor)`.
    pub fn of(self, n: u32) -> u32 {
        let scaled = (u64::from(n) * u64::from(self.0)).div_ceil(1000);
        u32::try_from(scaled).unwrap_or(u32::MAX)
    }
}

// Hand-written: the value travels as a plain number, bounded.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for ScaleFactor {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ScaleFactor".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A multiple of the nodes in use, to three decimals.",
            "type": "number",
            "minimum": 0,
            "maximum": ScaleFactor::MAX,
        })
    }
}

impl Serialize for ScaleFactor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.get())
    }
}

impl<'de> Deserialize<'de> for ScaleFactor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ScaleFactor, D::Error> {
        let x = f64::deserialize(d)?;
        ScaleFactor::new(x).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "scale_factor must be a number from 0 to {}, got {x}",
                ScaleFactor::MAX
            ))
        })
    }
}

/// The idle-capacity policy a strategy plans with at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// The schedule period in force (its index), if any.
    pub period: Option<usize>,
    /// Idle nodes kept ready beyond the ones serving claims.
    pub min_idle: u32,
    /// Idle nodes as a multiple of the nodes in use.
    pub scale_factor: ScaleFactor,
    /// The most idle nodes `scale_factor` asks for (none: no cap).
    pub scale_factor_limit: Option<u32>,
    /// How long an idle node waits before it is stopped or deleted; none:
    /// the strategy's own timeout.
    pub idle_time_ms: Option<Millis>,
}

impl Capacity {
    /// Idle nodes wanted while `in_use` nodes serve claims: the greater of
    /// `min_idle` and `scale_factor × in_use` (capped by the limit).
    pub fn spare(&self, in_use: u32) -> u32 {
        let scaled = self.scale_factor.of(in_use);
        let scaled = self.scale_factor_limit.map_or(scaled, |l| scaled.min(l));
        self.min_idle.max(scaled)
    }

    /// The idle timeout in force: the period's, else `default`.
    pub fn idle_timeout(&self, default: Millis) -> Millis {
        self.idle_time_ms.unwrap_or(default)
    }
}

/// One period of a pool's schedule, as configured.
///
/// ```toml
/// [[pool.schedule]]
/// periods = ["* 7-19 * * mon-fri"]   # minute hour day-of-month month day-of-week
/// timezone = "Europe/Berlin"
/// min_idle = 2
/// idle_time_ms = 1200000
/// scale_factor = 0.5
/// scale_factor_limit = 6
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "PeriodSpec", into = "PeriodSpec")]
pub struct SchedulePeriod {
    spec: PeriodSpec,
    crons: Vec<Cron>,
    tz: Tz,
}

/// A period's fields, before its expressions and zone are parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PeriodSpec {
    /// Five-field cron expressions (minute, hour, day of month, month, day
    /// of week; names such as `mon-fri` and `jan` allowed). The period is in
    /// force during every minute one of them matches.
    pub periods: Vec<String>,
    /// The IANA zone the expressions are read in (default `UTC`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Idle nodes kept ready beyond the ones serving claims (default 0).
    #[serde(default)]
    pub min_idle: u32,
    /// Idle nodes as a multiple of the nodes in use (default 0).
    #[serde(default)]
    pub scale_factor: ScaleFactor,
    /// The most idle nodes `scale_factor` asks for (default: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_factor_limit: Option<u32>,
    /// How long an idle node waits before it goes (default: the strategy's
    /// own idle timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_time_ms: Option<Millis>,
}

fn default_timezone() -> String {
    "UTC".to_owned()
}

/// Why a period cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// A period with no expression never applies: surely a mistake.
    #[error("periods is empty: give at least one cron expression")]
    NoPeriods,
    /// Too many expressions to evaluate every minute.
    #[error("{count} cron expressions; at most {MAX_EXPRESSIONS}")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// An expression that does not parse.
    #[error("cron expression {expression:?}: {why}")]
    Cron {
        /// The expression.
        expression: String,
        /// What the parser said.
        why: String,
    },
    /// A zone the database does not know.
    #[error("unknown time zone {0:?} (an IANA name such as \"Europe/Berlin\" or \"UTC\")")]
    TimeZone(String),
}

impl TryFrom<PeriodSpec> for SchedulePeriod {
    type Error = ScheduleError;

    fn try_from(spec: PeriodSpec) -> Result<SchedulePeriod, ScheduleError> {
        if spec.periods.is_empty() {
            return Err(ScheduleError::NoPeriods);
        }
        if spec.periods.len() > MAX_EXPRESSIONS {
            return Err(ScheduleError::TooMany {
                count: spec.periods.len(),
            });
        }
        // Minute resolution: a seconds or year field would match a moment
        // the controller never looks at.
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let crons = spec
            .periods
            .iter()
            .map(|e| {
                parser.parse(e).map_err(|why| ScheduleError::Cron {
                    expression: e.clone(),
                    why: why.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tz = Tz::from_str(&spec.timezone)
            .map_err(|_| ScheduleError::TimeZone(spec.timezone.clone()))?;
        Ok(SchedulePeriod { spec, crons, tz })
    }
}

impl From<SchedulePeriod> for PeriodSpec {
    fn from(p: SchedulePeriod) -> PeriodSpec {
        p.spec
    }
}

impl PartialEq for SchedulePeriod {
    /// Periods are equal when configured alike (the parsed forms follow).
    fn eq(&self, other: &SchedulePeriod) -> bool {
        self.spec == other.spec
    }
}

impl Eq for SchedulePeriod {}

impl SchedulePeriod {
    /// Parses a period from its fields.
    pub fn new(spec: PeriodSpec) -> Result<SchedulePeriod, ScheduleError> {
        SchedulePeriod::try_from(spec)
    }

    /// The period as configured.
    pub fn spec(&self) -> &PeriodSpec {
        &self.spec
    }

    /// Whether the minute holding `at` (ms since the Unix epoch) is in the
    /// period.
    pub fn matches(&self, at: Millis) -> bool {
        let Some(utc) = i64::try_from(at)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
        else {
            return false;
        };
        let local = self.tz.from_utc_datetime(&utc.naive_utc());
        // Matching is per minute; croner also compares the second.
        let Some(local) = local.with_second(0) else {
            return false;
        };
        self.crons
            .iter()
            .any(|c| c.is_time_matching(&local).unwrap_or(false))
    }

    fn capacity(&self, index: usize) -> Capacity {
        Capacity {
            period: Some(index),
            min_idle: self.spec.min_idle,
            scale_factor: self.spec.scale_factor,
            scale_factor_limit: self.spec.scale_factor_limit,
            idle_time_ms: self.spec.idle_time_ms,
        }
    }
}

/// A pool's schedule: its periods, in the order configured.
#[derive(Debug, Clone, Copy)]
pub struct Schedule<'a>(pub &'a [SchedulePeriod]);

impl Schedule<'_> {
    /// The period in force at `at`: the last one that matches.
    pub fn active(&self, at: Millis) -> Option<usize> {
        self.0.iter().rposition(|p| p.matches(at))
    }

    /// The policy in force at `at`, and when it may next change (the start
    /// of the first minute whose period differs, searched up to
    /// [`LOOKAHEAD_MS`] ahead; `None` for an empty schedule).
    pub fn at(&self, at: Millis) -> (Capacity, Option<Millis>) {
        if self.0.is_empty() {
            return (Capacity::default(), None);
        }
        let now = self.active(at);
        let capacity = now.map_or_else(Capacity::default, |i| self.0[i].capacity(i));
        let mut t = (at / MINUTE + 1) * MINUTE;
        let end = at.saturating_add(LOOKAHEAD_MS);
        while t < end && self.active(t) == now {
            t += MINUTE;
        }
        (capacity, Some(t))
    }
}

impl fmt::Display for SchedulePeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            self.spec.periods.join(", "),
            self.spec.timezone
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-01T00:00Z, a Monday.
    const MONDAY: Millis = 1_704_067_200_000;
    const HOUR: Millis = 3_600_000;

    fn period(crons: &[&str], tz: &str, min_idle: u32) -> SchedulePeriod {
        SchedulePeriod::new(PeriodSpec {
            periods: crons.iter().map(|s| (*s).to_owned()).collect(),
            timezone: tz.to_owned(),
            min_idle,
            scale_factor: ScaleFactor::default(),
            scale_factor_limit: None,
            idle_time_ms: None,
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn working_hours_in_a_zone_match_in_that_zone() {
        // 07:00-19:59 Berlin time on weekdays; Berlin is UTC+1 in January.
        let p = period(&["* 7-19 * * mon-fri"], "Europe/Berlin", 2);
        assert!(!p.matches(MONDAY + 5 * HOUR + 59 * MINUTE), "06:59 Berlin");
        assert!(p.matches(MONDAY + 6 * HOUR), "07:00 Berlin");
        assert!(p.matches(MONDAY + 18 * HOUR + 59 * MINUTE), "19:59 Berlin");
        assert!(!p.matches(MONDAY + 19 * HOUR), "20:00 Berlin");
        assert!(!p.matches(MONDAY + 5 * 24 * HOUR + 10 * HOUR), "Saturday");
    }

    #[test]
    fn the_last_matching_period_wins_and_changes_are_found() {
        let periods = [
            period(&["* * * * *"], "UTC", 1),
            period(&["* 9-17 * * mon-fri"], "UTC", 4),
        ];
        let s = Schedule(&periods);
        let (c, next) = s.at(MONDAY + 3 * HOUR + 30_000);
        assert_eq!((c.period, c.min_idle), (Some(0), 1));
        assert_eq!(next, Some(MONDAY + 9 * HOUR));
        let (c, next) = s.at(MONDAY + 9 * HOUR);
        assert_eq!((c.period, c.min_idle), (Some(1), 4));
        assert_eq!(next, Some(MONDAY + 18 * HOUR));
        // Friday evening to Monday morning.
        let friday_evening = MONDAY + 4 * 24 * HOUR + 18 * HOUR;
        assert_eq!(
            s.at(friday_evening).1,
            Some(MONDAY + 7 * 24 * HOUR + 9 * HOUR)
        );
        assert_eq!(Schedule(&[]).at(MONDAY), (Capacity::default(), None));
    }

    #[test]
    fn a_period_that_never_ends_is_looked_at_again_after_the_lookahead() {
        let periods = [period(&["* * * * *"], "UTC", 1)];
        let (c, next) = Schedule(&periods).at(MONDAY);
        assert_eq!(c.min_idle, 1);
        assert_eq!(next, Some(MONDAY + LOOKAHEAD_MS));
    }

    #[test]
    fn spare_is_the_greater_of_min_idle_and_the_capped_factor() {
        let c = Capacity {
            min_idle: 2,
            scale_factor: ScaleFactor::new(0.5).unwrap_or_default(),
            scale_factor_limit: Some(5),
            ..Capacity::default()
        };
        assert_eq!(c.spare(0), 2);
        assert_eq!(c.spare(3), 2);
        assert_eq!(c.spare(5), 3, "ceil(2.5)");
        assert_eq!(c.spare(100), 5, "capped");
        assert_eq!(c.idle_timeout(60_000), 60_000);
    }

    #[test]
    fn bad_periods_say_what_is_wrong() {
        let spec = |crons: &[&str], tz: &str| PeriodSpec {
            periods: crons.iter().map(|s| (*s).to_owned()).collect(),
            timezone: tz.to_owned(),
            min_idle: 0,
            scale_factor: ScaleFactor::default(),
            scale_factor_limit: None,
            idle_time_ms: None,
        };
        assert_eq!(
            SchedulePeriod::new(spec(&[], "UTC")).err(),
            Some(ScheduleError::NoPeriods)
        );
        assert!(matches!(
            SchedulePeriod::new(spec(&["* 25 * * *"], "UTC")),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(matches!(
            SchedulePeriod::new(spec(&["0 * * * * *"], "UTC")),
            Err(ScheduleError::Cron { .. })
        ));
        assert_eq!(
            SchedulePeriod::new(spec(&["* * * * *"], "Mars/Olympus")).err(),
            Some(ScheduleError::TimeZone("Mars/Olympus".to_owned()))
        );
        let toml_like: Result<SchedulePeriod, _> =
            serde_json::from_str(r#"{"periods":["* * * * *"],"scale_factor":-1}"#);
        assert!(toml_like.is_err());
        let unknown: Result<SchedulePeriod, _> =
            serde_json::from_str(r#"{"periods":["* * * * *"],"idle_count":1}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn a_period_round_trips_as_configured() {
        let text = r#"{"periods":["* 7-19 * * mon-fri"],"timezone":"Europe/Berlin","min_idle":2,"scale_factor":0.5,"scale_factor_limit":6,"idle_time_ms":1200000}"#;
        let p: SchedulePeriod = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.spec().scale_factor.get(), 0.5);
        let back = serde_json::to_string(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, text);
    }
}
