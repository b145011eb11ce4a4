//! Snapshot copies in a store on nfs-ganesha through berth's userspace NFS client: a tree
//! copied to the export restores and reads back, a second copy sends only what changed,
//! the same directory opened as a local store agrees, a damaged chunk on the export fails
//! the restore naming it, and deleting copies empties the store.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use berth::archive::copy::{CopyOptions, copy_image, copy_tree};
use berth::archive::lease::Timing;
use berth::archive::nfsstore::NfsStore;
use berth::archive::restore::{load, restore, verify};
use berth::archive::store::{Area, ChunkStore, DirStore};
use berth::archive::{Error, gc};
use common::ganesha::Ganesha;
use common::{Scratch, noise, packs, require_root};

#[test]
fn copies_to_an_nfs_export_restore_dedup_and_collect() {
    let test = "copies_to_an_nfs_export_restore_dedup_and_collect";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let ep = g.endpoint();
    let client = berth::nfs::Client::connect(&ep).expect("connect");
    let store = NfsStore::open(client, &[b"archive", b"pool-a"], "127.0.0.1").expect("open the NFS store");
    let timing =
        Timing { stale_after: Duration::from_millis(500), poll: Duration::from_millis(10), ..Timing::default() };
    let opts = CopyOptions { timing, ..CopyOptions::default() };

    let src = scratch.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), noise(1, 3 << 20)).unwrap();
    let sparse = fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(32 << 20).unwrap();
    sparse.write_all_at(&noise(2, 100_000), 20 << 20).unwrap();
    std::os::unix::fs::symlink("/etc", src.join("d/link")).unwrap();
    fs::hard_link(src.join("d/f"), src.join("f-again")).unwrap();

    let first = copy_tree(&store, "one", &src, &opts).expect("copy to NFS");
    assert!(first.chunks_new > 300, "{first:?}");
    let out = scratch.path().join("out");
    restore(&store, "one", &out).expect("restore from NFS");
    assert_eq!(fs::read(out.join("d/f")).unwrap(), fs::read(src.join("d/f")).unwrap());
    assert_eq!(fs::read(out.join("sparse")).unwrap(), fs::read(src.join("sparse")).unwrap());
    assert_eq!(fs::read_link(out.join("d/link")).unwrap(), std::path::Path::new("/etc"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(out.join("d/f")).unwrap().ino(), fs::metadata(out.join("f-again")).unwrap().ino());
    let drill = verify(&store, "one", scratch.path());
    assert!(drill.passed(), "{drill}");

    fs::OpenOptions::new().write(true).open(src.join("d/f")).unwrap().write_all_at(b"changed", 1 << 20).unwrap();
    let second = copy_tree(&store, "two", &src, &opts).expect("second copy");
    assert!(second.bytes_new < 128 << 10, "{second:?}");
    let image = copy_image(&store, "img", &src.join("d/f"), &opts).expect("image copy");
    assert!(image.chunks_new <= 2, "the file's chunks are stored already: {image:?}");

    // The same directory as a local store: one layout, either side reads it.
    let local = DirStore::open(&g.export.join("archive/pool-a")).unwrap();
    assert_eq!(local.list_files(Area::Manifests).unwrap(), ["img", "one", "two"]);
    assert!(verify(&local, "two", scratch.path()).passed());

    // A chunk damaged on the export: the restore names it and the manifest.
    let hash = load(&store, "one").unwrap().chunks().nth(5).unwrap().hash;
    packs::flip(local.root(), &hash, 0, 1);
    let err = restore(&store, "one", &scratch.path().join("bad")).unwrap_err();
    assert!(
        matches!(err, Error::ChunkCorrupt { chunk, ref manifest, .. } if chunk == hash && manifest == "one"),
        "{err}"
    );
    assert!(!scratch.path().join("bad").exists());
    packs::flip(local.root(), &hash, 0, 1);

    for name in ["one", "two", "img"] {
        gc::delete(&store, name, timing).expect("delete");
    }
    assert!(store.list_chunks().unwrap().is_empty());
    for area in [Area::Manifests, Area::Pending, Area::Gc] {
        assert!(store.list_files(area).unwrap().is_empty(), "{area:?}");
    }
}

