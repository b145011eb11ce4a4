//! Measurements for `berth bench`: latency percentiles, a driver's resident memory and CPU
//! time read from /proc, and a progress line on stderr.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

/// Latency samples of one kind of operation, summarised as percentiles and a rate.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    /// Records one sample.
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// The number of samples.
    #[must_use]
    pub fn count(&self) -> usize {
        self.samples.len()
    }

    /// The `q` quantile (0.0..=1.0) in milliseconds, nearest-rank; 0 without samples.
    #[must_use]
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        ms(sorted[rank - 1])
    }

    /// count, p50, p90, p99, max in milliseconds; ops/s over `wall`.
    #[must_use]
    pub fn summary(&self, wall: Duration) -> Value {
        let rate = if wall.is_zero() { 0.0 } else { self.count() as f64 / wall.as_secs_f64() };
        json!({
            "count": self.count(),
            "p50_ms": round(self.quantile_ms(0.5)),
            "p90_ms": round(self.quantile_ms(0.9)),
            "p99_ms": round(self.quantile_ms(0.99)),
            "max_ms": round(self.quantile_ms(1.0)),
            "ops_per_s": round(rate),
        })
    }
}

/// A duration in milliseconds.
#[must_use]
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Rounds to three decimals for output.
#[must_use]
pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One reading of a process's memory (KiB) from /proc/<pid>/status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size now.
    pub rss_kib: u64,
    /// The peak resident set size since the process started.
    pub hwm_kib: u64,
}

/// Reads VmRSS and VmHWM of `pid`.
#[must_use]
pub fn memory(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Memory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// The CPU time (user + system) `pid` has used so far, from /proc/<pid>/stat.
#[must_use]
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some(Duration::from_nanos((utime + stime).saturating_mul(1_000_000_000) / ticks))
}

/// Samples a process's resident memory in the background and keeps the maximum seen.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    max_kib: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid` every 20 ms.
    #[must_use]
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kib = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max_kib.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(mem) = memory(pid) {
                    m.fetch_max(mem.rss_kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { stop, max_kib, thread: Some(thread) }
    }

    /// Stops sampling and returns the largest resident size seen, in KiB.
    #[must_use]
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max_kib.load(Ordering::Relaxed)
    }
}

/// A one-line progress indicator on stderr, shown only when enabled.
#[derive(Clone)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// Enabled with `forced`, or when stderr is a terminal.
    #[must_use]
    pub fn new(forced: bool) -> Progress {
        Progress { enabled: forced || std::io::stderr().is_terminal() }
    }

    /// Shows `done` of `total` for `what` (every call when small, else every 1%).
    pub fn tick(&self, what: &str, done: usize, total: usize) {
        if !self.enabled || total == 0 {
            return;
        }
        let step = (total / 100).max(1);
        if done.is_multiple_of(step) || done == total {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{what}: {done}/{total} ({}%)\x1b[K", done * 100 / total);
            if done == total {
                let _ = writeln!(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut l = Latencies::default();
        for i in 1..=100 {
            l.push(Duration::from_millis(i));
        }
        assert_eq!(l.quantile_ms(0.5), 50.0);
        assert_eq!(l.quantile_ms(0.99), 99.0);
        assert_eq!(l.quantile_ms(1.0), 100.0);
        assert_eq!(Latencies::default().quantile_ms(0.5), 0.0);
    }

    #[test]
    fn own_process_footprint_is_readable() {
        let me = std::process::id();
        let mem = memory(me).expect("status");
        assert!(mem.rss_kib > 0 && mem.hwm_kib >= mem.rss_kib);
        assert!(cpu_time(me).is_some());
    }
}
