//! One scrape: the counters, plus what is measured from the engine at scrape time (pool
//! capacity, volume and snapshot counts, per-volume usage).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::StageSource;
use crate::engine::Engine;
use crate::metrics::exposition::{Kind, Writer, format_value};
use crate::metrics::{Counters, LATENCY_BUCKETS, Registry, heap};
use crate::mount::ops;
use crate::state::{Phase, VolumeRecord};

/// How long a volume's measured usage is reused: walking a large tree or syncing a btrfs
/// filesystem on every scrape would cost more than the number is worth.
pub const USAGE_TTL: Duration = Duration::from_secs(30);
/// Time one scrape may spend refreshing usage; volumes left over keep their last value and
/// are refreshed by the next scrape, so a huge volume never makes a scrape time out.
pub const USAGE_BUDGET: Duration = Duration::from_secs(5);

/// The StorageClass parameters csi-provisioner's `--extra-create-metadata` adds.
const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";

/// Renders scrapes of one server's registry and engine, remembering volume usage between
/// them.
pub struct Collector {
    registry: Arc<Registry>,
    engine: Option<Arc<Engine>>,
    /// Usage measured by earlier scrapes, in volume ID order (the order the store walks
    /// its records in), so a scrape matches it to the volumes in one merging pass without
    /// hashing an ID.
    usage: Mutex<Vec<Measured>>,
    /// The size of the last scrape's document, from which the next one takes its room
    /// ([`room_for`]), so a scrape of 3.5 MB (10,000 volumes) does not grow its buffer and
    /// copy it again and again.
    last_size: AtomicUsize,
}

/// One volume's usage as a scrape measured it, with the record it measured (shared with
/// the store: no copy of the ID).
struct Measured {
    volume: Arc<VolumeRecord>,
    at: Instant,
    used: u64,
}

impl Collector {
    /// A collector of `registry` and `engine`; without an engine it renders the counters
    /// only.
    pub fn new(registry: Arc<Registry>, engine: Option<Arc<Engine>>) -> Collector {
        Collector { registry, engine, usage: Mutex::new(Vec::new()), last_size: AtomicUsize::new(0) }
    }

    /// The registry this collector renders (its readiness answers `/healthz`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The whole exposition document. It may touch the filesystem: call it on a blocking thread.
    pub fn render(&self) -> String {
        let mut w = Writer::with_capacity(room_for(self.last_size.load(Ordering::Relaxed)));
        w.family("berth_build_info", Kind::Gauge, "berth's version; always 1.");
        w.sample("berth_build_info", &[("version", crate::VERSION)], 1.0);
        let r = &self.registry;
        let ready = if r.ready() { 1.0 } else { 0.0 };
        w.single("berth_ready", Kind::Gauge, "1 when berth answers Probe with ready, else 0.", ready);
        w.single(
            "berth_rpc_in_flight",
            Kind::Gauge,
            "CSI calls being served right now.",
            r.in_flight.load(Ordering::SeqCst) as f64,
        );
        w.single(
            "berth_rpc_slow_waiting",
            Kind::Gauge,
            "Slow CSI calls (volume stats) waiting for one of the turns berth_rpc_slow_max allows.",
            r.slow_waiting.load(Ordering::SeqCst) as f64,
        );
        w.single(
            "berth_rpc_slow_max",
            Kind::Gauge,
            "How many slow CSI calls do their work at once.",
            r.limits.slow_calls as f64,
        );
        w.single(
            "berth_connections",
            Kind::Gauge,
            "Client connections to the CSI socket open now.",
            r.connections.load(Ordering::SeqCst) as f64,
        );
        w.single(
            "berth_connections_max",
            Kind::Gauge,
            "Client connections the CSI socket serves at once.",
            r.limits.connections as f64,
        );
        w.single(
            "berth_connections_refused_total",
            Kind::Counter,
            "Connections closed at accept because the socket served its maximum and every one had a call in flight.",
            r.refused.load(Ordering::SeqCst) as f64,
        );
        w.single(
            "berth_connections_evicted_total",
            Kind::Counter,
            "Idle connections closed to make room for a new client while the socket served its maximum.",
            r.evicted.load(Ordering::SeqCst) as f64,
        );
        write_heap(&mut w);
        write_counters(&mut w, &r.counters());
        if let Some(engine) = &self.engine {
            let (copies, copied) = engine.copies.in_progress();
            w.single(
                "berth_copies_in_progress",
                Kind::Gauge,
                "Snapshot cuts, restores and clones running in the background (NFS pools), and snapshot copies to and restores from shared pools.",
                copies as f64,
            );
            w.single(
                "berth_copies_in_progress_bytes",
                Kind::Gauge,
                "Data bytes the background copies in progress have copied so far (zero blocks are not counted).",
                copied as f64,
            );
            let archived = &engine.archived;
            for (name, help, value) in [
                (
                    "berth_snapshot_copies_completed_total",
                    "Snapshot copies to shared pools committed and checked (ready to use).",
                    &archived.copied,
                ),
                (
                    "berth_snapshot_copies_failed_total",
                    "Snapshot copies to shared pools that failed; the snapshotter's retry starts them again.",
                    &archived.failed,
                ),
                (
                    "berth_snapshot_copy_sent_bytes_total",
                    "Bytes snapshot copies sent to shared pools: new chunks and manifests (what deduplication left).",
                    &archived.sent_bytes,
                ),
                (
                    "berth_snapshot_copy_restores_total",
                    "Volumes restored from snapshot copies on shared pools.",
                    &archived.restored,
                ),
            ] {
                w.single(name, Kind::Counter, help, value.load(Ordering::Relaxed) as f64);
            }
            write_pools(&mut w, engine);
            self.write_volumes(&mut w, engine);
        }
        let document = w.finish();
        self.last_size.store(document.len(), Ordering::Relaxed);
        document
    }

