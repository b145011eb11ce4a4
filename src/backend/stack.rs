//! A block volume's device stack: the layers between its storage and the device its
//! filesystem is mounted from (or a pod is handed), bottom first. A block pool's volume is
//! `[Loop]`: its image file through a loop device. A device pool's is `[Disk]`: the disk
//! itself. Encryption adds a layer on top, and nothing below it changes.
//!
//! The stack is recorded in the volume record ([`Layer`]) when the volume is created,
//! before it is ever staged. Staging opens it bottom-up, and mounts, publish checks,
//! freezes, expansion and stats act on its top device. Unstaging closes exactly what
//! staging opened, top first.

use std::path::{Path, PathBuf};

use super::{Capability, Condition, Error, Result, Usage, blockvol};
use crate::crypt::{Key, Scheme};
use crate::mount::mountinfo::MountEntry;
use crate::mount::{Syscall, ops};
use crate::state::{AccessKind, Layer, VolumeRecord};

/// What one layer of a stack does. The pool that owns the storage makes these from the
/// recorded [`Layer`]s: it knows which image or disk, and how to check it is the right one.
pub trait Ops {
    /// The layer's device when it is open now on `below` (`None` for the bottom layer).
    fn find(&self, below: Option<&Path>) -> Result<Option<PathBuf>>;
    /// Opens the layer on `below` and returns its device.
    fn open(&self, below: Option<&Path>) -> Result<PathBuf>;
    /// Closes the layer's `device`; a device already closed is success.
    fn close(&self, device: &Path) -> Result<()>;
    /// Makes the layer's `device` show what the layer below has grown to.
    fn grow(&self, device: &Path) -> Result<()>;
}

/// One volume's layers, bottom first, ready to act on.
pub struct Stack<'a> {
    volume: &'a VolumeRecord,
    layers: Vec<Box<dyn Ops + 'a>>,
}

