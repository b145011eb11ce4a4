//! Server-side tree operations through the userspace client: copy a directory tree
//! (modes, owners, times, symlinks as links, hard links, device nodes, sparse files),
//! remove one, and measure one. All of them walk with an explicit stack, so a hostile
//! deeply nested tree cannot overflow berth's stack, and none follows a symlink: LOOKUP
//! and READDIRPLUS never do, and a symlink is copied or removed as itself.
//!
//! A copy checks its [`Work`] between directory entries and between the chunks of a file,
//! and stops there with [`Error::Stopped`] when asked: the engine runs long copies in the
//! background and cancels them when what they read or write is deleted, or berth stops.
//!
//! Sparse files: what reaches the copy as zeros is never written. Each chunk READ is
//! split into 4 KiB blocks and only runs of blocks holding a non-zero byte are written;
//! the file's size is set at the end, so every skipped range, the tail included, is a
//! hole on the destination whatever the source stored there. What is *not* skipped is
//! the READ of a source hole: NFSv3 has no way to ask where data lies (SEEK and READ_PLUS
//! are NFSv4.2 operations), and nothing in its attributes proves a range is a hole. The
//! bytes a file stores (`used`) do not: a filesystem may keep small files inline in the
//! inode, compress them, or account for written blocks only later (ZFS does so until its
//! transaction group commits), so a file that stores "nothing" may still hold data. A
//! copy therefore reads every byte of a file's apparent size; a very large sparse file
//! takes long to copy, which is why copies run in the background and can be cancelled.
//! NFSv4.2 SEEK is no shortcut to take lightly either: nfs-ganesha 4.3 answers a SEEK
//! made with the anonymous stateid with OK and offset 0 without seeking at all, and turns
//! any failure into NFS4ERR_NXIO, which otherwise means "no data from here on"; a SEEK
//! client has to OPEN each file and must not read NXIO as a hole.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backend::Work;
use crate::nfs::{Attr, Client, Error, Fh, FileType, SetAttr};

/// Result of NFS tree operations.
pub type Result<T> = std::result::Result<T, Error>;

/// How long a copy runs between progress lines in the log.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The unit of zero detection: a block of zeros read is not written, so it stays a hole.
const ZERO_BLOCK: usize = 4096;

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub dirs: u64,
    /// Data bytes written: zero ranges are skipped and stay holes.
    pub bytes: u64,
}

/// Bytes and inodes under a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    pub bytes: u64,
    pub inodes: u64,
}

fn entries(client: &mut Client, dir: &Fh) -> Result<Vec<(Vec<u8>, Fh, Attr)>> {
    let mut out = Vec::new();
    for e in client.readdirplus(dir)? {
        let (fh, attr) = match (e.fh, e.attr) {
            (Some(fh), Some(attr)) => (fh, attr),
            // Servers may omit handles or attributes; LOOKUP fills them in.
            _ => match client.lookup(dir, &e.name)? {
                Some(found) => found,
                None => continue,
            },
        };
        out.push((e.name, fh, attr));
    }
    Ok(out)
}

/// Gives `dst` the owner, mode and times of `attr`. The owner goes first and alone: a
/// change of owner clears the setuid and setgid bits, which the mode then restores.
fn make_faithful(client: &mut Client, dst: &Fh, attr: &Attr) -> Result<()> {
    client.setattr(dst, &SetAttr { uid: Some(attr.uid), gid: Some(attr.gid), ..SetAttr::default() })?;
    client.setattr(
        dst,
        &SetAttr {
            mode: Some(attr.mode & 0o7777),
            atime: Some(attr.atime),
            mtime: Some(attr.mtime),
            ..SetAttr::default()
        },
    )
}

struct Progress<'a> {
    label: &'a str,
    started: Instant,
    last: Instant,
    stats: CopyStats,
    work: &'a Work,
}

impl Progress<'_> {
    /// Logs progress every few seconds; fails with [`Error::Stopped`] once the work was
    /// asked to stop, so every caller is a point where a copy can be abandoned.
    fn tick(&mut self) -> Result<()> {
        if self.work.stopped().is_some() {
            return Err(Error::Stopped);
        }
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            tracing::info!(
                copy = self.label,
                files = self.stats.files,
                dirs = self.stats.dirs,
                bytes = self.stats.bytes,
                elapsed_s = self.started.elapsed().as_secs(),
                "copy in progress"
            );
        }
        Ok(())
    }

    fn file_done(&mut self) {
        self.stats.files += 1;
        self.work.add_file();
    }

    fn bytes_done(&mut self, n: u64) {
        self.stats.bytes += n;
        self.work.add_bytes(n);
    }
}

