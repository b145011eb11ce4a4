//! The `stats` workload: NodeGetVolumeStats of a published volume holding many files, the
//! first call (nothing cached) and later ones, beside `du -s` of the same tree.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::stats::{Latencies, Progress};
use super::workloads::{Ctx, Error, Node, clean_up, create, failed};
use crate::csi::pb;
use crate::csi::pb::controller_client::ControllerClient;

/// Files per directory of the filled tree: about what an application's cache or a mail
/// spool holds, and small enough that no single directory dominates the walk.
const PER_DIRECTORY: usize = 1000;
/// Bytes written into each file: one block on every filesystem berth offers.
const FILE_BYTES: &[u8] = &[b'b'; 100];

/// What the `stats` workload measured.
pub struct StatsResult {
    /// Files written into the volume.
    pub files: usize,
    /// How long writing them (and syncing the filesystem) took.
    pub fill: Duration,
    /// The first NodeGetVolumeStats of the volume.
    pub first: Latencies,
    /// The calls after it.
    pub later: Latencies,
    /// `du -s` of the same tree, after one untimed run that warms the inode cache.
    pub du: Latencies,
    /// Used bytes and inodes as the driver answered them.
    pub used_bytes: i64,
    pub used_inodes: Option<i64>,
    /// Used bytes as `du -s` counted them.
    pub du_bytes: u64,
}

/// Writes `files` files of [`FILE_BYTES`] under `root`, [`PER_DIRECTORY`] to a directory,
/// then syncs every filesystem so that usage the filesystem accounts is current.
fn fill(root: &Path, files: usize, progress: &Progress) -> Result<(), Error> {
    for i in 0..files {
        let dir = root.join(format!("d{:05}", i / PER_DIRECTORY));
        if i % PER_DIRECTORY == 0 {
            std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            progress.tick("writing files", i, files);
        }
        let file = dir.join(format!("f{:04}", i % PER_DIRECTORY));
        std::fs::write(&file, FILE_BYTES).map_err(|e| format!("writing {}: {e}", file.display()))?;
    }
    nix::unistd::sync();
    Ok(())
}

/// `du -s` of `dir` in bytes of disk usage, not crossing mounts.
fn du(dir: &Path) -> Result<u64, Error> {
    let out = Command::new("du").args(["-s", "-x", "-B1"]).arg(dir).output().map_err(|e| format!("running du: {e}"))?;
    if !out.status.success() {
        return Err(format!("du -s {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().and_then(|n| n.parse().ok()).ok_or_else(|| format!("du printed {text:?}"))
}

/// Publishes a new volume, fills it with `files` files, then times NodeGetVolumeStats once
/// with nothing cached and `calls` times after, and `du -s` of the tree three times.
pub async fn stats(ctx: &Ctx, files: usize, calls: usize) -> Result<StatsResult, Error> {
    let mut controller = ControllerClient::new(ctx.channel().await?);
    let volume = create(&mut controller, ctx.create_req(format!("{}-stats", ctx.run_id), ctx.capacity, None)).await?;
    let dir = ctx.work_dir.join(format!("{}-stats", ctx.run_id));
    let mut node = Node::new(ctx).await?;
    let result = async {
        let (a, _, _) = node.attach(ctx, &volume, &dir).await?;
        let measured = async {
            let (target, progress) = (a.target.clone(), ctx.progress.clone());
            let t = Instant::now();
            tokio::task::spawn_blocking(move || fill(&target, files, &progress))
                .await
                .map_err(|e| format!("the writer failed: {e}"))??;
            let fill = t.elapsed();
            let target = a.target.clone();
            let (du_bytes, du_runs) = tokio::task::spawn_blocking(move || {
                du(&target)?;
                let mut runs = Latencies::default();
                let mut bytes = 0;
                for _ in 0..3 {
                    let t = Instant::now();
                    bytes = du(&target)?;
                    runs.push(t.elapsed());
                }
                Ok::<_, Error>((bytes, runs))
            })
            .await
            .map_err(|e| format!("du failed: {e}"))??;
            let req = pb::NodeGetVolumeStatsRequest {
                volume_id: volume.volume_id.clone(),
                volume_path: a.target.display().to_string(),
                staging_target_path: a.staging.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            };
            let (mut first, mut later) = (Latencies::default(), Latencies::default());
            let mut answer = None;
            for i in 0..=calls {
                let t = Instant::now();
                let r = node.client.node_get_volume_stats(req.clone()).await;
                let took = t.elapsed();
                let r = r.map_err(|s| failed("NodeGetVolumeStats", s))?.into_inner();
                if i == 0 { &mut first } else { &mut later }.push(took);
                answer = Some(r);
            }
            let usage = answer.map(|r| r.usage).unwrap_or_default();
            let unit = |u: i32| usage.iter().find(|x| x.unit == u);
            use pb::volume_usage::Unit;
            let used_bytes = unit(Unit::Bytes as i32).map_or(0, |u| u.used);
            let used_inodes = unit(Unit::Inodes as i32).map(|u| u.used);
            Ok::<_, Error>(StatsResult { files, fill, first, later, du: du_runs, used_bytes, used_inodes, du_bytes })
        }
        .await;
        let detached = node.detach(&a).await;
        let measured = measured?;
        detached?;
        Ok::<_, Error>(measured)
    }
    .await;
    clean_up(&mut controller, &volume.volume_id, &dir, result).await
}
