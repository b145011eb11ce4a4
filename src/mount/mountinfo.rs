//! A pure parser for `/proc/self/mountinfo`, and the queries berth asks of the mount table.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// The path inside the filesystem that is mounted (a bind mount's source).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid`, ...).
    pub options: String,
    /// Propagation tags (`shared:N`, `master:N`, `propagate_from:N`, `unbindable`).
    pub optional_fields: Vec<String>,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options (`prjquota`, `subvol=/x`, ...).
    pub super_options: String,
}

impl MountEntry {
    /// True when the per-mount options include `ro`.
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }

    /// True when mounts made below this mount propagate to its peers (`shared:N`): what
    /// the kubelet directory needs so that the kubelet and pods see berth's mounts.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        self.optional_fields.iter().any(|f| f.starts_with("shared:"))
    }

    /// True when `option` (e.g. `prjquota`) is among the superblock options.
    #[must_use]
    pub fn has_super_option(&self, option: &str) -> bool {
        self.super_options.split(',').any(|o| o == option)
    }
}

/// True for the filesystem types of NFS mounts.
#[must_use]
pub fn is_nfs(entry: &MountEntry) -> bool {
    entry.fs_type == "nfs" || entry.fs_type == "nfs4"
}

/// A line that is not in mountinfo's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

/// Parses the whole text of a mountinfo file.
pub fn parse(text: &str) -> Result<Vec<MountEntry>, ParseError> {
    // Sized once (a line per mount): node calls read the table on every call.
    let mut entries = Vec::with_capacity(text.bytes().filter(|&b| b == b'\n').count() + 1);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        entries.push(parse_line(line).map_err(|reason| ParseError { line: i + 1, reason })?);
    }
    Ok(entries)
}

fn parse_line(line: &str) -> Result<MountEntry, &'static str> {
    let (head, tail) = line.split_once(" - ").ok_or("no ' - ' separator")?;
    let mut fields = head.split(' ');
    let mount_id = fields.next().and_then(|f| f.parse().ok()).ok_or("bad mount id")?;
    let parent_id = fields.next().and_then(|f| f.parse().ok()).ok_or("bad parent id")?;
    let (major, minor) = fields
        .next()
        .and_then(|f| f.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or("bad major:minor")?;
    let root = unescape(fields.next().ok_or("missing root")?);
    let mount_point = unescape(fields.next().ok_or("missing mount point")?);
    let options = fields.next().ok_or("missing mount options")?.to_string();
    let optional_fields = fields.filter(|f| !f.is_empty()).map(str::to_string).collect();
    let mut tail_fields = tail.split(' ');
    let fs_type = tail_fields.next().ok_or("missing filesystem type")?.to_string();
    let source = unescape_string(tail_fields.next().ok_or("missing source")?);
    let super_options = tail_fields.next().unwrap_or("").to_string();
    Ok(MountEntry {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        options,
        optional_fields,
        fs_type,
        source,
        super_options,
    })
}

/// Decodes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape_bytes(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = &bytes[i + 1..(i + 4).min(bytes.len())];
            if digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn unescape(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape_bytes(field)))
}

fn unescape_string(field: &str) -> String {
    String::from_utf8(unescape_bytes(field)).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The entries mounted exactly at `path`, oldest first (the last one is what is visible).
#[must_use]
pub fn at<'a>(entries: &'a [MountEntry], path: &Path) -> Vec<&'a MountEntry> {
    entries.iter().filter(|e| e.mount_point == path).collect()
}

/// The visible mount that contains `path`: the longest mount point that is a prefix of it.
#[must_use]
pub fn containing<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| (e.mount_point.components().count(), e.mount_id))
}

/// Every mount whose source is `dir` or lies beneath it, found by device and root: how the
/// mount table shows bind mounts of a volume directory wherever they were made.
#[must_use]
pub fn binds_of<'a>(entries: &'a [MountEntry], dir: &Path) -> Vec<&'a MountEntry> {
    let Some(host) = containing(entries, dir) else {
        return Vec::new();
    };
    let Ok(relative) = dir.strip_prefix(&host.mount_point) else {
        return Vec::new();
    };
    let root = host.root.join(relative);
    entries
        .iter()
        .filter(|e| e.major == host.major && e.minor == host.minor)
        .filter(|e| e.root.starts_with(&root))
        .filter(|e| e.mount_point != host.mount_point)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:45 / /pool rw,relatime shared:20 - btrfs /dev/loop3 rw,space_cache=v2,subvolid=5,subvol=/
