//! `berth bench --workload archive`: snapshot copies of one image file into a directory
//! store, measured the way issue 22 states its target. Needs no driver: it calls the
//! archive library directly, beside `cp -a` of the same file to the same directory.
//!
//! Each run uses a fresh store: a first copy; a second after 1% of the bytes changed as
//! 64 contiguous regions; a third after another 1% changed as 16 KiB writes at random
//! 4 KiB-aligned offsets; a restore of the third; and `cp -a` of the image (then syncfs,
//! as a copy ends with one) before and after the changes. The report holds medians.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::stats::{memory, round};
use crate::archive::chunker::{DEFAULT_SIZES, Sizes};
use crate::archive::copy::{CopyOptions, CopyStats, copy_image};
use crate::archive::nfsstore::NfsStore;
use crate::archive::restore::restore;
use crate::archive::store::{ChunkStore, DirStore};
use crate::nfs::{Client, Fh};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            word.copy_from_slice(&x[..word.len()]);
        }
    }
}

fn write_random(file: &File, rng: &mut Rng, off: u64, len: usize) -> Result<(), String> {
    let mut buf = vec![0u8; len];
    rng.fill(&mut buf);
    file.write_all_at(&buf, off).map_err(|e| format!("writing the image: {e}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn syncfs(dir: &Path) -> Result<(), String> {
    let d = File::open(dir).map_err(|e| format!("opening {}: {e}", dir.display()))?;
    nix::unistd::syncfs(&d).map_err(|e| format!("syncfs {}: {e}", dir.display()))
}

fn cp_a(image: &Path, dest: &Path) -> Result<Duration, String> {
    let t = Instant::now();
    let status = Command::new("cp").arg("-a").arg(image).arg(dest).status().map_err(|e| format!("cp -a: {e}"))?;
    if !status.success() {
        return Err(format!("cp -a {} {} failed: {status}", image.display(), dest.display()));
    }
    syncfs(dest.parent().unwrap_or(dest))?;
    let took = t.elapsed();
    fs::remove_file(dest).map_err(|e| format!("removing {}: {e}", dest.display()))?;
    Ok(took)
}

#[derive(Default)]
struct Phase {
    secs: Vec<f64>,
    sent: Vec<f64>,
    read: Vec<f64>,
}

impl Phase {
    fn add(&mut self, s: &CopyStats) {
        self.secs.push(s.elapsed.as_secs_f64());
        self.sent.push(s.bytes_sent as f64);
        self.read.push(s.bytes_read as f64);
    }
    fn json(&self, size: u64) -> Value {
        let (secs, sent, read) = (median(self.secs.clone()), median(self.sent.clone()), median(self.read.clone()));
        json!({
            "seconds": round(secs),
            "bytes_read": read,
            "bytes_sent": sent,
            "sent_pct_of_size": round(sent * 100.0 / size as f64),
            "read_mib_per_s": round(read / secs.max(1e-9) / f64::from(1 << 20)),
        })
    }
}

/// Where the benchmark's stores go.
pub enum Target<'a> {
    /// A directory store under `--work-dir`, beside `cp -a` of the image into it.
    Dir,
    /// A store on an NFS export through the userspace client, beside a sequential write
    /// and read of the image through the same client (1 MiB WRITEs, then COMMIT; there is
    /// no kernel mount to run `dd` on).
    Nfs(&'a crate::nfs::Endpoint),
}

/// Parses `--archive-nfs`: HOST:NFS_PORT:MOUNT_PORT:EXPORT.
pub fn endpoint(spec: &str) -> Result<crate::nfs::Endpoint, String> {
    let bad = || format!("--archive-nfs {spec:?} is not HOST:NFS_PORT:MOUNT_PORT:EXPORT");
    let mut parts = spec.splitn(4, ':');
    let (Some(host), Some(nfs), Some(mount), Some(export)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let port = |p: &str| p.parse::<u16>().map(|p| (p != 0).then_some(p)).map_err(|_| bad());
    Ok(crate::nfs::Endpoint {
        host: host.to_string(),
        export: export.to_string(),
        nfs_port: port(nfs)?,
        mount_port: port(mount)?,
        timeout: Duration::from_secs(30),
        auth: crate::nfs::rpc::AuthSys { machine: "berth-bench".into(), uid: 0, gid: 0 },
    })
}

/// Runs the workload `runs` times on an image of `size` bytes under `work_dir`.
pub fn bench(
    work_dir: &Path,
    size: u64,
    runs: usize,
    chunk_kib: Option<usize>,
    target: &Target<'_>,
) -> Result<Value, String> {
    let sizes = match chunk_kib {
        None => DEFAULT_SIZES,
        Some(kib) => Sizes { min: (kib << 10) / 4, avg: kib << 10, max: (kib << 10) * 4 },
    };
    sizes.check()?;
    let name = format!("berth-archive-bench-{}", std::process::id());
    let dir = work_dir.join(&name);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = measure(&dir, &name, size, runs.max(1), sizes, target);
    let _ = fs::remove_dir_all(&dir);
    if let Target::Nfs(ep) = target {
        let mut c = Client::connect(ep).map_err(|e| format!("NFS: {e}"))?;
        let root = c.root.clone();
        nfs_remove_tree(&mut c, &root, name.as_bytes())?;
    }
    result
}

/// Removes `name` in `dir` on the export and everything under it.
fn nfs_remove_tree(c: &mut Client, dir: &Fh, name: &[u8]) -> Result<(), String> {
    let Some((fh, attr)) = c.lookup(dir, name).map_err(|e| format!("NFS: {e}"))? else { return Ok(()) };
    if attr.ftype == crate::nfs::FileType::Directory {
        for e in c.readdirplus(&fh).map_err(|e| format!("NFS: {e}"))? {
            if e.name != b"." && e.name != b".." {
                nfs_remove_tree(c, &fh, &e.name)?;
            }
        }
        c.rmdir(dir, name).map_err(|e| format!("NFS: {e}"))
    } else {
        c.remove(dir, name).map_err(|e| format!("NFS: {e}"))
    }
}

/// Times of a sequential pass through the client, as `dd` would make them.
struct Sequential {
    /// The image written to the export and COMMITted.
    write: f64,
    /// Read back, the bytes dropped.
    read: f64,
    /// Read back into a local file beside the restores, synced: `dd` from the export to
    /// a volume, what a restore is measured against.
    read_to_file: f64,
}

/// Writes the image to the export sequentially through a new client and COMMITs it,
/// then reads it back twice: dropping the bytes, then into `dest`, synced.
fn nfs_sequential(ep: &crate::nfs::Endpoint, bench: &str, image: &Path, dest: &Path) -> Result<Sequential, String> {
    let nfs = |e: crate::nfs::Error| format!("NFS: {e}");
    let mut c = Client::connect(ep).map_err(nfs)?;
    let root = c.root.clone();
    let dir = match c.lookup(&root, bench.as_bytes()).map_err(nfs)? {
        Some((fh, _)) => fh,
        None => c.mkdir(&root, bench.as_bytes(), 0o755).map_err(nfs)?.0,
    };
    let src = File::open(image).map_err(|e| format!("opening the image: {e}"))?;
    let size = src.metadata().map_err(|e| format!("the image: {e}"))?.len();
    let step = c.io_size.max(4096) as usize;
    let mut buf = vec![0u8; step];
    let t = Instant::now();
    let (fh, _) = c.create(&dir, b"sequential.img", 0o644, false).map_err(nfs)?;
    let mut off = 0u64;
    while off < size {
        let n = src.read_at(&mut buf, off).map_err(|e| format!("reading the image: {e}"))?;
        let mut done = 0;
        while done < n {
            done += c.write(&fh, off + done as u64, &buf[done..n], false).map_err(nfs)? as usize;
        }
        off += n as u64;
    }
    c.commit(&fh).map_err(nfs)?;
    let write = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut off = 0u64;
    loop {
        let (data, eof) = c.read(&fh, off, step as u32).map_err(nfs)?;
        off += data.len() as u64;
        if eof || data.is_empty() {
            break;
        }
    }
    let read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let out = File::create(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let mut off = 0u64;
    loop {
        let (data, eof) = c.read(&fh, off, step as u32).map_err(nfs)?;
        out.write_all_at(&data, off).map_err(|e| format!("writing {}: {e}", dest.display()))?;
        off += data.len() as u64;
        if eof || data.is_empty() {
            break;
        }
    }
    out.sync_all().map_err(|e| format!("syncing {}: {e}", dest.display()))?;
    let read_to_file = t.elapsed().as_secs_f64();
    fs::remove_file(dest).map_err(|e| format!("removing {}: {e}", dest.display()))?;
    c.remove(&dir, b"sequential.img").map_err(nfs)?;
    Ok(Sequential { write, read, read_to_file })
}

fn measure(dir: &Path, name: &str, size: u64, runs: usize, sizes: Sizes, target: &Target<'_>) -> Result<Value, String> {
    let image = dir.join("volume.img");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    {
        let file = File::create(&image).map_err(|e| format!("creating the image: {e}"))?;
        file.set_len(size).map_err(|e| format!("sizing the image: {e}"))?;
        let block = 1 << 20;
        let mut off = 0;
        while off < size {
            let len = (size - off).min(block) as usize;
            write_random(&file, &mut rng, off, len)?;
            off += len as u64;
        }
        file.sync_all().map_err(|e| format!("syncing the image: {e}"))?;
    }
    let (mut first, mut regions, mut scattered) = (Phase::default(), Phase::default(), Phase::default());
    let (mut restore_s, mut base_first, mut base_second, mut base_read, mut base_to_file) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let opts = CopyOptions { sizes, ..CopyOptions::default() };
    let percent = size / 100;
    let mut baseline = |root: &Path| -> Result<f64, String> {
        match target {
            Target::Dir => Ok(cp_a(&image, &root.join("cp-a.img"))?.as_secs_f64()),
            Target::Nfs(ep) => {
                let seq = nfs_sequential(ep, name, &image, &dir.join("sequential-back.img"))?;
                base_read.push(seq.read);
                base_to_file.push(seq.read_to_file);
                Ok(seq.write)
            }
        }
    };
    for run in 0..runs {
        let root = dir.join(format!("store-{run}"));
        let store_name = format!("store-{run}");
        let store: Box<dyn ChunkStore> = match target {
            Target::Dir => Box::new(DirStore::open(&root).map_err(|e| e.to_string())?),
            Target::Nfs(ep) => {
                let client = Client::connect(ep).map_err(|e| format!("NFS: {e}"))?;
                let store = NfsStore::open(client, &[name.as_bytes(), store_name.as_bytes()], &ep.host);
                Box::new(store.map_err(|e| e.to_string())?)
            }
        };
        let store = store.as_ref();
        base_first.push(baseline(&root)?);
        first.add(&copy_image(store, "first", &image, &opts).map_err(|e| e.to_string())?);
        let file = File::options().write(true).open(&image).map_err(|e| format!("opening the image: {e}"))?;
        // 1% as 64 contiguous regions, one in each 64th of the image.
        let region = (percent / 64) as usize;
        for i in 0..64u64 {
            let slot = size / 64;
            let off = i * slot + rng.next() % (slot - region as u64);
            write_random(&file, &mut rng, off, region)?;
        }
        file.sync_all().map_err(|e| format!("syncing the image: {e}"))?;
        regions.add(&copy_image(store, "regions", &image, &opts).map_err(|e| e.to_string())?);
        // 1% as 16 KiB writes at random 4 KiB-aligned offsets.
        for _ in 0..percent / (16 << 10) {
            let off = (rng.next() % ((size - (16 << 10)) / 4096)) * 4096;
            write_random(&file, &mut rng, off, 16 << 10)?;
        }
        file.sync_all().map_err(|e| format!("syncing the image: {e}"))?;
        scattered.add(&copy_image(store, "scattered", &image, &opts).map_err(|e| e.to_string())?);
        base_second.push(baseline(&root)?);
        let back = dir.join("restored.img");
        let t = Instant::now();
        restore(store, "scattered", &back).map_err(|e| e.to_string())?;
        restore_s.push(t.elapsed().as_secs_f64());
        fs::remove_file(&back).map_err(|e| format!("removing {}: {e}", back.display()))?;
        if let Target::Dir = target {
            fs::remove_dir_all(&root).map_err(|e| format!("removing {}: {e}", root.display()))?;
        }
    }
    let mib = size as f64 / f64::from(1 << 20);
    let base = |v: &Vec<f64>| {
        let s = median(v.clone());
        json!({ "seconds": round(s), "bytes_sent": size, "sent_pct_of_size": 100.0, "mib_per_s": round(mib / s.max(1e-9)) })
    };
    let restore = median(restore_s);
    let speed = |v: &Vec<f64>| {
        (!v.is_empty())
            .then(|| median(v.clone()))
            .map_or(Value::Null, |s| json!({ "seconds": round(s), "mib_per_s": round(mib / s.max(1e-9)) }))
    };
    Ok(json!({
        "workload": "archive",
        "store": match target { Target::Dir => "directory".to_string(), Target::Nfs(ep) => format!("nfs {}:{}", ep.host, ep.export) },
        "baseline": match target { Target::Dir => "cp -a", Target::Nfs(_) => "sequential WRITE+COMMIT through the client" },
        "image_bytes": size,
        "chunk_bytes": { "min": sizes.min, "avg": sizes.avg, "max": sizes.max },
        "runs": runs,
        "first_copy": first.json(size),
        "second_copy_64_regions": regions.json(size),
        "second_copy_scattered_16k": scattered.json(size),
        "restore": { "seconds": round(restore), "mib_per_s": round(mib / restore.max(1e-9)) },
        "baseline_first": base(&base_first),
        "baseline_second": base(&base_second),
        "baseline_read": speed(&base_read),
        "baseline_read_to_file": speed(&base_to_file),
        "peak_rss_kib": memory(std::process::id()).map_or(0, |m| m.hwm_kib),
    }))
}

/// The table lines of an archive result.
pub fn rows(r: &Value) -> String {
    let mut out = format!(
        "archive: image of {} bytes, chunks {}/{}/{} bytes (min/avg/max), medians of {} runs\n",
        r["image_bytes"], r["chunk_bytes"]["min"], r["chunk_bytes"]["avg"], r["chunk_bytes"]["max"], r["runs"]
    );
    for (label, key) in [
        ("first copy", "first_copy"),
        ("second copy, 1% in 64 regions", "second_copy_64_regions"),
        ("second copy, 1% as 16 KiB writes", "second_copy_scattered_16k"),
    ] {
        let p = &r[key];
        out.push_str(&format!(
            "  {label:<34} {:>8} s  sent {:>12} bytes ({:>6}%)  read {:>8} MiB/s\n",
            p["seconds"], p["bytes_sent"], p["sent_pct_of_size"], p["read_mib_per_s"]
        ));
    }
    out.push_str(&format!("  store: {}; baseline: {}\n", r["store"], r["baseline"]));
    for (label, key) in [("baseline, first", "baseline_first"), ("baseline, second", "baseline_second")] {
        let p = &r[key];
        out.push_str(&format!(
            "  {label:<34} {:>8} s  sent {:>12} bytes ({:>6}%)       {:>8} MiB/s\n",
            p["seconds"], p["bytes_sent"], p["sent_pct_of_size"], p["mib_per_s"]
        ));
    }
    for (label, key) in [("baseline read", "baseline_read"), ("baseline read into a file", "baseline_read_to_file")] {
        if !r[key].is_null() {
            out.push_str(&format!("  {label:<34} {:>8} s  {:>8} MiB/s\n", r[key]["seconds"], r[key]["mib_per_s"]));
        }
    }
    out.push_str(&format!(
        "  {:<34} {:>8} s  {:>8} MiB/s; peak RSS {} KiB\n",
        "restore", r["restore"]["seconds"], r["restore"]["mib_per_s"], r["peak_rss_kib"]
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_reports_what_second_copies_send() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = bench(dir.path(), 8 << 20, 1, None, &Target::Dir).expect("bench");
        let pct = |k: &str| r[k]["sent_pct_of_size"].as_f64().expect(k);
        assert!(pct("first_copy") >= 100.0, "{r}");
        for k in ["second_copy_64_regions", "second_copy_scattered_16k"] {
            // 1% changed: the changed chunks and the manifest, far from a full copy (on an
            // image this small each of the 64 regions is 1.3 KiB and costs a whole chunk
            // or two, hence the wide bound).
            assert!(pct(k) > 1.0 && pct(k) < 25.0, "{k}: {r}");
        }
        assert_eq!(r["baseline_first"]["bytes_sent"], 8 << 20);
        assert!(rows(&r).contains("second copy, 1% as 16 KiB writes"));
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0, "the workload left files behind");
        assert!(bench(dir.path(), 1 << 20, 1, Some(3), &Target::Dir).is_err(), "3 KiB is not a power of two");
    }
}