/// `berth bench --workload archive` against a ganesha this harness starts (the only way
/// the project starts one): set `BERTH_ARCHIVE_BENCH` to the bench's further arguments,
/// e.g. `--snapshot-size 1Gi --archive-runs 3`, and run this test with `--nocapture`.
/// Build it with `--release` for figures worth quoting; `BERTH_ARCHIVE_BENCH_BIN` names
/// another build of berth to run instead (the one before a change, for a pair). The export, the image and the
/// restore are on one ext4 filesystem in an image file in memory (tmpfs): the figures do
/// not depend on a shared disk's other writers, nor fail when it fills up.
#[test]
fn archive_benchmark_on_a_harness_server() {
    let test = "archive_benchmark_on_a_harness_server";
    let Ok(args) = std::env::var("BERTH_ARCHIVE_BENCH") else {
        println!("SKIPPED: {test}: a benchmark, run only when BERTH_ARCHIVE_BENCH holds its arguments");
        return;
    };
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let dir = scratch.path().to_str().unwrap();
    common::sh("mount", &["-t", "tmpfs", "-o", "size=16g", "berth-bench", dir]);
    let Some(fs) = common::FsImage::new(&scratch, test, "ext4", "14G") else { return };
    let Some(g) = Ganesha::start(&fs.mount, test) else { return };
    let work = fs.mount.join("work");
    fs::create_dir_all(&work).unwrap();
    let bin = std::env::var("BERTH_ARCHIVE_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_berth").into());
    let out = std::process::Command::new(bin)
        .args(["bench", "--workload", "archive", "--archive-nfs"])
        .arg(format!("127.0.0.1:{}:{}:{}", g.nfs_port, g.mount_port, g.export.display()))
        .arg("--work-dir")
        .arg(&work)
        .args(args.split_whitespace())
        .output()
        .expect("run berth bench");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "berth bench failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn nfs_store(g: &Ganesha) -> NfsStore {
    let client = berth::nfs::Client::connect(&g.endpoint()).expect("connect");
    NfsStore::open(client, &[b"archive", b"pool-a"], "127.0.0.1").expect("open the NFS store")
}

/// An NFS store learns which chunks exist from one listing per copy. A collection by
/// another process removes chunks; the next copy through the store that listed them
/// before must not take them as present (its lease makes it list again): every chunk
/// travels again and the copy restores.
#[test]
fn a_listing_from_before_a_collection_is_not_trusted_by_the_next_copy() {
    let test = "a_listing_from_before_a_collection_is_not_trusted_by_the_next_copy";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let timing =
        Timing { stale_after: Duration::from_millis(500), poll: Duration::from_millis(10), ..Timing::default() };
    let opts = CopyOptions { timing, ..CopyOptions::default() };
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), noise(7, 1 << 20)).unwrap();

    let store = nfs_store(&g);
    let first = copy_tree(&store, "one", &src, &opts).expect("first copy");
    assert!(first.chunks_new > 50, "{first:?}");
    // Another process (another store, another connection) deletes the copy: its chunks go.
    let other = nfs_store(&g);
    let report = gc::delete(&other, "one", timing).expect("delete");
    assert_eq!(report.chunks_removed, first.chunks_new, "{report:?}");

    let again = copy_tree(&store, "two", &src, &opts).expect("copy again");
    assert_eq!(again.chunks_new, first.chunks_new, "every chunk must travel again: {again:?}");
    let drill = verify(&other, "two", scratch.path());
    assert!(drill.passed(), "{drill}");
}

/// A listing longer than one READDIRPLUS reply: 300 packs (their indexes read in one
/// batch) and, as a store written before packs kept them, 3,000 loose chunks with one
/// prefix directory far fuller than one page; listed whole, each chunk once.
#[test]
fn a_chunk_listing_spans_many_readdirplus_pages() {
    let test = "a_chunk_listing_spans_many_readdirplus_pages";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let root = g.export.join("archive/pool-a");
    let local = DirStore::open(&root).unwrap();
    let mut want = std::collections::HashSet::new();
    for p in 0..300u32 {
        let mut pack = berth::archive::pack::Builder::default();
        for i in 0..10u32 {
            let data = (p * 10 + i).to_le_bytes();
            let hash = berth::archive::Hash::of(&data);
            pack.push(hash, &data);
            want.insert(hash);
        }
        local.write_pack(pack.seal()).unwrap();
    }
    // Loose chunks: 1,000 spread over the prefix directories, 2,000 more in one (a
    // listing is of names; these are not the hashes of their content, which no listing
    // reads).
    for i in 0..3000u32 {
        let hash = berth::archive::Hash::of(format!("loose {i}").as_bytes());
        let name = hash.to_string();
        let prefix = if i < 1000 { &name[..2] } else { "00" };
        let dir = root.join("chunks").join(prefix);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(&name), b"x").unwrap();
        want.insert(hash);
    }
    let store = nfs_store(&g);
    let listed = store.list_chunks().expect("list");
    assert_eq!(listed.len(), want.len(), "each chunk once");
    assert_eq!(listed.into_iter().collect::<std::collections::HashSet<_>>(), want);
    assert_eq!(store.list_packs().unwrap().len(), 300);
    assert_eq!(store.list_loose().unwrap().len(), 3000);
}

