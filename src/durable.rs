//! Files that survive a crash whole: written under a temporary name, synced, renamed over
//! their destination, and the directory synced, so that after a crash the destination is
//! the old file or the new one, never a mix or nothing.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Syncs `file`, written at `tmp`, renames it over `dest` and syncs `dest`'s directory.
/// `points` names the fault points (see [`crate::failpoint`]) passed before and after the
/// rename, for files whose crash tests stop there.
pub fn replace(file: File, tmp: &Path, dest: &Path, points: Option<[&'static str; 2]>) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    if let Some([before, _]) = points {
        crate::failpoint::hit(before)?;
    }
    std::fs::rename(tmp, dest)?;
    if let Some([_, after]) = points {
        crate::failpoint::hit(after)?;
    }
    File::open(dest.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Writes `bytes` as the whole content of `dest` through `<dest>.tmp` (see [`replace`]).
pub fn write(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dest.with_file_name(name);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    replace(file, &tmp, dest, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("marker");
        write(&dest, b"first, longer content").expect("write");
        write(&dest, b"second").expect("replace");
        assert_eq!(std::fs::read(&dest).expect("read"), b"second");
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, ["marker"]);
    }
}
