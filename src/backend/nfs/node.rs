//! The node side of NFS volumes: the kernel mount at the staging path, recognising it in
//! the mount table, and measuring a mounted volume without ever blocking an RPC on a dead
//! server (the walk runs on its own thread; the RPC waits a bounded time for it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::tree;

/// How long a measured usage is reused.
const USAGE_TTL: Duration = Duration::from_secs(60);
/// How long NodeGetVolumeStats waits for a walk before answering with what it has.
const USAGE_WAIT: Duration = Duration::from_secs(10);

/// The mount(2) source for `server:/export/rel`; IPv6 literals are bracketed.
#[must_use]
pub fn device_name(server: &str, export: &str, rel: &Path) -> String {
    let host =
        if server.contains(':') && !server.starts_with('[') { format!("[{server}]") } else { server.to_string() };
    let path = if rel.as_os_str().is_empty() {
        export.to_string()
    } else {
        format!("{}/{}", export.trim_end_matches('/'), rel.display())
    };
    format!("{host}:{path}")
}

/// What a walk found, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub bytes: u64,
    pub inodes: u64,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub free_inodes: u64,
}

#[derive(Debug, Default)]
struct Slot {
    measured: Option<(Instant, Result<Measured, String>)>,
    running: bool,
}

/// Usage of mounted volumes, measured on helper threads and cached per path.
#[derive(Debug, Default, Clone)]
pub struct UsageCache {
    slots: Arc<Mutex<HashMap<PathBuf, Slot>>>,
}

fn measure(path: &Path) -> Result<Measured, String> {
    let walked = tree::usage(path).map_err(|e| format!("walking it: {e}"))?;
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs: {e}"))?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let frsize = st.fragment_size() as u64;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    Ok(Measured {
        bytes: walked.bytes,
        inodes: walked.inodes,
        total_bytes: (st.blocks() as u64).saturating_mul(frsize),
        available_bytes: (st.blocks_available() as u64).saturating_mul(frsize),
        free_inodes: st.files_free() as u64,
    })
}

impl UsageCache {
    /// The usage of the tree mounted at `path`: a fresh cached value, or a new walk if it
    /// finishes within a few seconds, or else the last value (the walk goes on in the
    /// background, one at a time per path). `Err` says why nothing could be measured (the
    /// caller names the path).
    pub fn get(&self, path: &Path) -> Result<Measured, String> {
        let rx = {
            let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let slot = slots.entry(path.to_path_buf()).or_default();
            if let Some((at, m)) = &slot.measured
                && at.elapsed() < USAGE_TTL
            {
                return m.clone();
            }
            if slot.running {
                None
            } else {
                slot.running = true;
                let (tx, rx) = std::sync::mpsc::channel();
                let slots = Arc::clone(&self.slots);
                let owned = path.to_path_buf();
                std::thread::spawn(move || {
                    let m = measure(&owned);
                    let mut slots = slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let slot = slots.entry(owned).or_default();
                    slot.running = false;
                    slot.measured = Some((Instant::now(), m.clone()));
                    let _ = tx.send(m);
                });
                Some(rx)
            }
        };
        if let Some(rx) = rx
            && let Ok(m) = rx.recv_timeout(USAGE_WAIT)
        {
            return m;
        }
        let slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match slots.get(path).and_then(|s| s.measured.clone()) {
            Some((_, m)) => m,
            None => Err(format!(
                "it did not answer within {}s (is the NFS server reachable?); measuring goes on in the background",
                USAGE_WAIT.as_secs()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_bracket_ipv6() {
        assert_eq!(
            device_name("nfs.example.com", "/exports/k8s/", Path::new("ns/db")),
            "nfs.example.com:/exports/k8s/ns/db"
        );
        assert_eq!(device_name("2001:db8::1", "/x", Path::new("v")), "[2001:db8::1]:/x/v");
        assert_eq!(device_name("[::1]", "/x", Path::new("v")), "[::1]:/x/v");
    }

    #[test]
    fn usage_of_a_local_tree_is_measured_and_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), vec![1u8; 8192]).expect("write");
        let cache = UsageCache::default();
        let first = cache.get(dir.path()).expect("measured");
        assert_eq!(first.inodes, 2);
        assert!(first.bytes >= 8192);
        std::fs::write(dir.path().join("g"), b"x").expect("write");
        assert_eq!(cache.get(dir.path()).expect("cached"), first, "within the TTL the cached value is used");
    }
}
