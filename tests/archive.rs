//! Snapshot copies against the real filesystem: trees and images round-trip through a
//! directory store with every kind of entry and metadata, second copies move only what
//! changed, damaged stores fail with the error that names the damage, collections never
//! delete a chunk a manifest or a running copy needs, and a crash at any fault point
//! leaves a store that the next collection and copy recover.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth::archive::copy::{CopyOptions, copy_image, copy_tree};
use berth::archive::lease::{Lease, Marker, Timing};
use berth::archive::manifest::Problem;
use berth::archive::restore::{load, restore, verify};
use berth::archive::store::{Area, ChunkStore, DirStore};
use berth::archive::{Error, gc};
use common::{noise, packs};

fn is_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    println!("SKIPPED: {test}: needs root for owners, device nodes and trusted xattrs");
    false
}

fn fast() -> Timing {
    Timing {
        stale_after: Duration::from_millis(300),
        poll: Duration::from_millis(10),
        give_up_after: Duration::from_secs(20),
    }
}

fn opts() -> CopyOptions<'static> {
    CopyOptions { timing: fast(), ..CopyOptions::default() }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let (p, n) = (CString::new(path.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
    // SAFETY: both strings are NUL-terminated and `value` is valid for its length.
    let r = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}

fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut list = vec![0u8; 65536];
    // SAFETY: `list` is writable for its length and `p` is NUL-terminated.
    let n = unsafe { libc::llistxattr(p.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert!(n >= 0, "listxattr {}", path.display());
    let mut out = BTreeMap::new();
    for name in list[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: as above, `value` is writable for its length.
        let m = unsafe { libc::lgetxattr(p.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        assert!(m >= 0);
        value.truncate(m as usize);
        out.insert(name.to_vec(), value);
    }
    out
}

fn data_ranges(path: &Path) -> Vec<(i64, i64)> {
    use nix::unistd::{Whence, lseek};
    let f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        let Ok(start) = lseek(&f, off, Whence::SeekData) else { break };
        let end = lseek(&f, start, Whence::SeekHole).unwrap();
        out.push((start, end));
        off = end;
    }
    out
}

/// Everything a restore must reproduce, per relative path: type, mode, owner, mtime,
/// xattrs, content or link target or device number, data ranges, and which paths share
/// an inode.
fn describe(root: &Path) -> BTreeMap<OsString, String> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, OsString> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).unwrap();
        let t = m.file_type();
        let mut d = format!(
            "mode={:o} uid={} gid={} mtime={}.{} xattrs={:?}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec(),
            xattrs(&path)
        );
        if t.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            stack.extend(names.into_iter().map(|n| rel.join(n)));
        } else if t.is_symlink() {
            d += &format!(" link={:?}", fs::read_link(&path).unwrap().as_os_str().as_bytes());
        } else if t.is_file() {
            let ranges = data_ranges(&path);
            // A file of holes only is not read: its size and layout say it all.
            let sum = if ranges.is_empty() {
                "holes".into()
            } else {
                berth::archive::Hash::of(&fs::read(&path).unwrap()).to_string()
            };
            d += &format!(" len={} sum={sum} ranges={ranges:?}", m.len());
            if m.nlink() > 1 {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone().into_os_string());
                d += &format!(" links={} first={:?}", m.nlink(), first.as_bytes());
            }
        } else {
            d += &format!(" rdev={}", m.rdev());
        }
        out.insert(rel.into_os_string(), d);
    }
    out
}