    /// The heap counts alone (`/metrics?collect=heap`): what `berth bench` reads before
    /// and after each workload, which costs a few allocations where a whole scrape would
    /// cost thousands. Nothing here touches the filesystem.
    pub fn render_heap(&self) -> String {
        let mut w = Writer::default();
        write_heap(&mut w);
        w.finish()
    }

    fn write_volumes(&self, w: &mut Writer, engine: &Engine) {
        // The records are shared with the store, not copied, and measured after its lock
        // is released: a slow walk of one volume never holds up the calls that change others.
        let volumes = engine.store.volumes_where(|v| v.phase == Phase::Ready && engine.pools.contains_key(&v.pool));
        let mut cache = self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Both lists are in ID order: what the last scrapes measured is matched to the
        // volumes in one pass, and what matches no volume (deleted since) falls away.
        let mut previous = std::mem::take(&mut *cache).into_iter().peekable();
        let mut known: Vec<Option<(Instant, u64)>> = Vec::with_capacity(volumes.len());
        for volume in &volumes {
            while previous.next_if(|m| m.volume.id < volume.id).is_some() {}
            known.push(previous.next_if(|m| m.volume.id == volume.id).map(|m| (m.at, m.used)));
        }
        let start = Instant::now();
        // Read once for every volume measured, and only by a scrape that measures one.
        let mut table = None;
        for (volume, entry) in volumes.iter().zip(known.iter_mut()) {
            let fresh = entry.is_some_and(|(at, _)| at.elapsed() < USAGE_TTL);
            if fresh || start.elapsed() > USAGE_BUDGET {
                continue;
            }
            let Some(pool) = engine.pools.get(&volume.pool) else { continue };
            let table = table.get_or_insert_with(|| {
                ops::table(engine.sys.as_ref()).unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "mount table unreadable for metrics");
                    Vec::new()
                })
            });
            // Block volumes are measured where they are mounted; hostPath volumes and raw
            // block volumes are measured in the pool, whatever path is given.
            let mounted = pool.mounts(StageSource::Managed(volume), table).ok().and_then(|m| m.into_iter().next());
            match pool.usage(volume, &mounted.unwrap_or_default()) {
                Ok(usage) => *entry = Some((Instant::now(), usage.used_bytes)),
                Err(e) => tracing::debug!(volume.id = %volume.id, error = %e, "volume usage unavailable for metrics"),
            }
        }
        w.family("berth_volume_capacity_bytes", Kind::Gauge, "Size of each volume as provisioned or expanded.");
        for v in &volumes {
            w.sample("berth_volume_capacity_bytes", &volume_labels(v), v.capacity as f64);
        }
        w.family(
            "berth_volume_used_bytes",
            Kind::Gauge,
            "Bytes each volume uses, as its pool measures it: qgroup, project quota or a walk of its tree \
             (hostPath), allocated image blocks (raw block), its filesystem (block, while mounted).",
        );
        for (v, entry) in volumes.iter().zip(&known) {
            if let Some((_, used)) = entry {
                w.sample("berth_volume_used_bytes", &volume_labels(v), *used as f64);
            }
        }
        *cache = volumes
            .iter()
            .zip(known)
            .filter_map(|(v, entry)| entry.map(|(at, used)| Measured { volume: Arc::clone(v), at, used }))
            .collect();
    }
}