impl<'a> Stack<'a> {
    /// The stack of `volume`, from its recorded layers (or `default` for records from
    /// before layers were recorded), each made by `make`. A recorded layer the pool does
    /// not serve is [`Error::UnservedLayer`].
    pub fn of(
        volume: &'a VolumeRecord,
        default: &[Layer],
        mut make: impl FnMut(&Layer) -> Option<Box<dyn Ops + 'a>>,
    ) -> Result<Stack<'a>> {
        let recorded = if volume.layers.is_empty() { default } else { &volume.layers };
        let layers = recorded
            .iter()
            .map(|layer| {
                make(layer).ok_or_else(|| Error::UnservedLayer {
                    volume: volume.id.clone(),
                    layer: layer.name(),
                    pool: volume.pool.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Stack { volume, layers })
    }

    /// The devices of the layers open now, bottom first; stops at the first one closed.
    fn open_devices(&self) -> Result<Vec<PathBuf>> {
        let mut devices: Vec<PathBuf> = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            match layer.find(devices.last().map(PathBuf::as_path))? {
                Some(device) => devices.push(device),
                None => break,
            }
        }
        Ok(devices)
    }

    /// The top device of `devices` (from [`Stack::open_devices`]) when every layer is open.
    fn top_of<'d>(&self, devices: &'d [PathBuf]) -> Option<&'d PathBuf> {
        if devices.len() == self.layers.len() { devices.last() } else { None }
    }

    /// The top device when every layer is open; `None` when the volume is not staged here.
    pub fn top(&self) -> Result<Option<PathBuf>> {
        Ok(self.top_of(&self.open_devices()?).cloned())
    }

    /// Opens every layer not open yet, bottom-up, and returns the top device with whether
    /// anything was opened now. A failure closes what this call opened, top first.
    pub fn open(&self) -> Result<(PathBuf, bool)> {
        let mut devices = self.open_devices()?;
        let already = devices.len();
        for layer in &self.layers[already..] {
            match layer.open(devices.last().map(PathBuf::as_path)) {
                Ok(device) => devices.push(device),
                Err(e) => {
                    self.close_from(&devices, already);
                    return Err(e);
                }
            }
        }
        let top = devices.last().cloned().ok_or_else(|| Error::NoLayers { volume: self.volume.id.clone() })?;
        Ok((top, devices.len() > already))
    }

    /// Closes the layers at `devices[from..]`, top first, logging failures: the undo of a
    /// failed open, whose own error is the one to report.
    fn close_from(&self, devices: &[PathBuf], from: usize) {
        for (layer, device) in self.layers[from..devices.len()].iter().zip(&devices[from..]).rev() {
            if let Err(e) = layer.close(device) {
                tracing::warn!(volume.id = %self.volume.id, device = %device.display(), error = %e, "closing a layer after a failed stage");
            }
        }
    }

    /// Closes every open layer, top first.
    pub fn close(&self) -> Result<()> {
        self.close_devices(&self.open_devices()?)
    }

    fn close_devices(&self, devices: &[PathBuf]) -> Result<()> {
        for (layer, device) in self.layers.iter().zip(devices).rev() {
            layer.close(device)?;
        }
        Ok(())
    }

    /// Passes growth of the storage up through every open layer, bottom first.
    pub fn grow(&self) -> Result<()> {
        self.grow_devices(&self.open_devices()?)
    }

    fn grow_devices(&self, devices: &[PathBuf]) -> Result<()> {
        for (layer, device) in self.layers.iter().zip(devices) {
            layer.grow(device)?;
        }
        Ok(())
    }

    /// Opens the stack and makes its top device available at `staging` (see
    /// [`blockvol::stage`]); an fscrypt volume's filesystem then gets `key` (see
    /// [`blockvol::unlock_fscrypt`]). A failure unmounts and closes what was made now.
    pub fn stage(&self, sys: &dyn Syscall, staging: &Path, capability: &Capability, key: Option<&Key>) -> Result<()> {
        let (device, opened_now) = self.open()?;
        let fscrypt = !capability.block && blockvol::is_fscrypt(self.volume);
        let mut result = blockvol::stage(sys, &device, staging, capability, fs_type(self.volume), fscrypt);
        if result.is_ok() && fscrypt {
            result = self.unlock(sys, staging, key);
            if result.is_err() {
                let _ = crate::mount::ops::unmount_all(sys, staging);
            }
        }
        if result.is_err() && opened_now {
            self.close().unwrap_or_else(|e| {
                tracing::warn!(volume.id = %self.volume.id, error = %e, "closing the layers after a failed stage");
            });
        }
        result
    }

    /// Gives an fscrypt volume's filesystem, mounted at `staging`, its key and encrypted
    /// directory (see [`blockvol::unlock_fscrypt`]); nothing for other volumes. Also what
    /// a stage that finds the filesystem mounted already does: the mount may have been
    /// made by a call that died before this step.
    pub fn unlock(&self, sys: &dyn Syscall, staging: &Path, key: Option<&Key>) -> Result<()> {
        if !blockvol::is_fscrypt(self.volume) || self.volume.access == AccessKind::Block {
            return Ok(());
        }
        match key {
            Some(key) => blockvol::unlock_fscrypt(sys, &self.volume.id, staging, key),
            None => Err(Error::NoKeyForLayer { volume: self.volume.id.clone(), scheme: Scheme::Fscrypt }),
        }
    }

    /// Closes the stack once nothing mounts or binds its top device any more.
    pub fn unstage(&self, sys: &dyn Syscall) -> Result<()> {
        let devices = self.open_devices()?;
        if let Some(top) = self.top_of(&devices) {
            // Read now: the engine has just unmounted what it staged.
            let table = ops::table(sys).map_err(Error::io("read mount table", top))?;
            let mounts = blockvol::mounts(&table, top);
            if !mounts.is_empty() {
                return Err(Error::StillMounted { device: top.clone(), mounts });
            }
        }
        self.close_devices(&devices)
    }

    /// True when `path` mounts or binds the top device in `table`.
    pub fn is_mounted_at(&self, table: &[MountEntry], path: &Path) -> Result<bool> {
        match self.top()? {
            Some(top) => blockvol::is_mounted_at(table, &top, path),
            None => Ok(false),
        }
    }

    /// Every mount or bind of the top device in `table`.
    pub fn mounts(&self, table: &[MountEntry]) -> Result<Vec<PathBuf>> {
        Ok(self.top()?.map(|top| blockvol::mounts(table, &top)).unwrap_or_default())
    }

    /// Where the top device's filesystem is mounted: what a copy of the volume freezes.
    pub fn filesystem_mount(&self, sys: &dyn Syscall) -> Result<Option<PathBuf>> {
        match self.top()? {
            Some(top) => blockvol::filesystem_mount(sys, &top),
            None => Ok(None),
        }
    }

    /// How a group snapshot holds this volume still: its filesystem frozen where it is
    /// mounted; nothing to do when no layer is open or nothing mounts the top device; a
    /// raw device in use cannot be held (there is no filesystem to freeze, and its writer
    /// is the pod). `table` is the mount table as the caller read it.
    pub fn quiesce(&self, table: &[MountEntry]) -> Result<super::Quiesce> {
        use super::Quiesce;
        let Some(top) = self.top()? else {
            return Ok(Quiesce::Idle);
        };
        if self.volume.access == AccessKind::Mount
            && let Some(mp) = blockvol::filesystem_mount_in(table, &top)
        {
            return Ok(Quiesce::Freeze(mp));
        }
        Ok(match blockvol::mounts(table, &top).first() {
            None => Quiesce::Idle,
            Some(at) => Quiesce::Cannot(format!(
                "it is a raw block device in use at {}, and berth can hold still only a filesystem it can freeze",
                at.display()
            )),
        })
    }

    /// Node side of expansion: growth passed up the layers, then the filesystem mounted
    /// at `volume_path` grown. A stack not open here grows at its next stage.
    pub fn expand(&self, sys: &dyn Syscall, volume_path: &Path) -> Result<()> {
        let devices = self.open_devices()?;
        self.grow_devices(&devices)?;
        if self.volume.access == AccessKind::Mount
            && let Some(top) = self.top_of(&devices)
        {
            sys.grow_fs(fs_type(self.volume), top, volume_path)
                .inspect_err(|_| crate::metrics::record_error("resize"))
                .map_err(Error::io("grow filesystem", volume_path))?;
        }
        Ok(())
    }

    /// The condition of the volume's filesystem when the stack is open here.
    #[must_use]
    pub fn condition(&self) -> Condition {
        match self.top() {
            Ok(Some(top)) => blockvol::filesystem_condition(&top),
            Ok(None) => Condition::healthy(),
            Err(e) => Condition::abnormal(e.to_string()),
        }
    }

    /// Usage of the volume at `volume_path`, with `total` and `allocated` bytes of its
    /// storage for a raw block volume.
    pub fn usage(&self, sys: &dyn Syscall, volume_path: &Path, total: u64, allocated: u64) -> Result<Usage> {
        blockvol::usage(sys, self.volume.access == AccessKind::Block, volume_path, total, allocated)
    }
}

