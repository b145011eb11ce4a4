//! The NFSv3 procedures berth's controller needs (RFC 1813), the MOUNT v3 call that
//! yields the export's root handle, and the portmapper lookup that finds their ports.
//! Names are byte strings: content in users' volumes need not be UTF-8.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::decode::{self, Mnt, ReplyError};
use super::rpc::{AuthSys, RpcError, Transport};
use super::types::{Attr, Entry, Error, Fh, FileType, FsStat, Result, SetAttr, Status, dirop, put_sattr};
use super::xdr::{Enc, XdrError};

const NFS_PROGRAM: u32 = 100_003;
const MOUNT_PROGRAM: u32 = 100_005;
const PMAP_PROGRAM: u32 = 100_000;
const PMAP_PORT: u16 = 111;

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
                    match decode::getport(&reply).map_err(|e| rpc_err(e.into()))? {
                        Some(port) => Ok(port),
                        None => Err(rpc_err(RpcError::NotRun(format!(
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
        let root = match decode::mnt(&reply).map_err(|e| rpc_err(e.into()))? {
            Mnt::Mounted { root } => root,
            Mnt::Refused(status) => {
                let reason = match status {
                    1 => "not permitted".to_string(),
                    2 => "no such export".to_string(),
                    13 => "access denied (check the export's client list)".to_string(),
                    other => format!("MOUNT status {other}"),
                };
                return Err(Error::Mount { server: server.clone(), export: ep.export.clone(), reason });
            }
        };
        let nfs = Transport::connect(SocketAddr::new(ip, nfs_port), ep.timeout, &ep.auth).map_err(io_err)?;
        let mut client = Client { nfs, root, server, io_size: 64 << 10 };
        client.io_size = client.fsinfo()?.io_size();
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

    /// Runs `proc` named `name` and decodes its reply with `decode`.
    fn op<T>(
        &mut self,
        name: &'static str,
        proc: u32,
        args: &Enc,
        decode: impl FnOnce(&[u8]) -> std::result::Result<T, ReplyError>,
    ) -> Result<T> {
        let reply = self.call(proc, args)?;
        decode(&reply).map_err(|e| match e {
            ReplyError::Status(status) => Error::Status { proc: name, status },
            ReplyError::Xdr(e) => self.xdr(e),
        })
    }

    fn fsinfo(&mut self) -> Result<decode::FsInfo> {
        let mut e = Enc::new();
        e.opaque(&self.root.0);
        self.op("FSINFO", 19, &e, decode::fsinfo)
    }

    pub fn getattr(&mut self, fh: &Fh) -> Result<Attr> {
        let mut e = Enc::new();
        e.opaque(&fh.0);
        self.op("GETATTR", 1, &e, decode::getattr)
    }

    pub fn setattr(&mut self, fh: &Fh, attr: &SetAttr) -> Result<()> {
        let mut e = Enc::new();
        e.opaque(&fh.0);
        put_sattr(&mut e, attr);
        e.bool(false);
        self.op("SETATTR", 2, &e, decode::status)
    }

    /// Looks up `name` in `dir` (never following a symlink); `None` when absent.
    pub fn lookup(&mut self, dir: &Fh, name: &[u8]) -> Result<Option<(Fh, Attr)>> {
        let mut e = Enc::new();
        dirop(&mut e, dir, name);
        let found = self.op("LOOKUP", 3, &e, decode::lookup);
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
        self.op("READLINK", 5, &e, decode::readlink)
    }

    /// Reads up to `count` bytes at `offset`; returns the data and whether the file ended.
    pub fn read(&mut self, fh: &Fh, offset: u64, count: u32) -> Result<(Vec<u8>, bool)> {
        let mut e = Enc::new();
        e.opaque(&fh.0).u64(offset).u32(count);
        self.op("READ", 6, &e, decode::read)
    }

    /// Writes `data` at `offset` unstably (COMMIT makes it durable); returns bytes written.
    pub fn write(&mut self, fh: &Fh, offset: u64, data: &[u8], stable: bool) -> Result<u32> {
        let mut e = Enc::new();
        let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
        e.opaque(&fh.0).u64(offset).u32(count).u32(if stable { 2 } else { 0 }).opaque(data);
        self.op("WRITE", 7, &e, decode::write)
    }

    pub fn commit(&mut self, fh: &Fh) -> Result<()> {
        let mut e = Enc::new();
        e.opaque(&fh.0).u64(0).u32(0);
        self.op("COMMIT", 21, &e, decode::status)
    }

    fn created(&mut self, name: &'static str, proc: u32, e: &Enc, dir: &Fh, entry: &[u8]) -> Result<(Fh, Attr)> {
        let (obj, attr) = self.op(name, proc, e, decode::created)?;
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
        e.u32(u32::from(exclusive));
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
        self.op("REMOVE", 12, &e, decode::status)
    }

    pub fn rmdir(&mut self, dir: &Fh, name: &[u8]) -> Result<()> {
        let mut e = Enc::new();
        dirop(&mut e, dir, name);
        self.op("RMDIR", 13, &e, decode::status)
    }

    pub fn rename(&mut self, from_dir: &Fh, from: &[u8], to_dir: &Fh, to: &[u8]) -> Result<()> {
        let mut e = Enc::new();
        dirop(&mut e, from_dir, from);
        dirop(&mut e, to_dir, to);
        self.op("RENAME", 14, &e, decode::status)
    }

    /// Makes `dir/name` a hard link to `file`; EXIST when the name is taken.
    pub fn link(&mut self, file: &Fh, dir: &Fh, name: &[u8]) -> Result<()> {
        let mut e = Enc::new();
        e.opaque(&file.0);
        dirop(&mut e, dir, name);
        self.op("LINK", 15, &e, decode::status)
    }

    /// Every entry of `dir` except `.` and `..`, with attributes and handles.
    pub fn readdirplus(&mut self, dir: &Fh) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut cookie = 0u64;
        let mut verf = [0u8; 8];
        loop {
            let mut e = Enc::new();
            e.opaque(&dir.0).u64(cookie).fixed(&verf).u32(32 << 10).u32(256 << 10);
            let decode::DirPage { verf: next_verf, entries, eof } =
                self.op("READDIRPLUS", 17, &e, decode::readdirplus)?;
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
        self.op("FSSTAT", 18, &e, decode::fsstat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_without_dns() {
        assert_eq!(resolve("127.0.0.1").expect("v4")[0].to_string(), "127.0.0.1");
        assert_eq!(resolve("[::1]").expect("v6")[0].to_string(), "::1");
    }
}