41 22 0:45 /volumes/abc /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pv1/mount rw,relatime shared:20 - btrfs /dev/loop3 rw,subvolid=257,subvol=/volumes/abc
42 22 0:45 /volumes/abc /var/lib/kubelet/plugins/kubernetes.io/csi/x/globalmount ro,nosuid,relatime shared:20 - btrfs /dev/loop3 rw,subvolid=257,subvol=/volumes/abc
43 22 0:45 /volumes/abcdef /mnt/other rw - btrfs /dev/loop3 rw
44 22 8:1 / /mnt/with\\040space\\011tab rw - xfs /dev/sda1 rw,attr2,inode64,prjquota
";

    #[test]
    fn parses_fields_and_escapes() {
        let entries = parse(FIXTURE).expect("fixture parses");
        assert_eq!(entries.len(), 6);
        let e = &entries[1];
        assert_eq!((e.mount_id, e.parent_id, e.major, e.minor), (40, 22, 0, 45));
        assert_eq!(e.fs_type, "btrfs");
        assert_eq!(e.source, "/dev/loop3");
        assert_eq!(entries[5].mount_point, Path::new("/mnt/with space\ttab"));
        assert!(entries[5].has_super_option("prjquota"));
        assert!(entries[3].read_only());
        assert!(!entries[2].read_only());
        assert_eq!(entries[1].optional_fields, vec!["shared:20".to_string()]);
        assert!(entries[1].is_shared());
        assert!(entries[4].optional_fields.is_empty() && !entries[4].is_shared());
    }

    #[test]
    fn reads_every_propagation_tag() {
        let line = "50 22 0:46 / /var/lib/kubelet rw master:3 shared:7 propagate_from:2 - tmpfs t rw";
        let e = &parse(line).expect("parses")[0];
        assert_eq!(e.optional_fields, vec!["master:3", "shared:7", "propagate_from:2"]);
        assert!(e.is_shared());
        let slave = &parse("51 22 0:46 / /x rw master:3 - tmpfs t rw").expect("parses")[0];
        assert!(!slave.is_shared());
    }

    #[test]
    fn finds_binds_of_a_volume_directory_and_not_its_neighbours() {
        let entries = parse(FIXTURE).expect("fixture parses");
        let binds = binds_of(&entries, Path::new("/pool/volumes/abc"));
        let points: Vec<_> = binds.iter().map(|e| e.mount_point.clone()).collect();
        assert_eq!(
            points,
            vec![
                PathBuf::from("/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pv1/mount"),
                PathBuf::from("/var/lib/kubelet/plugins/kubernetes.io/csi/x/globalmount"),
            ]
        );
    }

    #[test]
    fn containing_prefers_the_deepest_mount() {
        let entries = parse(FIXTURE).expect("fixture parses");
        let host = containing(&entries, Path::new("/pool/volumes/abc")).expect("found");
        assert_eq!(host.mount_point, Path::new("/pool"));
        assert_eq!(at(&entries, Path::new("/mnt/other")).len(), 1);
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(parse("garbage").unwrap_err().reason, "no ' - ' separator");
        assert_eq!(parse("1 2 x / / rw - ext4 s rw").unwrap_err().reason, "bad major:minor");
        assert!(parse("\n\n").expect("blank is empty").is_empty());
    }

    #[test]
    fn a_source_that_is_not_utf8_is_read_lossily() {
        let entries = parse("1 0 0:1 / /a rw - tmpfs dev\\377x rw").expect("parses");
        assert_eq!(entries[0].source, "dev\u{fffd}x");
    }

    #[test]
    fn trailing_backslash_is_kept() {
        let entries = parse("1 0 0:1 / /a\\ rw - tmpfs t rw").expect("parses");
        assert_eq!(entries[0].mount_point, Path::new("/a\\"));
    }
}
