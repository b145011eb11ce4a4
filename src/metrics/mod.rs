//! Prometheus metrics: what berth counts as it runs, what it measures at scrape time, and
//! the small HTTP server that exposes both on `/metrics` (and `/healthz`).
//!
//! Counters live in process-wide registries so any module can record into them without
//! plumbing: the RPC wrapper in `csi` calls [`observe_rpc`], and code that mounts, formats
//! or attaches loop devices calls [`record_error`] when that fails. Label values are
//! `&'static str` chosen by berth's code, or IDs, names and pool names that berth has
//! validated; a request's secrets or volume context never become a label.

pub mod collect;
pub mod exposition;
pub mod http;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the RPC latency histogram buckets: from a fast Probe to the
/// kubelet's 2-minute deadline.
pub const LATENCY_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// Error kinds that exist from the start (at zero), so dashboards see every series before
/// the first failure: `mount` (mount(2) or a bind failed), `unmount`, `format` (mkfs),
/// `loop` (attaching or resizing a loop device), `resize` (growing a filesystem),
/// `quota` (setting a size limit).
pub const ERROR_KINDS: [&str; 6] = ["mount", "unmount", "format", "loop", "resize", "quota"];

/// A latency histogram with [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot counts those above every bound.
    pub counts: [u64; LATENCY_BUCKETS.len() + 1],
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let slot = LATENCY_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[slot] += 1;
        self.sum += seconds;
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Debug, Default)]
struct Rpcs {
    requests: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

static RPCS: Mutex<Rpcs> = Mutex::new(Rpcs { requests: BTreeMap::new(), latency: BTreeMap::new() });
static ERRORS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Records one finished RPC: its method, its gRPC code name and how long it took.
pub fn observe_rpc(method: &'static str, code: &'static str, elapsed: Duration) {
    let mut rpcs = RPCS.lock().unwrap_or_else(|e| e.into_inner());
    *rpcs.requests.entry((method, code)).or_default() += 1;
    rpcs.latency.entry(method).or_default().observe(elapsed.as_secs_f64());
}

/// Counts one failure of kind `kind` (see [`ERROR_KINDS`] for the names berth uses).
pub fn record_error(kind: &'static str) {
    *ERRORS.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Finished RPCs by (method, code).
    pub requests: BTreeMap<(&'static str, &'static str), u64>,
    /// Latency by method.
    pub latency: BTreeMap<&'static str, Histogram>,
    /// Failures by kind, [`ERROR_KINDS`] always included.
    pub errors: BTreeMap<&'static str, u64>,
}

/// Reads every counter.
pub fn counters() -> Counters {
    let rpcs = RPCS.lock().unwrap_or_else(|e| e.into_inner());
    let mut errors: BTreeMap<&'static str, u64> = ERROR_KINDS.iter().map(|k| (*k, 0)).collect();
    for (kind, n) in ERRORS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        errors.insert(kind, *n);
    }
    Counters { requests: rpcs.requests.clone(), latency: rpcs.latency.clone(), errors }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_each_observation_in_one_bucket() {
        let mut h = Histogram::default();
        for s in [0.0005, 0.001, 0.3, 200.0] {
            h.observe(s);
        }
        assert_eq!(h.counts[0], 2, "at or below the first bound");
        assert_eq!(h.counts[8], 1, "0.3 s is in the 0.5 s bucket");
        assert_eq!(h.counts[LATENCY_BUCKETS.len()], 1, "above every bound");
        assert_eq!(h.count(), 4);
        assert!((h.sum - 200.3015).abs() < 1e-9);
    }

    #[test]
    fn counters_accumulate_and_known_error_kinds_start_at_zero() {
        let before = counters();
        observe_rpc("TestMethodA", "OK", Duration::from_millis(3));
        observe_rpc("TestMethodA", "OK", Duration::from_millis(4));
        observe_rpc("TestMethodA", "NOT_FOUND", Duration::from_millis(5));
        record_error("loop");
        let after = counters();
        assert_eq!(after.requests.get(&("TestMethodA", "OK")), Some(&2));
        assert_eq!(after.requests.get(&("TestMethodA", "NOT_FOUND")), Some(&1));
        assert_eq!(after.latency.get("TestMethodA").map(Histogram::count), Some(3));
        for kind in ERROR_KINDS {
            assert!(after.errors.contains_key(kind), "{kind}");
        }
        assert!(after.errors["loop"] > before.errors["loop"]);
    }
}
