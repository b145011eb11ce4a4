//! The crypt layer: a LUKS2 container on the layer below (a loop device or a disk),
//! opened through device-mapper as `/dev/mapper/berth-<volume key>`. Block and device
//! pools put it on top of their stack when a volume's StorageClass asks for
//! `encryption: luks2`; the filesystem (or the pod's raw device) sits on the mapping, so
//! the image or disk holds only ciphertext.
//!
//! The header is written at the first stage, when the device below holds no signature
//! at all, and only then: a device that holds this volume's header is opened, one that
//! holds anything else is refused. A stage retried after a crash between formatting
//! and opening therefore opens the header the first attempt wrote. Deleting a volume
//! destroys the header's keyslots ([`wipe_header`]) before the storage is released.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::stack::Ops;
use super::{Error, Result};
use crate::crypt::{Key, Scheme};
use crate::mount::{Signature, Syscall, luks};
use crate::state::{AccessKind, Layer, VolumeRecord};

/// The device-mapper name of a volume's crypt layer.
#[must_use]
pub fn mapping_name(volume: &VolumeRecord) -> String {
    format!("berth-{}", volume.key)
}

/// The layers of a new volume of a pool whose stack starts with `bottom`: the crypt
/// layer on top when the volume is to be LUKS2-encrypted.
#[must_use]
pub fn layers(bottom: Layer, volume: &VolumeRecord) -> Vec<Layer> {
    match volume.encryption.as_ref().map(|e| e.scheme) {
        Some(Scheme::Luks2) => vec![bottom, Layer::Crypt],
        Some(Scheme::Fscrypt) | None => vec![bottom],
    }
}

/// Whether a pool of block devices can encrypt a volume of `access` with `scheme`: LUKS2
/// when this node can open containers, whatever the volume holds; fscrypt for volumes
/// mounted as ext4 when this kernel's ext4 can encrypt (the volume's data then lives in
/// an encrypted directory of its filesystem, see [`super::blockvol::FSCRYPT_DIR`]).
pub fn check(sys: &dyn Syscall, pool: &str, scheme: Scheme, access: AccessKind, fs_type: Option<&str>) -> Result<()> {
    let cannot = |reason: String| Error::CannotEncrypt { pool: pool.to_string(), reason };
    match scheme {
        Scheme::Luks2 => sys
            .luks_support()
            .map_err(|e| cannot(format!("luks2 needs cryptsetup and device-mapper, and this node cannot: {e}"))),
        Scheme::Fscrypt if access == AccessKind::Block => Err(cannot(
            "fscrypt encrypts files of a filesystem; a raw block volume has none: use encryption: luks2".into(),
        )),
        Scheme::Fscrypt if fs_type != Some("ext4") => Err(cannot(format!(
            "fscrypt on a block volume needs ext4 (the volume's filesystem is {}): use fsType ext4, or luks2",
            fs_type.unwrap_or("unset")
        ))),
        Scheme::Fscrypt => sys.ext4_encryption_support().map_err(|e| cannot(e.to_string())),
    }
}

/// True when `encryption` is LUKS2: what a snapshot's or volume's storage holds is a
/// LUKS2 container.
#[must_use]
pub fn is_luks(encryption: Option<&crate::crypt::Encryption>) -> bool {
    encryption.is_some_and(|e| e.scheme == Scheme::Luks2)
}

/// Destroys the keyslots of the LUKS header on `device` (the image file or disk of
/// volume or snapshot `id`) when it holds a LUKS2 container (`luks`): after this no key
/// opens what is left. One without a header (never staged) is left as it is.
pub fn wipe_header(sys: &dyn Syscall, id: &str, luks: bool, device: &Path) -> Result<()> {
    if !luks {
        return Ok(());
    }
    super::failpoint("crypt.wipe", device)?;
    if sys.luks_wipe(device).map_err(Error::io("erase the LUKS header of", device))? {
        tracing::info!(id, device = %device.display(), "LUKS header keyslots erased");
    }
    Ok(())
}

/// The crypt layer of one volume. `key` is the volume's key, checked against its record
/// by the engine; only opening needs it.
pub struct CryptLayer<'a> {
    pub sys: &'a dyn Syscall,
    pub volume: &'a VolumeRecord,
    pub key: Option<&'a Key>,
}

