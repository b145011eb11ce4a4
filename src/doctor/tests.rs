//! Doctor checks against the recording syscall fake and fixture files: no root needed.

use std::path::Path;

use super::checks::{self, Host};
use super::*;
use crate::config::HostPathPool;
use crate::mount::fake::RecordingSyscall;
use crate::mount::{FsStat, ProjectQuotaState};

const EXT4: i64 = 0xEF53;
const BTRFS: i64 = crate::mount::btrfs::BTRFS_SUPER_MAGIC;

fn host<'a>(sys: &'a RecordingSyscall, dir: &Path) -> Host<'a> {
    Host {
        sys,
        proc_filesystems: dir.join("filesystems"),
        loop_control: dir.join("loop-control"),
        search_path: vec![dir.join("bin")],
        kernel_quota: true,
        root: true,
    }
}

fn fake(magic: i64, mountinfo: &str) -> RecordingSyscall {
    RecordingSyscall::new(
        FsStat { magic, total_bytes: 1 << 30, available_bytes: 1 << 29, ..FsStat::default() },
        mountinfo,
    )
}

fn pool(path: &Path, enforcement: Enforcement) -> HostPathPool {
    HostPathPool { name: "fast".into(), path: path.to_path_buf(), capacity_enforcement: enforcement }
}

use crate::config::Enforcement;

fn verdicts(checks: &[Check]) -> Vec<(&'static str, Verdict)> {
    checks.iter().map(|c| (c.check, c.verdict)).collect()
}

#[test]
fn a_missing_pool_path_fails_and_skips_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = fake(EXT4, "");
    let checks = checks::hostpath(&host(&sys, dir.path()), &pool(&dir.path().join("absent"), Enforcement::Auto));
    assert_eq!(verdicts(&checks), vec![("path", Verdict::Fail)]);
    assert!(checks[0].fix.as_deref().is_some_and(|f| f.contains("mkdir -p")), "{checks:?}");
}

#[test]
fn project_quota_enforcement_depends_on_mount_options_and_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical");
    let with = format!("30 1 8:1 / {} rw shared:1 - ext4 /dev/sdb1 rw,prjquota\n", root.display());
    let without = format!("30 1 8:1 / {} rw shared:1 - ext4 /dev/sdb1 rw\n", root.display());

    let sys = fake(EXT4, &with).with_project_quota(ProjectQuotaState::Enforced);
    let checks = checks::hostpath(&host(&sys, dir.path()), &pool(&root, Enforcement::Required));
    let names = verdicts(&checks);
    assert_eq!(names[..3], [("path", Verdict::Ok), ("filesystem", Verdict::Ok), ("capacity enforcement", Verdict::Ok)]);
    assert!(checks[1].detail.starts_with("ext4 (/dev/sdb1 mounted at"), "{}", checks[1].detail);
    assert!(probe_files_gone(&root));

    let sys = fake(EXT4, &without);
    let required = checks::hostpath(&host(&sys, dir.path()), &pool(&root, Enforcement::Required));
    assert_eq!(required[2].verdict, Verdict::Fail);
    assert!(required[2].fix.as_deref().is_some_and(|f| f.contains("tune2fs -O project,quota /dev/sdb1")));
    let auto = checks::hostpath(&host(&sys, dir.path()), &pool(&root, Enforcement::Auto));
    assert_eq!(auto[2].verdict, Verdict::Warn);
    let none = checks::hostpath(&host(&sys, dir.path()), &pool(&root, Enforcement::None));
    assert_eq!(none[2].verdict, Verdict::Ok);

    let sys = fake(EXT4, &with).with_project_quota(ProjectQuotaState::Enforced);
    let mut no_kernel = host(&sys, dir.path());
    no_kernel.kernel_quota = false;
    assert_eq!(checks::hostpath(&no_kernel, &pool(&root, Enforcement::Auto))[2].verdict, Verdict::Warn);
}

fn probe_files_gone(root: &Path) -> bool {
    std::fs::read_dir(root)
        .expect("ls")
        .all(|e| !e.expect("entry").file_name().to_string_lossy().starts_with(".berth-doctor"))
}

#[test]
fn btrfs_without_qgroups_warns_that_serve_enables_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = fake(BTRFS, "");
    let checks = checks::hostpath(&host(&sys, dir.path()), &pool(dir.path(), Enforcement::Auto));
    assert_eq!(checks[2].verdict, Verdict::Warn);
    assert!(checks[2].detail.contains("berth serve enables them"), "{:?}", checks[2]);
    assert_eq!(checks[3], Check::ok("pool fast", "reflink", "snapshots and clones are btrfs snapshots (instant)"));
}

