//! Block pools: each volume a sparse image file `<path>/volumes/<key>.img` attached
//! through a loop device on the node, formatted (ext4, xfs, btrfs) and mounted, or handed
//! to the pod as a raw block device. Snapshots are reflink clones of the image where the
//! pool's filesystem can clone (xfs with reflink, btrfs), taken with the volume's
//! filesystem frozen, else sparse copies.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::crypt::{self, CryptLayer};
use super::image::{write_whole_file, write_whole_file_from};
use super::stack::{self, Stack};
use super::tree::{self, Reflink};
use super::{
    Capability, Capacity, Condition, Controller, Error, Node, PoolInfo, PoolKind, Result, Source, StageSource, Usage,
    Work, blockvol,
};
use crate::config::BlockPool as BlockPoolConfig;
use crate::crypt::{Key, Scheme};
use crate::mount::mountinfo::MountEntry;
use crate::mount::{LOOP_TAG_PREFIX, LoopDevice, Syscall};
use crate::progress::Progress;
use crate::state::{AccessKind, Enforced, Layer, SnapshotMethod, SnapshotRecord, VolumeRecord};

const VOLUMES: &str = "volumes";
const SNAPSHOTS: &str = "snapshots";
/// A block pool.
pub struct BlockPool {
    info: PoolInfo,
    root: PathBuf,
    preallocate: bool,
    sys: Arc<dyn Syscall>,
    freezes: blockvol::Freezes,
}

/// Allocates `bytes` of `file` up front so the pool cannot be overcommitted.
pub(super) fn preallocate(file: &File, bytes: u64) -> std::io::Result<()> {
    crate::failpoint::hit("block.fallocate")?;
    let len = i64::try_from(bytes).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    nix::fcntl::fallocate(file.as_fd(), nix::fcntl::FallocateFlags::empty(), 0, len).map_err(std::io::Error::from)
}

impl BlockPool {
    /// Opens the pool, making its directories; `freezes` records the freezes of its copies (see
    /// [`blockvol::Freezes`]).
    pub fn open(config: &BlockPoolConfig, sys: Arc<dyn Syscall>, freezes: blockvol::Freezes) -> Result<BlockPool> {
        let root = config.path.clone();
        for dir in [root.clone(), root.join(VOLUMES), root.join(SNAPSHOTS)] {
            fs::create_dir_all(&dir).map_err(Error::io("create pool directory", &dir))?;
        }
        tracing::info!(pool = %config.name, path = %root.display(), preallocate = config.preallocate, "block pool ready");
        Ok(BlockPool {
            info: PoolInfo::devices(&config.name, PoolKind::Block),
            root,
            preallocate: config.preallocate,
            sys,
            freezes,
        })
    }

    /// The snapshots directory of the block pool `config` describes, where device pools
    /// may keep their snapshots too.
    #[must_use]
    pub fn snapshots_dir(config: &BlockPoolConfig) -> PathBuf {
        config.path.join(SNAPSHOTS)
    }

    fn image(&self, key: &str) -> PathBuf {
        self.root.join(VOLUMES).join(format!("{key}.img"))
    }

    fn snapshot_image(&self, key: &str) -> PathBuf {
        self.root.join(SNAPSHOTS).join(format!("{key}.img"))
    }

    fn tag(key: &str) -> String {
        format!("{LOOP_TAG_PREFIX}{key}")
    }

    /// The loop device berth attached for this volume, if any. A loop device on the same
    /// file that berth did not tag is never used or detached.
    fn attached(&self, key: &str) -> Result<Option<LoopDevice>> {
        let image = self.image(key);
        if !image.exists() {
            return Ok(None);
        }
        let tag = Self::tag(key);
        Ok(self
            .sys
            .loop_find(&image)
            .map_err(Error::io("find loop device", &image))?
            .into_iter()
            .find(|l| l.tag == tag))
    }

    /// Fails when a loop device someone else attached to the volume's image has a
    /// filesystem mounted (a backup job, an operator): a second mount of one filesystem
    /// through two devices corrupts it.
    fn refuse_foreign_mount(&self, volume: &VolumeRecord, image: &Path) -> Result<()> {
        let tag = Self::tag(&volume.key);
        let loops = self.sys.loop_find(image).map_err(Error::io("find loop device", image))?;
        for foreign in loops.iter().filter(|l| l.tag != tag) {
            if let Some(at) = blockvol::filesystem_mount(self.sys.as_ref(), &foreign.path)? {
                return Err(Error::ForeignMount { volume: volume.id.clone(), device: foreign.path.clone(), at });
            }
        }
        Ok(())
    }

