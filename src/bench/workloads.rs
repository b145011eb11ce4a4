//! The workloads of `berth bench`, each a sequence of CSI calls timed one by one through
//! berth's own client: provisioning pairs, attach cycles and snapshots of written data.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::allocs::{Counter, http_get};
use super::stats::{Latencies, Progress};
use crate::csi::pb;
use crate::csi::pb::controller_client::ControllerClient;
use crate::csi::pb::node_client::NodeClient;

/// What every workload needs: where the driver is and what to ask it for.
#[derive(Clone)]
pub struct Ctx {
    /// The driver's socket, as unix:///path.
    pub endpoint: String,
    /// How long one call may take.
    pub timeout: Duration,
    /// StorageClass parameters sent with every CreateVolume.
    pub params: HashMap<String, String>,
    /// The size of each volume, in bytes.
    pub capacity: i64,
    /// The capability every volume is created, staged and published with.
    pub cap: pb::VolumeCapability,
    /// Whether `cap` is raw block.
    pub block: bool,
    /// Where staging and target paths are made.
    pub work_dir: PathBuf,
    /// A prefix that makes this run's volume names unique.
    pub run_id: String,
    /// The progress line.
    pub progress: Progress,
}

/// A call's failure, as text.
pub type Error = String;

pub(super) fn failed(what: &str, s: tonic::Status) -> Error {
    format!("{what}: {}: {}", crate::csi::code_name(s.code()), s.message())
}

impl Ctx {
    /// A new connection (each concurrent client has its own).
    pub async fn channel(&self) -> Result<Channel, Error> {
        crate::client::connect(&self.endpoint, self.timeout).await.map_err(|f| format!("{}: {}", f.code, f.message))
    }

