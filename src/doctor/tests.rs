//! Doctor checks against the recording syscall fake and fixture files: no root needed.

use std::path::Path;
use std::sync::Arc;

use super::checks::{self, Host, Needs};
use super::pools;
use super::*;
use crate::config::{Config, HostPathPool, PoolConfig};
use crate::mount::fake::RecordingSyscall;
use crate::mount::{FsStat, ProjectQuotaState, Syscall};

const EXT4: i64 = 0xEF53;
const BTRFS: i64 = crate::mount::btrfs::BTRFS_SUPER_MAGIC;

fn host(sys: &Arc<RecordingSyscall>, dir: &Path) -> Host {
    Host {
        sys: Arc::clone(sys) as Arc<dyn Syscall>,
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
    HostPathPool {
        name: "fast".into(),
        path: path.to_path_buf(),
        capacity_enforcement: enforcement,
        ephemeral: false,
        create_path: false,
    }
}

use crate::config::Enforcement;

fn verdicts(checks: &[Check]) -> Vec<(&'static str, Verdict)> {
    checks.iter().map(|c| (c.check, c.verdict)).collect()
}

#[test]
fn a_missing_pool_path_fails_and_skips_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = Arc::new(fake(EXT4, ""));
    let checks = pools::hostpath(&host(&sys, dir.path()), &pool(&dir.path().join("absent"), Enforcement::Auto), 0);
    assert_eq!(verdicts(&checks), vec![("path", Verdict::Fail)]);
    assert!(checks[0].fix.as_deref().is_some_and(|f| f.contains("mkdir -p")), "{checks:?}");

    // With createPath, berth makes it at start: that is not a failure.
    let created = HostPathPool { create_path: true, ..pool(&dir.path().join("absent"), Enforcement::Auto) };
    let checks = pools::hostpath(&host(&sys, dir.path()), &created, 0);
    assert_eq!(verdicts(&checks), vec![("path", Verdict::Ok)]);
    assert!(checks[0].detail.contains("next start makes it"), "{checks:?}");
}

#[test]
fn project_quota_enforcement_depends_on_mount_options_and_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical");
    let with = format!("30 1 8:1 / {} rw shared:1 - ext4 /dev/sdb1 rw,prjquota\n", root.display());
    let without = format!("30 1 8:1 / {} rw shared:1 - ext4 /dev/sdb1 rw\n", root.display());

    let sys = Arc::new(fake(EXT4, &with).with_project_quota(ProjectQuotaState::Enforced));
    let checks = pools::hostpath(&host(&sys, dir.path()), &pool(&root, Enforcement::Required), 0);
    let names = verdicts(&checks);
    assert_eq!(names[..3], [("path", Verdict::Ok), ("filesystem", Verdict::Ok), ("capacity enforcement", Verdict::Ok)]);
    assert!(checks[1].detail.starts_with("ext4 (/dev/sdb1 mounted at"), "{}", checks[1].detail);
    assert!(probe_files_gone(&root));

    let sys = Arc::new(fake(EXT4, &without));
    let required = pools::hostpath(&host(&sys, dir.path()), &pool(&root, Enforcement::Required), 0);
    assert_eq!(required[2].verdict, Verdict::Fail);
    assert!(required[2].fix.as_deref().is_some_and(|f| f.contains("tune2fs -O project,quota /dev/sdb1")));
    let auto = pools::hostpath(&host(&sys, dir.path()), &pool(&root, Enforcement::Auto), 0);
    assert_eq!(auto[2].verdict, Verdict::Warn);
    let none = pools::hostpath(&host(&sys, dir.path()), &pool(&root, Enforcement::None), 0);
    assert_eq!(none[2].verdict, Verdict::Ok);

    let sys = Arc::new(fake(EXT4, &with).with_project_quota(ProjectQuotaState::Enforced));
    let mut no_kernel = host(&sys, dir.path());
    no_kernel.kernel_quota = false;
    assert_eq!(pools::hostpath(&no_kernel, &pool(&root, Enforcement::Auto), 0)[2].verdict, Verdict::Warn);
}

fn probe_files_gone(root: &Path) -> bool {
    std::fs::read_dir(root)
        .expect("ls")
        .all(|e| !e.expect("entry").file_name().to_string_lossy().starts_with(".berth-doctor"))
}

#[test]
fn btrfs_without_qgroups_warns_that_serve_enables_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = Arc::new(fake(BTRFS, ""));
    let checks = pools::hostpath(&host(&sys, dir.path()), &pool(dir.path(), Enforcement::Auto), 0);
    assert_eq!(checks[2].verdict, Verdict::Warn);
    assert!(checks[2].detail.contains("berth serve enables them"), "{:?}", checks[2]);
    assert_eq!(checks[3], Check::ok("pool fast", "reflink", "snapshots and clones are btrfs snapshots (instant)"));
}

