//! The NFSv3 procedures berth's controller needs (RFC 1813), the MOUNT v3 call that
//! yields the export's root handle, and the portmapper lookup that finds their ports.
//! Names are byte strings: content in users' volumes need not be UTF-8.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::rpc::{AuthSys, RpcError, Transport};
use super::xdr::{Dec, Enc, XdrError};

const NFS_PROGRAM: u32 = 100_003;
const MOUNT_PROGRAM: u32 = 100_005;
const PMAP_PROGRAM: u32 = 100_000;
const PMAP_PORT: u16 = 111;
const MAX_FH: usize = 64;
const MAX_NAME: usize = 4096;

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
    pub const NOTSUPP: Status = Status(10004);

    /// The equivalent errno, for statuses that have one.
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
    #[error("MOUNT {export} on {server}: {reason}")]
    Mount { server: String, export: String, reason: String },
    /// The server answered with an error status.
    #[error("{proc}: {status}")]
    Status { proc: &'static str, status: Status },
}

impl Error {
    /// The NFS status, when the server answered with one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the server answered NFS3ERR_NOENT.
    pub fn is_noent(&self) -> bool {
        self.status() == Some(Status::NOENT)
    }

    /// True when the server answered NFS3ERR_EXIST.
    pub fn is_exist(&self) -> bool {
        self.status() == Some(Status::EXIST)
    }

    /// True for failures of the connection rather than of the operation.
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
    fn from_wire(v: u32) -> std::result::Result<FileType, XdrError> {
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

    fn wire(self) -> u32 {
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
#[derive(Debug, Clone)]
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

fn time(d: &mut Dec<'_>) -> std::result::Result<Time, XdrError> {
    Ok(Time { seconds: d.u32()?, nseconds: d.u32()? })
}

fn fattr(d: &mut Dec<'_>) -> std::result::Result<Attr, XdrError> {
    Ok(Attr {
        ftype: FileType::from_wire(d.u32()?)?,
        mode: d.u32()?,
        nlink: d.u32()?,
        uid: d.u32()?,
        gid: d.u32()?,
        size: d.u64()?,
        used: d.u64()?,
        rdev: (d.u32()?, d.u32()?),
        fsid: d.u64()?,
        fileid: d.u64()?,
        atime: time(d)?,
        mtime: time(d)?,
        ctime: time(d)?,
    })
}

fn post_op_attr(d: &mut Dec<'_>) -> std::result::Result<Option<Attr>, XdrError> {
    if d.bool()? { Ok(Some(fattr(d)?)) } else { Ok(None) }
}

fn wcc_data(d: &mut Dec<'_>) -> std::result::Result<(), XdrError> {
    if d.bool()? {
        d.u64()?;
        time(d)?;
        time(d)?;
    }
    post_op_attr(d)?;
    Ok(())
}

fn fh(d: &mut Dec<'_>) -> std::result::Result<Fh, XdrError> {
    Ok(Fh(d.opaque("file handle", MAX_FH)?.to_vec()))
}

fn post_op_fh(d: &mut Dec<'_>) -> std::result::Result<Option<Fh>, XdrError> {
    if d.bool()? { Ok(Some(fh(d)?)) } else { Ok(None) }
}

fn put_time(e: &mut Enc, t: Option<Time>) {
    match t {
        None => {
            e.u32(0);
        }
        Some(t) => {
            e.u32(2).u32(t.seconds).u32(t.nseconds);
        }
    }
}

fn put_sattr(e: &mut Enc, s: &SetAttr) {
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

fn dirop(e: &mut Enc, dir: &Fh, name: &[u8]) {
    e.opaque(&dir.0).opaque(name);
}

/// Where and how to reach an export.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub export: String,
    /// The NFS port; from the portmapper when `None`.
    pub nfs_port: Option<u16>,
    /// The MOUNT port; from the portmapper when `None`.
    pub mount_port: Option<u16>,
    pub timeout: Duration,
    pub auth: AuthSys,
}

/// Resolves a host name or address literal (IPv6 literals may be bracketed).
pub fn resolve(host: &str) -> Result<Vec<std::net::IpAddr>> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse() {
        return Ok(vec![ip]);
    }
    let addrs: Vec<_> = (bare, 0)
        .to_socket_addrs()
        .map_err(|e| Error::Resolve { host: host.to_string(), reason: e.to_string() })?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        return Err(Error::Resolve { host: host.to_string(), reason: "no addresses".into() });
    }
    Ok(addrs)
}

/// A connection to one export: the NFS transport and the export's root handle.
#[derive(Debug)]
pub struct Client {
    nfs: Transport,
    pub root: Fh,
    server: String,
    /// Preferred READ and WRITE sizes from FSINFO, at most 1 MiB.
    pub io_size: u32,
}

impl Client {
    /// Resolves the server, finds the ports, mounts the export with MOUNT v3 and opens the
    /// NFS connection.
    pub fn connect(ep: &Endpoint) -> Result<Client> {
        let ip = resolve(&ep.host)?[0];
        let server = ep.host.clone();
        let rpc_err = |source: RpcError| Error::Rpc { server: server.clone(), source };
        let io_err = |e: std::io::Error| rpc_err(RpcError::Io(e));
        let (mount_port, nfs_port) = match (ep.mount_port, ep.nfs_port) {
            (Some(m), Some(n)) => (m, n),
            (m, n) => {
                let mut pmap =
                    Transport::connect(SocketAddr::new(ip, PMAP_PORT), ep.timeout, &ep.auth).map_err(io_err)?;
                let mut getport = |prog: u32, vers: u32| -> Result<u16> {
                    let mut e = Enc::new();
                    e.u32(prog).u32(vers).u32(6).u32(0);
                    let reply = pmap.call(PMAP_PROGRAM, 2, 3, e.bytes()).map_err(rpc_err)?;
                    let port = Dec::new(&reply).u32().map_err(|e| rpc_err(e.into()))?;
                    match u16::try_from(port) {
                        Ok(p) if p > 0 => Ok(p),
                        _ => Err(rpc_err(RpcError::NotRun(format!(
                            "program {prog} version {vers} is not registered with the portmapper; \
                             the controller needs NFSv3 and MOUNTv3 over TCP"
                        )))),
                    }
                };
                let m = match m {
                    Some(m) => m,
                    None => getport(MOUNT_PROGRAM, 3)?,
                };
                let n = match n {
                    Some(n) => n,
                    None => getport(NFS_PROGRAM, 3)?,
                };
                (m, n)
            }
        };
        let mut mount = Transport::connect(SocketAddr::new(ip, mount_port), ep.timeout, &ep.auth).map_err(io_err)?;
        let mut e = Enc::new();
        e.opaque(ep.export.as_bytes());
        let reply = mount.call(MOUNT_PROGRAM, 3, 1, e.bytes()).map_err(rpc_err)?;
        let mut d = Dec::new(&reply);
        let status = d.u32().map_err(|e| rpc_err(e.into()))?;
        if status != 0 {
            let reason = match status {
                1 => "not permitted".to_string(),
                2 => "no such export".to_string(),
                13 => "access denied (check the export's client list)".to_string(),
                other => format!("MOUNT status {other}"),
            };
            return Err(Error::Mount { server: server.clone(), export: ep.export.clone(), reason });
        }
        let root = fh(&mut d).map_err(|e| rpc_err(e.into()))?;
        let nfs = Transport::connect(SocketAddr::new(ip, nfs_port), ep.timeout, &ep.auth).map_err(io_err)?;
        let mut client = Client { nfs, root, server, io_size: 64 << 10 };
        let info = client.fsinfo()?;
        client.io_size = info.clamp(4096, 1 << 20);
        Ok(client)
    }