/// A volume's labels: its ID and name, its pool, and the PVC it was provisioned for when
/// csi-provisioner passed that (`--extra-create-metadata`), else empty.
/// The room a scrape starts with after one of `last` bytes: that much and a margin, since
/// counters gain digits and volumes come and go between scrapes, and one byte past the room
/// would double the buffer and copy it all.
fn room_for(last: usize) -> usize {
    last + last / 16 + 1024
}

fn volume_labels(v: &VolumeRecord) -> [(&'static str, &str); 5] {
    let param = |k: &str| v.parameters.get(k).map_or("", String::as_str);
    [
        ("volume_id", &v.id),
        ("volume_name", &v.name),
        ("pool", &v.pool),
        ("pvc_namespace", param(PVC_NAMESPACE)),
        ("pvc_name", param(PVC_NAME)),
    ]
}

/// The counting allocator's totals, read before anything is written; nothing where the
/// process does not count (see [`heap`]).
fn write_heap(w: &mut Writer) {
    let Some((allocations, bytes)) = heap::counts() else { return };
    w.single(
        "berth_heap_allocations_total",
        Kind::Counter,
        "Heap allocations (a reallocation counts as one) berth made since it started.",
        allocations as f64,
    );
    w.single("berth_heap_allocated_bytes_total", Kind::Counter, "Bytes those allocations asked for.", bytes as f64);
}

fn write_counters(w: &mut Writer, c: &Counters) {
    w.family("berth_rpc_requests_total", Kind::Counter, "Finished CSI calls by method and gRPC code.");
    for ((method, code), n) in &c.requests {
        w.sample("berth_rpc_requests_total", &[("method", method), ("code", code)], *n as f64);
    }
    w.family("berth_rpc_duration_seconds", Kind::Histogram, "Time to serve a CSI call, by method.");
    for (method, h) in &c.latency {
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += h.counts[i];
            let le = format_value(*bound);
            w.sample("berth_rpc_duration_seconds_bucket", &[("method", method), ("le", &le)], cumulative as f64);
        }
        w.sample("berth_rpc_duration_seconds_bucket", &[("method", method), ("le", "+Inf")], h.count() as f64);
        w.sample("berth_rpc_duration_seconds_sum", &[("method", method)], h.sum);
        w.sample("berth_rpc_duration_seconds_count", &[("method", method)], h.count() as f64);
    }
    w.family("berth_errors_total", Kind::Counter, "Failed mounts, unmounts, formats, loop attaches and quota changes.");
    for (kind, n) in &c.errors {
        w.sample("berth_errors_total", &[("kind", kind)], *n as f64);
    }
}