    /// The device stack of `volume`: its image through a loop device, and the crypt
    /// layer on top for an encrypted volume.
    fn stack<'a>(&'a self, volume: &'a VolumeRecord) -> Result<Stack<'a>> {
        self.stack_with(volume, None)
    }

    /// [`BlockPool::stack`] with the volume's key, which opening its crypt layer needs.
    fn stack_with<'a>(&'a self, volume: &'a VolumeRecord, key: Option<&'a Key>) -> Result<Stack<'a>> {
        Stack::of(volume, &[Layer::Loop], |layer| match layer {
            Layer::Loop => Some(Box::new(LoopLayer { pool: self, volume }) as Box<dyn stack::Ops>),
            Layer::Crypt => Some(Box::new(CryptLayer { sys: self.sys.as_ref(), volume, key }) as Box<dyn stack::Ops>),
            Layer::Disk => None,
        })
    }

    /// Where the filesystem of `volume` is mounted on this node, if it is: what a copy of
    /// its image freezes.
    fn mounted_filesystem(&self, volume: &VolumeRecord) -> Result<Option<PathBuf>> {
        self.stack(volume)?.filesystem_mount(self.sys.as_ref())
    }

    fn managed<'a>(&self, source: StageSource<'a>) -> Result<&'a VolumeRecord> {
        match source {
            StageSource::Managed(v) => Ok(v),
            StageSource::Static(_) => Err(Error::no_static_volumes(&self.info)),
        }
    }

    /// Clones or copies `from` into this pool's `dir/<key>.img`, sized `bytes` (at least).
    /// A copy from a snapshot's image (`immutable`) that a restart interrupted is resumed.
    fn copy_image(
        &self,
        from: &Path,
        dir: &Path,
        key: &str,
        bytes: u64,
        freeze: Option<&Path>,
        immutable: bool,
    ) -> Result<bool> {
        let src = File::open(from).map_err(Error::io("open source image", from))?;
        let mut progress = Progress::new("copy image", src.metadata().ok().map(|m| m.blocks() * 512));
        let mut cloned = false;
        write_whole_file_from(dir, &format!("{key}.img"), immutable, |dst, start| {
            let copy = || {
                tree::copy_file_data_from(src.as_fd(), dst.as_fd(), Reflink::Auto, start, &mut |done| {
                    progress.update(done);
                })
                .map_err(Error::io("copy image", from))
            };
            let (_, c) = self.freezes.frozen(self.sys.as_ref(), freeze, copy).map_err(std::io::Error::other)?;
            cloned = c;
            if dst.metadata()?.len() < bytes {
                dst.set_len(bytes)?;
            }
            Ok(())
        })?;
        Ok(cloned)
    }
}

impl Controller for BlockPool {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    fn check_writable(&self) -> Result<()> {
        super::writable(&self.info.name, &self.root)
    }

    fn enforcement(&self) -> Result<Enforced> {
        Ok(Enforced::DeviceSize)
    }

    fn capacity(&self) -> Result<Capacity> {
        let st = self.sys.statfs(&self.root).map_err(Error::io("statfs", &self.root))?;
        Ok(Capacity {
            total_bytes: st.total_bytes,
            available_bytes: st.available_bytes,
            maximum_volume_bytes: st.available_bytes,
        })
    }

    /// Nothing to choose ahead: a volume's storage is named by its key.
    fn reserve(&self, _volume: &mut VolumeRecord) -> Result<bool> {
        Ok(false)
    }

    fn create_volume(&self, volume: &mut VolumeRecord, source: Option<Source<'_>>, _work: &Work) -> Result<()> {
        volume.enforced = Enforced::DeviceSize;
        volume.layers = crypt::layers(Layer::Loop, volume);
        let image = self.image(&volume.key);
        if image.exists() {
            return Ok(());
        }
        let dir = self.root.join(VOLUMES);
        match source {
            None => {
                let preallocate_now = self.preallocate;
                write_whole_file(&dir, &format!("{}.img", volume.key), |f| {
                    f.set_len(volume.capacity)?;
                    if preallocate_now { preallocate(f, volume.capacity) } else { Ok(()) }
                })?;
            }
            Some(Source::Snapshot(s)) => {
                let cloned =
                    self.copy_image(&self.snapshot_image(&s.key), &dir, &volume.key, volume.capacity, None, true)?;
                tracing::info!(volume.id = %volume.id, snapshot.id = %s.id, reflinked = cloned, "volume restored");
            }
            Some(Source::Volume(v)) => {
                let freeze = self.mounted_filesystem(v)?;
                let cloned =
                    self.copy_image(&self.image(&v.key), &dir, &volume.key, volume.capacity, freeze.as_deref(), false)?;
                tracing::info!(volume.id = %volume.id, source.id = %v.id, reflinked = cloned, "volume cloned");
            }
        }
        Ok(())
    }

