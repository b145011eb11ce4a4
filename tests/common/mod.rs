//! The integration-test harness: real berth processes on temporary unix sockets, pools on
//! filesystems the test creates in image files, and cleanup that runs even when a test
//! fails (every resource is a guard whose Drop undoes it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::csi::pb;
use berth::csi::pb::controller_client::ControllerClient;
use berth::csi::pb::group_controller_client::GroupControllerClient;
use berth::csi::pb::identity_client::IdentityClient;
use berth::csi::pb::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};

pub mod ganesha;
pub mod packs;

/// True when running as root; otherwise prints the SKIPPED line naming the test.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    println!("SKIPPED: {test}: needs root for mounts");
    false
}

/// Runs a command, panicking with its output on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a program is on PATH (mkfs tools are installed by the test command).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Deterministic pseudo-random bytes (xorshift from `seed`): data no filesystem can
/// compress or deduplicate, the same on every run.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lazily unmounts every mount at or below `root`, deepest first.
pub fn unmount_below(root: &Path) {
    for _ in 0..8 {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<PathBuf> = berth::mount::mountinfo::parse(&text)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.mount_point)
            .filter(|p| p.starts_with(root))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Detaches every loop device whose backing file lies at or below `root`: what a berth
/// killed with a block volume staged leaves attached. Run before [`unmount_below`], while
/// the backing files' paths still lead there (the kernel shows a file of a detached mount
/// by its path inside that filesystem); a device still mounted is only marked, and goes
/// when the unmount releases it.
pub fn detach_loops_below(root: &Path) {
    let Ok(out) = Command::new("losetup").args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"]).output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(file)) = (fields.next(), fields.next()) else { continue };
        if Path::new(file).starts_with(root) {
            let _ = Command::new("losetup").args(["-d", device]).status();
        }
    }
}

/// Mount points at or below `root` right now.
pub fn mounts_below(root: &Path) -> Vec<berth::mount::mountinfo::MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    berth::mount::mountinfo::parse(&text)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.mount_point.starts_with(root))
        .collect()
}

/// A scratch directory that unmounts everything below it and is removed on drop.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir_in("/tmp").expect("tempdir");
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        detach_loops_below(self.dir.path());
        unmount_below(self.dir.path());
    }
}

/// A filesystem of the given type in a sparse image file, loop-mounted at `mount`.
pub struct FsImage {
    pub mount: PathBuf,
    image: PathBuf,
}

impl FsImage {
    /// Creates and mounts the image under `scratch`; `None` (with a SKIPPED line) when the
    /// mkfs tool is missing.
    pub fn new(scratch: &Scratch, test: &str, fs: &str, size: &str) -> Option<FsImage> {
        Self::with_options(scratch, test, fs, size, &[])
    }

    /// [`FsImage::new`] with more mkfs arguments (e.g. `-O encrypt` for ext4).
    pub fn with_options(scratch: &Scratch, test: &str, fs: &str, size: &str, options: &[&str]) -> Option<FsImage> {
        let mkfs = format!("mkfs.{fs}");
        if !have(&mkfs) {
            println!("SKIPPED: {test}: {mkfs} is not installed");
            return None;
        }
        let image = scratch.path().join(format!("{fs}.img"));
        let mount = scratch.path().join(format!("{fs}-pool"));
        std::fs::create_dir_all(&mount).expect("mkdir");
        sh("truncate", &["-s", size, image.to_str().expect("utf8")]);
        let quiet: &[&str] = match fs {
            "xfs" => &["-q", "-f", "-m", "reflink=1"],
            "btrfs" => &["-q", "-f"],
            _ => &["-q", "-F"],
        };
        let mut args = quiet.to_vec();
        args.extend_from_slice(options);
        args.push(image.to_str().expect("utf8"));
        sh(&mkfs, &args);
        sh("mount", &["-o", "loop", image.to_str().expect("utf8"), mount.to_str().expect("utf8")]);
        Some(FsImage { mount, image })
    }
}

impl FsImage {
    /// The image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Unmounts the filesystem (to read its image as a thief would) and mounts it again.
    pub fn remount_after(&self, look: impl FnOnce(&Path)) {
        sh("umount", &[self.mount.to_str().expect("utf8")]);
        look(&self.image);
        sh("mount", &["-o", "loop", self.image.to_str().expect("utf8"), self.mount.to_str().expect("utf8")]);
    }
}