fn write_pools(w: &mut Writer, engine: &Engine) {
    let mut capacities = Vec::new();
    // A pool of snapshot copies holds no volume, and asking its server at every scrape
    // would tie the scrape's time to a backup server's.
    for (name, pool) in engine.pools.iter().filter(|(_, p)| !p.info().copies_only) {
        match pool.capacity() {
            Ok(c) => capacities.push((name.as_str(), pool.info().kind.as_str(), c)),
            Err(e) => tracing::warn!(pool = %name, error = %e, "pool capacity unavailable for metrics"),
        }
    }
    w.family("berth_pool_capacity_bytes", Kind::Gauge, "Total size of the filesystem or device holding each pool.");
    for (name, kind, c) in &capacities {
        w.sample("berth_pool_capacity_bytes", &[("pool", name), ("type", kind)], c.total_bytes as f64);
    }
    w.family("berth_pool_free_bytes", Kind::Gauge, "Bytes each pool has left for new data.");
    for (name, kind, c) in &capacities {
        w.sample("berth_pool_free_bytes", &[("pool", name), ("type", kind)], c.available_bytes as f64);
    }
    let (volume_counts, snapshot_counts) = engine.store.counts_by_pool();
    let of = |counts: &std::collections::HashMap<String, u64>| -> BTreeMap<&str, u64> {
        engine.pools.keys().map(|k| (k.as_str(), counts.get(k).copied().unwrap_or(0))).collect()
    };
    let (volumes, snapshots) = (of(&volume_counts), of(&snapshot_counts));
    w.family("berth_pool_volumes", Kind::Gauge, "Volumes berth keeps in each pool.");
    for (pool, n) in &volumes {
        w.sample("berth_pool_volumes", &[("pool", pool)], *n as f64);
    }
    w.family("berth_pool_snapshots", Kind::Gauge, "Snapshots berth keeps in each pool.");
    for (pool, n) in &snapshots {
        w.sample("berth_pool_snapshots", &[("pool", pool)], *n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::{AccessMode, Capability, CreateVolume, Placement};
    use crate::metrics::exposition::{find, parse};
    use crate::mount::FsStat;
    use crate::mount::fake::RecordingSyscall;

    fn engine(dir: &std::path::Path) -> Arc<Engine> {
        let text = format!(
            "stateDir: {}\npools:\n  - name: fast\n    type: hostpath\n    path: {}\n    createPath: true\n    capacityEnforcement: none\n",
            dir.join("state").display(),
            dir.join("pool").display()
        );
        let stat = FsStat { magic: 0xEF53, total_bytes: 10 << 30, available_bytes: 8 << 30, ..FsStat::default() };
        let fake = Arc::new(RecordingSyscall::new(stat, ""));
        let config = Config::parse(&text, "test").expect("config");
        Engine::open(config, "node-a".into(), fake, Placement::OnNode).expect("engine").shared()
    }

    #[test]
    fn a_scrape_reports_pools_volumes_and_their_usage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine(dir.path());
        let pvc = [(PVC_NAME.to_string(), "data".to_string()), (PVC_NAMESPACE.to_string(), "shop".to_string())];
        let vol = volume_holding(&engine, dir.path(), "pv-1", pvc.into(), 64 << 10);

        let text = Collector::new(Arc::default(), Some(Arc::clone(&engine))).render();
        let samples = parse(&text).expect("the scrape is valid exposition text");
        let pool = [("pool", "fast")];
        assert_eq!(find(&samples, "berth_pool_capacity_bytes", &pool), Some((10u64 << 30) as f64));
        assert_eq!(find(&samples, "berth_pool_free_bytes", &pool), Some((8u64 << 30) as f64));
        assert_eq!(find(&samples, "berth_pool_volumes", &pool), Some(1.0));
        assert_eq!(find(&samples, "berth_pool_snapshots", &pool), Some(0.0));
        let labels = [("volume_id", vol.id.as_str()), ("pvc_namespace", "shop"), ("pvc_name", "data")];
        assert_eq!(find(&samples, "berth_volume_capacity_bytes", &labels), Some((5u64 << 20) as f64));
        let used = find(&samples, "berth_volume_used_bytes", &labels).expect("usage measured");
        assert!(used >= f64::from(64 << 10), "{used}");
        assert_eq!(find(&samples, "berth_errors_total", &[("kind", "format")]), Some(0.0));
        assert_eq!(find(&samples, "berth_build_info", &[("version", crate::VERSION)]), Some(1.0));
    }

    /// A hostPath volume `name` of 5 MiB with `parameters`, holding `bytes` in one file.
    fn volume_holding(
        engine: &Engine,
        dir: &std::path::Path,
        name: &str,
        parameters: std::collections::BTreeMap<String, String>,
        bytes: usize,
    ) -> Arc<VolumeRecord> {
        let cap = Capability {
            block: false,
            fs_type: String::new(),
            mount_flags: vec![],
            mode: AccessMode::SingleNodeWriter,
        };
        let vol = engine
            .create_volume(CreateVolume {
                name: name.into(),
                required_bytes: 5 << 20,
                limit_bytes: 0,
                capabilities: vec![cap],
                parameters,
                source: None,
                allowed_nodes: None,
                key: None,
                mutable: std::collections::BTreeMap::new(),
            })
            .expect("create");
        let key = vol.id.rsplit(':').next().expect("key");
        std::fs::write(dir.join("pool/volumes").join(key).join("f"), vec![1u8; bytes]).expect("write");
        vol
    }

    #[test]
    fn usage_measured_once_follows_its_volume_while_others_come_and_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine(dir.path());
        let collector = Collector::new(Arc::default(), Some(Arc::clone(&engine)));
        let vols: Vec<_> = (0..6)
            .map(|i| volume_holding(&engine, dir.path(), &format!("v{i}"), BTreeMap::new(), (i + 1) << 16))
            .collect();
        let used = |text: &str, v: &VolumeRecord| {
            find(&parse(text).expect("exposition"), "berth_volume_used_bytes", &[("volume_id", v.id.as_str())])
        };
        let first = collector.render();
        let measured: Vec<f64> = vols.iter().map(|v| used(&first, v).expect("measured")).collect();
        // Within the cache's life a scrape reuses what it measured: data written since does
        // not show. Volumes deleted meanwhile drop out; new ones are measured.
        for v in &vols {
            let key = v.id.rsplit(':').next().expect("key");
            std::fs::write(dir.path().join("pool/volumes").join(key).join("g"), vec![2u8; 1 << 20]).expect("write");
        }
        for gone in [&vols[0], &vols[3], &vols[5]] {
            engine.delete_volume(&gone.id).expect("delete");
        }
        let late = volume_holding(&engine, dir.path(), "late", BTreeMap::new(), 3 << 16);
        let second = collector.render();
        for (i, v) in vols.iter().enumerate() {
            let expected = if [0, 3, 5].contains(&i) { None } else { Some(measured[i]) };
            assert_eq!(used(&second, v), expected, "volume {i}");
        }
        assert!(used(&second, &late).is_some_and(|u| u >= f64::from(3 << 16)), "the new volume is measured");
    }

    #[test]
    fn a_scrape_starts_with_room_for_the_last_one_and_never_grows_its_buffer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let collector = Collector::new(Arc::default(), Some(engine(dir.path())));
        let first = collector.render();
        let second = collector.render();
        // A buffer that had to grow would have a capacity of its own growth steps.
        assert_eq!(second.capacity(), room_for(first.len()), "{} bytes, then {}", first.len(), second.len());
        assert!(second.len() <= second.capacity());
    }

    #[test]
    fn without_an_engine_only_the_counters_are_rendered() {
        let registry = Registry::new(crate::metrics::Limits { slow_calls: 4, connections: 256 });
        let text = Collector::new(Arc::new(registry), None).render();
        let samples = parse(&text).expect("valid");
        assert!(samples.iter().all(|s| !s.name.starts_with("berth_pool_")));
        assert!(samples.iter().any(|s| s.name == "berth_rpc_in_flight"));
        assert_eq!(find(&samples, "berth_rpc_slow_max", &[]), Some(4.0), "the limits the registry was given");
        assert_eq!(find(&samples, "berth_connections_max", &[]), Some(256.0));
    }
}
