//! NFSv3 data types (RFC 1813) and the XDR encodings of the arguments berth sends:
//! handles, statuses, attributes. Replies are decoded in [`super::decode`].

use std::fmt;

use super::failure::RpcError;
use super::xdr::{Enc, XdrError};

/// The largest file handle NFSv3 allows.
pub const MAX_FH: usize = 64;

/// A file handle.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fh(pub Vec<u8>);

impl fmt::Debug for Fh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fh({})", hex::encode(&self.0))
    }
}

/// An NFSv3 status other than NFS3_OK. Values below 10000 are Linux errno values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    pub const NOENT: Status = Status(2);
    pub const EXIST: Status = Status(17);
    pub const NOTDIR: Status = Status(20);
    pub const NOTEMPTY: Status = Status(66);
    pub const STALE: Status = Status(70);
    pub const NOTSUPP: Status = Status(10004);

    /// The equivalent errno, for statuses that have one.
    #[must_use]
    pub fn errno(self) -> Option<i32> {
        (self.0 < 10000).then(|| i32::try_from(self.0).unwrap_or(libc::EIO))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            1 => "NFS3ERR_PERM",
            2 => "NFS3ERR_NOENT",
            5 => "NFS3ERR_IO",
            6 => "NFS3ERR_NXIO",
            13 => "NFS3ERR_ACCES",
            17 => "NFS3ERR_EXIST",
            18 => "NFS3ERR_XDEV",
            19 => "NFS3ERR_NODEV",
            20 => "NFS3ERR_NOTDIR",
            21 => "NFS3ERR_ISDIR",
            22 => "NFS3ERR_INVAL",
            27 => "NFS3ERR_FBIG",
            28 => "NFS3ERR_NOSPC",
            30 => "NFS3ERR_ROFS",
            31 => "NFS3ERR_MLINK",
            63 => "NFS3ERR_NAMETOOLONG",
            66 => "NFS3ERR_NOTEMPTY",
            69 => "NFS3ERR_DQUOT",
            70 => "NFS3ERR_STALE",
            71 => "NFS3ERR_REMOTE",
            10001 => "NFS3ERR_BADHANDLE",
            10002 => "NFS3ERR_NOT_SYNC",
            10003 => "NFS3ERR_BAD_COOKIE",
            10004 => "NFS3ERR_NOTSUPP",
            10005 => "NFS3ERR_TOOSMALL",
            10006 => "NFS3ERR_SERVERFAULT",
            10007 => "NFS3ERR_BADTYPE",
            10008 => "NFS3ERR_JUKEBOX",
            _ => return write!(f, "NFS3 status {}", self.0),
        };
        f.write_str(name)
    }
}

/// What an NFS operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached or answered garbage: try again later.
    #[error("NFS server {server}: {source}")]
    Rpc { server: String, source: RpcError },
    #[error("resolving NFS server {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// MOUNT refused the export (`status` is the MNT3 status, when it gave one).
    #[error("MOUNT {export} on {server}: {reason}")]
    Mount { server: String, export: String, status: Option<u32>, reason: String },
    /// The server answered with an error status.
    #[error("{proc}: {status}")]
    Status { proc: &'static str, status: Status },
    /// The caller asked a long operation (a tree copy) to stop.
    #[error("stopped before it finished")]
    Stopped,
}

impl Error {
    /// The NFS status, when the server answered with one.
    #[must_use]
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the server answered NFS3ERR_NOENT.
    #[must_use]
    pub fn is_noent(&self) -> bool {
        self.status() == Some(Status::NOENT)
    }

    /// True when the file is not there (any more): NFS3ERR_NOENT, or NFS3ERR_STALE for a
    /// handle of a file removed since it was looked up.
    #[must_use]
    pub fn is_gone(&self) -> bool {
        self.is_noent() || self.status() == Some(Status::STALE)
    }

    /// True when the server answered NFS3ERR_EXIST.
    #[must_use]
    pub fn is_exist(&self) -> bool {
        self.status() == Some(Status::EXIST)
    }

    /// True for failures of the connection rather than of the operation.
    #[must_use]
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Rpc { .. } | Error::Resolve { .. } | Error::Mount { .. })
    }
}

/// Result of NFS operations.
pub type Result<T> = std::result::Result<T, Error>;

/// File types (ftype3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Regular,
    Directory,
    Block,
    Char,
    Symlink,
    Socket,
    Fifo,
}

impl FileType {
    pub(super) fn from_wire(v: u32) -> std::result::Result<FileType, XdrError> {
        Ok(match v {
            1 => FileType::Regular,
            2 => FileType::Directory,
            3 => FileType::Block,
            4 => FileType::Char,
            5 => FileType::Symlink,
            6 => FileType::Socket,
            7 => FileType::Fifo,
            _ => return Err(XdrError::Invalid("file type")),
        })
    }

    pub(super) fn wire(self) -> u32 {
        match self {
            FileType::Regular => 1,
            FileType::Directory => 2,
            FileType::Block => 3,
            FileType::Char => 4,
            FileType::Symlink => 5,
            FileType::Socket => 6,
            FileType::Fifo => 7,
        }
    }
}

/// A time as NFS carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub seconds: u32,
    pub nseconds: u32,
}

/// File attributes (fattr3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ftype: FileType,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes the server actually stores (less than size for sparse files).
    pub used: u64,
    pub rdev: (u32, u32),
    pub fsid: u64,
    pub fileid: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// Attributes to set; `None` leaves one unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
}

/// One directory entry from READDIRPLUS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub fileid: u64,
    pub attr: Option<Attr>,
    pub fh: Option<Fh>,
}

/// FSSTAT results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
    pub avail_files: u64,
}

pub(super) fn put_time(e: &mut Enc, t: Option<Time>) {
    match t {
        None => {
            e.u32(0);
        }
        Some(t) => {
            e.u32(2).u32(t.seconds).u32(t.nseconds);
        }
    }
}

pub(super) fn put_sattr(e: &mut Enc, s: &SetAttr) {
    for v in [s.mode, s.uid, s.gid] {
        match v {
            Some(v) => e.bool(true).u32(v),
            None => e.bool(false),
        };
    }
    match s.size {
        Some(v) => e.bool(true).u64(v),
        None => e.bool(false),
    };
    put_time(e, s.atime);
    put_time(e, s.mtime);
}

pub(super) fn dirop(e: &mut Enc, dir: &Fh, name: &[u8]) {
    e.opaque(&dir.0).opaque(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_name_themselves_and_map_to_errno() {
        assert_eq!(Status::NOENT.to_string(), "NFS3ERR_NOENT");
        assert_eq!(Status(28).errno(), Some(libc::ENOSPC));
        assert_eq!(Status(10008).errno(), None);
        assert_eq!(Status(4242).to_string(), "NFS3 status 4242");
    }

    #[test]
    fn set_attributes_encode_only_what_changes() {
        let mut e = Enc::new();
        put_sattr(
            &mut e,
            &SetAttr { mode: Some(0o770), mtime: Some(Time { seconds: 5, nseconds: 6 }), ..SetAttr::default() },
        );
        let words: Vec<u32> = e.bytes().chunks(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(words, vec![1, 0o770, 0, 0, 0, 0, 2, 5, 6]);
    }
}