impl CryptLayer<'_> {
    /// The mapping's device node. Where udev manages /dev, `/dev/mapper/<name>` is a link
    /// to `/dev/dm-N`: the stack works with what it leads to, as mount(2) and bind
    /// mounts of the node record it, so mount-table lookups of the top device match.
    fn mapped(&self) -> PathBuf {
        let path = Path::new(luks::MAPPER_DIR).join(mapping_name(self.volume));
        std::fs::canonicalize(&path).unwrap_or(path)
    }

    /// The layer below: the crypt layer is never the bottom of a stack.
    fn below<'b>(&self, below: Option<&'b Path>) -> Result<&'b Path> {
        below.ok_or_else(|| Error::UnservedLayer {
            volume: self.volume.id.clone(),
            layer: Layer::Crypt.name(),
            pool: self.volume.pool.clone(),
        })
    }
}

/// The block device number of a device node.
fn rdev(device: &Path) -> Option<u64> {
    std::fs::metadata(device).ok().filter(|m| m.file_type().is_block_device()).map(|m| m.rdev())
}

/// True when `a` and `b` name one device (cryptsetup names the kernel's node; the layer
/// below may name a link to it).
fn same_device(a: &Path, b: &Path) -> bool {
    a == b || rdev(a).is_some_and(|r| Some(r) == rdev(b))
}