#[test]
fn kubelet_dir_must_exist_on_a_shared_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical");
    let shared = fake(EXT4, &format!("40 1 0:5 / {} rw shared:9 - tmpfs t rw\n", root.display()));
    assert_eq!(
        verdicts(&checks::kubelet(&host(&shared, dir.path()), &root)),
        vec![("directory", Verdict::Ok), ("mount propagation", Verdict::Ok)]
    );
    let slave = fake(EXT4, &format!("40 1 0:5 / {} rw master:9 - tmpfs t rw\n", root.display()));
    let checks = checks::kubelet(&host(&slave, dir.path()), &root);
    assert_eq!(checks[1].verdict, Verdict::Fail);
    assert!(checks[1].detail.contains("master:9"), "{:?}", checks[1]);
    assert!(checks[1].fix.as_deref().is_some_and(|f| f.contains("Bidirectional")));
    let missing = checks::kubelet(&host(&shared, dir.path()), &root.join("absent"));
    assert_eq!(verdicts(&missing), vec![("directory", Verdict::Fail)]);
}

#[test]
fn socket_path_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = checks::socket(&format!("unix://{}/run/csi.sock", dir.path().display()));
    assert_eq!(ok.verdict, Verdict::Ok, "{ok:?}");
    assert!(ok.detail.contains("will be created"), "{ok:?}");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    assert_eq!(checks::socket(&format!("unix://{}", file.display())).verdict, Verdict::Fail);
    assert_eq!(checks::socket("tcp://127.0.0.1:1").verdict, Verdict::Fail);
    let long = format!("unix:///{}/csi.sock", "d".repeat(120));
    assert!(checks::socket(&long).detail.contains("at most 107"));
    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).expect("bind");
    assert_eq!(checks::socket(&format!("unix://{}", live.display())).verdict, Verdict::Warn);
}

#[test]
fn machine_checks_find_tools_loop_control_and_nfs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    for tool in ["mkfs.ext4", "resize2fs", "mkfs.xfs"] {
        std::fs::write(bin.join(tool), b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(bin.join(tool), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::write(bin.join("xfs_growfs"), b"not executable").expect("write");
    std::fs::write(dir.path().join("filesystems"), "nodev\tsysfs\n\text4\nnodev\tnfs4\n").expect("write");
    let sys = fake(EXT4, "");
    let mut h = host(&sys, dir.path());
    h.loop_control = "/dev/null".into(); // any character device will do
    let checks = checks::machine(&h, None);
    assert_eq!(
        verdicts(&checks),
        vec![
            ("root", Verdict::Ok),
            ("loop devices", Verdict::Ok),
            ("ext4 tools", Verdict::Ok),
            ("xfs tools", Verdict::Warn),
            ("btrfs tools", Verdict::Warn),
            ("kernel nfs", Verdict::Ok),
        ]
    );
    assert!(checks[3].detail.starts_with("xfs_growfs not found"), "{:?}", checks[3]);
    h.loop_control = dir.path().join("absent");
    std::fs::write(dir.path().join("filesystems"), "\text4\n").expect("write");
    h.root = false;
    let checks = checks::machine(&h, None);
    assert_eq!(checks[0].verdict, Verdict::Warn);
    assert_eq!(checks[1].verdict, Verdict::Warn);
    assert_eq!(checks[5].verdict, Verdict::Warn);
}

#[test]
fn reports_render_as_a_table_and_as_json() {
    let report = Report {
        checks: vec![
            Check::ok("config", "load", "x.yaml: 1 pool(s)"),
            Check::fail("pool fast", "path", "/srv/fast: No such file", "mkdir -p /srv/fast"),
        ],
    };
    assert!(report.failed());
    let table = report.table();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "SUBJECT    CHECK  RESULT  DETAIL");
    assert_eq!(lines[1], "config     load   ok      x.yaml: 1 pool(s)");
    assert_eq!(lines[2], "pool fast  path   fail    /srv/fast: No such file");
    assert_eq!(lines[3], format!("{:26}fix: mkdir -p /srv/fast", ""));
    assert_eq!(lines.last(), Some(&"1 ok, 0 warn, 1 fail"));
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
    assert_eq!(json["ok"], false);
    assert_eq!(json["summary"]["fail"], 1);
    assert_eq!(json["checks"][1]["verdict"], "fail");
    assert_eq!(json["checks"][1]["fix"], "mkdir -p /srv/fast");
    assert!(json["checks"][0].get("fix").is_none());
}

#[test]
fn an_unreadable_config_fails_but_the_machine_is_still_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = DoctorArgs {
        config: Some(dir.path().join("missing.yaml")),
        endpoint: format!("unix://{}/csi.sock", dir.path().display()),
        kubelet_dir: dir.path().to_path_buf(),
        output: Output::Table,
    };
    let sys = fake(EXT4, "");
    let report = run_on(&args, &host(&sys, dir.path()));
    assert_eq!((report.checks[0].check, report.checks[0].verdict), ("load", Verdict::Fail));
    assert!(report.checks.iter().any(|c| c.check == "loop devices"));
    assert!(report.checks.iter().any(|c| c.subject == "socket"));
    assert!(report.failed());
}
