//! The pool object: its configuration, and the userspace client's connection to the
//! export, reused across calls and replaced when it breaks.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Error, Result, SUBDIR_KEY};
use super::{export, node};
use crate::backend::{PoolInfo, PoolKind, Source, StageSource, Usage};
use crate::config::mount_options::Options;
use crate::config::template::Template;
use crate::config::{self, OnDelete};
use crate::mount::Syscall;
use crate::nfs::{self, Client, Endpoint, rpc::AuthSys};
use crate::state::VolumeRecord;

/// Deadline of every call of the controller's client.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Formats Unix seconds as `YYYYmmddTHHMMSSZ` (UTC), for archive names.
pub(super) fn utc_stamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub(super) fn split_last(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// An NFS pool.
pub struct NfsPool {
    pub(super) info: PoolInfo,
    pub(super) server: String,
    pub(super) export: String,
    pub(super) options: Options,
    pub(super) template: Template,
    pub(super) on_delete: OnDelete,
    pub(super) mode: u32,
    pub(super) endpoint: Endpoint,
    pub(super) session: Mutex<Option<Client>>,
    pub(super) sys: Arc<dyn Syscall>,
    pub(super) usage: node::UsageCache,
}

impl NfsPool {
    /// Prepares the pool. Nothing is contacted yet: the controller connects on first use,
    /// and a node plugin never needs the userspace client except to register itself.
    pub fn open(config: &config::NfsPool, sys: Arc<dyn Syscall>) -> Result<NfsPool> {
        let machine = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let export = config.export.as_str().to_string();
        let endpoint = Endpoint {
            host: config.server.as_str().to_string(),
            export: export.clone(),
            nfs_port: config.mount_options.port(),
            mount_port: config.mount_options.mount_port(),
            timeout: CALL_TIMEOUT,
            auth: AuthSys { machine, uid: 0, gid: 0 },
        };
        tracing::info!(pool = %config.name, server = %config.server, export = %export, "nfs pool ready");
        Ok(NfsPool {
            info: PoolInfo {
                node_local: false,
                fs_types: super::FS_TYPES,
                background_copies: true,
                copies_only: config.copies_only,
                ..PoolInfo::directories(&config.name, PoolKind::Nfs)
            },
            server: config.server.as_str().to_string(),
            export,
            options: config.mount_options.clone(),
            template: config.sub_dir.clone(),
            on_delete: config.on_delete,
            mode: config.permissions.0,
            endpoint,
            session: Mutex::new(None),
            sys,
            usage: node::UsageCache::default(),
        })
    }

    pub(super) fn location(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("{}:{}/{rel}", self.server, self.export))
    }

    pub(super) fn map_err(&self, op: &'static str, rel: &str, e: nfs::Error) -> Error {
        if matches!(e, nfs::Error::Stopped) {
            return Error::Stopped { op, location: self.location(rel).display().to_string() };
        }
        if e.is_transport() {
            return Error::ServerUnreachable {
                op,
                location: self.location(rel).display().to_string(),
                reason: e.to_string(),
            };
        }
        let source = match e.status().and_then(crate::nfs::types::Status::errno) {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::other(e.to_string()),
        };
        Error::Io { op, path: self.location(rel), source }
    }

    fn connect(&self) -> nfs::Result<Client> {
        Client::connect(&self.endpoint)
    }

    /// Where and how the pool's userspace client reaches the export.
    #[must_use]
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Runs `f` on the pool's shared connection, reconnecting when it broke. A call that
    /// fails on a reused connection (the server may have closed it while idle) is retried
    /// once on a fresh one.
    pub(super) fn with<T>(
        &self,
        op: &'static str,
        rel: &str,
        mut f: impl FnMut(&mut Client) -> nfs::Result<T>,
    ) -> Result<T> {
        let mut session = self.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for attempt in 0..2 {
            let reused = session.is_some();
            if session.is_none() {
                *session = Some(self.connect().map_err(|e| self.map_err(op, rel, e))?);
            }
            let Some(client) = session.as_mut() else { continue };
            match f(client) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transport() => {
                    *session = None;
                    if !(reused && attempt == 0) {
                        return Err(self.map_err(op, rel, e));
                    }
                }
                Err(e) => return Err(self.map_err(op, rel, e)),
            }
        }
        Err(Error::ServerUnreachable {
            op,
            location: self.location(rel).display().to_string(),
            reason: "the NFS server is unreachable".to_string(),
        })
    }

    /// Runs a long operation (a copy) on a connection of its own, so other calls go on.
    pub(super) fn dedicated<T>(
        &self,
        op: &'static str,
        rel: &str,
        f: impl FnOnce(&mut Client) -> nfs::Result<T>,
    ) -> Result<T> {
        let mut client = self.connect().map_err(|e| self.map_err(op, rel, e))?;
        f(&mut client).map_err(|e| self.map_err(op, rel, e))
    }

    pub(super) fn sub_dir<'a>(&self, volume: &'a VolumeRecord) -> Option<&'a str> {
        volume.parameters.get(SUBDIR_KEY).map(String::as_str)
    }

    pub(super) fn source_dir(&self, source: Source<'_>) -> Result<String> {
        match source {
            Source::Snapshot(s) => Ok(format!("{}/{}", export::SNAPSHOTS, s.key)),
            Source::Volume(v) => {
                self.sub_dir(v).map(str::to_string).ok_or_else(|| Error::NoExportDirectory { volume: v.id.clone() })
            }
        }
    }

    pub(super) fn rel_of(&self, source: StageSource<'_>) -> Result<PathBuf> {
        match source {
            StageSource::Managed(v) => {
                self.sub_dir(v).map(PathBuf::from).ok_or_else(|| Error::NoExportDirectory { volume: v.id.clone() })
            }
            StageSource::Static(rel) => Ok(rel.to_path_buf()),
        }
    }

    pub(super) fn device(&self, rel: &Path) -> String {
        node::device_name(&self.server, &self.export, rel)
    }

    pub(super) fn record_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(value).map_err(Error::EncodeRecord)
    }

    pub(super) fn nfs_usage(&self, path: &Path, capacity: Option<u64>) -> Result<Usage> {
        let m = self.usage.get(path).map_err(|reason| Error::UsageUnmeasured { path: path.to_path_buf(), reason })?;
        let total = capacity.unwrap_or(m.total_bytes);
        Ok(Usage {
            total_bytes: total,
            used_bytes: m.bytes,
            available_bytes: total.saturating_sub(m.bytes).min(m.available_bytes),
            used_inodes: Some(m.inodes),
            total_inodes: (m.free_inodes > 0).then_some(m.inodes + m.free_inodes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_stamps_are_utc() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_767_323_045), "20260102T030405Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }
}
