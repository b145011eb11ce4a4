//! A real NFS server for tests: nfs-ganesha with a VFS export of a temporary directory,
//! listening on 127.0.0.1 on free ports (NFSv3 and v4; MOUNT on its own port). Ganesha
//! must register NFSv3 and MOUNT with rpcbind, so the harness starts rpcbind when none
//! runs (and leaves it, as the package's service would). Startups are serialised with a
//! lock file: two ganeshas registering at the same moment make one of them exit.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::have;

/// A running ganesha; killed on drop.
pub struct Ganesha {
    child: Child,
    /// Held for the server's whole life by [`Ganesha::start_with`] when asked: no other
    /// ganesha registers with rpcbind meanwhile, so the portmapper names this one's ports.
    _lock: Option<StartLock>,
    pub export: PathBuf,
    pub nfs_port: u16,
    pub mount_port: u16,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

fn rpcbind_running() -> bool {
    std::os::unix::net::UnixStream::connect("/run/rpcbind.sock").is_ok()
        || TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, 111).into(), Duration::from_millis(200)).is_ok()
}

/// An exclusive lock on a file in /tmp, released on drop.
struct StartLock(fs::File);

impl StartLock {
    fn take() -> Option<StartLock> {
        let file = fs::OpenOptions::new().create(true).append(true).open("/tmp/berth-test-ganesha.lock").ok()?;
        // SAFETY: flock on an fd this function owns; it blocks until the lock is free.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        (rc == 0).then_some(StartLock(file))
    }
}

impl Drop for StartLock {
    fn drop(&mut self) {
        // SAFETY: unlocking the fd this guard owns.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Ganesha {
    /// Starts ganesha exporting `dir/export`; `None` (with a SKIPPED line naming `test`)
    /// when ganesha is not installed or cannot start here.
    pub fn start(dir: &Path, test: &str) -> Option<Ganesha> {
        Ganesha::start_with(dir, test, &[], false)
    }

    /// [`Ganesha::start`], with more exports: each `(name, settings)` exports `dir/<name>`
    /// with `settings` (ganesha EXPORT block lines, e.g. `Squash = Root_Squash;`) in place
    /// of the defaults they name. With `own_portmapper`, rpcbind names this server's ports
    /// until it stops (other ganeshas wait to start).
    pub fn start_with(dir: &Path, test: &str, extra: &[(&str, &str)], own_portmapper: bool) -> Option<Ganesha> {
        if !have("ganesha.nfsd") || !have("rpcbind") {
            println!("SKIPPED: {test}: nfs-ganesha and rpcbind are not installed (scripts/test installs them)");
            return None;
        }
        let lock = StartLock::take();
        if !rpcbind_running() {
            let _ = Command::new("rpcbind").stdout(Stdio::null()).stderr(Stdio::null()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !rpcbind_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let export = dir.join("export");
        let recovery = dir.join("ganesha-recovery");
        fs::create_dir_all(&export).expect("mkdir export");
        fs::create_dir_all(&recovery).expect("mkdir recovery");
        let (nfs_port, mount_port) = (free_port(), free_port());
        let export_block = |id: usize, path: &Path, settings: &str| {
            let squash = if settings.contains("Squash") { "" } else { "Squash = No_Root_Squash;\n  " };
            format!(
                "EXPORT {{\n  Export_Id = {id};\n  Path = {e};\n  Pseudo = {e};\n  Access_Type = RW;\n  {squash}\
                 {settings}\n  Attr_Expiration_Time = 0;\n  SecType = sys;\n  Protocols = 3, 4;\n  Transports = TCP;\n  \
                 FSAL {{ Name = VFS; }}\n}}\n",
                e = path.display()
            )
        };
        let mut exports = export_block(1, &export, "");
        for (i, (name, settings)) in extra.iter().enumerate() {
            let path = dir.join(name);
            fs::create_dir_all(&path).expect("mkdir extra export");
            exports.push_str(&export_block(i + 2, &path, settings));
        }
        let config = dir.join("ganesha.conf");
        let log = dir.join("ganesha.log");
        let text = format!(
            "NFS_CORE_PARAM {{\n  Bind_addr = 127.0.0.1;\n  NFS_Port = {nfs_port};\n  MNT_Port = {mount_port};\n  \
             NLM_Port = {};\n  Rquota_Port = {};\n  Enable_NLM = false;\n  Enable_RQUOTA = false;\n  \
             Enable_UDP = false;\n  Protocols = 3, 4;\n}}\n\
             NFSV4 {{\n  Graceless = true;\n  RecoveryBackend = fs;\n  RecoveryRoot = {};\n}}\n\
             {exports}\
             MDCACHE {{\n  Dir_Chunk = 0;\n}}\n\
             LOG {{ Default_Log_Level = EVENT; }}\n",
            free_port(),
            free_port(),
            recovery.display(),
        );
        fs::File::create(&config).and_then(|mut f| f.write_all(text.as_bytes())).expect("write ganesha.conf");
        let child = Command::new("ganesha.nfsd")
            .args(["-F", "-N", "NIV_EVENT", "-f"])
            .arg(&config)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(dir.join("ganesha.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                println!("SKIPPED: {test}: ganesha.nfsd cannot start: {e}");
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<_> = tail.lines().rev().take(5).collect();
                println!("SKIPPED: {test}: ganesha.nfsd exited with {status}: {}", tail.join(" | "));
                return None;
            }
            let up = fs::read_to_string(&log).is_ok_and(|l| l.contains("NFS SERVER INITIALIZED"));
            if up
                && TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, nfs_port).into(), Duration::from_millis(200))
                    .is_ok()
            {
                let held = if own_portmapper { lock } else { None };
                return Some(Ganesha { child, _lock: held, export, nfs_port, mount_port, log });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                println!("SKIPPED: {test}: ganesha.nfsd did not start within 20s");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The mount options that point berth (client and kernel) at this server's ports.
    pub fn mount_options(&self) -> String {
        format!("[port={}, mountport={}]", self.nfs_port, self.mount_port)
    }

    /// Where berth's userspace client reaches this server as root, without rpcbind.
    pub fn endpoint(&self) -> berth::nfs::Endpoint {
        berth::nfs::Endpoint {
            host: "127.0.0.1".into(),
            export: self.export.display().to_string(),
            nfs_port: Some(self.nfs_port),
            mount_port: Some(self.mount_port),
            timeout: Duration::from_secs(10),
            auth: berth::nfs::rpc::AuthSys { machine: "test".into(), uid: 0, gid: 0 },
        }
    }

    /// Stops the server (to test a dead server), waiting for it to exit.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- ganesha log ----\n{}", fs::read_to_string(&self.log).unwrap_or_default());
        }
        self.stop();
    }
}

/// An NFS pool config for berth on this server.
pub fn nfs_config(state: &Path, g: &Ganesha, pools: &[(&str, &str)]) -> String {
    let mut text = format!("stateDir: {}\npools:\n", state.display());
    for (name, extra) in pools {
        text.push_str(&format!(
            "  - {{name: {name}, type: nfs, server: 127.0.0.1, export: {}, mountOptions: {}{}}}\n",
            g.export.display(),
            g.mount_options(),
            if extra.is_empty() { String::new() } else { format!(", {extra}") }
        ));
    }
    text
}
