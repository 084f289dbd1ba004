//! Counters and histograms the driver keeps, rendered as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fleet_core::controller::Alert;
use serde::Serialize;

/// Upper bounds (ms) of the grant-latency histogram buckets.
pub const GRANT_BUCKETS_MS: [u64; 12] = [
    1, 5, 10, 50, 100, 500, 1_000, 5_000, 30_000, 60_000, 300_000, 900_000,
];

/// What the driver counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// Grant latency histogram: counts per bucket of [`GRANT_BUCKETS_MS`]
    /// (cumulative counts are computed on render), plus +Inf.
    pub grant_buckets: [u64; GRANT_BUCKETS_MS.len() + 1],
    /// Sum of grant latencies (ms).
    pub grant_sum_ms: u64,
    /// Grants.
    pub grants: u64,
    /// Provider errors by (call, kind).
    pub provider_errors: BTreeMap<String, u64>,
    /// Alerts by kind.
    pub alerts: BTreeMap<String, u64>,
    /// What the driver received or was told to do but does not know (a
    /// newer fleet-core's message, command or peer), by what it was.
    pub unknown: BTreeMap<String, u64>,
}

impl Metrics {
    /// Records a grant `latency_ms` after its request.
    pub fn granted(&mut self, latency_ms: u64) {
        let i = GRANT_BUCKETS_MS
            .iter()
            .position(|b| latency_ms <= *b)
            .unwrap_or(GRANT_BUCKETS_MS.len());
        self.grant_buckets[i] += 1;
        self.grant_sum_ms = self.grant_sum_ms.saturating_add(latency_ms);
        self.grants += 1;
    }

    /// Records a failed provider call.
    pub fn provider_error(&mut self, call: &str, kind: &str) {
        *self
            .provider_errors
            .entry(format!("{call},{kind}"))
            .or_default() += 1;
    }

    /// Records an alert.
    pub fn alert(&mut self, alert: &Alert) {
        let kind = serde_json::to_value(alert)
            .ok()
            .and_then(|v| v.get("alert").and_then(|k| k.as_str().map(str::to_owned)))
            .unwrap_or_else(|| "other".to_owned());
        *self.alerts.entry(kind).or_default() += 1;
    }

    /// Records something unknown the driver dropped: an inbound message, a
    /// command or a peer of a variant it was not built with.
    pub fn unknown(&mut self, what: &str) {
        *self.unknown.entry(what.to_owned()).or_default() += 1;
    }

    /// The grant histogram as Prometheus text.
    pub fn render_grants(&self, out: &mut String) {
        out.push_str("# HELP fleet_grant_latency_seconds Time from claim request to grant.\n");
        out.push_str("# TYPE fleet_grant_latency_seconds histogram\n");
        let mut cumulative = 0;
        for (i, bound) in GRANT_BUCKETS_MS.iter().enumerate() {
            cumulative += self.grant_buckets[i];
            let le = *bound as f64 / 1_000.0;
            let _ = writeln!(
                out,
                "fleet_grant_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.grant_buckets[GRANT_BUCKETS_MS.len()];
        let _ = writeln!(
            out,
            "fleet_grant_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "fleet_grant_latency_seconds_sum {}",
            self.grant_sum_ms as f64 / 1_000.0
        );
        let _ = writeln!(out, "fleet_grant_latency_seconds_count {}", self.grants);
        out.push_str("# HELP fleet_provider_errors_total Failed provider calls.\n");
        out.push_str("# TYPE fleet_provider_errors_total counter\n");
        for (k, n) in &self.provider_errors {
            let (call, kind) = k.split_once(',').unwrap_or((k, ""));
            let _ = writeln!(
                out,
                "fleet_provider_errors_total{{call=\"{call}\",kind=\"{kind}\"}} {n}"
            );
        }
        out.push_str("# HELP fleet_alerts_total Alerts raised.\n");
        out.push_str("# TYPE fleet_alerts_total counter\n");
        for (k, n) in &self.alerts {
            let _ = writeln!(out, "fleet_alerts_total{{kind=\"{k}\"}} {n}");
        }
        out.push_str(
            "# HELP fleet_unknown_dropped_total Messages, commands and peers the driver did not know and dropped.\n",
        );
        out.push_str("# TYPE fleet_unknown_dropped_total counter\n");
        for (k, n) in &self.unknown {
            let _ = writeln!(out, "fleet_unknown_dropped_total{{what=\"{k}\"}} {n}");
        }
    }
}