/// A tree with every kind of entry berth copies, odd names, sparse files and metadata.
fn make_tree(root: &Path) {
    use std::os::unix::fs::symlink;
    fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    fs::write(root.join("dir/small"), b"hello").unwrap();
    fs::write(root.join("big"), noise(1, 3 << 20)).unwrap();
    let sparse = File::create(root.join("dir/sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(&noise(2, 300_000), 5 << 20).unwrap();
    sparse.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    File::create(root.join("all-hole")).unwrap().set_len(1 << 30).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::hard_link(root.join("big"), root.join("dir/sub/big-again")).unwrap();
    fs::hard_link(root.join("big"), root.join("big-third")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    symlink("../small", root.join("dir/sub/rel-link")).unwrap();
    symlink("nowhere/at/all", root.join("dangling")).unwrap();
    symlink("/", root.join("dir/to-root")).unwrap();
    for odd in [&b"new\nline"[..], b"\xff\xfe not utf8", b"100% sure", b"sp ace \xc3\xbc", b"-dash"] {
        fs::write(root.join(OsStr::from_bytes(odd)), odd).unwrap();
    }
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    nix::sys::stat::mknod(
        &root.join("dir/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &root.join("dir/loopish"),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(7, 200),
    )
    .unwrap();
    set_xattr(&root.join("dir/small"), "user.colour", b"blue");
    set_xattr(&root.join("dir/small"), "user.binary", &[0, 1, 2, 255]);
    set_xattr(&root.join("dir"), "user.dir", b"yes");
    set_xattr(&root.join("abs-link"), "trusted.on-a-link", b"x");
    set_xattr(&root.join("fifo"), "trusted.on-a-fifo", b"y");
    std::os::unix::fs::chown(root.join("dir/small"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("abs-link"), Some(42), Some(43)).unwrap();
    std::os::unix::fs::chown(root.join("dir/sub"), Some(7), Some(8)).unwrap();
    fs::set_permissions(root.join("big"), fs::Permissions::from_mode(0o4751)).unwrap();
    fs::set_permissions(root.join("dir/sub/deeper"), fs::Permissions::from_mode(0o500)).unwrap();
    fs::set_permissions(root.join("dir/sub"), fs::Permissions::from_mode(0o2770)).unwrap();
    let t = nix::sys::time::TimeSpec::new(1_600_000_000, 123_456_789);
    for p in ["dir/small", "dir", "abs-link", "dir/sub/deeper", ""] {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &root.join(p),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

fn leftovers(dir: &Path) -> Vec<OsString> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.as_bytes().starts_with(b".")).collect()
}

#[test]
fn trees_round_trip_with_links_holes_xattrs_devices_and_odd_names() {
    if !is_root("trees_round_trip_with_links_holes_xattrs_devices_and_odd_names") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let store = DirStore::open(&tmp.path().join("store")).unwrap();
    let stats = copy_tree(&store, "snap-1", &src, &opts()).unwrap();
    assert!(stats.chunks_new > 0);
    // Holes are not read: 1 GiB of hole and most of the 64 MiB sparse file cost nothing.
    assert!(stats.bytes_read < 5 << 20, "read {} bytes", stats.bytes_read);
    let restored = tmp.path().join("restored");
    restore(&store, "snap-1", &restored).unwrap();
    assert_eq!(describe(&src), describe(&restored));
    // Into an existing empty directory too (a fresh volume).
    fs::create_dir(&out).unwrap();
    restore(&store, "snap-1", &out).unwrap();
    assert_eq!(describe(&src), describe(&out));
    // Symlinks stayed links: nothing was followed out of the source or the destination.
    assert_eq!(fs::read_link(out.join("dir/to-root")).unwrap(), Path::new("/"));
    assert!(fs::symlink_metadata(out.join("dir/to-root")).unwrap().file_type().is_symlink());
    // A destination that is in use is refused, and left as it was.
    let err = restore(&store, "snap-1", &out).unwrap_err();
    assert!(matches!(err, Error::DestinationInUse { .. }), "{err}");
    assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));
    let drill = verify(&store, "snap-1", tmp.path());
    assert!(drill.passed(), "{drill}");
    assert!(drill.to_string().starts_with("PASS snap-1:"), "{drill}");
    // Read-only directories of the restored trees must not stop the clean-up.
    for d in [&restored, &out] {
        fs::set_permissions(d.join("dir/sub/deeper"), fs::Permissions::from_mode(0o700)).unwrap();
    }
    fs::set_permissions(src.join("dir/sub/deeper"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn images_round_trip_with_their_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("disk.img");
    let f = File::create(&image).unwrap();
    f.set_len(256 << 20).unwrap();
    f.write_all_at(&noise(3, 1 << 20), 0).unwrap();
    f.write_all_at(&noise(4, 2 << 20), 100 << 20).unwrap();
    drop(f);
    let store = DirStore::open(&tmp.path().join("store")).unwrap();
    let stats = copy_image(&store, "img", &image, &opts()).unwrap();
    assert!(stats.bytes_read <= 3 << 20, "holes were read: {}", stats.bytes_read);
    let back = tmp.path().join("back.img");
    restore(&store, "img", &back).unwrap();
    assert_eq!(fs::read(&image).unwrap(), fs::read(&back).unwrap());
    assert_eq!(data_ranges(&image), data_ranges(&back));
    let err = restore(&store, "img", &back).unwrap_err();
    assert!(matches!(err, Error::DestinationInUse { .. }), "{err}");
    let err = copy_image(&store, "img", &image, &opts()).unwrap_err();
    assert!(matches!(err, Error::ManifestExists { .. }), "{err}");
    assert!(verify(&store, "img", tmp.path()).passed());
}

#[test]
fn a_second_copy_moves_only_what_changed_and_identical_data_is_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let data = noise(5, 16 << 20);
    fs::write(src.join("a"), &data).unwrap();
    fs::write(src.join("b"), noise(6, 1 << 20)).unwrap();
    let store = DirStore::open(&tmp.path().join("store")).unwrap();
    let first = copy_tree(&store, "one", &src, &opts()).unwrap();
    assert_eq!(first.bytes_read, 17 << 20);
    assert!(first.bytes_new >= 17 << 20);
    // 64 KiB written in the middle of a 16 MiB file.
    File::options().write(true).open(src.join("a")).unwrap().write_all_at(&noise(7, 64 << 10), 8 << 20).unwrap();
    let second = copy_tree(&store, "two", &src, &opts()).unwrap();
    assert!(second.bytes_new < 256 << 10, "64 KiB changed, {} bytes of chunks sent", second.bytes_new);
    assert!(second.chunks_reused > 900);
    // The same data under another name, in another tree: stored once.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("copy-of-a"), &data).unwrap();
    let third = copy_tree(&store, "three", &other, &opts()).unwrap();
    assert_eq!((third.chunks_new, third.bytes_new), (0, 0));
    assert_eq!(third.bytes_sent, third.manifest_bytes);
    for name in ["one", "two", "three"] {
        assert!(verify(&store, name, tmp.path()).passed(), "{name}");
    }
}

fn chunk_of(store: &DirStore, name: &str) -> berth::archive::Hash {
    load(store, name).unwrap().chunks().nth(3).unwrap().hash
}

#[test]
fn damaged_chunks_and_manifests_fail_with_the_precise_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), noise(8, 2 << 20)).unwrap();
    let store = DirStore::open(&tmp.path().join("store")).unwrap();
    copy_tree(&store, "snap", &src, &opts()).unwrap();
    let hash = chunk_of(&store, "snap");
    let root = store.root().to_path_buf();
    let dest = tmp.path().join("dest");
    // Each case through a new store: a store's listing of packs is its own, and a pack
    // changed by hand since is not among them.
    let expect = |want: &dyn Fn(&Error) -> bool, what: &str| {
        let store = DirStore::open(&root).unwrap();
        let err = restore(&store, "snap", &dest).unwrap_err();
        assert!(want(&err), "{what}: {err}");
        assert!(err.to_string().contains("\"snap\""), "{what}: the manifest is not named: {err}");
        assert!(!dest.exists(), "{what}: a half-restored tree is left at the destination");
        assert!(leftovers(tmp.path()).is_empty(), "{what}: {:?}", leftovers(tmp.path()));
        let drill = verify(&store, "snap", tmp.path());
        assert!(!drill.passed() && drill.to_string().starts_with("FAIL snap:"), "{what}: {drill}");
        err
    };
    packs::flip(&root, &hash, 100, 0x40);
    let err = expect(&|e| matches!(e, Error::ChunkCorrupt { chunk, .. } if *chunk == hash), "corrupted chunk");
    assert!(err.to_string().contains(&hash.to_string()));
    packs::flip(&root, &hash, 100, 0x40);
    let good = packs::rewrite(&root, &hash, |good| Some(good[..good.len() - 1].to_vec()));
    expect(
        &|e| matches!(e, Error::ChunkLength { chunk, found, .. } if *chunk == hash && *found == good.len() - 1),
        "truncated chunk",
    );
    packs::rewrite(&root, &hash, |_| None);
    expect(&|e| matches!(e, Error::ChunkMissing { chunk, .. } if *chunk == hash), "missing chunk");
    let mut back = berth::archive::pack::Builder::default();
    back.push(hash, &good);
    DirStore::open(&root).unwrap().write_pack(back.seal()).unwrap();
    assert!(verify(&DirStore::open(&root).unwrap(), "snap", tmp.path()).passed());
    // A pack cut short within a chunk: what is left of the chunk is too short.
    let third = load(&store, "snap").unwrap().chunks().nth(2).unwrap().hash;
    let (path, offset, len) = packs::location(&root, &third);
    let whole = fs::read(&path).unwrap();
    fs::write(&path, &whole[..offset as usize + len - 1]).unwrap();
    expect(&|e| matches!(e, Error::ChunkLength { chunk, .. } if *chunk == third), "pack cut short");
    fs::write(&path, &whole).unwrap();
    let store = DirStore::open(&root).unwrap();
    assert!(verify(&store, "snap", tmp.path()).passed());

    let mpath = store.root().join("manifests/snap");
    let manifest = fs::read(&mpath).unwrap();
    let mut flipped = manifest.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 0x01;
    fs::write(&mpath, &flipped).unwrap();
    expect(&|e| matches!(e, Error::Manifest { problem: Problem::Checksum { .. }, .. }), "corrupted manifest");
    fs::write(&mpath, &manifest[..manifest.len() / 2]).unwrap();
    expect(&|e| matches!(e, Error::Manifest { problem: Problem::Truncated { .. }, .. }), "truncated manifest");
    fs::write(&mpath, b"").unwrap();
    expect(&|e| matches!(e, Error::Manifest { problem: Problem::NotAManifest, .. }), "empty manifest");
    // A collection will not sweep with a manifest it cannot read: it cannot know what that
    // manifest needs.
    let before = store.list_chunks().unwrap().len();
    let err = gc::collect(&store, fast()).unwrap_err();
    assert!(matches!(err, Error::Manifest { .. }), "{err}");
    assert_eq!(store.list_chunks().unwrap().len(), before);
    fs::remove_file(&mpath).unwrap();
    let err = restore(&store, "snap", &dest).unwrap_err();
    assert!(matches!(err, Error::ManifestMissing { ref name } if name == "snap"), "{err}");
}

/// A store written before packs (one file per chunk) still restores, lets a second copy
/// send only what changed, and is collected chunk by chunk; new chunks go to packs.
#[test]
fn a_store_of_loose_chunks_restores_copies_and_collects() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("kept"), noise(30, 512 << 10)).unwrap();
    fs::write(src.join("changes"), noise(31, 512 << 10)).unwrap();
    let root = tmp.path().join("store");
    copy_tree(&DirStore::open(&root).unwrap(), "old", &src, &opts()).unwrap();
    packs::unpack(&root);
    assert!(packs::files(&root).is_empty());
    let store = DirStore::open(&root).unwrap();
    let loose = store.list_loose().unwrap().len();
    assert_eq!(loose, all_chunks_of(&store, "old").len());
    assert!(verify(&store, "old", tmp.path()).passed());

    fs::write(src.join("changes"), noise(32, 512 << 10)).unwrap();
    let second = copy_tree(&store, "new", &src, &opts()).unwrap();
    assert!(second.bytes_new < 600 << 10, "the loose chunks of kept were found: {second:?}");
    assert_eq!(packs::files(&root).len(), 1, "new chunks go to a pack");

    let report = gc::delete(&store, "old", fast()).unwrap();
    assert!(report.chunks_removed > 0 && report.packs_removed == 0, "{report:?}");
    let needed: std::collections::HashSet<_> = all_chunks_of(&store, "new").into_iter().collect();
    assert_eq!(store.list_chunks().unwrap().into_iter().collect::<std::collections::HashSet<_>>(), needed);
    assert!(store.list_loose().unwrap().len() < loose);
    assert!(verify(&store, "new", tmp.path()).passed());
    gc::delete(&store, "new", fast()).unwrap();
    assert!(store.list_chunks().unwrap().is_empty());
}

