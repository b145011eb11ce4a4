//! HostPath pools on the recording syscall fake: the project-quota path, which needs an
//! xfs or ext4 filesystem mounted with prjquota to run for real, checked call by call.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::mount::fake::{Call, RecordingSyscall};
use crate::mount::{FsStat, ProjectQuotaState};

const XFS_MAGIC: i64 = 0x5846_5342;

fn pool_on_xfs_with_prjquota(dir: &Path) -> (Arc<RecordingSyscall>, HostPath) {
    let stat = FsStat { magic: XFS_MAGIC, total_bytes: 10 << 30, available_bytes: 8 << 30, ..FsStat::default() };
    let mountinfo = format!("30 1 8:1 / {} rw,relatime - xfs /dev/sdb1 rw,prjquota\n", dir.display());
    let fake = Arc::new(RecordingSyscall::new(stat, &mountinfo).with_project_quota(ProjectQuotaState::Enforced));
    let text = format!("name: fast\npath: {}\ncapacityEnforcement: required\n", dir.join("pool").display());
    let config: HostPathPool = serde_yaml_ng::from_str(&text).expect("pool config");
    let pool = HostPath::open(&config, Arc::clone(&fake) as Arc<dyn Syscall>, None).expect("open pool");
    (fake, pool)
}

/// A volume record as the engine makes it before calling the pool (fields by their
/// serialized names, so a field added with a default needs no change here).
fn record(key: &str) -> VolumeRecord {
    let json = serde_json::json!({
        "id": format!("vol-{key}"), "name": format!("pvc-{key}"), "pool": "fast", "key": key.repeat(32),
        "node": "node-a", "capacity": 4 << 20, "phase": "creating", "access": "mount", "enforced": "none",
        "created_unix_ms": 1,
    });
    serde_json::from_value(json).expect("volume record")
}

#[test]
fn a_clone_gives_every_copied_directory_and_file_its_project_through_the_syscall_seam() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, pool) = pool_on_xfs_with_prjquota(dir.path());
    let mut source = record("a");
    pool.create_volume(&mut source, None, &crate::backend::Work::new()).expect("create source");
    let src_dir = pool.volume_dir(&source.key);
    std::fs::create_dir(src_dir.join("sub")).expect("mkdir");
    std::fs::write(src_dir.join("sub/f"), b"data").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", src_dir.join("link")).expect("symlink");

    let mut clone = record("b");
    pool.create_volume(&mut clone, Some(Source::Volume(&source)), &crate::backend::Work::new()).expect("clone");
    let project = clone.project_id.expect("project ID");
    assert_ne!(Some(project), source.project_id);
    let clone_dir = pool.volume_dir(&clone.key);
    let mut tagged: Vec<_> = fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::SetProjectIdOf { path, project: p } if p == project => Some(path),
            _ => None,
        })
        .collect();
    tagged.sort();
    assert_eq!(tagged, [clone_dir.clone(), clone_dir.join("sub"), clone_dir.join("sub/f")], "the symlink is not");
    assert!(fake.calls().contains(&Call::SetProjectId { dir: clone_dir, project }));
}