/// The filesystem of a volume in Filesystem mode.
#[must_use]
pub fn fs_type(volume: &VolumeRecord) -> &str {
    volume.fs_type.as_deref().unwrap_or(super::DEFAULT_FS)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    /// A layer that logs what is done to it, open or not, failing `open` on request.
    struct Fake {
        name: &'static str,
        open: Rc<RefCell<Vec<&'static str>>>,
        log: Rc<RefCell<Vec<String>>>,
        fail_open: bool,
    }

    impl Ops for Fake {
        fn find(&self, below: Option<&Path>) -> Result<Option<PathBuf>> {
            let open = self.open.borrow().contains(&self.name);
            Ok(open.then(|| below.map_or(PathBuf::from("/dev"), Path::to_path_buf).join(self.name)))
        }
        fn open(&self, below: Option<&Path>) -> Result<PathBuf> {
            self.log.borrow_mut().push(format!("open {}", self.name));
            if self.fail_open {
                return Err(Error::Io {
                    op: "open",
                    path: PathBuf::from(self.name),
                    source: std::io::Error::from_raw_os_error(libc::EBUSY),
                });
            }
            self.open.borrow_mut().push(self.name);
            Ok(below.map_or(PathBuf::from("/dev"), Path::to_path_buf).join(self.name))
        }
        fn close(&self, device: &Path) -> Result<()> {
            self.log.borrow_mut().push(format!("close {}", device.display()));
            self.open.borrow_mut().retain(|n| *n != self.name);
            Ok(())
        }
        fn grow(&self, device: &Path) -> Result<()> {
            self.log.borrow_mut().push(format!("grow {}", device.display()));
            Ok(())
        }
    }

    fn volume(layers: Vec<Layer>) -> VolumeRecord {
        let mut v = VolumeRecord::intent("vol".into(), "k".into(), "n".into(), "p", "node".into(), 1);
        v.layers = layers;
        v
    }

    type Log = Rc<RefCell<Vec<String>>>;

    fn stack<'a>(v: &'a VolumeRecord, fail: Option<&'static str>) -> (Stack<'a>, Log) {
        let open = Rc::new(RefCell::new(Vec::new()));
        let log: Log = Rc::default();
        let (o, l) = (Rc::clone(&open), Rc::clone(&log));
        let s = Stack::of(v, &[Layer::Loop], move |layer| {
            let name = match layer {
                Layer::Loop => "loop",
                Layer::Disk => "disk",
                Layer::Crypt => "crypt",
            };
            Some(Box::new(Fake { name, open: Rc::clone(&o), log: Rc::clone(&l), fail_open: fail == Some(name) })
                as Box<dyn Ops>)
        })
        .unwrap();
        (s, log)
    }

    #[test]
    fn opens_bottom_up_closes_top_down_and_grows_bottom_up() {
        let v = volume(vec![Layer::Disk, Layer::Loop]);
        let (s, log) = stack(&v, None);
        assert_eq!(s.top().unwrap(), None, "nothing open yet");
        let (top, now) = s.open().unwrap();
        assert_eq!(top, PathBuf::from("/dev/disk/loop"));
        assert!(now);
        assert_eq!(s.open().unwrap(), (top.clone(), false), "a second open opens nothing");
        s.grow().unwrap();
        s.close().unwrap();
        assert_eq!(s.top().unwrap(), None);
        assert_eq!(
            *log.borrow(),
            [
                "open disk",
                "open loop",
                "grow /dev/disk",
                "grow /dev/disk/loop",
                "close /dev/disk/loop",
                "close /dev/disk"
            ]
        );
    }

    #[test]
    fn a_failed_open_closes_only_what_it_opened() {
        let v = volume(vec![Layer::Disk, Layer::Loop]);
        let (s, log) = stack(&v, Some("loop"));
        assert!(matches!(s.open(), Err(Error::Io { op: "open", .. })));
        assert_eq!(*log.borrow(), ["open disk", "open loop", "close /dev/disk"]);
        assert_eq!(s.top().unwrap(), None);
    }

    #[test]
    fn records_without_layers_get_the_pools_default_and_unknown_layers_are_refused() {
        let v = volume(Vec::new());
        let (s, _) = stack(&v, None);
        assert_eq!(s.open().unwrap().0, PathBuf::from("/dev/loop"));

        let v = volume(vec![Layer::Disk]);
        let err = Stack::of(&v, &[Layer::Loop], |l| match l {
            Layer::Loop | Layer::Disk | Layer::Crypt => None,
        })
        .err()
        .unwrap();
        assert!(matches!(&err, Error::UnservedLayer { layer: "disk", .. }), "{err}");
        assert!(err.to_string().contains("disk layer"), "{err}");
    }
}