fn all_chunks_of(store: &DirStore, name: &str) -> Vec<berth::archive::Hash> {
    load(store, name).unwrap().chunks().map(|c| c.hash).collect()
}

#[test]
fn deleting_a_copy_removes_only_the_chunks_no_other_copy_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("shared"), noise(9, 1 << 20)).unwrap();
    fs::write(src.join("only-a"), noise(10, 1 << 20)).unwrap();
    let store = DirStore::open(&tmp.path().join("store")).unwrap();
    copy_tree(&store, "a", &src, &opts()).unwrap();
    fs::remove_file(src.join("only-a")).unwrap();
    fs::write(src.join("only-b"), noise(11, 1 << 20)).unwrap();
    copy_tree(&store, "b", &src, &opts()).unwrap();
    let (a, b) = (all_chunks_of(&store, "a"), all_chunks_of(&store, "b"));
    let report = gc::delete(&store, "a", fast()).unwrap();
    assert!(report.manifest_removed);
    let left: std::collections::HashSet<_> = store.list_chunks().unwrap().into_iter().collect();
    assert!(b.iter().all(|h| left.contains(h)), "a chunk copy b needs was deleted");
    assert_eq!(left.len(), b.iter().collect::<std::collections::HashSet<_>>().len());
    assert!(a.iter().any(|h| !left.contains(h)));
    assert_eq!(
        report.chunks_removed as usize,
        a.iter().filter(|h| !b.contains(h)).collect::<std::collections::HashSet<_>>().len()
    );
    assert!(verify(&store, "b", tmp.path()).passed());
    assert!(!gc::delete(&store, "a", fast()).unwrap().manifest_removed, "deleting twice is fine");
    gc::delete(&store, "b", fast()).unwrap();
    assert!(store.list_chunks().unwrap().is_empty());
    for area in [Area::Manifests, Area::Pending, Area::Gc] {
        assert!(store.list_files(area).unwrap().is_empty(), "{area:?}");
    }
}