#[test]
fn a_pool_directory_that_is_not_the_pool_fails_the_identity_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = Arc::new(fake(BTRFS, ""));
    let identity = |recorded: usize| {
        let checks = pools::hostpath(&host(&sys, dir.path()), &pool(dir.path(), Enforcement::Auto), recorded);
        checks.into_iter().find(|c| c.check == "identity").expect("checked")
    };
    assert_eq!(identity(0).verdict, Verdict::Ok, "a new pool is marked at the next start");
    let wrong = identity(2);
    assert_eq!(wrong.verdict, Verdict::Fail, "records of the pool, but not its disk");
    assert!(wrong.detail.contains("probably not mounted"), "{}", wrong.detail);
    crate::backend::identity::claim("fast", dir.path(), 0, false).expect("mark");
    assert_eq!(identity(2).verdict, Verdict::Ok);
}

#[test]
fn kubelet_dir_must_exist_on_a_shared_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical");
    let shared = Arc::new(fake(EXT4, &format!("40 1 0:5 / {} rw shared:9 - tmpfs t rw\n", root.display())));
    assert_eq!(
        verdicts(&checks::kubelet(&host(&shared, dir.path()), &root)),
        vec![("directory", Verdict::Ok), ("mount propagation", Verdict::Ok)]
    );
    let slave = Arc::new(fake(EXT4, &format!("40 1 0:5 / {} rw master:9 - tmpfs t rw\n", root.display())));
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

fn tools(bin: &Path, names: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin).expect("mkdir");
    for tool in names {
        std::fs::write(bin.join(tool), b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(bin.join(tool), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn machine_checks_find_tools_loop_control_and_nfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    tools(&bin, &["blkid", "mkfs.ext4", "resize2fs", "e2fsck", "mkfs.xfs"]);
    std::fs::write(bin.join("xfs_growfs"), b"not executable").expect("write");
    std::fs::write(dir.path().join("filesystems"), "nodev\tsysfs\n\text4\nnodev\tnfs4\n").expect("write");
    let sys = Arc::new(fake(EXT4, ""));
    let mut h = host(&sys, dir.path());
    h.loop_control = "/dev/null".into(); // any character device will do
    let checks = checks::machine(&h, None, Needs::default());
    assert_eq!(
        verdicts(&checks),
        vec![
            ("root", Verdict::Ok),
            ("loop devices", Verdict::Ok),
            ("device tools", Verdict::Ok),
            ("ext4 tools", Verdict::Ok),
            ("xfs tools", Verdict::Warn),
            ("btrfs tools", Verdict::Warn),
            ("kernel nfs", Verdict::Ok),
        ]
    );
    assert!(checks[4].detail.starts_with("xfs_growfs not found"), "{:?}", checks[4]);
    assert!(checks[4].detail.ends_with("(no configured pool needs it)"), "{:?}", checks[4]);
    h.loop_control = dir.path().join("absent");
    std::fs::write(dir.path().join("filesystems"), "\text4\n").expect("write");
    h.root = false;
    let checks = checks::machine(&h, None, Needs::default());
    assert_eq!(checks[0].verdict, Verdict::Warn);
    assert_eq!(checks[1].verdict, Verdict::Warn);
    assert_eq!(checks[6].verdict, Verdict::Warn);
}

#[test]
fn block_and_device_pools_turn_missing_pieces_into_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "stateDir: {0}/state\npools:\n  - {{name: img, type: block, path: {0}/img}}\n  - {{name: disks, type: device, devices: [/dev/nothing-here-*]}}\n",
        dir.path().display()
    );
    let config = Config::parse(&text, "test").expect("config");
    let needs = Needs::of(Some(&config));
    assert_eq!(needs, Needs { loop_devices: true, formats: true, wipefs: true, nfs: false });
    assert_eq!(Needs::of(None), Needs::default());

    // No loop-control, no blkid/wipefs, no ext4 tools: each one a failure now; xfs and
    // btrfs tools stay warnings (only a request naming them needs them).
    let bin = dir.path().join("bin");
    tools(&bin, &["blkid"]);
    let sys = Arc::new(fake(EXT4, ""));
    let mut h = host(&sys, dir.path());
    h.loop_control = dir.path().join("absent");
    let checks = checks::machine(&h, Some(&config), needs);
    let got: Vec<_> = verdicts(&checks).into_iter().filter(|(c, _)| *c != "state directory").collect();
    assert_eq!(
        got,
        vec![
            ("root", Verdict::Ok),
            ("records", Verdict::Ok),
            ("roots", Verdict::Ok),
            ("loop devices", Verdict::Fail),
            ("device tools", Verdict::Fail),
            ("ext4 tools", Verdict::Fail),
            ("xfs tools", Verdict::Warn),
            ("btrfs tools", Verdict::Warn),
            ("kernel nfs", Verdict::Warn),
        ]
    );
    assert!(checks.iter().any(|c| c.check == "device tools" && c.detail.starts_with("wipefs not found")));

    let PoolConfig::Block(img) = &config.pools[0] else { panic!("block pool") };
    assert_eq!(verdicts(&pools::block(&h, img, 0)), vec![("path", Verdict::Fail)]);
    std::fs::create_dir_all(&img.path).expect("mkdir");
    let pool = pools::block(&h, img, 0);
    assert_eq!(verdicts(&pool)[..2], [("path", Verdict::Ok), ("filesystem", Verdict::Ok)]);
    // Whether the temp filesystem clones files varies; that the probe could write does not.
    assert_eq!(pool[2].check, "reflink");
    assert_ne!(pool[2].verdict, Verdict::Fail, "{:?}", pool[2]);
    assert_ne!(pool[2].detail, "snapshots and clones are btrfs snapshots (instant)");
    let PoolConfig::Device(disks) = &config.pools[1] else { panic!("device pool") };
    let found = pools::device(&h, disks);
    assert_eq!(
        verdicts(&found),
        vec![
            ("devices", Verdict::Warn),
            ("device names", Verdict::Warn),
            ("wipe", Verdict::Ok),
            ("encryption", Verdict::Ok)
        ]
    );
    assert!(found[3].detail.starts_with("luks2"), "{:?}", found[3]);
    sys.fail("luks_support", libc::ENODEV);
    let fscrypt_only = pools::device(&h, disks);
    assert!(fscrypt_only[3].detail.starts_with("fscrypt") && fscrypt_only[3].detail.contains("refused"));
    sys.fail("ext4_encryption_support", libc::EOPNOTSUPP);
    let without = pools::device(&h, disks);
    assert_eq!(without[3].verdict, Verdict::Ok, "a pool need not encrypt");
    assert!(without[3].detail.starts_with("none") && without[3].detail.contains("refused"), "{:?}", without[3]);
    assert!(found[0].detail.contains("/dev/nothing-here-*"), "{:?}", found[0]);
    assert!(found[1].detail.contains("kernel's names"), "{:?}", found[1]);
    let stable = Config::parse(
        "pools: [{name: d, type: device, devices: ['/dev/disk/by-id/nothing-here-*'], wipe: signatures}]",
        "test",
    )
    .expect("config");
    let PoolConfig::Device(stable) = &stable.pools[0] else { panic!("device pool") };
    let found = pools::device(&h, stable);
    assert_eq!(verdicts(&found)[1..3], [("device names", Verdict::Ok), ("wipe", Verdict::Warn)]);
    assert!(found[2].detail.contains("can read the last one's data"), "{:?}", found[2]);
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
    let sys = Arc::new(fake(EXT4, ""));
    let report = run_on(&args, &host(&sys, dir.path()));
    assert_eq!((report.checks[0].check, report.checks[0].verdict), ("load", Verdict::Fail));
    assert!(report.checks.iter().any(|c| c.check == "loop devices"));
    assert!(report.checks.iter().any(|c| c.subject == "socket"));
    assert!(report.failed());
}

