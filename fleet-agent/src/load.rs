//! Node load from `/proc` (Linux): CPU use between two samples of
//! `/proc/stat`, memory in use from `/proc/meminfo`, a process's RSS from
//! `/proc/<pid>/status`. Elsewhere the numbers are zero.

use fleet_core::protocol::{Arch, NodeResources};
use std::collections::BTreeMap;

/// CPU time counters from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// Jiffies spent idle (idle + iowait).
    pub idle: u64,
    /// All jiffies.
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuSample> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    if nums.len() < 4 {
        return None;
    }
    let idle = nums[3] + nums.get(4).copied().unwrap_or(0);
    Some(CpuSample {
        idle,
        total: nums.iter().sum(),
    })
}

/// CPU use between two samples, in percent of all CPUs.
pub fn cpu_percent(prev: CpuSample, now: CpuSample) -> f32 {
    let total = now.total.saturating_sub(prev.total);
    let idle = now.idle.saturating_sub(prev.idle);
    if total == 0 {
        return 0.0;
    }
    // Precision loss is irrelevant at percent resolution.
    #[expect(clippy::cast_precision_loss, reason = "a percentage")]
    let pct = (total.saturating_sub(idle)) as f32 * 100.0 / total as f32;
    pct
}

/// `(total, in use)` memory in MiB from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:").or_else(|| field("MemFree:"))?;
    Some((total / 1024, total.saturating_sub(avail) / 1024))
}

/// Samples the node's load; keeps the previous CPU sample.
#[derive(Debug, Default)]
pub struct LoadSampler {
    prev: Option<CpuSample>,
}

impl LoadSampler {
    /// CPU percent since the last call (0 on the first) and memory in use.
    pub fn sample(&mut self) -> (f32, u64) {
        let now = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t));
        let cpu = match (self.prev, now) {
            (Some(p), Some(n)) => cpu_percent(p, n),
            _ => 0.0,
        };
        if now.is_some() {
            self.prev = now;
        }
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| parse_meminfo(&t))
            .map_or(0, |(_, used)| used);
        (cpu, mem)
    }
}

/// Resident memory of a process in MiB.
pub fn process_rss_mb(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// What this node offers: CPUs, memory, architecture and the configured
/// labels.
pub fn node_resources(labels: BTreeMap<String, String>) -> NodeResources {
    let cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t))
        .map_or(0, |(total, _)| total);
    let arch = if std::env::consts::ARCH == "aarch64" {
        Arch::Aarch64
    } else {
        Arch::X86_64
    };
    NodeResources {
        cpus,
        memory_mb,
        arch,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let a = parse_proc_stat("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n");
        let b = parse_proc_stat("cpu  150 0 150 750 100 0 0 0 0 0\n");
        assert_eq!(
            a,
            Some(CpuSample {
                idle: 800,
                total: 1000
            })
        );
        let (Some(a), Some(b)) = (a, b) else {
            return;
        };
        assert!((cpu_percent(a, b) - 66.666_67).abs() < 0.01);
        assert_eq!(
            parse_meminfo("MemTotal:  2048000 kB\nMemFree: 1 kB\nMemAvailable: 1024000 kB\n"),
            Some((2000, 1000))
        );
        assert_eq!(parse_proc_stat("garbage"), None);
    }
}
