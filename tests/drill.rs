//! `berth drill` against snapshot copies on nfs-ganesha: the real binary, with a
//! configuration that names the NFS pool, reaches the pool's store (.berth/archive on the
//! export) through the userspace client, passes good copies, fails a copy with a damaged
//! or a missing chunk naming both, picks the latest copies, refuses an empty store unless
//! allowed, and leaves its result for node-exporter in --metrics-file.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use berth::archive::copy::{CopyOptions, copy_tree};
use berth::archive::nfsstore::NfsStore;
use berth::archive::restore::load;
use berth::archive::store::{ChunkStore, DirStore};
use berth::metrics::exposition::{find, parse};
use common::ganesha::{Ganesha, nfs_config};
use common::{Scratch, berth_cmd, noise, packs, require_root};

const KEY_OLD: &str = "0123456789abcdef0123456789abcdef";
const KEY_NEW: &str = "fedcba9876543210fedcba9876543210";

fn drill(args: &[&str]) -> (bool, String, String) {
    let Output { status, stdout, stderr } = berth_cmd(&[&["drill"], args].concat());
    (status.success(), String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

/// A small tree with data, a hole, a symlink and a file owned by someone else.
fn tree(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("d")).unwrap();
    fs::write(dir.join("d/data"), noise(seed, 300_000)).unwrap();
    fs::write(dir.join("small"), format!("seed {seed}")).unwrap();
    let sparse = fs::File::create(dir.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &noise(seed + 100, 50_000), 4 << 20).unwrap();
    std::os::unix::fs::symlink("d/data", dir.join("link")).unwrap();
    std::os::unix::fs::chown(dir.join("small"), Some(1234), Some(5678)).unwrap();
}

fn metric(path: &Path, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = fs::read_to_string(path).unwrap();
    let samples = parse(&text).unwrap_or_else(|e| panic!("{}: {e:?}\n{text}", path.display()));
    find(&samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

#[test]
fn drill_passes_good_copies_and_fails_damaged_ones() {
    let test = "drill_passes_good_copies_and_fails_damaged_ones";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let config = scratch.path().join("config.yaml");
    fs::write(&config, nfs_config(&scratch.path().join("state"), &g, &[("shared", "")])).unwrap();
    let config = config.to_str().unwrap();
    let work = scratch.path().join("scratch");
    fs::create_dir(&work).unwrap();
    let work = work.to_str().unwrap();
    let prom = scratch.path().join("textfile/berth-drill-shared.prom");
    fs::create_dir(prom.parent().unwrap()).unwrap();
    let prom_arg = prom.to_str().unwrap();
    let pool = [("pool", "shared")];

    // No copy yet: a drill that checks nothing fails, unless told it may.
    let (ok, out, err) = drill(&["--config", config, "--pool", "shared", "--all", "--metrics-file", prom_arg]);
    assert!(!ok, "{out}{err}");
    assert!(err.contains("pool \"shared\" holds no snapshot copy to drill"), "{err}");
    assert!(out.contains("drill: 0 passed, 0 failed in "), "{out}");
    assert_eq!(metric(&prom, "berth_drill_passed", &pool), 0.0);
    let (ok, out, err) = drill(&["--config", config, "--pool", "shared", "--all", "--allow-empty"]);
    assert!(ok, "{out}{err}");

    // Two copies written the way the engine writes them: into .berth/archive on the export.
    let ep = g.endpoint();
    let client = berth::nfs::Client::connect(&ep).expect("connect");
    let dir = berth::archive::STORE_DIR.map(str::as_bytes);
    let store = NfsStore::open(client, &dir, "127.0.0.1").expect("open the NFS store");
    let old = berth::archive::snapshot_manifest(KEY_OLD);
    let new = berth::archive::snapshot_manifest(KEY_NEW);
    let (src_old, src_new) = (scratch.path().join("src-old"), scratch.path().join("src-new"));
    tree(&src_old, 1);
    tree(&src_new, 2);
    copy_tree(&store, &old, &src_old, &CopyOptions::default()).expect("copy");
    // `created` is in seconds: the second copy is newer.
    std::thread::sleep(Duration::from_millis(1100));
    let stats = copy_tree(&store, &new, &src_new, &CopyOptions::default()).expect("copy");

    let id = format!("snap:local:{KEY_NEW}");
    let (ok, out, err) = drill(&[
        "--config",
        config,
        "--pool",
        "shared",
        "--snapshot",
        &id,
        "--scratch",
        work,
        "--metrics-file",
        prom_arg,
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with(&format!("PASS {new}: ")) && l.ends_with('s')), "{out}");
    assert!(out.lines().last().unwrap().starts_with("drill: 1 passed, 0 failed in "), "{out}");
    assert_eq!(fs::read_dir(work).unwrap().count(), 0, "the scratch restore is removed");
    assert_eq!(metric(&prom, "berth_drill_passed", &pool), 1.0);
    assert_eq!(metric(&prom, "berth_drill_copies", &[("pool", "shared"), ("result", "passed")]), 1.0);
    assert_eq!(metric(&prom, "berth_drill_copies", &[("pool", "shared"), ("result", "failed")]), 0.0);
    assert_eq!(metric(&prom, "berth_drill_bytes", &pool), stats.bytes_read as f64);
    assert!(metric(&prom, "berth_drill_duration_seconds", &pool) > 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - metric(&prom, "berth_drill_last_run_timestamp_seconds", &pool)).abs() < 60.0);
    let names: Vec<_> = fs::read_dir(prom.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["berth-drill-shared.prom"], "no temporary file is left beside it");

    // --latest 1 drills the newer copy only; --all both, in name order.
    let (ok, out, err) = drill(&["--config", config, "--pool", "shared", "--latest", "1"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("PASS {new}: ")) && !out.contains(&old), "{out}");
    let (ok, out, err) = drill(&["--config", config, "--pool", "shared", "--all"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("drill: 2 passed, 0 failed in "), "{out}");

    // A damaged chunk of the old copy (one the new copy does not share) on the export.
    let local = DirStore::open(&g.export.join(".berth/archive")).unwrap();
    let new_chunks: Vec<_> = load(&store, &new).unwrap().chunks().map(|c| c.hash).collect();
    let hash = load(&store, &old).unwrap().chunks().map(|c| c.hash).find(|h| !new_chunks.contains(h)).unwrap();
    packs::flip(local.root(), &hash, 10, 0x40);
    let (ok, out, err) = drill(&["--config", config, "--pool", "shared", "--all", "--metrics-file", prom_arg]);
    assert!(!ok, "{out}{err}");
    println!("berth drill --all with a damaged chunk:\n{out}");
    let fail = out.lines().find(|l| l.starts_with(&format!("FAIL {old}: "))).unwrap_or_else(|| panic!("{out}"));
    assert!(fail.contains(&format!("chunk {hash} of manifest \"{old}\" is corrupted")), "{fail}");
    assert!(out.contains(&format!("PASS {new}: ")), "{out}");
    assert!(out.lines().last().unwrap().starts_with("drill: 1 passed, 1 failed in "), "{out}");
    assert_eq!(metric(&prom, "berth_drill_passed", &pool), 0.0);
    assert_eq!(metric(&prom, "berth_drill_copies", &[("pool", "shared"), ("result", "passed")]), 1.0);
    assert_eq!(metric(&prom, "berth_drill_copies", &[("pool", "shared"), ("result", "failed")]), 1.0);

    // The same chunk missing.
    packs::flip(local.root(), &hash, 10, 0x40);
    let good = packs::rewrite(local.root(), &hash, |_| None);
    let (ok, out, err) = drill(&["--config", config, "--pool", "shared", "--snapshot", &old, "--scratch", work]);
    assert!(!ok, "{out}{err}");
    let fail = out.lines().find(|l| l.starts_with(&format!("FAIL {old}: "))).unwrap_or_else(|| panic!("{out}"));
    assert!(fail.contains(&format!("chunk {hash} needed by manifest \"{old}\" is missing from the store")), "{fail}");
    assert_eq!(fs::read_dir(work).unwrap().count(), 0, "a failed restore leaves nothing behind");

    // A copy that does not exist fails by name.
    let (ok, out, _) = drill(&["--config", config, "--pool", "shared", "--snapshot", "snap-nothing"]);
    assert!(!ok);
    assert!(out.contains("FAIL snap-nothing: ") && out.contains("does not exist in the store"), "{out}");
    let mut back = berth::archive::pack::Builder::default();
    back.push(hash, &good);
    local.write_pack(back.seal()).unwrap();
    let (ok, out, err) = drill(&["--config", config, "--pool", "shared", "--snapshot", &old]);
    assert!(ok, "restored chunk: {out}{err}");
}

#[test]
fn drill_names_a_pool_it_cannot_use() {
    let scratch = Scratch::new();
    let config = scratch.path().join("config.yaml");
    let pool_dir = scratch.path().join("pool");
    fs::write(
        &config,
        format!(
            "stateDir: {}\npools:\n  - {{name: local, type: hostpath, path: {}}}\n  \
             - {{name: gone, type: nfs, server: 127.0.0.1, export: /nowhere, mountOptions: [port=1, mountport=1]}}\n",
            scratch.path().join("state").display(),
            pool_dir.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let prom = scratch.path().join("drill.prom");
    let prom_arg = prom.to_str().unwrap();

    let (ok, _, err) = drill(&["--config", config, "--pool", "nope", "--all", "--metrics-file", prom_arg]);
    assert!(!ok);
    assert!(err.contains(&format!("pool \"nope\" is not in the configuration {config}; its NFS pools: gone")), "{err}");
    assert_eq!(metric(&prom, "berth_drill_passed", &[("pool", "nope")]), 0.0);

    let (ok, _, err) = drill(&["--config", config, "--pool", "local", "--all"]);
    assert!(!ok);
    assert!(err.contains("pool \"local\" of the configuration") && err.contains("is a hostpath pool"), "{err}");

    let (ok, _, err) = drill(&["--config", config, "--pool", "gone", "--latest", "2", "--metrics-file", prom_arg]);
    assert!(!ok);
    assert!(err.contains("pool \"gone\": opening its store of snapshot copies"), "{err}");
    assert_eq!(metric(&prom, "berth_drill_passed", &[("pool", "gone")]), 0.0);

    let (ok, _, err) = drill(&["--config", config, "--pool", "gone", "--snapshot", "../x"]);
    assert!(!ok);
    assert!(err.contains("\"../x\" is neither a snapshot ID"), "{err}");

    // Exactly one way of choosing copies.
    let (ok, _, err) = drill(&["--config", config, "--pool", "gone"]);
    assert!(!ok && err.contains("--snapshot") && err.contains("--all"), "{err}");
    let (ok, _, err) = drill(&["--config", config, "--pool", "gone", "--all", "--latest", "1"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, _, err) = drill(&["--config", config, "--pool", "gone", "--latest", "0"]);
    assert!(!ok && err.contains("--latest"), "{err}");
}