impl Drop for FsImage {
    fn drop(&mut self) {
        detach_loops_below(&self.mount);
        unmount_below(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A running `berth serve` process and clients connected to it.
pub struct Berth {
    child: Option<Child>,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub node_id: String,
    pub log: PathBuf,
    args: Vec<String>,
    /// Extra environment for the process (fault points).
    pub env: Vec<(String, String)>,
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub group: GroupControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

pub async fn connect(socket: &Path) -> Option<Channel> {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::1]:1")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .ok()
}

impl Berth {
    /// Starts berth with `config` (YAML) in `dir`, and waits until Probe answers ready.
    pub async fn start(dir: &Path, config: &str, node_id: &str, extra: &[&str]) -> Berth {
        let config_path = dir.join("berth.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let socket = dir.join("csi.sock");
        let log = dir.join("berth.log");
        let mut args = vec![
            "serve".to_string(),
            "--endpoint".to_string(),
            format!("unix://{}", socket.display()),
            "--config".to_string(),
            config_path.display().to_string(),
            "--node-id".to_string(),
            node_id.to_string(),
        ];
        if !extra.contains(&"--log-level") {
            args.extend(["--log-level".to_string(), "debug".to_string()]);
        }
        args.extend(extra.iter().map(std::string::ToString::to_string));
        let mut berth = Berth {
            child: None,
            socket,
            config: config_path,
            node_id: node_id.to_string(),
            log,
            args,
            env: Vec::new(),
            identity: IdentityClient::new(Channel::from_static("http://[::1]:1").connect_lazy()),
            controller: ControllerClient::new(Channel::from_static("http://[::1]:1").connect_lazy()),
            group: GroupControllerClient::new(Channel::from_static("http://[::1]:1").connect_lazy()),
            node: NodeClient::new(Channel::from_static("http://[::1]:1").connect_lazy()),
        };
        berth.spawn().await;
        berth
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn berth");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("berth exited with {status} before serving:\n{}", self.logs());
            }
            // A socket left by a killed process refuses connections until berth replaces it.
            if self.socket.exists()
                && let Some(channel) = connect(&self.socket).await
            {
                let mut identity = IdentityClient::new(channel.clone());
                if let Ok(r) = identity.probe(pb::ProbeRequest {}).await
                    && r.into_inner().ready == Some(true)
                {
                    self.identity = identity;
                    self.controller = ControllerClient::new(channel.clone());
                    self.group = GroupControllerClient::new(channel.clone());
                    self.node = NodeClient::new(channel);
                    return;
                }
            }
            assert!(Instant::now() < deadline, "berth did not become ready:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process ID of the running berth.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything berth logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("berth did not exit within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself (a fault point killed it).
    pub fn exited_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.as_mut().map(std::process::Child::try_wait) {
                Some(Ok(Some(_))) | None => {
                    self.child = None;
                    return true;
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        false
    }

    /// Starts berth again after it died, with the same arguments and `env`.
    pub async fn respawn(&mut self) {
        self.spawn().await;
    }

    /// Kills berth with SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts berth again with the same arguments.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn().await;
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- berth log ----\n{}", self.logs());
        }
    }
}

/// Where a volume was staged, and the pod target it was published at.
pub struct Paths {
    pub staging: PathBuf,
    pub target: PathBuf,
}

/// NodeStageVolume at `<root>/staging-<tag>`, then NodePublishVolume at
/// `<root>/pod-<tag>/vol`, as the kubelet calls them.
pub async fn stage_publish(b: &mut Berth, root: &Path, id: &str, tag: &str, cap: pb::VolumeCapability) -> Paths {
    let staging = root.join(format!("staging-{tag}"));
    let pod = root.join(format!("pod-{tag}"));
    std::fs::create_dir_all(&pod).expect("mkdir");
    let target = pod.join("vol");
    b.node
        .node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .expect("stage");
    b.node
        .node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(cap),
            ..Default::default()
        })
        .await
        .expect("publish");
    Paths { staging, target }
}

/// NodeUnpublishVolume, then NodeUnstageVolume.
pub async fn unpublish_unstage(b: &mut Berth, id: &str, p: &Paths) {
    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: p.target.display().to_string(),
        })
        .await
        .expect("unpublish");
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: p.staging.display().to_string(),
        })
        .await
        .expect("unstage");
}

/// A mount capability with the given access mode.
pub fn mount_cap(mode: pb::volume_capability::access_mode::Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(pb::volume_capability::MountVolume::default())),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