    fn delete_volume(&self, volume: &VolumeRecord) -> Result<()> {
        super::failpoint("block.delete", &self.image(&volume.key))?;
        self.stack(volume)?.close()?;
        let image = self.image(&volume.key);
        // Removing the file frees its blocks, which keep what was written: the header's
        // keyslots go first, so no key opens what is left.
        if image.exists() {
            crypt::wipe_header(self.sys.as_ref(), &volume.id, crypt::is_luks(volume.encryption.as_ref()), &image)?;
        }
        match fs::remove_file(&image) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove image", &image)(e)),
        }
    }

    fn expand_volume(&self, volume: &VolumeRecord, bytes: u64) -> Result<bool> {
        let image = self.image(&volume.key);
        let file = fs::OpenOptions::new().write(true).open(&image).map_err(Error::io("open image", &image))?;
        if file.metadata().map_err(Error::io("stat image", &image))?.len() < bytes {
            file.set_len(bytes).map_err(Error::io("grow image", &image))?;
        }
        if self.preallocate {
            preallocate(&file, bytes).map_err(Error::io("preallocate image", &image))?;
        }
        file.sync_all().map_err(Error::io("sync image", &image))?;
        Ok(true)
    }

    fn create_snapshot(&self, volume: &VolumeRecord, snapshot: &mut SnapshotRecord, work: &Work) -> Result<()> {
        let dest = self.snapshot_image(&snapshot.key);
        if !dest.exists() {
            let freeze = if work.is_held_still() { None } else { self.mounted_filesystem(volume)? };
            let cloned = self.copy_image(
                &self.image(&volume.key),
                &self.root.join(SNAPSHOTS),
                &snapshot.key,
                0,
                freeze.as_deref(),
                false,
            )?;
            snapshot.method = Some(if cloned { SnapshotMethod::Reflink } else { SnapshotMethod::Copy });
        }
        snapshot.method.get_or_insert(SnapshotMethod::Copy);
        snapshot.size = fs::metadata(&dest).map_err(Error::io("stat snapshot", &dest))?.len();
        Ok(())
    }

    fn delete_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let path = self.snapshot_image(&snapshot.key);
        if path.exists() {
            crypt::wipe_header(self.sys.as_ref(), &snapshot.id, crypt::is_luks(snapshot.encryption.as_ref()), &path)?;
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove snapshot", &path)(e)),
        }
    }

    fn snapshot_content(&self, snapshot: &SnapshotRecord) -> Option<super::Content> {
        Some(super::Content::Image(self.snapshot_image(&snapshot.key)))
    }

    fn volume_content(&self, volume: &VolumeRecord) -> Option<super::Content> {
        Some(super::Content::Image(self.image(&volume.key)))
    }

    /// The record's own fields say everything a node needs.
    fn volume_context(&self, _volume: &VolumeRecord) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn condition(&self, volume: &VolumeRecord) -> Condition {
        let image = self.image(&volume.key);
        match fs::symlink_metadata(&image) {
            Ok(m) if m.is_file() => match self.stack(volume) {
                Ok(stack) => stack.condition(),
                Err(e) => Condition::abnormal(e.to_string()),
            },
            Ok(_) => Condition::abnormal(format!("{} is not a regular file", image.display())),
            Err(e) => Condition::abnormal(format!("image {} is unavailable: {e}", image.display())),
        }
    }

    fn unaccounted(&self, known: &HashSet<String>) -> Vec<PathBuf> {
        let mut found = super::unaccounted_in(&self.root.join(VOLUMES), ".img", known);
        found.extend(super::unaccounted_in(&self.root.join(SNAPSHOTS), ".img", known));
        found
    }

    /// LUKS2, where this node has cryptsetup and device-mapper.
    fn check_encryption(&self, scheme: Scheme, access: AccessKind, fs_type: Option<&str>) -> Result<()> {
        crypt::check(self.sys.as_ref(), &self.info.name, scheme, access, fs_type)
    }

    fn quiesce(&self, volume: &VolumeRecord, table: &[MountEntry]) -> Result<super::Quiesce> {
        self.stack(volume)?.quiesce(table)
    }

    /// Each volume's key goes to its crypt layer at stage.
    fn keyring(&self) -> Option<&dyn super::Keyring> {
        None
    }
}

