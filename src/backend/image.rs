//! Image files of block volumes and of their snapshots, made whole: written under a
//! temporary name and installed by [`crate::durable::replace`], so a crash never leaves a
//! half-written image under its final name. Block pools and device pools both keep their
//! snapshots as such files.

use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{Error, Result, tree};

/// Creates `dir/name` as a whole file: written under a temporary name, synced, renamed
/// into place, directory synced. `fill` writes the content into the open file.
pub(super) fn write_whole_file(dir: &Path, name: &str, fill: impl FnOnce(&File) -> std::io::Result<()>) -> Result<()> {
    write_whole_file_from(dir, name, false, |file, _| fill(file))
}

/// [`write_whole_file`] that may continue what an interrupted process wrote: with
/// `resumable`, the boot is recorded beside the temporary file, and a later call in the
/// same boot (the data written then is in the page cache) hands `fill` the length already
/// written, rounded down to a MiB; otherwise `fill` starts at 0 on an empty file. Only for
/// content that cannot change between the attempts (a copy of a snapshot's image).
pub(super) fn write_whole_file_from(
    dir: &Path,
    name: &str,
    resumable: bool,
    fill: impl FnOnce(&File, u64) -> std::io::Result<()>,
) -> Result<()> {
    let partial = dir.join(format!(".{name}.partial"));
    let boot_file = dir.join(format!(".{name}.partial.boot"));
    let target = dir.join(name);
    super::failpoint("block.image.create", &target)?;
    let boot = if resumable { Some(tree::boot_id().map_err(Error::io("read the boot ID", &target))?) } else { None };
    let same_boot = boot.as_ref().is_some_and(|boot| fs::read_to_string(&boot_file).is_ok_and(|b| &b == boot));
    let open = |create: bool| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&partial)
    };
    let (file, from) = if let Some(file) = same_boot.then(|| open(false)).and_then(std::result::Result::ok) {
        let from = file.metadata().map_or(0, |m| m.len() & !((1 << 20) - 1));
        tracing::info!(file = %target.display(), from, "resuming the copy an interrupted process left");
        (file, from)
    } else {
        let _ = fs::remove_file(&partial);
        let file = open(true).map_err(Error::io("create image", &partial))?;
        if let Some(boot) = &boot {
            fs::write(&boot_file, boot).map_err(Error::io("record the boot", &boot_file))?;
        }
        (file, 0)
    };
    if let Err(e) = fill(&file, from) {
        drop(file);
        let _ = fs::remove_file(&partial);
        let _ = fs::remove_file(&boot_file);
        return Err(Error::io("write image", &target)(e));
    }
    crate::durable::replace(file, &partial, &target, None).map_err(Error::io("install image", &target))?;
    let _ = fs::remove_file(&boot_file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::backend::tree::Reflink;

    /// Copies `src` into `dir/name` as a restore from a snapshot's image does.
    fn restore(dir: &Path, name: &str, src: &Path, resumable: bool) {
        let src = File::open(src).expect("source");
        write_whole_file_from(dir, name, resumable, |dst, from| {
            tree::copy_file_data_from(src.as_fd(), dst.as_fd(), Reflink::Never, from, &mut |_| {}).map(|_| ())
        })
        .expect("copy");
    }

    /// What a process killed 3.5 MiB into copying `name` leaves, its bytes made
    /// different from the source's so that kept bytes show; the boot recorded is `boot`.
    fn interrupted(dir: &Path, name: &str, boot: &str) {
        fs::write(dir.join(format!(".{name}.partial")), vec![b'K'; (3 << 20) + (1 << 19)]).expect("partial");
        fs::write(dir.join(format!(".{name}.partial.boot")), boot).expect("boot");
    }

    #[test]
    fn an_image_copy_interrupted_in_this_boot_resumes_at_its_last_whole_mib() {
        let t = tempfile::tempdir().expect("tempdir");
        let src = t.path().join("snapshot.img");
        fs::write(&src, vec![b'S'; 8 << 20]).expect("source");
        let boot = tree::boot_id().expect("boot id");

        interrupted(t.path(), "a.img", &boot);
        restore(t.path(), "a.img", &src, true);
        let data = fs::read(t.path().join("a.img")).expect("read");
        assert_eq!(data.len(), 8 << 20);
        assert!(data[..3 << 20].iter().all(|&b| b == b'K'), "kept up to the last whole MiB");
        assert!(data[3 << 20..].iter().all(|&b| b == b'S'), "copied from there");
        assert!(!t.path().join(".a.img.partial.boot").exists() && !t.path().join(".a.img.partial").exists());

        // From an earlier boot the data may never have reached the disk; a copy that is
        // not resumable (its source may have changed) starts over in any boot.
        interrupted(t.path(), "b.img", "an-earlier-boot");
        restore(t.path(), "b.img", &src, true);
        interrupted(t.path(), "c.img", &boot);
        restore(t.path(), "c.img", &src, false);
        for name in ["b.img", "c.img"] {
            let data = fs::read(t.path().join(name)).expect("read");
            assert!(data.len() == 8 << 20 && data.iter().all(|&b| b == b'S'), "{name} copied whole");
        }
    }
}