/// A pack mostly of needed chunks is kept whole (rewriting it would move far more than it
/// frees): its few unneeded chunks stay until more of it is unneeded.
#[test]
fn a_pack_mostly_needed_is_kept_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), noise(12, 4 << 20)).unwrap();
    fs::write(src.join("small"), noise(13, 256 << 10)).unwrap();
    let store = DirStore::open(&tmp.path().join("store")).unwrap();
    copy_tree(&store, "a", &src, &opts()).unwrap();
    fs::remove_file(src.join("small")).unwrap();
    copy_tree(&store, "b", &src, &opts()).unwrap();
    let packs_before = packs::files(store.root());
    let report = gc::delete(&store, "a", fast()).unwrap();
    assert_eq!((report.packs_removed, report.packs_rewritten, report.chunks_removed), (0, 0, 0), "{report:?}");
    assert_eq!(packs::files(store.root()), packs_before);
    assert!(all_chunks_of(&store, "b").len() < store.list_chunks().unwrap().len());
    assert!(verify(&store, "b", tmp.path()).passed());
    gc::delete(&store, "b", fast()).unwrap();
    assert!(packs::files(store.root()).is_empty());
}

#[test]
fn a_collection_waits_for_a_running_copy_and_keeps_what_it_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), noise(12, 1 << 20)).unwrap();
    let store = DirStore::open(&tmp.path().join("store")).unwrap();
    copy_tree(&store, "old", &src, &opts()).unwrap();
    let chunks = store.list_chunks().unwrap().len();
    let manifest = fs::read(store.root().join("manifests/old")).unwrap();
    // A copy is running: it found every chunk of "old" present and will not write them.
    let lease = Lease::acquire(&store, fast()).unwrap();
    // "old" is deleted meanwhile: its chunks are garbage, unless the copy commits.
    store.remove_file(Area::Manifests, "old").unwrap();
    let timing = Timing { stale_after: Duration::from_secs(60), ..fast() };
    std::thread::scope(|s| {
        let gc = s.spawn(|| gc::collect(&store, timing));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!gc.is_finished(), "the collection did not wait for the copy");
        assert_eq!(store.list_chunks().unwrap().len(), chunks);
        // Meanwhile a new copy waits for the collection rather than racing it.
        let late = s.spawn(|| copy_tree(&store, "late", &src, &opts()));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!late.is_finished(), "a copy started while a collection waited");
        lease.commit("new", &manifest).unwrap();
        let report = gc.join().unwrap().unwrap();
        assert_eq!(report.chunks_removed, 0, "{report:?}");
        late.join().unwrap().unwrap();
    });
    assert!(verify(&store, "new", tmp.path()).passed());
    assert!(verify(&store, "late", tmp.path()).passed());
}