    pub(super) fn create_req(
        &self,
        name: String,
        bytes: i64,
        source: Option<pb::VolumeContentSource>,
    ) -> pb::CreateVolumeRequest {
        pb::CreateVolumeRequest {
            name,
            capacity_range: Some(pb::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
            volume_capabilities: vec![self.cap.clone()],
            parameters: self.params.clone(),
            volume_content_source: source,
            ..Default::default()
        }
    }
}

/// Creates a volume and returns it.
pub(super) async fn create(
    c: &mut ControllerClient<Channel>,
    req: pb::CreateVolumeRequest,
) -> Result<pb::Volume, Error> {
    let r = c.create_volume(req).await.map_err(|s| failed("CreateVolume", s))?;
    r.into_inner().volume.ok_or_else(|| "CreateVolume answered without a volume".to_string())
}

async fn delete(c: &mut ControllerClient<Channel>, id: &str) -> Result<(), Error> {
    let req = pb::DeleteVolumeRequest { volume_id: id.to_string(), ..Default::default() };
    c.delete_volume(req).await.map(|_| ()).map_err(|s| failed("DeleteVolume", s))
}

/// Deletes a workload's volume and removes its directory, whatever `result` is; the
/// workload's own error is the one reported.
pub(super) async fn clean_up<T>(
    controller: &mut ControllerClient<Channel>,
    volume_id: &str,
    dir: &Path,
    result: Result<T, Error>,
) -> Result<T, Error> {
    let cleanup = delete(controller, volume_id).await;
    let _ = std::fs::remove_dir_all(dir);
    let result = result?;
    cleanup?;
    Ok(result)
}

/// Runs `job(client, index)` for every index below `total` on `concurrency` clients, each
/// with its own connection; returns what the jobs returned, in no particular order.
async fn fan_out<T, F, Fut>(ctx: &Ctx, what: &str, total: usize, concurrency: usize, job: F) -> Result<Vec<T>, Error>
where
    T: Send + 'static,
    F: Fn(ControllerClient<Channel>, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, Error>> + Send,
{
    let job = Arc::new(job);
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..concurrency.max(1) {
        let client = ControllerClient::new(ctx.channel().await?);
        let (job, done, progress, what) = (job.clone(), done.clone(), ctx.progress.clone(), what.to_string());
        let step = concurrency.max(1);
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..total).step_by(step) {
                out.push(job(client.clone(), i).await?);
                progress.tick(&what, done.fetch_add(1, Ordering::Relaxed) + 1, total);
            }
            Ok::<_, Error>(out)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for w in workers {
        all.extend(w.await.map_err(|e| format!("a client task failed: {e}"))??);
    }
    Ok(all)
}

/// Pre-creates `n` volumes (with `concurrency` clients) and returns their IDs.
pub async fn precreate(ctx: &Ctx, n: usize, concurrency: usize) -> Result<Vec<String>, Error> {
    create_all(ctx, "pre-creating volumes", "existing", n, concurrency).await
}

/// Creates `n` volumes named after `tag` (with `concurrency` clients) and returns their IDs.
pub async fn create_all(ctx: &Ctx, what: &str, tag: &str, n: usize, concurrency: usize) -> Result<Vec<String>, Error> {
    let (c, tag) = (ctx.clone(), tag.to_string());
    fan_out(ctx, what, n, concurrency, move |mut client, i| {
        let req = c.create_req(format!("{}-{tag}-{i}", c.run_id), c.capacity, None);
        async move { Ok(create(&mut client, req).await?.volume_id) }
    })
    .await
}

/// Deletes volumes (with `concurrency` clients).
pub async fn delete_all(ctx: &Ctx, ids: Vec<String>, concurrency: usize) -> Result<(), Error> {
    let ids = Arc::new(ids);
    let total = ids.len();
    fan_out(ctx, "deleting volumes", total, concurrency, move |mut client, i| {
        let ids = ids.clone();
        async move { delete(&mut client, &ids[i]).await }
    })
    .await
    .map(|_| ())
}

/// The result of a provisioning run: per-call latencies and the wall time.
pub struct PairResult {
    /// CreateVolume latencies.
    pub create: Latencies,
    /// DeleteVolume latencies.
    pub delete: Latencies,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// The driver's allocations during the run, when it counts them.
    pub allocations: Option<u64>,
}

/// Times `pairs` CreateVolume+DeleteVolume pairs on `concurrency` clients, and counts the
/// driver's allocations meanwhile with `counter`.
pub async fn pairs(
    ctx: &Ctx,
    pairs: usize,
    concurrency: usize,
    tag: &str,
    counter: Option<&Counter>,
) -> Result<PairResult, Error> {
    let c = ctx.clone();
    let tag = tag.to_string();
    let before = read(counter).await?;
    let start = Instant::now();
    let samples = fan_out(ctx, "create+delete pairs", pairs, concurrency, move |mut client, i| {
        let req = c.create_req(format!("{}-{tag}-{i}", c.run_id), c.capacity, None);
        async move {
            let t = Instant::now();
            let volume = create(&mut client, req).await?;
            let created = t.elapsed();
            let t = Instant::now();
            delete(&mut client, &volume.volume_id).await?;
            Ok((created, t.elapsed()))
        }
    })
    .await?;
    let wall = start.elapsed();
    let allocations = since(counter, before).await?;
    let (mut create_l, mut delete_l) = (Latencies::default(), Latencies::default());
    for (c, d) in samples {
        create_l.push(c);
        delete_l.push(d);
    }
    Ok(PairResult { create: create_l, delete: delete_l, wall, allocations })
}

/// The driver's allocations since `before`, read with `counter`.
async fn since(counter: Option<&Counter>, before: Option<u64>) -> Result<Option<u64>, Error> {
    match (counter, before) {
        (Some(counter), Some(before)) => Ok(Some(counter.since(before).await?)),
        _ => Ok(None),
    }
}

async fn read(counter: Option<&Counter>) -> Result<Option<u64>, Error> {
    match counter {
        Some(counter) => Ok(Some(counter.read().await?)),
        None => Ok(None),
    }
}

/// A volume staged and published for a workload, with the paths used.
pub(super) struct Attached {
    pub(super) volume: pb::Volume,
    pub(super) staging: Option<PathBuf>,
    pub(super) target: PathBuf,
}

/// Node calls with the capability and paths of one context.
pub(super) struct Node {
    pub(super) client: NodeClient<Channel>,
    stages: bool,
}

impl Node {
    pub(super) async fn new(ctx: &Ctx) -> Result<Node, Error> {
        let mut client = NodeClient::new(ctx.channel().await?);
        let caps = client
            .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
            .await
            .map_err(|s| failed("NodeGetCapabilities", s))?
            .into_inner();
        use pb::node_service_capability::{Type, rpc::Type as Rpc};
        let stages = caps
            .capabilities
            .iter()
            .any(|c| matches!(&c.r#type, Some(Type::Rpc(r)) if r.r#type == Rpc::StageUnstageVolume as i32));
        Ok(Node { client, stages })
    }

    /// Stages (when the driver stages) and publishes; returns the time of each step.
    pub(super) async fn attach(
        &mut self,
        ctx: &Ctx,
        volume: &pb::Volume,
        dir: &Path,
    ) -> Result<(Attached, Duration, Duration), Error> {
        let staging = self.stages.then(|| dir.join("staging"));
        let target = dir.join("target");
        let mut staged = Duration::ZERO;
        if let Some(staging) = &staging {
            std::fs::create_dir_all(staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
            let req = pb::NodeStageVolumeRequest {
                volume_id: volume.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(ctx.cap.clone()),
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            };
            let t = Instant::now();
            self.client.node_stage_volume(req).await.map_err(|s| failed("NodeStageVolume", s))?;
            staged = t.elapsed();
        }
        let req = pb::NodePublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            target_path: target.display().to_string(),
            volume_capability: Some(ctx.cap.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        self.client.node_publish_volume(req).await.map_err(|s| failed("NodePublishVolume", s))?;
        let published = t.elapsed();
        Ok((Attached { volume: volume.clone(), staging, target }, staged, published))
    }

    /// Unpublishes and unstages; returns the time of each step.
    pub(super) async fn detach(&mut self, a: &Attached) -> Result<(Duration, Duration), Error> {
        let req = pb::NodeUnpublishVolumeRequest {
            volume_id: a.volume.volume_id.clone(),
            target_path: a.target.display().to_string(),
        };
        let t = Instant::now();
        self.client.node_unpublish_volume(req).await.map_err(|s| failed("NodeUnpublishVolume", s))?;
        let unpublished = t.elapsed();
        let mut unstaged = Duration::ZERO;
        if let Some(staging) = &a.staging {
            let req = pb::NodeUnstageVolumeRequest {
                volume_id: a.volume.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
            };
            let t = Instant::now();
            self.client.node_unstage_volume(req).await.map_err(|s| failed("NodeUnstageVolume", s))?;
            unstaged = t.elapsed();
        }
        Ok((unpublished, unstaged))
    }
}

/// Latencies of attach cycles, by step.
pub struct AttachResult {
    /// Step name → latencies (stage, publish, unpublish, unstage, cycle).
    pub steps: Vec<(&'static str, Latencies)>,
    /// Wall time of the cycles.
    pub wall: Duration,
    /// The driver's allocations during the cycles, when it counts them.
    pub allocations: Option<u64>,
}

/// Times `cycles` NodeStage+NodePublish+NodeUnpublish+NodeUnstage cycles of one volume,
/// counting the driver's allocations over the cycles with `counter`.
pub async fn attach(ctx: &Ctx, cycles: usize, counter: Option<&Counter>) -> Result<AttachResult, Error> {
    let mut controller = ControllerClient::new(ctx.channel().await?);
    let volume = create(&mut controller, ctx.create_req(format!("{}-attach", ctx.run_id), ctx.capacity, None)).await?;
    let mut node = Node::new(ctx).await?;
    let dir = ctx.work_dir.join(format!("{}-attach", ctx.run_id));
    let mut steps: Vec<(&'static str, Latencies)> =
        ["stage", "publish", "unpublish", "unstage", "cycle"].into_iter().map(|s| (s, Latencies::default())).collect();
    let before = read(counter).await?;
    let start = Instant::now();
    let mut outcome = Ok(());
    for i in 0..cycles {
        let t = Instant::now();
        let cycle = async {
            let (a, st, pu) = node.attach(ctx, &volume, &dir).await?;
            let (un, us) = node.detach(&a).await?;
            Ok::<_, Error>([st, pu, un, us])
        }
        .await;
        match cycle {
            Ok(times) => {
                for (slot, d) in steps.iter_mut().zip(times) {
                    slot.1.push(d);
                }
                steps[4].1.push(t.elapsed());
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        ctx.progress.tick("attach cycles", i + 1, cycles);
    }
    let wall = start.elapsed();
    let allocations = if outcome.is_ok() { since(counter, before).await } else { Ok(None) };
    let cleanup = delete(&mut controller, &volume.volume_id).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome?;
    cleanup?;
    if !node.stages {
        steps.retain(|(s, _)| *s != "stage" && *s != "unstage");
    }
    Ok(AttachResult { steps, wall, allocations: allocations? })
}

/// Timings of the snapshot workload.
pub struct SnapshotResult {
    /// Bytes written into the volume before the snapshot.
    pub bytes: u64,
    /// How long writing (and syncing) them took.
    pub write: Duration,
    /// CreateSnapshot's latency.
    pub snapshot: Duration,
    /// CreateVolume-from-snapshot's latency.
    pub restore: Duration,
    /// The driver's allocations in CreateSnapshot and in the restore, when it counts them.
    pub allocations: Option<(u64, u64)>,
}

/// Writes `bytes` of incompressible data to `path` (a file in a mounted volume, or a block
/// device) and syncs it.
fn write_data(path: &Path, bytes: u64, block: bool) -> Result<(), Error> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(!block)
        .truncate(!block)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = bytes;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            // xorshift: cheap data no filesystem can compress or deduplicate.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        file.write_all(&buf[..n]).map_err(|e| format!("writing {}: {e}", path.display()))?;
        left -= n as u64;
    }
    file.sync_all().map_err(|e| format!("syncing {}: {e}", path.display()))
}

/// Writes `bytes` into a published volume, then times CreateSnapshot and
/// CreateVolume-from-snapshot (counting the driver's allocations in each with `counter`),
/// and cleans everything up.
pub async fn snapshot(ctx: &Ctx, bytes: u64, counter: Option<&Counter>) -> Result<SnapshotResult, Error> {
    let mut controller = ControllerClient::new(ctx.channel().await?);
    // Room for the data and the filesystem's own metadata.
    let size = ctx.capacity.max(i64::try_from(bytes + bytes / 8 + (64 << 20)).unwrap_or(i64::MAX));
    let volume = create(&mut controller, ctx.create_req(format!("{}-snap-src", ctx.run_id), size, None)).await?;
    let dir = ctx.work_dir.join(format!("{}-snapshot", ctx.run_id));
    let mut node = Node::new(ctx).await?;
    let result = async {
        let (a, _, _) = node.attach(ctx, &volume, &dir).await?;
        let data = if ctx.block { a.target.clone() } else { a.target.join("bench-data") };
        let t = Instant::now();
        let block = ctx.block;
        let written = tokio::task::spawn_blocking(move || write_data(&data, bytes, block))
            .await
            .map_err(|e| format!("the writer failed: {e}"))?;
        let write = t.elapsed();
        let detached = node.detach(&a).await;
        written?;
        detached?;
        let req = pb::CreateSnapshotRequest {
            source_volume_id: volume.volume_id.clone(),
            name: format!("{}-snap", ctx.run_id),
            ..Default::default()
        };
        let before = read(counter).await?;
        let t = Instant::now();
        let snap = controller.create_snapshot(req).await.map_err(|s| failed("CreateSnapshot", s))?.into_inner();
        let snapshot = t.elapsed();
        let snapshot_allocations = since(counter, before).await?;
        let snap = snap.snapshot.ok_or("CreateSnapshot answered without a snapshot")?;
        use pb::volume_content_source::{SnapshotSource, Type};
        let source = pb::VolumeContentSource {
            r#type: Some(Type::Snapshot(SnapshotSource { snapshot_id: snap.snapshot_id.clone() })),
        };
        let before = read(counter).await?;
        let t = Instant::now();
        let restored =
            create(&mut controller, ctx.create_req(format!("{}-restored", ctx.run_id), size, Some(source))).await;
        let restore = t.elapsed();
        let restored = restored?;
        let allocations = snapshot_allocations.zip(since(counter, before).await?);
        delete(&mut controller, &restored.volume_id).await?;
        let req = pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id, ..Default::default() };
        controller.delete_snapshot(req).await.map_err(|s| failed("DeleteSnapshot", s))?;
        Ok::<_, Error>(SnapshotResult { bytes, write, snapshot, restore, allocations })
    }
    .await;
    clean_up(&mut controller, &volume.volume_id, &dir, result).await
}

/// What [`scrape`] measured.
pub struct ScrapeResult {
    pub latencies: Latencies,
    pub wall: Duration,
    /// Volumes in the last answer (its `berth_volume_capacity_bytes` samples).
    pub volumes: usize,
    /// Size of the last answer.
    pub bytes: usize,
    /// The driver's allocations during the scrapes, when it counts them.
    pub allocations: Option<u64>,
}

/// GETs `/metrics` from the driver's metrics address `n` times, one after another,
/// counting the driver's allocations over them with `counter`.
pub async fn scrape(address: &str, n: usize, counter: Option<&Counter>) -> Result<ScrapeResult, Error> {
    let (mut latencies, mut volumes, mut bytes) = (Latencies::default(), 0, 0);
    let before = read(counter).await?;
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let answer = http_get(address, "/metrics").await?;
        latencies.push(t.elapsed());
        bytes = answer.len();
        volumes =
            String::from_utf8_lossy(&answer).lines().filter(|l| l.starts_with("berth_volume_capacity_bytes{")).count();
    }
    let wall = started.elapsed();
    Ok(ScrapeResult { latencies, wall, volumes, bytes, allocations: since(counter, before).await? })
}