/// The usual single-node-writer mount capability.
pub fn rwo() -> pb::VolumeCapability {
    mount_cap(pb::volume_capability::access_mode::Mode::SingleNodeWriter)
}

/// A CreateVolume request for `name` with `bytes` in the default pool.
pub fn create_req(name: &str, bytes: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(pb::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![rwo()],
        ..Default::default()
    }
}

/// A hostPath pool config on `path`.
/// berth with one hostPath pool (`enforcement`) at `pool/` on a fresh `fs` filesystem of
/// `size` made for `test`, and its state beside it; `None` where that filesystem cannot be
/// made here ([`FsImage::new`] says why).
pub async fn hostpath_on(
    scratch: &Scratch,
    test: &str,
    (fs, size): (&str, &str),
    enforcement: &str,
    extra: &[&str],
) -> Option<(FsImage, PathBuf, Berth)> {
    let disk = FsImage::new(scratch, test, fs, size)?;
    let pool = disk.mount.join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, enforcement);
    let b = Berth::start(scratch.path(), &config, "node-a", extra).await;
    Some((disk, pool, b))
}

pub fn hostpath_config(state: &Path, pool: &Path, enforcement: &str) -> String {
    format!(
        "stateDir: {}\npools:\n  - name: default\n    type: hostpath\n    path: {}\n    createPath: true\n    capacityEnforcement: {enforcement}\n",
        state.display(),
        pool.display()
    )
}

/// The RPC capabilities a ControllerGetCapabilities answer lists.
pub fn controller_rpcs(
    caps: &pb::ControllerGetCapabilitiesResponse,
) -> Vec<pb::controller_service_capability::rpc::Type> {
    use pb::controller_service_capability::{Type, rpc};
    caps.capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(Type::Rpc(r)) => rpc::Type::try_from(r.r#type).ok(),
            _ => None,
        })
        .collect()
}

/// The gRPC code of a failed call.
pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Code {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

/// Runs the berth binary with `args` (e.g. `doctor ...`, `csi ...`) and returns its output.
pub fn berth_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env_remove("CSI_ENDPOINT")
        .env_remove("BERTH_CONFIG")
        .env_remove("BERTH_ENDPOINT")
        .output()
        .unwrap_or_else(|e| panic!("running berth {args:?}: {e}"))
}

/// Removes ANSI colour escapes from log text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Berth {
    /// The address berth last logged for its metrics server (`--metrics-address HOST:0`).
    pub fn metrics_address(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = strip_ansi(&self.logs());
            // The last one: a restarted berth serves on a new port.
            let found = logs.lines().rev().filter(|l| l.contains("serving metrics")).find_map(|l| {
                let rest = l.split("address").nth(1)?;
                let rest = rest.trim_start_matches(['=', '"', ':', ' ']);
                Some(rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect::<String>())
            });
            if let Some(address) = found.filter(|a| a.contains(':')) {
                return address;
            }
            assert!(Instant::now() < deadline, "berth never logged its metrics address:\n{logs}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A plain HTTP/1.1 GET: the status code and the body.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics address");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, body.to_string())
}

/// Mounts a FUSE filesystem at `target` whose daemon is already gone (the fuse device is
/// closed right after mounting): every access fails with ENOTCONN, the way a mount of a
/// dead NFS server misbehaves. A stand-in the kernel here can provide.
pub fn mount_dead_fuse(target: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fuse = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let data = format!("fd={},rootmode=40000,user_id=0,group_id=0", fuse.as_raw_fd());
    nix::mount::mount(Some("berth-dead"), target, Some("fuse"), nix::mount::MsFlags::empty(), Some(data.as_str()))
        .map_err(std::io::Error::from)?;
    drop(fuse);
    Ok(())
}

/// Loop devices made by the test as stand-in disks, detached on drop.
pub struct Disks {
    pub devices: Vec<String>,
}

impl Disks {
    pub fn new(dir: &Path, sizes_mib: &[u64]) -> Disks {
        let mut devices = Vec::new();
        for (i, size) in sizes_mib.iter().enumerate() {
            let img = dir.join(format!("disk{i}.img"));
            sh("truncate", &["-s", &format!("{size}M"), img.to_str().expect("utf8")]);
            devices.push(sh("losetup", &["--find", "--show", img.to_str().expect("utf8")]).trim().to_string());
        }
        Disks { devices }
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        for d in &self.devices {
            let _ = std::process::Command::new("losetup").args(["-d", d]).status();
        }
    }
}