#[test]
fn stale_leases_and_markers_are_taken_over_and_a_copy_that_lost_its_lease_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(&tmp.path().join("store")).unwrap();
    // A copy that stopped beating (crashed, or paused past the stale interval).
    let lease = Lease::acquire(&store, fast()).unwrap();
    let id = lease.id().to_string();
    let report = gc::collect(&store, fast()).unwrap();
    assert_eq!(report.leases_taken_over, vec![id.clone()]);
    let err = lease.commit("paused", b"whatever").unwrap_err();
    assert!(matches!(err, Error::LeaseLost { ref copy } if *copy == id), "{err}");
    assert!(store.list_files(Area::Manifests).unwrap().is_empty());
    // A collection that died leaves its marker; copies take it over after the interval.
    let (marker, _) = Marker::acquire(&store, fast()).unwrap();
    std::mem::forget(marker);
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let started = std::time::Instant::now();
    copy_tree(&store, "after", &src, &opts()).unwrap();
    assert!(started.elapsed() >= fast().stale_after, "the copy did not wait for the marker");
    assert!(store.list_files(Area::Gc).unwrap().is_empty());
    // A collection waits for a lease that keeps beating; a copy busy past give_up is Busy.
    let impatient =
        Timing { give_up_after: Duration::from_millis(200), stale_after: Duration::from_secs(60), ..fast() };
    let _live = Lease::acquire(&store, fast()).unwrap();
    let err = gc::collect(&store, impatient).unwrap_err();
    assert!(matches!(err, Error::Busy { ref holders, .. } if holders.len() == 1), "{err}");
}

