//! `berth bench`: drives any CSI driver's socket through berth's own client and measures
//! what users feel (provisioning at scale, the attach path, snapshots of large data) and
//! what the driver costs (resident memory and CPU time, read from /proc for `--pid`).
//! Results print as a table, or as JSON with `--output json`.

pub mod allocs;
pub mod archive;
pub mod stats;
pub mod volstats;
pub mod workloads;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use self::allocs::Counter;
use self::stats::{Latencies, Progress, RssSampler, cpu_time, memory, ms, round};
use self::workloads::Ctx;
use crate::client::Output;
use crate::client::args::{key_value, quantity, to_map};
use crate::csi::pb;

/// A workload `berth bench` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Probe until the driver answers ready (after `--started-at-ns`, or from now).
    Startup,
    /// Pre-create `--existing` volumes, then time CreateVolume+DeleteVolume pairs.
    Provision,
    /// NodeStage+NodePublish+NodeUnpublish+NodeUnstage cycles of one volume.
    Attach,
    /// Write `--snapshot-size` bytes into a volume, then time CreateSnapshot and a restore.
    Snapshot,
    /// GET the driver's `/metrics` (`--metrics-address`) `--scrapes` times, with whatever
    /// volumes it holds (pre-create them with `provision --existing N --keep-existing`).
    Scrape,
    /// Write `--files` files into a published volume, then time NodeGetVolumeStats: the
    /// first call and `--cycles` more, beside `du -s` of the same tree.
    Stats,
    /// Snapshot copies (issue 22) of a `--snapshot-size` image into a directory store under
    /// `--work-dir`: first copy, second copies after 1% changed (64 regions; scattered
    /// 16 KiB writes), restore, beside `cp -a`; medians of `--archive-runs`. No driver.
    Archive,
}

/// The access type of the benchmark's volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessType {
    /// A mounted filesystem.
    Mount,
    /// A raw block device.
    Block,
}

/// `berth bench`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The driver's socket, as unix:///path/csi.sock.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///run/berth/csi.sock")]
    pub endpoint: String,
    /// Workloads to run, in order (comma-separated or repeated).
    #[arg(long = "workload", value_enum, value_delimiter = ',', default_values = ["provision", "attach"])]
    pub workloads: Vec<Workload>,
    /// Volumes to pre-create before timing pairs (deleted afterwards).
    #[arg(long, default_value_t = 0)]
    pub existing: usize,
    /// Leave the pre-created volumes in place (to measure a restart with them recorded).
    #[arg(long)]
    pub keep_existing: bool,
    /// CreateVolume+DeleteVolume pairs per run.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Concurrent clients (each with its own connection); pairs run sequentially first,
    /// then again with this many clients when it is above 1.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Attach cycles; in `stats`, the NodeGetVolumeStats calls after the first.
    #[arg(long, default_value_t = 20)]
    pub cycles: usize,
    /// Files written into the volume of `stats`, 1,000 to a directory.
    #[arg(long, default_value_t = 100_000)]
    pub files: usize,
    /// Bytes written into the volume before it is snapshotted.
    #[arg(long, value_parser = quantity, default_value = "1Gi")]
    pub snapshot_size: i64,
    /// Size of each volume.
    #[arg(long, value_parser = quantity, default_value = "64Mi")]
    pub capacity: i64,
    /// A StorageClass parameter key=value sent with every CreateVolume (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub params: Vec<(String, String)>,
    /// Access type of the volumes.
    #[arg(long, value_enum, default_value = "mount")]
    pub access_type: AccessType,
    /// Filesystem type of mounted volumes (the driver's default when unset).
    #[arg(long)]
    pub fs_type: Option<String>,
    /// Where staging and target directories are made (must be on this node).
    #[arg(long, default_value = "/tmp")]
    pub work_dir: PathBuf,
    /// The driver's metrics address (HOST:PORT, as given to `berth serve --metrics-address`),
    /// for `scrape`, and to report berth's heap allocations per call of every workload.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
    /// Runs of the `archive` workload (its figures are medians).
    #[arg(long, default_value_t = 3)]
    pub archive_runs: usize,
    /// Average chunk size of the `archive` workload in KiB (a power of two; min is a
    /// quarter of it, max four times it); berth's own when unset.
    #[arg(long, value_name = "KIB")]
    pub archive_chunk_kib: Option<usize>,
    /// Put the `archive` workload's stores on an NFS export through berth's userspace
    /// client instead of under `--work-dir`: HOST:NFS_PORT:MOUNT_PORT:EXPORT (a port 0 is
    /// asked of the portmapper).
    #[arg(long, value_name = "HOST:NFS_PORT:MOUNT_PORT:EXPORT")]
    pub archive_nfs: Option<String>,
    /// Scrapes of `/metrics` in `scrape`.
    #[arg(long, default_value_t = 20)]
    pub scrapes: usize,
    /// The driver's process ID, to read its memory and CPU time from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// When the driver was started (nanoseconds since the Unix epoch), for `startup`.
    #[arg(long, value_name = "NS")]
    pub started_at_ns: Option<u128>,
    /// Seconds to wait for one call.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
    /// Show progress on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