/// The server goes away with a pack sent and more chunks gathered: the flush fails
/// naming what it was doing, and nothing is committed: no pack under its name, no
/// manifest.
#[test]
fn a_connection_lost_mid_batch_fails_precisely_and_commits_nothing() {
    let test = "a_connection_lost_mid_batch_fails_precisely_and_commits_nothing";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(mut g) = Ganesha::start(scratch.path(), test) else { return };
    let store = nfs_store(&g);
    let chunks: Vec<Vec<u8>> = (0..2500u32).map(|i| noise(u64::from(i), 4096)).collect();
    // More than one pack: the first is sent (created and written), the rest gathered.
    for data in &chunks {
        assert!(store.put_chunk(&berth::archive::Hash::of(data), data).expect("put"));
    }
    g.stop();
    let err = store.flush().expect_err("the server is gone");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1") && text.contains("archive/pool-a"), "{text}");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let local = DirStore::open(&g.export.join("archive/pool-a")).unwrap();
    assert!(local.list_chunks().unwrap().is_empty(), "a pack reached its name");
    assert!(local.list_files(Area::Manifests).unwrap().is_empty());
    let uploads = fs::read_dir(g.export.join("archive/pool-a/uploads")).unwrap().count();
    assert_eq!(uploads, 1, "the sent pack waits in its upload directory for a collection");
}

/// A restore reads packs by the handles a listing gave. A pack replaced since (removed and
/// written again: a new file) leaves an old handle, and a collection that rewrites a
/// mostly unneeded pack moves the needed chunks to a new pack and removes the old one:
/// either way the server answers the old handle as stale (or from the removed file), the
/// store lists again, and the restore succeeds, every chunk checked against its hash.
#[test]
fn a_pack_replaced_or_rewritten_after_the_listing_is_found_again() {
    let test = "a_pack_replaced_or_rewritten_after_the_listing_is_found_again";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let store = nfs_store(&g);
    let (both, small) = (scratch.path().join("both"), scratch.path().join("small"));
    fs::create_dir_all(&both).unwrap();
    fs::create_dir_all(&small).unwrap();
    fs::write(both.join("big"), noise(9, 1 << 20)).unwrap();
    fs::write(both.join("g"), noise(10, 64 << 10)).unwrap();
    fs::write(small.join("g"), noise(10, 64 << 10)).unwrap();
    copy_tree(&store, "both", &both, &CopyOptions::default()).expect("copy");
    let again = copy_tree(&store, "small", &small, &CopyOptions::default()).expect("copy");
    assert_eq!(again.chunks_new, 0, "{again:?}");
    let reader = nfs_store(&g);
    restore(&reader, "small", &scratch.path().join("out-1")).expect("first restore");
    let root = g.export.join("archive/pool-a");
    let before = packs::files(&root);
    assert_eq!(before.len(), 1);
    let bytes = fs::read(&before[0]).unwrap();
    fs::remove_file(&before[0]).unwrap();
    fs::write(&before[0], &bytes).unwrap();
    restore(&reader, "small", &scratch.path().join("out-2")).expect("restore after the pack was replaced");
    assert_eq!(fs::read(scratch.path().join("out-2/g")).unwrap(), fs::read(small.join("g")).unwrap());

    let report = gc::delete(&store, "both", Timing::default()).expect("delete");
    assert_eq!((report.packs_rewritten, report.packs_removed), (1, 1), "{report:?}");
    let after = packs::files(&root);
    assert!(after.len() == 1 && after != before, "{after:?}");
    assert!(fs::metadata(&after[0]).unwrap().len() < 128 << 10, "only the needed chunks were kept");
    restore(&reader, "small", &scratch.path().join("out-3")).expect("restore after the pack was rewritten");
    assert_eq!(fs::read(scratch.path().join("out-3/g")).unwrap(), fs::read(small.join("g")).unwrap());
}
