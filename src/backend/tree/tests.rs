use super::meta::Xt;
use super::walk::Stack;
use super::*;
use std::fs::{self, FileTimes, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use nix::fcntl::AtFlags;
use nix::sys::stat::{SFlag, mkdirat};
use nix::unistd::linkat;

fn is_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        println!("SKIPPED: {test}: not root");
    }
    root
}
fn xt(p: &Path) -> Xt<'static> {
    Xt::At(CString::new(p.as_os_str().as_bytes()).unwrap())
}
fn copy(src: &Path, parent: &Path, name: &str, reflink: Reflink) -> CopyStats {
    copy_tree(src, parent, name, reflink, &mut |_| {}).expect("copy_tree")
}
fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, Permissions::from_mode(mode)).unwrap();
}

/// Unmounts on drop, so a failing test never leaves a mount behind.
struct Mount(PathBuf);
impl Mount {
    fn new(opts: &[&str], src: &Path, target: &Path) -> Result<Mount, String> {
        match Command::new("mount").args(opts).arg(src).arg(target).output() {
            Ok(o) if o.status.success() => Ok(Mount(target.to_path_buf())),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A fresh filesystem made by `mkfs` (the command and its options) on an image file of
/// `bytes`, loop-mounted until dropped; `None`, the test named SKIPPED, where that
/// cannot be done here.
struct LoopFs {
    _mount: Mount, // dropped first: unmounted before the directory and image go
    dir: tempfile::TempDir,
    _img: tempfile::NamedTempFile,
}
impl LoopFs {
    fn new(test: &str, mkfs: &[&str], bytes: u64) -> Option<LoopFs> {
        if !is_root(test) {
            return None;
        }
        let img = tempfile::Builder::new().suffix(".img").tempfile_in("/tmp").unwrap();
        img.as_file().set_len(bytes).unwrap();
        match Command::new(mkfs[0]).args(&mkfs[1..]).arg(img.path()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                println!("SKIPPED: {test}: {}: {}", mkfs[0], String::from_utf8_lossy(&o.stderr));
                return None;
            }
            Err(e) => {
                println!("SKIPPED: {test}: {} unavailable: {e}", mkfs[0]);
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        match Mount::new(&["-o", "loop"], img.path(), dir.path()) {
            Ok(mount) => Some(LoopFs { _mount: mount, dir, _img: img }),
            Err(e) => {
                println!("SKIPPED: {test}: loop mount failed: {e}");
                None
            }
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[test]
fn an_entry_that_vanishes_under_the_copy_fails_it_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..50 {
        fs::write(src.join(format!("f{i:02}")), [1u8; 100]).unwrap();
    }
    // The first file copied removes every other, as a concurrent delete would.
    let src2 = src.clone();
    let err = copy_tree(&src, t.path(), "dst", Reflink::Auto, &mut |_| {
        for e in fs::read_dir(&src2).unwrap() {
            let _ = fs::remove_file(e.unwrap().path());
        }
    })
    .expect_err("a copy missing part of its source");
    assert!(err.to_string().contains("vanished from the source"), "{err}");
    assert!(!t.path().join("dst").exists() && !t.path().join(".dst.partial").exists());
}

#[test]
fn copy_preserves_tree() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::write(src.join("a/b/c/deep.txt"), "deep").unwrap();
    let f = File::create(src.join("sparse")).unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(&[7u8; 4096], 1 << 29).unwrap();
    symlink("/etc/passwd", src.join("passwd")).unwrap();
    symlink("../../outside", src.join("a/b/out")).unwrap();
    fs::write(src.join("h1"), "linked").unwrap();
    fs::hard_link(src.join("h1"), src.join("a/h2")).unwrap();
    nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    fs::write(src.join("x"), "x").unwrap();
    xt(&src.join("x")).set(c"user.berth", b"1").unwrap();
    fs::write(src.join("suid"), "s").unwrap();
    chmod(&src.join("suid"), 0o4755);
    fs::create_dir(src.join("sticky")).unwrap();
    fs::write(src.join("sticky/old"), "old").unwrap();
    chmod(&src.join("sticky"), 0o1777);
    let (secs, nanos) = (978_307_200 + 4321, 123_456_789); // 2001-01-01T01:12:01.123456789Z
    let t2001 = UNIX_EPOCH + Duration::new(secs as u64, nanos as u32);
    for p in ["sticky/old", "sticky"] {
        let times = FileTimes::new().set_accessed(t2001).set_modified(t2001);
        File::open(src.join(p)).unwrap().set_times(times).unwrap();
    }
    fs::create_dir_all(t.path().join(".dst.partial/junk")).unwrap(); // a crashed attempt

    let mut last = 0;
    let st = copy_tree(&src, t.path(), "dst", Reflink::Auto, &mut |b| last = b).unwrap();
    assert_eq!((st.dirs, st.symlinks, st.reflinked, st.skipped_mounts), (5, 2, 0, 0));
    assert_eq!((st.files, st.bytes, last), (8, 4 + 4096 + 6 + 1 + 1 + 3, st.bytes));
    assert!(!t.path().join(".dst.partial").exists());
    assert_eq!(fs::read(dst.join("a/b/c/deep.txt")).unwrap(), b"deep");
    let sparse = fs::metadata(dst.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 1 << 30);
    assert!(sparse.blocks() * 512 <= 64 << 10, "sparse copy uses {}", sparse.blocks() * 512);
    let mut buf = [0u8; 4096];
    File::open(dst.join("sparse")).unwrap().read_exact_at(&mut buf, 1 << 29).unwrap();
    assert_eq!(buf, [7u8; 4096]);
    assert_eq!(fs::read_link(dst.join("passwd")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(fs::read_link(dst.join("a/b/out")).unwrap(), Path::new("../../outside"));
    let h1 = fs::metadata(dst.join("h1")).unwrap();
    assert_eq!((h1.ino(), h1.nlink()), (fs::metadata(dst.join("a/h2")).unwrap().ino(), 2));
    let fifo = fs::symlink_metadata(dst.join("fifo")).unwrap().mode();
    assert_eq!(fifo & 0o17777, libc::S_IFIFO | 0o640);
    assert_eq!(xt(&dst.join("x")).read(Some(c"user.berth")).unwrap(), b"1");
    assert_eq!(fs::metadata(dst.join("suid")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(fs::metadata(dst.join("sticky")).unwrap().mode() & 0o7777, 0o1777);
    for p in ["sticky/old", "sticky"] {
        let m = fs::metadata(dst.join(p)).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec(), m.atime(), m.atime_nsec()), (secs, nanos, secs, nanos));
    }

    let kind = |r: io::Result<CopyStats>| r.unwrap_err().kind();
    let again = copy_tree(&src, t.path(), "dst", Reflink::Auto, &mut |_| {});
    assert_eq!(kind(again), io::ErrorKind::AlreadyExists);
    for bad in ["", ".", "..", "a/b", "a\0b"] {
        let r = copy_tree(&src, t.path(), bad, Reflink::Auto, &mut |_| {});
        assert_eq!(kind(r), io::ErrorKind::InvalidInput);
        assert_eq!(remove_tree(t.path(), bad).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
    remove_tree(t.path(), "dst").unwrap();
    assert!(!dst.exists() && src.join("sparse").exists() && Path::new("/etc/passwd").exists());
    assert_eq!(copy(&src, &src, "self", Reflink::Never).dirs, 5); // copy into itself
    assert!(src.join("self/sticky").exists() && !src.join("self/self").exists());
}

#[test]
fn copy_preserves_owner_and_devices() {
    if !is_root("copy_preserves_owner_and_devices") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "f").unwrap();
    symlink("/etc/shadow", src.join("l")).unwrap();
    let null = libc::makedev(1, 3);
    nix::sys::stat::mknod(&src.join("null"), SFlag::S_IFCHR, Mode::empty(), null).unwrap();
    for p in ["f", "l", "null", ""] {
        lchown(src.join(p), Some(1234), Some(5678)).unwrap();
    }
    chmod(&src.join("f"), 0o4755);
    chmod(&src.join("null"), 0o620);
    let st = copy(&src, t.path(), "dst", Reflink::Never);
    assert_eq!((st.files, st.symlinks, st.dirs), (2, 1, 1));
    let dst = t.path().join("dst");
    let want = [("f", libc::S_IFREG | 0o4755), ("l", libc::S_IFLNK | 0o777), ("null", libc::S_IFCHR | 0o620)];
    for (p, mode) in want {
        let m = fs::symlink_metadata(dst.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode()), (1234, 5678, mode), "{p}");
    }
    assert_eq!(fs::symlink_metadata(dst.join("null")).unwrap().rdev(), null);
    assert_eq!(fs::metadata(&dst).unwrap().uid(), 1234);
}

#[test]
fn big_directories_are_streamed_and_resumed_after_their_descriptor_was_closed() {
    // The root holds 3,000 files (several getdents batches) around a chain of
    // directories deeper than MAX_OPEN, so the root's descriptor is closed mid-walk
    // and every walk must resume the root's listing where it stopped.
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    for i in 0..1500 {
        fs::write(root.join(format!("a-file-with-a-longish-name-{i:05}")), b"x").unwrap();
    }
    let chain: PathBuf = (0..MAX_OPEN + 8).map(|i| format!("d{i}")).collect();
    fs::create_dir_all(root.join(&chain)).unwrap();
    fs::write(root.join(&chain).join("deepest"), b"y").unwrap();
    for i in 1500..3000 {
        fs::write(root.join(format!("a-file-with-a-longish-name-{i:05}")), b"x").unwrap();
    }
    let inodes = 1 + 3000 + (MAX_OPEN as u64 + 8) + 1;
    assert_eq!(usage(&root).unwrap().inodes, inodes);
    copy(&root, t.path(), "copy", Reflink::Never);
    assert_eq!(usage(&t.path().join("copy")).unwrap().inodes, inodes);
    assert_eq!(fs::read(t.path().join("copy").join(&chain).join("deepest")).unwrap(), b"y");
    assert_eq!(fs::read_dir(t.path().join("copy")).unwrap().count(), 3001);
    remove_tree(t.path(), "copy").unwrap();
    assert!(!t.path().join("copy").exists());
}

#[test]
fn a_partial_copy_of_this_boot_is_resumed_and_one_of_an_earlier_boot_is_not() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for name in ["done", "half", "sub/done", "missing"] {
        fs::write(src.join(name), name.repeat(1000)).unwrap();
    }
    // What a process killed mid-copy leaves: finished files (size and time of the
    // source, written last), one half-written, a file the source no longer has.
    let partial = t.path().join(".dst.partial");
    fs::create_dir_all(partial.join("sub")).unwrap();
    let leave = |name: &str, content: &str, finished: bool| {
        fs::write(partial.join(name), content).unwrap();
        if finished {
            let mtime = fs::metadata(src.join(name)).unwrap().modified().unwrap();
            let f = fs::File::options().write(true).open(partial.join(name)).unwrap();
            f.set_times(FileTimes::new().set_modified(mtime)).unwrap();
        }
    };
    // Same size and time as the source, different bytes: kept only if not copied again.
    leave("done", &"K".repeat(4000), true);
    leave("sub/done", &"K".repeat(8000), true);
    leave("half", "half", false);
    leave("gone", "stale", false);
    fs::write(t.path().join(".dst.partial.boot"), boot_id().unwrap()).unwrap();
    let stats = copy(&src, t.path(), "dst", Reflink::Never);
    let dst = t.path().join("dst");
    assert_eq!(fs::read_to_string(dst.join("done")).unwrap(), "K".repeat(4000), "kept, not copied again");
    assert_eq!(fs::read_to_string(dst.join("sub/done")).unwrap(), "K".repeat(8000));
    assert_eq!(fs::read_to_string(dst.join("half")).unwrap(), "half".repeat(1000), "copied again");
    assert_eq!(fs::read_to_string(dst.join("missing")).unwrap(), "missing".repeat(1000));
    assert!(!dst.join("gone").exists(), "what the source lacks is removed");
    assert_eq!(stats.files, 4);
    assert!(!t.path().join(".dst.partial.boot").exists() && !partial.exists());

    // Left in an earlier boot: its data may never have reached the disk. Start over.
    fs::create_dir_all(&partial).unwrap();
    leave("done", &"K".repeat(4000), true);
    fs::write(t.path().join(".dst.partial.boot"), "an-earlier-boot").unwrap();
    copy(&src, t.path(), "again", Reflink::Never);
    copy(&src, t.path(), "dst2", Reflink::Never);
    assert!(partial.exists(), "another copy's partial directory is left alone");
    fs::rename(&partial, t.path().join(".dst3.partial")).unwrap();
    fs::rename(t.path().join(".dst.partial.boot"), t.path().join(".dst3.partial.boot")).unwrap();
    copy(&src, t.path(), "dst3", Reflink::Never);
    assert_eq!(fs::read_to_string(t.path().join("dst3/done")).unwrap(), "done".repeat(1000), "copied again");
}

#[test]
fn walk_detects_directory_moved_out_of_tree() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir_all(root.join((0..40).map(|i| format!("l{i}")).collect::<PathBuf>())).unwrap();
    fs::create_dir(t.path().join("elsewhere")).unwrap();
    let mut s = Stack::default();
    let fd = open(&root, DIR, Mode::empty()).unwrap();
    let st = fstat(fd.as_fd()).unwrap();
    s.push(fd, st, CString::default());
    for i in 0..40 {
        let fd = open_dir(s.fd().unwrap(), &CString::new(format!("l{i}")).unwrap()).unwrap();
        let st = fstat(fd.as_fd()).unwrap();
        s.push(fd, st, CString::default());
    }
    assert!(s.0[2].fd.is_none() && s.0[40].fd.is_some());
    fs::rename(root.join("l0/l1/l2"), t.path().join("elsewhere/l2")).unwrap();
    let e = (0..40).find_map(|_| s.pop().err()).expect("the move must be detected");
    assert!(e.to_string().contains("moved"), "{e}");
}

#[test]
fn remove_tree_never_follows_symlinks() {
    let t = tempfile::tempdir().unwrap();
    let (vol, sentinel) = (t.path().join("vol"), t.path().join("sentinel"));
    fs::create_dir_all(sentinel.join("inner")).unwrap();
    fs::write(sentinel.join("keep.txt"), "keep").unwrap();
    fs::create_dir_all(vol.join("a/b/deeper")).unwrap();
    fs::write(vol.join("a/b/deeper/f"), "f").unwrap();
    fs::write(vol.join("a/g"), "g").unwrap();
    fs::remove_dir_all(vol.join("a/b")).unwrap();
    symlink(&sentinel, vol.join("a/b")).unwrap(); // the subdirectory swapped for a symlink
    symlink("../sentinel", vol.join("rel")).unwrap();
    symlink(&sentinel, t.path().join("lnk")).unwrap();
    remove_tree(t.path(), "vol").unwrap();
    remove_tree(t.path(), "lnk").unwrap();
    assert!(!vol.exists() && fs::symlink_metadata(t.path().join("lnk")).is_err());
    assert!(sentinel.join("keep.txt").exists() && sentinel.join("inner").is_dir());
    remove_tree(t.path(), "vol").unwrap();
    remove_tree(&t.path().join("missing"), "x").unwrap();
}

#[test]
fn usage_counts_links_once_and_skips_mounts() {
    let t = tempfile::tempdir().unwrap();
    let (tree, outside) = (t.path().join("u"), t.path().join("outside"));
    fs::create_dir_all(tree.join("mnt")).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("big"), vec![1u8; 1 << 20]).unwrap();
    fs::write(tree.join("f"), vec![1u8; 64 << 10]).unwrap();
    fs::hard_link(tree.join("f"), tree.join("h")).unwrap();
    let blocks = |p: &Path| fs::symlink_metadata(p).unwrap().blocks() * 512;
    let (u0, mnt) = (usage(&tree).unwrap(), blocks(&tree.join("mnt")));
    assert_eq!(u0, Usage { bytes: blocks(&tree) + blocks(&tree.join("f")) + mnt, inodes: 3 });
    if !is_root("usage_counts_links_once_and_skips_mounts (bind mount part)") {
        return;
    }
    let m = Mount::new(&["--bind"], &outside, &tree.join("mnt")).expect("bind mount");
    assert!(tree.join("mnt/big").exists());
    assert_eq!(usage(&tree).unwrap(), Usage { bytes: u0.bytes - mnt, inodes: 2 });
    let st = copy(&tree, t.path(), "copy", Reflink::Auto);
    assert_eq!((st.skipped_mounts, st.files, st.bytes), (1, 2, 64 << 10));
    assert!(!t.path().join("copy/mnt").exists());
    let busy = |name| remove_tree(t.path(), name).unwrap_err().kind();
    assert_eq!(busy("u"), io::ErrorKind::ResourceBusy);
    assert!(outside.join("big").exists() && !tree.join("f").exists());
    let m2 = Mount::new(&["--bind"], &outside, &t.path().join("copy")).expect("bind mount");
    assert_eq!(busy("copy"), io::ErrorKind::ResourceBusy); // a mount point itself
    drop((m, m2));
    remove_tree(t.path(), "u").unwrap();
    remove_tree(t.path(), "copy").unwrap();
    assert!(!tree.exists() && outside.join("big").exists());
}

#[test]
fn deep_chain_copies_and_removes() {
    const DEPTH: u64 = 10_000;
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("deep")).unwrap();
    let mut cur = open(&t.path().join("deep"), DIR, Mode::empty()).unwrap();
    for _ in 0..DEPTH {
        mkdirat(&cur, c"d", Mode::S_IRWXU).unwrap();
        cur = open_dir(cur.as_fd(), c"d").unwrap();
    }
    let fl = OFlag::O_CREAT | OFlag::O_WRONLY;
    File::from(openat(&cur, c"leaf", fl, Mode::S_IRUSR).unwrap()).write_all_at(b"leaf", 0).unwrap();
    linkat(&cur, c"leaf", &cur, c"leaf2", AtFlags::empty()).unwrap(); // linked via a >4 KiB path
    let st = copy(&t.path().join("deep"), t.path(), "deep2", Reflink::Never);
    assert_eq!((st.dirs, st.files, st.bytes), (DEPTH + 1, 2, 4));
    assert_eq!(usage(&t.path().join("deep2")).unwrap().inodes, DEPTH + 2);
    let mut cur = open(&t.path().join("deep2"), DIR, Mode::empty()).unwrap();
    for _ in 0..DEPTH {
        cur = open_dir(cur.as_fd(), c"d").unwrap();
    }
    let (l1, l2) = (statx(cur.as_fd(), c"leaf", 0).unwrap(), statx(cur.as_fd(), c"leaf2", 0).unwrap());
    assert_eq!((l1.stx_size, l1.stx_nlink, l1.stx_ino), (4, 2, l2.stx_ino));
    remove_tree(t.path(), "deep").unwrap();
    remove_tree(t.path(), "deep2").unwrap();
    assert!(fs::read_dir(t.path()).unwrap().next().is_none());
}

#[test]
fn reflink_on_xfs() {
    let Some(dir) = LoopFs::new("reflink_on_xfs", &["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], 512 << 20) else {
        return;
    };
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(src.join("big"), &data).unwrap();
    fs::write(src.join("sub/small"), "small").unwrap();
    let st = copy(&src, dir.path(), "clone", Reflink::Auto);
    assert_eq!((st.reflinked, st.files, st.bytes), (2, 2, (1 << 20) + 5));
    let st = copy(&src, dir.path(), "full", Reflink::Never);
    assert_eq!((st.reflinked, st.bytes), (0, (1 << 20) + 5));
    for name in ["clone", "full"] {
        assert_eq!(fs::read(dir.path().join(name).join("big")).unwrap(), data);
        assert_eq!(fs::read(dir.path().join(name).join("sub/small")).unwrap(), b"small");
    }
}

/// Paths (relative to `root`) of what [`for_each_inode`] hands its operation.
fn inodes_of(root: &Path) -> Vec<PathBuf> {
    let mut seen = Vec::new();
    for_each_inode(root, &mut |fd| {
        let at = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        seen.push(at.strip_prefix(root).map_err(io::Error::other)?.to_path_buf());
        Ok(())
    })
    .expect("for_each_inode");
    seen.sort();
    seen
}

#[test]
fn for_each_inode_reaches_dirs_and_regular_files_only() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("a/b/f"), b"x").unwrap();
    fs::write(root.join("g"), b"x").unwrap();
    symlink("/etc", root.join("a/link")).unwrap();
    symlink("/etc/passwd", root.join("a/file-link")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    let want: Vec<PathBuf> = ["", "a", "a/b", "a/b/f", "g"].iter().map(PathBuf::from).collect();
    assert_eq!(inodes_of(&root), want);
    symlink(&root, t.path().join("link")).unwrap();
    let e = for_each_inode(&t.path().join("link"), &mut |_| Ok(())).unwrap_err();
    assert!(is(&e, &[libc::ELOOP, libc::ENOTDIR]), "a symlinked root is refused: {e}");
}

#[test]
fn for_each_inode_holds_few_descriptors_however_wide_or_deep_the_tree() {
    // 2,000 sibling directories (a walker that opens every child before entering one
    // holds them all) and a chain deeper than MAX_OPEN (ancestors closed and reopened).
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    for i in 0..2000 {
        fs::create_dir_all(root.join(format!("wide{i:04}"))).unwrap();
        fs::write(root.join(format!("wide{i:04}/f")), b"x").unwrap();
    }
    let chain: PathBuf = (0..MAX_OPEN * 3).map(|i| format!("d{i}")).collect();
    fs::create_dir_all(root.join(&chain)).unwrap();
    fs::write(root.join(&chain).join("deepest"), b"y").unwrap();
    let open_fds = || fs::read_dir("/proc/self/fd").unwrap().count();
    let before = open_fds();
    let (mut most, mut count) = (0, 0);
    for_each_inode(&root, &mut |_| {
        most = most.max(open_fds());
        count += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(count, 1 + 2000 * 2 + MAX_OPEN * 3 + 1);
    // Other tests of this process open descriptors too: the margin is for them.
    assert!(most.saturating_sub(before) < MAX_OPEN + 200, "{} descriptors held", most - before);
}

#[test]
fn for_each_inode_reaches_entries_whose_listing_gives_no_type() {
    // ext4 without the filetype feature lists every entry as DT_UNKNOWN.
    let test = "for_each_inode_reaches_entries_whose_listing_gives_no_type";
    let Some(dir) = LoopFs::new(test, &["mkfs.ext4", "-q", "-F", "-O", "^filetype"], 64 << 20) else {
        return;
    };
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("sub/f"), b"x").unwrap();
    fs::write(root.join("g"), b"x").unwrap();
    symlink("/etc", root.join("link")).unwrap();
    let listed = nix::dir::Dir::open(&root, OFlag::O_RDONLY, Mode::empty()).unwrap();
    let types: Vec<_> = listed.into_iter().map(|e| e.unwrap().file_type()).collect();
    assert!(types.iter().all(Option::is_none), "the listing gives no types: {types:?}");
    let want: Vec<PathBuf> = ["", "g", "sub", "sub/f"].iter().map(PathBuf::from).collect();
    assert_eq!(inodes_of(&root), want);
}