#[test]
fn the_records_check_loads_them_as_a_start_would_and_names_what_is_damaged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let text = format!(
        "stateDir: {}\npools:\n  - {{name: hp, type: hostpath, path: {}/hp}}\n",
        state.display(),
        dir.path().display()
    );
    let config = Config::parse(&text, "test").expect("config");
    let sys = Arc::new(fake(EXT4, ""));
    let h = host(&sys, dir.path());
    let records = |h: &Host| {
        checks::machine(h, Some(&config), Needs::default()).into_iter().find(|c| c.check == "records").expect("checked")
    };
    assert_eq!(records(&h).verdict, Verdict::Ok, "no records yet is fine");

    let (store, _) = crate::state::Store::open(&state).expect("open");
    let (volumes, _) = crate::state::read_records(&state).expect("read");
    assert!(volumes.is_empty());
    drop(store);
    let check = records(&h);
    assert_eq!((check.verdict, check.detail.as_str()), (Verdict::Ok, "0 volume and 0 snapshot records load"));

    std::fs::write(state.join("state/records"), b"{").expect("damage");
    let check = records(&h);
    assert_eq!(check.verdict, Verdict::Fail);
    assert!(check.detail.contains("records cannot be read"), "{}", check.detail);
    assert!(check.fix.is_some_and(|f| f.contains("backup")));
}

#[test]
fn the_encryption_check_says_whether_the_pool_can_encrypt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |sys: &Arc<RecordingSyscall>| {
        let checks = pools::hostpath(&host(sys, dir.path()), &pool(dir.path(), Enforcement::Auto), 0);
        checks.into_iter().find(|c| c.check == "encryption").expect("an encryption check")
    };
    let can = Arc::new(fake(EXT4, ""));
    let found = check(&can);
    assert_eq!(found.verdict, Verdict::Ok);
    assert!(found.detail.starts_with("fscrypt"), "{}", found.detail);

    let cannot = Arc::new(fake(EXT4, ""));
    cannot.fail("fscrypt_policy_key", libc::EOPNOTSUPP);
    let found = check(&cannot);
    assert_eq!(found.verdict, Verdict::Ok, "a pool need not encrypt");
    assert!(found.detail.starts_with("none") && found.detail.contains("tune2fs -O encrypt"), "{}", found.detail);

    let unsure = Arc::new(fake(EXT4, ""));
    unsure.fail("fscrypt_policy_key", libc::EIO);
    assert_eq!(check(&unsure).verdict, Verdict::Warn);
}
