//! Figures: summaries of repeated measurements, percentiles, and what the kernel
//! says about a process (`/proc/<pid>/status` and `/proc/<pid>/stat`).

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`: 100 on
/// every Linux this runs on; std offers no `sysconf` without unsafe code).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Median, minimum and maximum of repeated measurements of one figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summary(samples: &[f64]) -> Summary {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return Summary {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Summary {
        median,
        min: sorted[0],
        max: sorted[n - 1],
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted durations, in milliseconds.
pub fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    let index = rank.clamp(1, samples.len()) - 1;
    samples[index].as_secs_f64() * 1_000.0
}

/// p50 / p99 / p99.9 / max of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: usize,
}

pub fn latency(samples: &mut [Duration]) -> Latency {
    Latency {
        p50: percentile_ms(samples, 50.0),
        p99: percentile_ms(samples, 99.0),
        p999: percentile_ms(samples, 99.9),
        max: percentile_ms(samples, 100.0),
        count: samples.len(),
    }
}

impl Latency {
    pub fn json(&self) -> Value {
        json!({"p50_ms": self.p50, "p99_ms": self.p99, "p99_9_ms": self.p999, "max_ms": self.max, "count": self.count})
    }
}

/// Flush requests completed by the block device that holds `path`, since boot: the
/// 16th field of `/sys/dev/block/MAJ:MIN/stat` (of the whole disk when `path` is on
/// a partition). Each `fsync`/`fdatasync` that reaches a disk with a volatile write
/// cache is one flush request, so the difference over a window is the syncs the disk
/// did. `/proc/<pid>/io` counts no syncs, so this is the nearest counter there is;
/// it includes every process's syncs on that disk (the benchmark's simulated sites
/// keep their stores on tmpfs, off it). `None` where the kernel does not say: a
/// file system on no block device (tmpfs, overlay), or a kernel older than 5.5.
pub fn disk_flushes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let device = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let stat = if device.join("partition").exists() {
        device.join("../stat")
    } else {
        device.join("stat")
    };
    parse_flushes(&std::fs::read_to_string(stat).ok()?)
}

fn parse_flushes(stat: &str) -> Option<u64> {
    stat.split_whitespace().nth(15)?.parse().ok()
}

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS` or `VmHWM`, in KiB.
pub fn status_kib(pid: Option<u32>, field: &str) -> anyhow::Result<u64> {
    let path = proc_path(pid, "status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let number = rest.trim().trim_end_matches("kB").trim();
            return number
                .parse()
                .with_context(|| format!("{field} in {path}: {number:?}"));
        }
    }
    bail!("no {field} in {path}")
}

/// Resident memory of a process (this one when `pid` is `None`), in KiB.
pub fn rss_kib(pid: Option<u32>) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// User + system CPU time of a process or thread from its `stat` file.
fn cpu_of_stat(text: &str) -> anyhow::Result<Duration> {
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("stat too short")?
            .parse::<u64>()
            .context("stat time")
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / CLOCK_TICKS_PER_SEC))
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: Option<u32>) -> anyhow::Result<Duration> {
    let path = proc_path(pid, "stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    cpu_of_stat(&text)
}

/// CPU time of this process's threads, grouped by the thread name's prefix before
/// the first '-' or digit (`hub-rt`, `fleet-rt`, `sqlx-sqlite-worker-12` ->
/// `hub`, `fleet`, `sqlx`), so a figure can say who used the CPU.
pub fn cpu_by_thread_group() -> Vec<(String, Duration)> {
    let mut groups: std::collections::BTreeMap<String, Duration> = Default::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let group: String = name
            .trim()
            .split(|c: char| c == '-' || c.is_ascii_digit())
            .next()
            .unwrap_or("")
            .to_owned();
        if let Ok(cpu) = std::fs::read_to_string(dir.join("stat"))
            .map_err(anyhow::Error::from)
            .and_then(|text| cpu_of_stat(&text))
        {
            *groups.entry(group).or_default() += cpu;
        }
    }
    groups.into_iter().collect()
}

/// The difference between two `cpu_by_thread_group` snapshots, in seconds.
pub fn cpu_delta(before: &[(String, Duration)], after: &[(String, Duration)]) -> Value {
    let mut out = serde_json::Map::new();
    for (group, cpu) in after {
        let was = before
            .iter()
            .find(|(g, _)| g == group)
            .map(|(_, d)| *d)
            .unwrap_or_default();
        let used = cpu.saturating_sub(was).as_secs_f64();
        if used > 0.0 {
            out.insert(
                if group.is_empty() {
                    "other".into()
                } else {
                    group.clone()
                },
                json!((used * 100.0).round() / 100.0),
            );
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]).max, 4.0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&mut samples, 50.0), 50.0);
        assert_eq!(percentile_ms(&mut samples, 99.0), 99.0);
        assert_eq!(percentile_ms(&mut samples, 100.0), 100.0);
    }

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(cpu_of_stat(line).expect("parses"), Duration::from_secs(3));
    }

    #[test]
    fn flushes_are_the_sixteenth_field_and_absent_on_old_kernels() {
        let disk = "83120 6583 4380810 70838 77457 138210 24418144 128384 0 16952 202335 \
                    9491 51 1675496 2025 18778 1086";
        assert_eq!(parse_flushes(disk), Some(18778));
        // Before Linux 5.5 the line ends after the discard fields.
        assert_eq!(parse_flushes("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"), None);
    }
}