impl BenchArgs {
    fn ctx(&self) -> Ctx {
        use pb::volume_capability::{AccessMode, AccessType as Wire, BlockVolume, MountVolume, access_mode::Mode};
        let block = self.access_type == AccessType::Block;
        let access_type = if block {
            Wire::Block(BlockVolume {})
        } else {
            Wire::Mount(MountVolume { fs_type: self.fs_type.clone().unwrap_or_default(), ..Default::default() })
        };
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Ctx {
            endpoint: self.endpoint.clone(),
            timeout: Duration::from_secs(self.timeout),
            params: to_map(&self.params),
            capacity: self.capacity,
            cap: pb::VolumeCapability {
                access_type: Some(access_type),
                access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
            },
            block,
            work_dir: self.work_dir.clone(),
            run_id: format!("bench-{:x}", nanos % (1 << 40)),
            progress: Progress::new(self.progress),
        }
    }
}

/// CPU time and operations of one workload, for CPU per 1,000 operations.
fn cpu_json(pid: Option<u32>, before: Option<Duration>, ops: usize) -> Value {
    match (pid.and_then(cpu_time), before) {
        (Some(after), Some(before)) if ops > 0 => {
            let used = after.saturating_sub(before);
            json!({ "cpu_ms": round(ms(used)), "cpu_ms_per_1000_ops": round(ms(used) * 1000.0 / ops as f64) })
        }
        _ => Value::Null,
    }
}

fn ops(list: &[(&str, &Latencies)], wall: Duration) -> Value {
    list.iter().map(|(name, l)| (name.to_string(), l.summary(wall))).collect::<serde_json::Map<_, _>>().into()
}