    fn call(&mut self, proc: u32, args: &Enc) -> Result<Vec<u8>> {
        self.nfs
            .call(NFS_PROGRAM, 3, proc, args.bytes())
            .map_err(|source| Error::Rpc { server: self.server.clone(), source })
    }

    fn xdr(&self, e: XdrError) -> Error {
        Error::Rpc { server: self.server.clone(), source: RpcError::Xdr(e) }
    }

    /// Runs `proc` and decodes its status; on success `ok` decodes the rest.
    fn op<T>(
        &mut self,
        name: &'static str,
        proc: u32,
        args: &Enc,
        ok: impl FnOnce(&mut Dec<'_>) -> std::result::Result<T, XdrError>,
    ) -> Result<T> {
        let reply = self.call(proc, args)?;
        let mut d = Dec::new(&reply);
        let status = d.u32().map_err(|e| self.xdr(e))?;
        if status != 0 {
            return Err(Error::Status { proc: name, status: Status(status) });
        }
        ok(&mut d).map_err(|e| self.xdr(e))
    }

    fn fsinfo(&mut self) -> Result<u32> {
        let mut e = Enc::new();
        e.opaque(&self.root.0);
        self.op("FSINFO", 19, &e, |d| {
            post_op_attr(d)?;
            let (rtmax, rtpref, _rtmult, wtmax, wtpref) = (d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u32()?);
            Ok(rtpref.min(wtpref).max(rtmax.min(wtmax).min(1 << 20)).min(rtmax).min(wtmax))
        })
    }

    pub fn getattr(&mut self, fh: &Fh) -> Result<Attr> {
        let mut e = Enc::new();
        e.opaque(&fh.0);
        self.op("GETATTR", 1, &e, fattr)
    }

    pub fn setattr(&mut self, fh: &Fh, attr: &SetAttr) -> Result<()> {
        let mut e = Enc::new();
        e.opaque(&fh.0);
        put_sattr(&mut e, attr);
        e.bool(false);
        self.op("SETATTR", 2, &e, |_| Ok(()))
    }

    /// Looks up `name` in `dir` (never following a symlink); `None` when absent.
    pub fn lookup(&mut self, dir: &Fh, name: &[u8]) -> Result<Option<(Fh, Attr)>> {
        let mut e = Enc::new();
        dirop(&mut e, dir, name);
        let found = self.op("LOOKUP", 3, &e, |d| {
            let obj = fh(d)?;
            let attr = post_op_attr(d)?;
            Ok((obj, attr))
        });
        match found {
            Ok((obj, Some(attr))) => Ok(Some((obj, attr))),
            Ok((obj, None)) => {
                let attr = self.getattr(&obj)?;
                Ok(Some((obj, attr)))
            }
            Err(e) if e.is_noent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn readlink(&mut self, fh: &Fh) -> Result<Vec<u8>> {
        let mut e = Enc::new();
        e.opaque(&fh.0);
        self.op("READLINK", 5, &e, |d| {
            post_op_attr(d)?;
            Ok(d.opaque("symlink target", MAX_NAME)?.to_vec())
        })
    }

    /// Reads up to `count` bytes at `offset`; returns the data and whether the file ended.
    pub fn read(&mut self, fh: &Fh, offset: u64, count: u32) -> Result<(Vec<u8>, bool)> {
        let mut e = Enc::new();
        e.opaque(&fh.0).u64(offset).u32(count);
        self.op("READ", 6, &e, |d| {
            post_op_attr(d)?;
            let _count = d.u32()?;
            let eof = d.bool()?;
            let data = d.opaque("READ data", 1 << 22)?.to_vec();
            Ok((data, eof))
        })
    }

    /// Writes `data` at `offset` unstably (COMMIT makes it durable); returns bytes written.
    pub fn write(&mut self, fh: &Fh, offset: u64, data: &[u8], stable: bool) -> Result<u32> {
        let mut e = Enc::new();
        let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
        e.opaque(&fh.0).u64(offset).u32(count).u32(if stable { 2 } else { 0 }).opaque(data);
        self.op("WRITE", 7, &e, |d| {
            wcc_data(d)?;
            d.u32()
        })
    }

    pub fn commit(&mut self, fh: &Fh) -> Result<()> {
        let mut e = Enc::new();
        e.opaque(&fh.0).u64(0).u32(0);
        self.op("COMMIT", 21, &e, |_| Ok(()))
    }

    fn created(&mut self, name: &'static str, proc: u32, e: &Enc, dir: &Fh, entry: &[u8]) -> Result<(Fh, Attr)> {
        let (obj, attr) = self.op(name, proc, e, |d| Ok((post_op_fh(d)?, post_op_attr(d)?)))?;
        match (obj, attr) {
            (Some(obj), Some(attr)) => Ok((obj, attr)),
            (Some(obj), None) => {
                let attr = self.getattr(&obj)?;
                Ok((obj, attr))
            }
            (None, _) => self.lookup(dir, entry)?.ok_or(Error::Status { proc: name, status: Status::NOENT }),
        }
    }

    /// Creates a regular file; `exclusive` fails with EXIST when it exists (GUARDED).
    pub fn create(&mut self, dir: &Fh, name: &[u8], mode: u32, exclusive: bool) -> Result<(Fh, Attr)> {
        let mut e = Enc::new();
        dirop(&mut e, dir, name);
        e.u32(if exclusive { 1 } else { 0 });
        put_sattr(&mut e, &SetAttr { mode: Some(mode), ..SetAttr::default() });
        self.created("CREATE", 8, &e, dir, name)
    }

    pub fn mkdir(&mut self, dir: &Fh, name: &[u8], mode: u32) -> Result<(Fh, Attr)> {
        let mut e = Enc::new();
        dirop(&mut e, dir, name);
        put_sattr(&mut e, &SetAttr { mode: Some(mode), ..SetAttr::default() });
        self.created("MKDIR", 9, &e, dir, name)
    }

    pub fn symlink(&mut self, dir: &Fh, name: &[u8], target: &[u8]) -> Result<(Fh, Attr)> {
        let mut e = Enc::new();
        dirop(&mut e, dir, name);
        put_sattr(&mut e, &SetAttr::default());
        e.opaque(target);
        self.created("SYMLINK", 10, &e, dir, name)
    }

    /// Creates a device node, socket or FIFO.
    pub fn mknod(&mut self, dir: &Fh, name: &[u8], ftype: FileType, mode: u32, rdev: (u32, u32)) -> Result<(Fh, Attr)> {
        let mut e = Enc::new();
        dirop(&mut e, dir, name);
        e.u32(ftype.wire());
        let attr = SetAttr { mode: Some(mode), ..SetAttr::default() };
        match ftype {
            FileType::Block | FileType::Char => {
                put_sattr(&mut e, &attr);
                e.u32(rdev.0).u32(rdev.1);
            }
            FileType::Socket | FileType::Fifo => put_sattr(&mut e, &attr),
            _ => return Err(Error::Status { proc: "MKNOD", status: Status(10007) }),
        }
        self.created("MKNOD", 11, &e, dir, name)
    }

    pub fn remove(&mut self, dir: &Fh, name: &[u8]) -> Result<()> {
        let mut e = Enc::new();
        dirop(&mut e, dir, name);
        self.op("REMOVE", 12, &e, |_| Ok(()))
    }

    pub fn rmdir(&mut self, dir: &Fh, name: &[u8]) -> Result<()> {
        let mut e = Enc::new();
        dirop(&mut e, dir, name);
        self.op("RMDIR", 13, &e, |_| Ok(()))
    }

    pub fn rename(&mut self, from_dir: &Fh, from: &[u8], to_dir: &Fh, to: &[u8]) -> Result<()> {
        let mut e = Enc::new();
        dirop(&mut e, from_dir, from);
        dirop(&mut e, to_dir, to);
        self.op("RENAME", 14, &e, |_| Ok(()))
    }

    /// Makes `dir/name` a hard link to `file`; EXIST when the name is taken.
    pub fn link(&mut self, file: &Fh, dir: &Fh, name: &[u8]) -> Result<()> {
        let mut e = Enc::new();
        e.opaque(&file.0);
        dirop(&mut e, dir, name);
        self.op("LINK", 15, &e, |_| Ok(()))
    }

    /// Every entry of `dir` except `.` and `..`, with attributes and handles.
    pub fn readdirplus(&mut self, dir: &Fh) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut cookie = 0u64;
        let mut verf = [0u8; 8];
        loop {
            let mut e = Enc::new();
            e.opaque(&dir.0).u64(cookie).fixed(&verf).u32(32 << 10).u32(256 << 10);
            let (next_verf, entries, eof) = self.op("READDIRPLUS", 17, &e, |d| {
                post_op_attr(d)?;
                let mut v = [0u8; 8];
                v.copy_from_slice(d.fixed(8)?);
                let mut entries = Vec::new();
                while d.bool()? {
                    let fileid = d.u64()?;
                    let name = d.opaque("file name", MAX_NAME)?.to_vec();
                    let cookie = d.u64()?;
                    let attr = post_op_attr(d)?;
                    let fh = post_op_fh(d)?;
                    entries.push((cookie, Entry { name, fileid, attr, fh }));
                }
                Ok((v, entries, d.bool()?))
            })?;
            verf = next_verf;
            let progressed = !entries.is_empty();
            for (c, entry) in entries {
                cookie = c;
                if entry.name != b"." && entry.name != b".." {
                    out.push(entry);
                }
            }
            if eof || !progressed {
                return Ok(out);
            }
        }
    }

    pub fn fsstat(&mut self, fh: &Fh) -> Result<FsStat> {
        let mut e = Enc::new();
        e.opaque(&fh.0);
        self.op("FSSTAT", 18, &e, |d| {
            post_op_attr(d)?;
            Ok(FsStat {
                total_bytes: d.u64()?,
                free_bytes: d.u64()?,
                avail_bytes: d.u64()?,
                total_files: d.u64()?,
                free_files: d.u64()?,
                avail_files: d.u64()?,
            })
        })
    }
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
    fn attributes_decode_from_the_wire() {
        let mut e = Enc::new();
        e.u32(1).u32(0o100644).u32(1).u32(1000).u32(100).u64(10).u64(4096).u32(0).u32(0);
        e.u64(7).u64(99).u32(1).u32(2).u32(3).u32(4).u32(5).u32(6);
        let bytes = e.into_bytes();
        let attr = fattr(&mut Dec::new(&bytes)).expect("decodes");
        assert_eq!(
            (attr.ftype, attr.mode, attr.uid, attr.size, attr.fileid),
            (FileType::Regular, 0o100644, 1000, 10, 99)
        );
        assert_eq!(attr.mtime, Time { seconds: 3, nseconds: 4 });
        let mut bad = bytes.clone();
        bad[3] = 9;
        assert!(fattr(&mut Dec::new(&bad)).is_err());
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

    #[test]
    fn literals_resolve_without_dns() {
        assert_eq!(resolve("127.0.0.1").expect("v4")[0].to_string(), "127.0.0.1");
        assert_eq!(resolve("[::1]").expect("v6")[0].to_string(), "::1");
    }
}