#[test]
fn copies_and_collections_running_together_never_lose_a_needed_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(&tmp.path().join("store")).unwrap();
    let timing = Timing { stale_after: Duration::from_secs(30), ..fast() };
    let o = CopyOptions { timing, ..CopyOptions::default() };
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    std::thread::scope(|s| {
        for worker in 0..2u64 {
            let (store, tmp, o) = (&store, tmp.path(), &o);
            s.spawn(move || {
                let src = tmp.join(format!("src-{worker}"));
                fs::create_dir(&src).unwrap();
                let mut n = 0u64;
                while std::time::Instant::now() < deadline {
                    // The previous copy is deleted first, so the chunks this copy finds
                    // present are garbage a collection may be sweeping right now.
                    if n > 0 {
                        store.remove_file(Area::Manifests, &format!("w{worker}-{}", n - 1)).unwrap();
                    }
                    fs::write(src.join("a-shared"), noise(100 + worker, 2 << 20)).unwrap();
                    fs::write(src.join("own"), noise(1000 * worker + n, 64 << 10)).unwrap();
                    copy_tree(store, &format!("w{worker}-{n}"), &src, o).unwrap();
                    n += 1;
                }
            });
        }
        s.spawn(|| {
            while std::time::Instant::now() < deadline {
                gc::collect(&store, timing).unwrap();
                // Gaps between collections let copies start, so the next collection
                // begins while they run.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    });
    let names = store.list_files(Area::Manifests).unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    gc::collect(&store, timing).unwrap();
    for name in names {
        let drill = verify(&store, &name, tmp.path());
        assert!(drill.passed(), "{drill}");
    }
}

/// The crash test's child: a copy of `src` as "second" over a store holding "first",
/// then the deletion of "first", killed at the fault point the parent names.
fn crash_child(store: &Path, src: &Path) {
    let store = DirStore::open(store).unwrap();
    let timing = Timing { stale_after: Duration::from_secs(60), ..fast() };
    copy_tree(&store, "second", src, &CopyOptions { timing, ..CopyOptions::default() }).unwrap();
    gc::delete(&store, "first", timing).unwrap();
}

#[test]
fn a_crash_at_any_fault_point_leaves_a_store_the_next_collection_and_copy_recover() {
    if let (Some(store), Some(src)) = (std::env::var_os("ARCHIVE_CRASH_STORE"), std::env::var_os("ARCHIVE_CRASH_SRC")) {
        crash_child(Path::new(&store), Path::new(&src));
        return;
    }
    if !cfg!(feature = "failpoints") {
        println!(
            "SKIPPED: a_crash_at_any_fault_point_leaves_a_store_the_next_collection_and_copy_recover: needs --features failpoints"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let run_child = |store: &Path, points: &str, log: Option<&Path>| {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "a_crash_at_any_fault_point_leaves_a_store_the_next_collection_and_copy_recover"])
            .env("ARCHIVE_CRASH_STORE", store)
            .env("ARCHIVE_CRASH_SRC", &src)
            .env("BERTH_FAILPOINTS", points);
        if let Some(log) = log {
            cmd.env("BERTH_FAILPOINT_LOG", log);
        }
        cmd.output().unwrap()
    };
    let prepare = |dir: &Path| -> DirStore {
        // Most of the first copy's pack is what the second copy changes: deleting the
        // first rewrites that pack with the chunks the second still needs.
        fs::write(src.join("kept"), noise(20, 128 << 10)).unwrap();
        fs::write(src.join("changes"), noise(21, 384 << 10)).unwrap();
        let store = DirStore::open(dir).unwrap();
        copy_tree(&store, "first", &src, &opts()).unwrap();
        fs::write(src.join("changes"), noise(22, 384 << 10)).unwrap();
        store
    };
    // Enumerate the points a clean run passes.
    let log = tmp.path().join("points");
    let clean = tmp.path().join("clean");
    prepare(&clean);
    let out = run_child(&clean, "", Some(&log));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut points: Vec<String> = fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    points.dedup();
    let mut seen = std::collections::HashSet::new();
    points.retain(|p| seen.insert(p.clone()));
    for want in [
        "archive.lease.created",
        "archive.copy.chunk",
        "archive.store.flush.synced",
        "archive.copy.flushed",
        "archive.lease.commit",
        "archive.gc.manifest-removed",
        "archive.gc.marker-created",
        "archive.gc.pack-rewritten",
        "archive.gc.remove-pack",
    ] {
        assert!(points.iter().any(|p| p == want), "fault point {want} not reached: {points:?}");
    }
    let mut cases: Vec<String> = points.iter().map(|p| format!("{p}=kill")).collect();
    cases.push("archive.copy.chunk=kill@7".into());
    for (i, case) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("store-{i}"));
        let store = prepare(&dir);
        let out = run_child(&dir, case, None);
        assert!(!out.status.success(), "{case}: the child was not killed");
        // Recovery: a collection (taking over what the dead process left), then the copy
        // again if it did not commit, then every manifest restores and reads back.
        gc::collect(&store, fast()).unwrap_or_else(|e| panic!("{case}: collection after the crash: {e}"));
        if load(&store, "second").is_err() {
            copy_tree(&store, "second", &src, &opts()).unwrap_or_else(|e| panic!("{case}: copy after the crash: {e}"));
        }
        // A later copy takes over the marker of a collection that died.
        copy_tree(&store, "probe", &src, &opts()).unwrap_or_else(|e| panic!("{case}: copy after the crash: {e}"));
        for name in store.list_files(Area::Manifests).unwrap() {
            let drill = verify(&store, &name, tmp.path());
            assert!(drill.passed(), "{case}: {drill}");
        }
        gc::delete(&store, "first", fast()).unwrap();
        gc::delete(&store, "probe", fast()).unwrap();
        for area in [Area::Pending, Area::Gc] {
            assert!(store.list_files(area).unwrap().is_empty(), "{case}: {area:?} not empty");
        }
        assert!(fs::read_dir(dir.join("uploads")).unwrap().next().is_none(), "{case}: uploads left");
        let needed: std::collections::HashSet<_> = all_chunks_of(&store, "second").into_iter().collect();
        assert_eq!(
            store.list_chunks().unwrap().into_iter().collect::<std::collections::HashSet<_>>(),
            needed,
            "{case}"
        );
    }
}
