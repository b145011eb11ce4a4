//! Prometheus metrics: what berth counts as it runs, and the text format it exposes.
//! What is measured at scrape time, and the HTTP endpoint, belong to the server
//! (`server::collect`, `server::http`): they read the engine, and every layer below the
//! server records into this module, so it imports none of them.
//!
//! Counters live in a [`Registry`] the server owns: the RPC wrapper in `csi` records each
//! call into it, and code that mounts, formats or attaches loop devices calls
//! [`record_error`] when that fails, which counts in the registry of the RPC (see
//! [`scoped`]) doing the work. Label values are
//! `&'static str` chosen by berth's code, or IDs, names and pool names that berth has
//! validated; a request's secrets or volume context never become a label.

pub mod exposition;
pub mod heap;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Debug, Default)]
struct Rpcs {
    requests: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// The limits the server enforces, reported next to the counts they bound. The server
/// fills them in from the modules that enforce them, so this module, which every layer
/// records into, depends on none of those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Slow CSI calls (volume stats) that do their work at once.
    pub slow_calls: usize,
    /// Client connections the CSI socket serves at once.
    pub connections: usize,
}

/// Everything one berth process counts, and the state its probes report. The server owns
/// one and hands it to what records into it, so two servers (or two tests) in one process
/// never share a count.
#[derive(Debug, Default)]
pub struct Registry {
    /// The limits reported as `berth_rpc_slow_max` and `berth_connections_max`.
    pub limits: Limits,
    rpcs: Mutex<Rpcs>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// RPCs being served right now, counted until their work ends (not when a client that
    /// gave up drops the call); shutdown waits for this to reach zero.
    pub in_flight: AtomicUsize,
    /// Slow calls waiting for their turn.
    pub slow_waiting: AtomicUsize,
    /// Client connections to the CSI socket open now.
    pub connections: AtomicUsize,
    /// Connections closed at accept because every place was taken and none was idle.
    pub refused: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    ready: AtomicBool,
    stopping: AtomicBool,
}

impl Registry {
    /// A registry with nothing counted yet that reports `limits`.
    pub fn new(limits: Limits) -> Registry {
        Registry { limits, ..Registry::default() }
    }

    /// Records one finished RPC: its method, its gRPC code name and how long it took.
    pub fn observe_rpc(&self, method: &'static str, code: &'static str, elapsed: Duration) {
        let mut rpcs = self.rpcs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *rpcs.requests.entry((method, code)).or_default() += 1;
        rpcs.latency.entry(method).or_default().observe(elapsed.as_secs_f64());
    }

    /// Counts one failure of kind `kind` (see [`ERROR_KINDS`] for the names berth uses).
    pub fn record_error(&self, kind: &'static str) {
        *self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(kind).or_default() += 1;
    }

    /// Reads every counter.
    pub fn counters(&self) -> Counters {
        let (requests, latency) = {
            let rpcs = self.rpcs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (rpcs.requests.clone(), rpcs.latency.clone())
        };
        let mut errors: BTreeMap<&'static str, u64> = ERROR_KINDS.iter().map(|k| (*k, 0)).collect();
        for (kind, n) in self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            errors.insert(kind, *n);
        }
        Counters { requests, latency, errors }
    }

    /// Whether berth is ready: its state is loaded, every pool is open, interrupted work
    /// is finished and the socket is served, and it is not shutting down. Probe and
    /// `/readyz` answer this.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Sets what [`Registry::ready`] answers; the server sets it once recovery is done and
    /// clears it at shutdown.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether berth is stopping (SIGTERM): `/healthz` then fails. While it starts, not
    /// ready but not stopping, it is alive.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Marks berth as stopping (see [`Registry::stopping`]).
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

thread_local! {
    /// The registry the work running on this thread records its failures into: set for
    /// the length of an RPC's work (and of recovery), the way a tracing span is entered.
    /// It names a registry the server owns; it holds no count of its own.
    static CURRENT: RefCell<Option<Arc<Registry>>> = const { RefCell::new(None) };
}

/// Runs `work` with `registry` as the one [`record_error`] records into on this thread.
pub fn scoped<T>(registry: &Arc<Registry>, work: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<Registry>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|c| c.borrow_mut().replace(Arc::clone(registry)));
    let _restore = Restore(previous);
    work()
}

/// Counts one failure of kind `kind` in the registry of the work running on this thread
/// (see [`scoped`]); outside any, nothing is counted.
pub fn record_error(kind: &'static str) {
    CURRENT.with(|c| {
        if let Some(registry) = c.borrow().as_ref() {
            registry.record_error(kind);
        }
    });
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
        let registry = Arc::new(Registry::default());
        registry.observe_rpc("TestMethodA", "OK", Duration::from_millis(3));
        registry.observe_rpc("TestMethodA", "OK", Duration::from_millis(4));
        registry.observe_rpc("TestMethodA", "NOT_FOUND", Duration::from_millis(5));
        scoped(&registry, || record_error("loop"));
        record_error("loop");
        let counted = registry.counters();
        assert_eq!(counted.requests.get(&("TestMethodA", "OK")), Some(&2));
        assert_eq!(counted.requests.get(&("TestMethodA", "NOT_FOUND")), Some(&1));
        assert_eq!(counted.latency.get("TestMethodA").map(Histogram::count), Some(3));
        for kind in ERROR_KINDS {
            assert!(counted.errors.contains_key(kind), "{kind}");
        }
        assert_eq!(counted.errors["loop"], 1, "only the failure inside the scope counts here");
        assert_eq!(Registry::default().counters().errors["loop"], 0, "another registry counts nothing of it");
    }

    #[test]
    fn scopes_nest_and_end() {
        let (outer, inner) = (Arc::new(Registry::default()), Arc::new(Registry::default()));
        scoped(&outer, || {
            scoped(&inner, || record_error("mount"));
            record_error("mount");
        });
        record_error("mount");
        assert_eq!((outer.counters().errors["mount"], inner.counters().errors["mount"]), (1, 1));
    }
}