async fn startup(ctx: &Ctx, started_at_ns: Option<u128>) -> Result<Value, String> {
    let started = Instant::now();
    let origin_ns =
        started_at_ns.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let ready = match crate::client::connect(&ctx.endpoint, ctx.timeout).await {
            Ok(ch) => pb::identity_client::IdentityClient::new(ch)
                .probe(pb::ProbeRequest {})
                .await
                .is_ok_and(|r| r.into_inner().ready != Some(false)),
            Err(_) => false,
        };
        if ready {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let ready_ms = now.saturating_sub(origin_ns) as f64 / 1e6;
            return Ok(json!({ "workload": "startup", "ready_ms": round(ready_ms), "probes": attempts }));
        }
        if started.elapsed() > ctx.timeout {
            return Err(format!("the driver was not ready after {attempts} probes"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Allocations per CreateVolume and per DeleteVolume, each measured on its own: `n`
/// creates on one client, then their deletes.
async fn allocations_per_create_and_delete(ctx: &Ctx, counter: &Counter, n: usize) -> Result<(f64, f64), String> {
    let before = counter.read().await?;
    let ids = workloads::create_all(ctx, "counting allocations of creates", "allocs", n, 1).await?;
    let created = counter.since(before).await?;
    let before = counter.read().await?;
    workloads::delete_all(ctx, ids, 1).await?;
    let deleted = counter.since(before).await?;
    let n = n.max(1) as f64;
    Ok((created as f64 / n, deleted as f64 / n))
}

async fn provision(args: &BenchArgs, ctx: &Ctx, counter: Option<&Counter>) -> Result<Vec<Value>, String> {
    let conc = args.concurrency.max(1);
    let t = Instant::now();
    let existing = workloads::precreate(ctx, args.existing, conc).await?;
    let precreate_s = t.elapsed().as_secs_f64();
    let mut out = Vec::new();
    let mut runs = vec![1];
    if conc > 1 {
        runs.push(conc);
    }
    let mut result = Ok(());
    for c in runs {
        let before = args.pid.and_then(cpu_time);
        match workloads::pairs(ctx, args.pairs, c, &format!("c{c}"), counter).await {
            Ok(r) => out.push(json!({
                "workload": "provision",
                "existing": args.existing,
                "concurrency": c,
                "precreate_s": round(precreate_s),
                "wall_s": round(r.wall.as_secs_f64()),
                "pairs_per_s": round(args.pairs as f64 / r.wall.as_secs_f64().max(1e-9)),
                "ops": ops(&[("create", &r.create), ("delete", &r.delete)], r.wall),
                "cpu": cpu_json(args.pid, before, 2 * args.pairs),
                "allocations": r.allocations.map_or(Value::Null, |n| allocs::summary(n, 2 * args.pairs, &[])),
            })),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // The pairs interleave creates and deletes; their allocations are told apart by a run
    // of creates, then one of deletes, after the timed runs.
    if let (Some(counter), Some(first), Ok(())) = (counter, out.first_mut(), &result) {
        let (create, delete) = allocations_per_create_and_delete(ctx, counter, args.pairs).await?;
        first["allocations"]["by_call"] = json!({ "create": round(create), "delete": round(delete) });
    }
    // Measure memory while every pre-created volume still exists.
    if let Some(mem) = args.pid.and_then(memory)
        && let Some(last) = out.last_mut()
    {
        last["rss_kib_after"] = json!(mem.rss_kib);
    }
    if !args.keep_existing {
        workloads::delete_all(ctx, existing, conc).await?;
    }
    result.map(|()| out)
}

async fn run(args: &BenchArgs) -> Result<Value, String> {
    let ctx = args.ctx();
    std::fs::create_dir_all(&ctx.work_dir).map_err(|e| format!("creating {}: {e}", ctx.work_dir.display()))?;
    let counter = match &args.metrics_address {
        Some(address) => Counter::connect(address).await?,
        None => None,
    };
    let counter = counter.as_ref();
    let mut driver = Value::Null;
    let mut results = Vec::new();
    let idle = args.pid.and_then(memory);
    let sampler = args.pid.map(RssSampler::start);
    for w in &args.workloads {
        if !matches!(w, Workload::Startup | Workload::Archive) && driver.is_null() {
            let mut identity = pb::identity_client::IdentityClient::new(ctx.channel().await?);
            let info = identity
                .get_plugin_info(pb::GetPluginInfoRequest {})
                .await
                .map_err(|s| format!("GetPluginInfo: {}", s.message()))?
                .into_inner();
            driver = json!({ "name": info.name, "version": info.vendor_version });
        }
        let before = args.pid.and_then(cpu_time);
        match w {
            Workload::Startup => results.push(startup(&ctx, args.started_at_ns).await?),
            Workload::Provision => results.extend(provision(args, &ctx, counter).await?),
            Workload::Attach => {
                let r = workloads::attach(&ctx, args.cycles, counter).await?;
                let steps: Vec<(&str, &Latencies)> = r.steps.iter().map(|(s, l)| (*s, l)).collect();
                let calls = r.steps.iter().filter(|(s, _)| *s != "cycle").count() * args.cycles;
                let per_cycle = |n: u64| n as f64 / args.cycles.max(1) as f64;
                results.push(json!({
                    "workload": "attach",
                    "cycles": args.cycles,
                    "wall_s": round(r.wall.as_secs_f64()),
                    "ops": ops(&steps, r.wall),
                    "cpu": cpu_json(args.pid, before, calls),
                    "allocations": r.allocations.map_or(Value::Null, |n| allocs::summary(n, calls, &[("cycle", per_cycle(n))])),
                }));
            }
            Workload::Scrape => {
                let address = args.metrics_address.as_deref().ok_or("the scrape workload needs --metrics-address")?;
                let r = workloads::scrape(address, args.scrapes, counter).await?;
                let mut ops = serde_json::Map::new();
                ops.insert("GET /metrics".into(), r.latencies.summary(r.wall));
                results.push(json!({
                    "workload": "scrape",
                    "existing": r.volumes,
                    "bytes": r.bytes,
                    "ops": ops,
                    "cpu": cpu_json(args.pid, before, args.scrapes),
                    "allocations": r.allocations.map_or(Value::Null, |n| allocs::summary(n, args.scrapes, &[])),
                }));
            }
            Workload::Stats => {
                let r = volstats::stats(&ctx, args.files, args.cycles).await?;
                results.push(json!({
                    "workload": "stats",
                    "files": r.files,
                    "fill_s": round(r.fill.as_secs_f64()),
                    "used_bytes": r.used_bytes,
                    "used_inodes": r.used_inodes,
                    "du_bytes": r.du_bytes,
                    "ops": ops(&[("first", &r.first), ("later", &r.later), ("du -s", &r.du)], Duration::ZERO),
                    "cpu": cpu_json(args.pid, before, 1 + args.cycles),
                }));
            }
            Workload::Archive => {
                let bytes = u64::try_from(args.snapshot_size).map_err(|_| "--snapshot-size must be positive")?;
                let ep = args.archive_nfs.as_deref().map(archive::endpoint).transpose()?;
                let target = ep.as_ref().map_or(archive::Target::Dir, archive::Target::Nfs);
                let r = tokio::task::block_in_place(|| {
                    archive::bench(&ctx.work_dir, bytes, args.archive_runs, args.archive_chunk_kib, &target)
                })?;
                results.push(r);
            }
            Workload::Snapshot => {
                let bytes = u64::try_from(args.snapshot_size).map_err(|_| "--snapshot-size must be positive")?;
                let r = workloads::snapshot(&ctx, bytes, counter).await?;
                let allocations = r.allocations.map_or(Value::Null, |(snapshot, restore)| {
                    allocs::summary(
                        snapshot + restore,
                        2,
                        &[("snapshot", snapshot as f64), ("restore", restore as f64)],
                    )
                });
                results.push(json!({
                    "workload": "snapshot",
                    "bytes": r.bytes,
                    "write_s": round(r.write.as_secs_f64()),
                    "snapshot_ms": round(ms(r.snapshot)),
                    "restore_ms": round(ms(r.restore)),
                    "allocations": allocations,
                }));
            }
        }
    }
    let footprint = match (args.pid, idle) {
        (Some(pid), Some(idle)) => {
            let load_max = sampler.map_or(0, RssSampler::finish);
            let end = memory(pid).unwrap_or_default();
            json!({
                "pid": pid,
                "idle_rss_kib": idle.rss_kib,
                "load_max_rss_kib": load_max.max(end.rss_kib),
                "hwm_kib": end.hwm_kib,
                "end_rss_kib": end.rss_kib,
            })
        }
        _ => Value::Null,
    };
    Ok(json!({
        "endpoint": args.endpoint,
        "driver": driver,
        "access_type": if ctx.block { "block" } else { "mount" },
        "capacity": args.capacity,
        "results": results,
        "footprint": footprint,
    }))
}

/// Runs the benchmark and prints its results; returns whether it succeeded.
#[must_use]
pub fn main(args: &BenchArgs) -> bool {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth bench: starting the async runtime: {e}");
            return false;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
                Output::Table => print!("{}", table(&report)),
            }
            true
        }
        Err(e) => {
            eprintln!("berth bench: {e}");
            false
        }
    }
}

/// Renders a report as aligned text: one row per timed call.
#[must_use]
pub fn table(report: &Value) -> String {
    let mut out = format!("driver: {} {}\n", report["driver"]["name"], report["driver"]["version"]);
    out.push_str(&format!(
        "{:<10} {:>8} {:>5} {:<10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11}\n",
        "WORKLOAD",
        "EXISTING",
        "CONC",
        "CALL",
        "COUNT",
        "P50_MS",
        "P90_MS",
        "P99_MS",
        "MAX_MS",
        "OPS/S",
        "CPU_MS/1K",
        "ALLOCS/CALL"
    ));
    let empty = Vec::new();
    for r in report["results"].as_array().unwrap_or(&empty) {
        let w = r["workload"].as_str().unwrap_or("");
        match w {
            "startup" => out.push_str(&format!("startup: ready after {} ms ({} probes)\n", r["ready_ms"], r["probes"])),
            "stats" => {
                out.push_str(&format!(
                    "stats: {} files written in {} s; the driver answered {} bytes, {} inodes used; du -s counted {} bytes\n",
                    r["files"], r["fill_s"], r["used_bytes"], r["used_inodes"], r["du_bytes"]
                ));
                out.push_str(&ops_rows(w, r));
            }
            "snapshot" => {
                let allocations = |call: &str| {
                    r["allocations"]["by_call"][call]
                        .as_f64()
                        .map_or(String::new(), |n| format!(", {n:.0} allocations"))
                };
                out.push_str(&format!(
                    "snapshot: {} bytes written in {} s; CreateSnapshot {} ms{}; restore {} ms{}\n",
                    r["bytes"],
                    r["write_s"],
                    r["snapshot_ms"],
                    allocations("snapshot"),
                    r["restore_ms"],
                    allocations("restore")
                ));
            }
            "archive" => out.push_str(&archive::rows(r)),
            _ => out.push_str(&ops_rows(w, r)),
        }
    }
    let f = &report["footprint"];
    if !f.is_null() {
        out.push_str(&format!(
            "footprint (pid {}): idle RSS {} KiB; max RSS under load {} KiB; peak (VmHWM) {} KiB\n",
            f["pid"], f["idle_rss_kib"], f["load_max_rss_kib"], f["hwm_kib"]
        ));
    }
    out
}

/// One table row per timed call of a workload's result, with its allocations per call
/// where the workload measured them (per kind of call where it could tell them apart,
/// else the mean over its calls).
fn ops_rows(workload: &str, r: &Value) -> String {
    let cpu = r["cpu"]["cpu_ms_per_1000_ops"].as_f64().map_or("-".into(), |c| format!("{c:.1}"));
    let allocs = |call: &str| {
        let a = &r["allocations"];
        a["by_call"][call].as_f64().or_else(|| a["per_call"].as_f64()).map_or("-".into(), |n| format!("{n:.1}"))
    };
    let mut out = String::new();
    for (call, s) in r["ops"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "{:<10} {:>8} {:>5} {:<10} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.1} {:>10} {:>11}\n",
            workload,
            r["existing"].as_u64().map_or("-".into(), |n| n.to_string()),
            r["concurrency"].as_u64().unwrap_or(1),
            call,
            s["count"],
            s["p50_ms"].as_f64().unwrap_or(0.0),
            s["p90_ms"].as_f64().unwrap_or(0.0),
            s["p99_ms"].as_f64().unwrap_or(0.0),
            s["max_ms"].as_f64().unwrap_or(0.0),
            s["ops_per_s"].as_f64().unwrap_or(0.0),
            cpu,
            allocs(call)
        ));
    }
    out
}