impl Node for BlockPool {
    fn parse_mount_flags(&self, flags: &[String]) -> std::result::Result<crate::mount::ops::Flags, String> {
        super::bind_mount_flags(flags)
    }

    fn static_path(&self, _sub_path: &str) -> Result<PathBuf> {
        Err(Error::no_static_volumes(&self.info))
    }

    fn stage(&self, source: StageSource<'_>, staging: &Path, capability: &Capability, key: Option<&Key>) -> Result<()> {
        let volume = self.managed(source)?;
        let image = self.image(&volume.key);
        if !image.is_file() {
            return Err(Error::NoImage { volume: volume.id.clone(), image });
        }
        self.refuse_foreign_mount(volume, &image)?;
        self.stack_with(volume, key)?.stage(self.sys.as_ref(), staging, capability, key)
    }

    /// Staging records nothing new: the record names the storage.
    fn note_staged(&self, _volume: &VolumeRecord) -> Result<Option<VolumeRecord>> {
        Ok(None)
    }

    fn unstage(&self, source: StageSource<'_>) -> Result<()> {
        let volume = self.managed(source)?;
        self.stack(volume)?.unstage(self.sys.as_ref())
    }

    fn is_mounted_at(&self, source: StageSource<'_>, path: &Path, table: &[MountEntry]) -> Result<bool> {
        self.stack(self.managed(source)?)?.is_mounted_at(table, path)
    }

    fn mounts(&self, source: StageSource<'_>, table: &[MountEntry]) -> Result<Vec<PathBuf>> {
        self.stack(self.managed(source)?)?.mounts(table)
    }

    /// Not attached here: the next stage attaches at the new size and grows then.
    fn node_expand(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<()> {
        self.stack(volume)?.expand(self.sys.as_ref(), volume_path)
    }

    fn publish_from(&self, source: StageSource<'_>, staging: &Path) -> PathBuf {
        blockvol::publish_from(source, staging)
    }

    fn finish_stage(&self, source: StageSource<'_>, staging: &Path, key: Option<&Key>) -> Result<()> {
        self.stack(self.managed(source)?)?.unlock(self.sys.as_ref(), staging, key)
    }

    fn usage(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<Usage> {
        let image = self.image(&volume.key);
        let meta = fs::metadata(&image).map_err(Error::io("stat image", &image))?;
        self.stack(volume)?.usage(self.sys.as_ref(), volume_path, meta.len(), meta.blocks() * 512)
    }
}

/// The loop layer: a block pool volume's image attached through a loop device that berth
/// tags with the volume's key. It is always the bottom of its stack.
struct LoopLayer<'a> {
    pool: &'a BlockPool,
    volume: &'a VolumeRecord,
}

impl stack::Ops for LoopLayer<'_> {
    fn find(&self, _below: Option<&Path>) -> Result<Option<PathBuf>> {
        Ok(self.pool.attached(&self.volume.key)?.map(|l| l.path))
    }

    fn open(&self, _below: Option<&Path>) -> Result<PathBuf> {
        let image = self.pool.image(&self.volume.key);
        super::failpoint("block.loop.attach", &image)?;
        let l = self
            .pool
            .sys
            .loop_attach(&image, &BlockPool::tag(&self.volume.key), false)
            .inspect_err(|_| crate::metrics::record_error("loop"))
            .map_err(Error::io("attach loop device", &image))?;
        tracing::info!(volume.id = %self.volume.id, device = %l.path.display(), direct_io = l.direct_io, "loop device attached");
        Ok(l.path)
    }

    fn close(&self, device: &Path) -> Result<()> {
        self.pool.sys.loop_detach(device).map_err(Error::io("detach loop device", device))?;
        tracing::info!(volume.id = %self.volume.id, device = %device.display(), "loop device detached");
        Ok(())
    }

    fn grow(&self, device: &Path) -> Result<()> {
        self.pool
            .sys
            .loop_set_capacity(device)
            .inspect_err(|_| crate::metrics::record_error("loop"))
            .map_err(Error::io("refresh loop capacity", device))
    }
}