/// The ranges of `data` made of [`ZERO_BLOCK`]s that hold a non-zero byte, as
/// (start, end) offsets into `data`, adjacent blocks merged.
fn data_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    static ZEROS: [u8; ZERO_BLOCK] = [0; ZERO_BLOCK];
    for (i, block) in data.chunks(ZERO_BLOCK).enumerate() {
        // A slice comparison is one memcmp, fast even in unoptimised builds.
        if block == &ZEROS[..block.len()] {
            continue;
        }
        let (start, end) = (i * ZERO_BLOCK, i * ZERO_BLOCK + block.len());
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

fn write_all(client: &mut Client, dst: &Fh, offset: u64, data: &[u8]) -> Result<()> {
    let mut written = 0usize;
    while written < data.len() {
        let n = client.write(dst, offset + written as u64, &data[written..], false)?;
        if n == 0 {
            return Err(Error::Status { proc: "WRITE", status: crate::nfs::Status(5) });
        }
        written += n as usize;
    }
    Ok(())
}

fn copy_file(client: &mut Client, src: &Fh, dst: &Fh, progress: &mut Progress<'_>) -> Result<()> {
    let chunk = client.io_size;
    let mut offset = 0u64;
    // Every byte is read: NFSv3 cannot tell a hole from data (see the module doc).
    loop {
        progress.tick()?;
        // A test slows copies down here (sleep) to catch one in flight.
        crate::failpoint::hit("nfs.copy.chunk")
            .map_err(|_| Error::Status { proc: "nfs.copy.chunk", status: crate::nfs::Status(5) })?;
        let (data, eof) = client.read(src, offset, chunk)?;
        if data.is_empty() {
            break;
        }
        for (start, end) in data_runs(&data) {
            write_all(client, dst, offset + start as u64, &data[start..end])?;
            progress.bytes_done((end - start) as u64);
        }
        offset += data.len() as u64;
        if eof {
            break;
        }
    }
    // Trailing zero ranges were skipped: setting the size leaves them as holes.
    client.setattr(dst, &SetAttr { size: Some(offset), ..SetAttr::default() })?;
    client.commit(dst)
}

/// Copies directory `src` to a new directory `dst_parent/name` (which must not exist).
/// Directories get their final mode, owner and times after their content is in place,
/// so read-only directories and modification times survive. `label` names the copy in
/// progress lines, logged every few seconds; `work` counts its progress and stops it
/// ([`Error::Stopped`]) between entries and chunks, leaving the partial tree in place.
pub fn copy_tree(
    client: &mut Client,
    src: &Fh,
    dst_parent: &Fh,
    name: &[u8],
    label: &str,
    work: &Work,
) -> Result<CopyStats> {
    let now = Instant::now();
    let mut progress = Progress { label, started: now, last: now, stats: CopyStats::default(), work };
    let root_attr = client.getattr(src)?;
    let (dst_root, _) = client.mkdir(dst_parent, name, 0o700)?;
    // Hard links: the first copy of each multiply-linked file, by source file id.
    let mut linked: HashMap<u64, Fh> = HashMap::new();
    // Directories whose attributes are set once their content is copied (post-order).
    let mut finish: Vec<(Fh, Attr)> = vec![(dst_root.clone(), root_attr)];
    let mut stack: Vec<(Fh, Fh)> = vec![(src.clone(), dst_root)];
    progress.stats.dirs = 1;
    while let Some((from, to)) = stack.pop() {
        for (entry, fh, attr) in entries(client, &from)? {
            progress.tick()?;
            match attr.ftype {
                FileType::Directory => {
                    let (made, _) = client.mkdir(&to, &entry, 0o700)?;
                    finish.push((made.clone(), attr));
                    stack.push((fh, made));
                    progress.stats.dirs += 1;
                }
                FileType::Regular => {
                    if attr.nlink > 1
                        && let Some(first) = linked.get(&attr.fileid)
                    {
                        client.link(first, &to, &entry)?;
                        continue;
                    }
                    let (made, _) = client.create(&to, &entry, 0o600, true)?;
                    copy_file(client, &fh, &made, &mut progress)?;
                    make_faithful(client, &made, &attr)?;
                    if attr.nlink > 1 {
                        linked.insert(attr.fileid, made);
                    }
                    progress.file_done();
                }
                FileType::Symlink => {
                    let target = client.readlink(&fh)?;
                    let (made, _) = client.symlink(&to, &entry, &target)?;
                    // A link's own owner and times; servers that refuse them keep defaults.
                    let owner = SetAttr { uid: Some(attr.uid), gid: Some(attr.gid), ..SetAttr::default() };
                    if let Err(e) = client.setattr(&made, &owner) {
                        tracing::debug!(error = %e, "server refused to set a symlink's owner");
                    }
                    let times = SetAttr { atime: Some(attr.atime), mtime: Some(attr.mtime), ..SetAttr::default() };
                    if let Err(e) = client.setattr(&made, &times) {
                        tracing::debug!(error = %e, "server refused to set a symlink's times");
                    }
                    progress.file_done();
                }
                kind @ (FileType::Block | FileType::Char | FileType::Socket | FileType::Fifo) => {
                    let (made, _) = client.mknod(&to, &entry, kind, attr.mode & 0o7777, attr.rdev)?;
                    make_faithful(client, &made, &attr)?;
                    progress.file_done();
                }
            }
        }
    }
    // Children before parents, so setting a parent's mtime is the last change to it.
    for (dir, attr) in finish.iter().rev() {
        make_faithful(client, dir, attr)?;
    }
    progress.tick()?;
    let stats = progress.stats;
    if progress.started.elapsed() >= PROGRESS_EVERY {
        tracing::info!(copy = label, files = stats.files, dirs = stats.dirs, bytes = stats.bytes, "copy finished");
    }
    Ok(stats)
}

/// Removes `parent/name` and everything below it; absent is success. Symlinks are removed
/// as links, never followed.
pub fn remove_tree(client: &mut Client, parent: &Fh, name: &[u8]) -> Result<()> {
    let Some((top, attr)) = client.lookup(parent, name)? else {
        return Ok(());
    };
    if attr.ftype != FileType::Directory {
        return client.remove(parent, name);
    }
    // Each frame: a directory whose non-directory entries are gone and whose
    // subdirectories are pushed above it; it is removed when it comes back up empty.
    let mut stack: Vec<(Fh, Fh, Vec<u8>, bool)> = vec![(parent.clone(), top, name.to_vec(), false)];
    while let Some((dir_parent, dir, dir_name, expanded)) = stack.pop() {
        if expanded {
            match client.rmdir(&dir_parent, &dir_name) {
                Ok(()) => {}
                Err(e) if e.is_noent() => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        stack.push((dir_parent, dir.clone(), dir_name, true));
        for (entry, fh, attr) in entries(client, &dir)? {
            if attr.ftype == FileType::Directory {
                stack.push((dir.clone(), fh, entry, false));
            } else {
                match client.remove(&dir, &entry) {
                    Ok(()) => {}
                    Err(e) if e.is_noent() => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Bytes (as stored) and inodes under `dir`, counting `dir` itself.
pub fn usage(client: &mut Client, dir: &Fh) -> Result<TreeUsage> {
    let mut total = TreeUsage { bytes: 0, inodes: 1 };
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for (_, fh, attr) in entries(client, &d)? {
            total.inodes += 1;
            total.bytes += attr.used;
            if attr.ftype == FileType::Directory {
                stack.push(fh);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blocks_holding_data_are_written() {
        let mut data = vec![0u8; 5 * ZERO_BLOCK + 100];
        assert_eq!(data_runs(&data), vec![]);
        data[0] = 1;
        data[ZERO_BLOCK + 7] = 1;
        data[3 * ZERO_BLOCK] = 1;
        data[5 * ZERO_BLOCK + 99] = 1;
        assert_eq!(
            data_runs(&data),
            vec![(0, 2 * ZERO_BLOCK), (3 * ZERO_BLOCK, 4 * ZERO_BLOCK), (5 * ZERO_BLOCK, 5 * ZERO_BLOCK + 100)]
        );
    }
}