impl Ops for CryptLayer<'_> {
    fn find(&self, below: Option<&Path>) -> Result<Option<PathBuf>> {
        let below = self.below(below)?;
        let name = mapping_name(self.volume);
        match self.sys.luks_status(&name).map_err(Error::io("read the status of", &self.mapped()))? {
            None => Ok(None),
            Some(under) if same_device(&under, below) => Ok(Some(self.mapped())),
            Some(under) => Err(Error::MappedElsewhere { name, found: under, expected: below.to_path_buf() }),
        }
    }

    fn open(&self, below: Option<&Path>) -> Result<PathBuf> {
        let below = self.below(below)?;
        let key =
            self.key.ok_or_else(|| Error::NoKeyForLayer { volume: self.volume.id.clone(), scheme: Scheme::Luks2 })?;
        match self.sys.blkid(below).map_err(Error::io("probe", below))? {
            Signature::Filesystem(found) if found == luks::SIGNATURE => {}
            Signature::None => {
                tracing::info!(volume.id = %self.volume.id, device = %below.display(), "writing the LUKS2 header of a blank device");
                super::failpoint("crypt.format", below)?;
                self.sys
                    .luks_format(below, key)
                    .inspect_err(|_| crate::metrics::record_error("format"))
                    .map_err(Error::io("write a LUKS2 header on", below))?;
                super::failpoint("crypt.formatted", below)?;
            }
            Signature::Filesystem(found) => {
                return Err(Error::NotLuks {
                    volume: self.volume.id.clone(),
                    device: below.to_path_buf(),
                    found: format!("a {found} signature"),
                });
            }
            Signature::PartitionTable(table) => {
                return Err(Error::NotLuks {
                    volume: self.volume.id.clone(),
                    device: below.to_path_buf(),
                    found: format!("a {table} partition table"),
                });
            }
        }
        let name = mapping_name(self.volume);
        match self.sys.luks_open(below, &name, key) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::LuksKeyRefused { volume: self.volume.id.clone(), device: below.to_path_buf() });
            }
            Err(e) => return Err(Error::io("open the LUKS2 container on", below)(e)),
        }
        tracing::info!(volume.id = %self.volume.id, device = %self.mapped().display(), "crypt layer opened");
        Ok(self.mapped())
    }

    fn close(&self, device: &Path) -> Result<()> {
        self.sys.luks_close(&mapping_name(self.volume)).map_err(Error::io("close", device))?;
        tracing::info!(volume.id = %self.volume.id, device = %device.display(), "crypt layer closed");
        Ok(())
    }

    fn grow(&self, device: &Path) -> Result<()> {
        self.sys
            .luks_resize(&mapping_name(self.volume))
            .inspect_err(|_| crate::metrics::record_error("resize"))
            .map_err(Error::io("resize", device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::{Encryption, KEY_BYTES};
    use crate::mount::FsStat;
    use crate::mount::fake::{Call, RecordingSyscall};

    fn volume() -> VolumeRecord {
        let mut v = VolumeRecord::intent("vol-1".into(), "k1".into(), "pvc".into(), "img", "node".into(), 1 << 30);
        v.encryption = Some(Encryption { scheme: Scheme::Luks2, key_id: None });
        v.layers = layers(Layer::Loop, &v);
        v
    }

    fn luks_calls(fake: &RecordingSyscall) -> Vec<Call> {
        fake.calls().into_iter().filter(|c| format!("{c:?}").starts_with("Luks")).collect()
    }

    #[test]
    fn only_a_blank_device_is_formatted_and_only_its_own_header_opens() {
        let fake = RecordingSyscall::new(FsStat::default(), "");
        let v = volume();
        assert_eq!(v.layers, [Layer::Loop, Layer::Crypt]);
        let key = Key::from_bytes([1; KEY_BYTES]);
        let layer = CryptLayer { sys: &fake, volume: &v, key: Some(&key) };
        let below = Path::new("/dev/loop7");

        fake.set_signature(below, Signature::Filesystem("ext4".into()));
        let err = layer.open(Some(below)).expect_err("an ext4 device");
        assert!(matches!(err, Error::NotLuks { .. }), "{err}");
        fake.set_signature(below, Signature::PartitionTable("gpt".into()));
        assert!(matches!(layer.open(Some(below)), Err(Error::NotLuks { .. })));
        assert!(luks_calls(&fake).is_empty(), "nothing formatted or opened");

        // Another key's header (another volume's image copied here, say) is not opened.
        fake.luks_format(Path::new("/dev/loop8"), &Key::from_bytes([2; KEY_BYTES])).expect("format");
        let err = layer.open(Some(Path::new("/dev/loop8"))).expect_err("another key's header");
        assert!(matches!(err, Error::LuksKeyRefused { .. }), "{err}");

        let blank = Path::new("/dev/loop9");
        assert_eq!(layer.open(Some(blank)).expect("open"), PathBuf::from("/dev/mapper/berth-k1"));
        assert_eq!(layer.find(Some(blank)).expect("find"), Some(PathBuf::from("/dev/mapper/berth-k1")));
        let err = layer.find(Some(Path::new("/dev/loop10"))).expect_err("open on another device");
        assert!(matches!(err, Error::MappedElsewhere { .. }), "{err}");
        layer.close(Path::new("/dev/mapper/berth-k1")).expect("close");
        layer.close(Path::new("/dev/mapper/berth-k1")).expect("closing twice is success");
        assert_eq!(layer.find(Some(blank)).expect("find"), None);

        let keyless = CryptLayer { sys: &fake, volume: &v, key: None };
        assert!(matches!(keyless.open(Some(blank)), Err(Error::NoKeyForLayer { .. })));
        assert!(matches!(keyless.open(None), Err(Error::UnservedLayer { layer: "crypt", .. })));
    }

    #[test]
    fn pools_encrypt_where_the_node_can_and_wipe_only_luks_storage() {
        use crate::state::AccessKind::{Block, Mount};
        let fake = RecordingSyscall::new(FsStat::default(), "");
        check(&fake, "img", Scheme::Luks2, Block, None).expect("luks2 for a raw device");
        check(&fake, "img", Scheme::Luks2, Mount, Some("xfs")).expect("luks2 under any filesystem");
        check(&fake, "img", Scheme::Fscrypt, Mount, Some("ext4")).expect("fscrypt on ext4");
        for (access, fs, says) in [(Block, None, "raw block"), (Mount, Some("xfs"), "needs ext4")] {
            let err = check(&fake, "img", Scheme::Fscrypt, access, fs).expect_err("fscrypt needs ext4 files");
            assert!(matches!(&err, Error::CannotEncrypt { .. }) && err.to_string().contains(says), "{err}");
        }
        fake.fail("luks_support", libc::ENODEV);
        let err = check(&fake, "img", Scheme::Luks2, Block, None).expect_err("no device-mapper");
        assert!(matches!(&err, Error::CannotEncrypt { .. }) && err.to_string().contains("device-mapper"), "{err}");
        fake.fail("ext4_encryption_support", libc::EOPNOTSUPP);
        let err = check(&fake, "img", Scheme::Fscrypt, Mount, Some("ext4")).expect_err("no ext4 encryption");
        assert!(matches!(&err, Error::CannotEncrypt { .. }), "{err}");

        let image = Path::new("/pool/volumes/k1.img");
        wipe_header(&fake, "vol-1", false, image).expect("plain volume");
        assert!(fake.calls().is_empty(), "a plaintext volume has no header to erase");
        wipe_header(&fake, "vol-1", true, image).expect("never staged: no header yet");
        fake.luks_format(image, &Key::from_bytes([1; KEY_BYTES])).expect("format");
        wipe_header(&fake, "vol-1", true, image).expect("erase");
        assert_eq!(luks_calls(&fake).last(), Some(&Call::LuksWipe { device: image.to_path_buf() }));
    }
}
