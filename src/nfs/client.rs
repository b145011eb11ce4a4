//! The NFSv3 procedures berth's controller needs (RFC 1813), the MOUNT v3 call that
//! yields the export's root handle, and the portmapper lookup that finds their ports.
//! Names are byte strings: content in users' volumes need not be UTF-8.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::decode::{self, Mnt, ReplyError};
use super::rpc::{AuthSys, RpcError, Transport};
use super::types::{Attr, Entry, Error, Fh, FileType, FsStat, Result, SetAttr, Status, dirop, put_sattr};
use super::xdr::{Enc, XdrError};

/// The NFS program number.
pub const NFS_PROGRAM: u32 = 100_003;
/// The MOUNT program number.
pub const MOUNT_PROGRAM: u32 = 100_005;
const PMAP_PROGRAM: u32 = 100_000;
/// The portmapper's port.
pub const PMAP_PORT: u16 = 111;
const AUTH_NONE: u32 = 0;
const AUTH_SYS: u32 = 1;
/// What a READ returns: the data, and whether the file ended there.
pub type ReadData = (Vec<u8>, bool);

/// Calls a batch ([`Client::write_many`] and the like) keeps in flight on the connection.
/// There is no RENAME batch: ganesha 4.3 answers some of several RENAMEs in flight a
/// second late.
pub const PIPELINE: usize = 32;

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

/// The server's service a connection was talking to when it failed: each is a separate
/// requirement on the server (docs/nfs.md, "What the server must allow").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Resolving the server's name.
    Resolve,
    /// The portmapper (port 111), asked where MOUNT v3 and NFS v3 listen.
    Portmapper,
    /// MOUNT v3, asked for the export's root handle.
    Mount,
    /// NFS v3 itself.
    Nfs,
}

/// A failed connection: what failed, and at which stage.
#[derive(Debug)]
pub struct ConnectError {
    pub stage: Stage,
    pub error: Error,
}

/// Asks the portmapper on `ip` for the TCP port of `prog` version `vers`; `None` when the
/// program is not registered.
pub fn getport(ip: IpAddr, ep: &Endpoint, prog: u32, vers: u32) -> Result<Option<u16>> {
    let rpc_err = |source: RpcError| Error::Rpc { server: ep.host.clone(), source };
    let mut pmap =
        Transport::connect(SocketAddr::new(ip, PMAP_PORT), ep.timeout, &ep.auth).map_err(|e| rpc_err(e.into()))?;
    let mut e = Enc::new();
    e.u32(prog).u32(vers).u32(6).u32(0);
    let reply = pmap.call(PMAP_PROGRAM, 2, 3, e.bytes()).map_err(rpc_err)?;
    decode::getport(&reply).map_err(|e| rpc_err(e.into()))
}

/// The MOUNT and NFS ports: from the endpoint where it names them, else the portmapper's.
pub fn ports(ip: IpAddr, ep: &Endpoint) -> std::result::Result<(u16, u16), ConnectError> {
    let find = |given: Option<u16>, prog: u32| -> std::result::Result<u16, ConnectError> {
        if let Some(port) = given {
            return Ok(port);
        }
        let stage = Stage::Portmapper;
        match getport(ip, ep, prog, 3) {
            Ok(Some(port)) => Ok(port),
            Ok(None) => Err(ConnectError {
                stage,
                error: Error::Rpc {
                    server: ep.host.clone(),
                    source: RpcError::NotRun(format!(
                        "program {prog} version 3 is not registered with the portmapper; \
                         berth's client needs NFSv3 and MOUNTv3 over TCP"
                    )),
                },
            }),
            Err(error) => Err(ConnectError { stage, error }),
        }
    };
    Ok((find(ep.mount_port, MOUNT_PROGRAM)?, find(ep.nfs_port, NFS_PROGRAM)?))
}

/// Asks MOUNT v3 at `ip:port` for the export's root handle.
pub fn mnt(ip: IpAddr, port: u16, ep: &Endpoint) -> Result<Fh> {
    let server = ep.host.clone();
    let rpc_err = |source: RpcError| Error::Rpc { server: server.clone(), source };
    let mut mount =
        Transport::connect(SocketAddr::new(ip, port), ep.timeout, &ep.auth).map_err(|e| rpc_err(e.into()))?;
    let mut e = Enc::new();
    e.opaque(ep.export.as_bytes());
    let reply = mount.call(MOUNT_PROGRAM, 3, 1, e.bytes()).map_err(rpc_err)?;
    match decode::mnt(&reply).map_err(|e| rpc_err(e.into()))? {
        // As Linux's client does: AUTH_NONE in the list means the server ignores
        // credentials, and an empty list comes from servers that predate it.
        Mnt::Mounted { root, flavors }
            if flavors.is_empty() || flavors.contains(&AUTH_SYS) || flavors.contains(&AUTH_NONE) =>
        {
            Ok(root)
        }
        Mnt::Mounted { flavors, .. } => {
            let reason = format!(
                "the export does not accept AUTH_SYS, the only security flavor berth speaks (it offers {flavors:?})"
            );
            Err(Error::Mount { server, export: ep.export.clone(), status: None, reason })
        }
        Mnt::Refused(status) => {
            let reason = match status {
                1 => "not permitted".to_string(),
                2 => "no such export".to_string(),
                13 => "access denied (check the export's client list)".to_string(),
                other => format!("MOUNT status {other}"),
            };
            Err(Error::Mount { server, export: ep.export.clone(), status: Some(status), reason })
        }
    }
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
        Client::connect_staged(ep).map_err(|e| e.error)
    }

    /// [`Client::connect`], saying at which stage it failed.
    pub fn connect_staged(ep: &Endpoint) -> std::result::Result<Client, ConnectError> {
        let at = |stage: Stage| move |error: Error| ConnectError { stage, error };
        let ip = resolve(&ep.host).map_err(at(Stage::Resolve))?[0];
        let (mount_port, nfs_port) = ports(ip, ep)?;
        let root = mnt(ip, mount_port, ep).map_err(at(Stage::Mount))?;
        Client::open(ip, nfs_port, root, ep).map_err(at(Stage::Nfs))
    }

    /// Opens NFS v3 at `ip:port` on the export whose root handle is `root` (its FSINFO
    /// answers first).
    pub fn open(ip: IpAddr, port: u16, root: Fh, ep: &Endpoint) -> Result<Client> {
        let server = ep.host.clone();
        let nfs = Transport::connect(SocketAddr::new(ip, port), ep.timeout, &ep.auth)
            .map_err(|e| Error::Rpc { server: server.clone(), source: e.into() })?;
        let mut client = Client { nfs, root, server, io_size: 64 << 10 };
        client.io_size = client.fsinfo()?.io_size();
        Ok(client)
    }

    /// The local address of the NFS connection, as this host sees it (a NAT on the way may
    /// change the address and port the server sees).
    #[must_use]
    pub fn source(&self) -> Option<SocketAddr> {
        self.nfs.local_addr()
    }

    fn call(&mut self, proc: u32, args: &Enc) -> Result<Vec<u8>> {
        self.nfs
            .call(NFS_PROGRAM, 3, proc, args.bytes())
            .map_err(|source| Error::Rpc { server: self.server.clone(), source })
    }

    /// Runs `proc` named `name` once per argument list in `args`, [`PIPELINE`] calls in
    /// flight at a time ([`super::rpc::Transport::call_many`]), and decodes reply `i` with
    /// `decode(i, reply)`. The outer error is the connection's (the batch failed as a
    /// whole, the connection is unusable); the inner ones are each call's own.
    fn op_many<T>(
        &mut self,
        name: &'static str,
        proc: u32,
        args: &[Enc],
        decode: impl Fn(usize, &[u8]) -> std::result::Result<T, ReplyError>,
    ) -> Result<Vec<Result<T>>> {
        let calls: Vec<(u32, &[u8])> = args.iter().map(|a| (proc, a.bytes())).collect();
        let replies = self
            .nfs
            .call_many(NFS_PROGRAM, 3, &calls, PIPELINE)
            .map_err(|source| Error::Rpc { server: self.server.clone(), source })?;
        let mut out = Vec::with_capacity(args.len());
        for (i, reply) in replies.iter().enumerate() {
            out.push(decode(i, reply).map_err(|e| match e {
                ReplyError::Status(status) => Error::Status { proc: name, status },
                ReplyError::Xdr(e) => self.xdr(e),
            }));
        }
        Ok(out)
    }

    /// LOOKUP of every `(dir, name)`, pipelined: each one's handle, `None` where absent.
    pub fn lookup_many(&mut self, names: &[(&Fh, &[u8])]) -> Result<Vec<Result<Option<Fh>>>> {
        let args: Vec<Enc> = names
            .iter()
            .map(|(dir, name)| {
                let mut e = Enc::new();
                dirop(&mut e, dir, name);
                e
            })
            .collect();
        let found = self.op_many("LOOKUP", 3, &args, |_, r| decode::lookup(r))?;
        Ok(found
            .into_iter()
            .map(|r| match r {
                Ok((fh, _)) => Ok(Some(fh)),
                Err(e) if e.is_noent() => Ok(None),
                Err(e) => Err(e),
            })
            .collect())
    }

    /// CREATE (UNCHECKED: an existing file is kept, not truncated) of every name in `dir`,
    /// pipelined: each new file's handle.
    pub fn create_many(&mut self, dir: &Fh, names: &[&[u8]], mode: u32) -> Result<Vec<Result<Fh>>> {
        let args: Vec<Enc> = names
            .iter()
            .map(|name| {
                let mut e = Enc::new();
                dirop(&mut e, dir, name);
                e.u32(0);
                put_sattr(&mut e, &SetAttr { mode: Some(mode), ..SetAttr::default() });
                e
            })
            .collect();
        let made = self.op_many("CREATE", 8, &args, |_, r| decode::created(r))?;
        let mut out = Vec::with_capacity(made.len());
        for (r, name) in made.into_iter().zip(names) {
            out.push(match r {
                Ok((Some(fh), _)) => Ok(fh),
                // A server may leave the handle out; LOOKUP finds it.
                Ok((None, _)) => self
                    .lookup(dir, name)?
                    .map(|(fh, _)| fh)
                    .ok_or(Error::Status { proc: "CREATE", status: Status::NOENT }),
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    /// WRITE of every `(file, offset, data)`, pipelined (each `data` at most
    /// [`Client::io_size`] bytes); FILE_SYNC when `stable`, else UNSTABLE. Each one's count
    /// of bytes written.
    pub fn write_many(&mut self, writes: &[(&Fh, u64, &[u8])], stable: bool) -> Result<Vec<Result<u32>>> {
        let args: Vec<Enc> = writes
            .iter()
            .map(|(fh, off, data)| {
                let mut e = Enc::new();
                let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
                e.opaque(&fh.0).u64(*off).u32(count).u32(if stable { 2 } else { 0 }).opaque(data);
                e
            })
            .collect();
        self.op_many("WRITE", 7, &args, |i, r| decode::write(r, writes[i].2.len()))
    }

    /// READ of every `(file, offset, count)`, pipelined: each one's data and whether its
    /// file ended.
    pub fn read_many(&mut self, reads: &[(&Fh, u64, u32)]) -> Result<Vec<Result<ReadData>>> {
        let args: Vec<Enc> = reads
            .iter()
            .map(|(fh, off, count)| {
                let mut e = Enc::new();
                e.opaque(&fh.0).u64(*off).u32(*count);
                e
            })
            .collect();
        self.op_many("READ", 6, &args, |i, r| decode::read(r, reads[i].2))
    }

    /// COMMIT of every file, pipelined.
    pub fn commit_many(&mut self, files: &[&Fh]) -> Result<Vec<Result<()>>> {
        let args: Vec<Enc> = files
            .iter()
            .map(|fh| {
                let mut e = Enc::new();
                e.opaque(&fh.0).u64(0).u32(0);
                e
            })
            .collect();
        self.op_many("COMMIT", 21, &args, |_, r| decode::status(r))
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
        self.op("READ", 6, &e, |reply| decode::read(reply, count))
    }

    /// Writes `data` at `offset` unstably (COMMIT makes it durable); returns bytes written.
    pub fn write(&mut self, fh: &Fh, offset: u64, data: &[u8], stable: bool) -> Result<u32> {
        let mut e = Enc::new();
        let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
        e.opaque(&fh.0).u64(offset).u32(count).u32(if stable { 2 } else { 0 }).opaque(data);
        self.op("WRITE", 7, &e, |reply| decode::write(reply, data.len()))
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

    /// Every entry of `dir` except `.` and `..`, with attributes and handles. A server
    /// that sends berth back to a cookie it already listed from is answering in a loop:
    /// that is an error, not an endless listing.
    pub fn readdirplus(&mut self, dir: &Fh) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut cookie = 0u64;
        let mut asked = std::collections::HashSet::from([cookie]);
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
            if !asked.insert(cookie) {
                return Err(self.xdr(XdrError::Invalid("repeated READDIRPLUS cookie")));
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
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn literals_resolve_without_dns() {
        assert_eq!(resolve("127.0.0.1").expect("v4")[0].to_string(), "127.0.0.1");
        assert_eq!(resolve("[::1]").expect("v6")[0].to_string(), "::1");
    }

    /// Calls a scripted server answers on one connection before it hangs up, so a client
    /// that would call forever ends with an I/O error instead.
    const MAX_CALLS: usize = 50;

    /// A server for MOUNT and NFS on one port of 127.0.0.1 that answers each call of
    /// `prog`/`proc` with the results `script` gives, or by default: MNT with a root handle
    /// and AUTH_SYS, FSINFO with 64 KiB sizes, anything else NFS3ERR_NOTSUPP.
    fn scripted(script: impl Fn(u32, u32) -> Option<Vec<u8>> + Send + Sync + 'static) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let (Ok(mut s), script) = (conn, Arc::clone(&script)) else { return };
                std::thread::spawn(move || {
                    for _ in 0..MAX_CALLS {
                        let mut mark = [0u8; 4];
                        if s.read_exact(&mut mark).is_err() {
                            return;
                        }
                        let mut call = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
                        s.read_exact(&mut call).expect("call");
                        let word = |at: usize| u32::from_be_bytes(call[at..at + 4].try_into().expect("word"));
                        let (prog, proc) = (word(12), word(20));
                        let results = script(prog, proc).unwrap_or_else(|| {
                            let mut e = Enc::new();
                            match (prog, proc) {
                                (MOUNT_PROGRAM, 1) => e.u32(0).opaque(&[1; 8]).u32(1).u32(1),
                                (NFS_PROGRAM, 19) => e
                                    .u32(0)
                                    .bool(false)
                                    .u32(65536)
                                    .u32(65536)
                                    .u32(4096)
                                    .u32(65536)
                                    .u32(65536)
                                    .u32(4096)
                                    .u32(4096)
                                    .u64(u64::MAX)
                                    .u32(0)
                                    .u32(1)
                                    .u32(0),
                                _ => e.u32(10004),
                            };
                            e.into_bytes()
                        });
                        let mut e = Enc::new();
                        e.u32(0).u32(word(0)).u32(1).u32(0).u32(0).opaque(&[]).u32(0);
                        let mut reply = e.into_bytes();
                        reply.extend_from_slice(&results);
                        let len = u32::try_from(reply.len() - 4).expect("len");
                        reply[..4].copy_from_slice(&(0x8000_0000 | len).to_be_bytes());
                        if s.write_all(&reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Endpoint {
            host: "127.0.0.1".into(),
            export: "/export".into(),
            nfs_port: Some(port),
            mount_port: Some(port),
            timeout: Duration::from_secs(5),
            auth: AuthSys { machine: "test".into(), uid: 0, gid: 0 },
        }
    }

    fn only(want: u32, results: impl Fn() -> Enc + Send + Sync + 'static) -> Endpoint {
        scripted(move |prog, proc| (prog == NFS_PROGRAM && proc == want).then(|| results().into_bytes()))
    }

    #[test]
    fn a_scripted_server_serves_a_client() {
        let mut client = Client::connect(&only(18, || {
            let mut e = Enc::new();
            e.u32(0).bool(false).u64(1000).u64(600).u64(500).u64(10).u64(6).u64(5).u32(0);
            e
        }))
        .expect("connect");
        assert_eq!((client.root.clone(), client.io_size), (Fh(vec![1; 8]), 65536));
        let root = client.root.clone();
        assert_eq!(client.fsstat(&root).expect("fsstat").avail_bytes, 500);
        assert_eq!(client.getattr(&root).expect_err("not offered").status(), Some(Status::NOTSUPP));
    }

    /// A WRITE that claims more bytes than were sent would make berth skip data it never
    /// wrote (export::write_all, copy::copy_file advance by the count).
    #[test]
    fn a_write_count_beyond_the_data_sent_is_refused() {
        let mut client = Client::connect(&only(7, || {
            let mut e = Enc::new();
            e.u32(0).bool(false).bool(false).u32(1000).u32(2).fixed(&[0; 8]);
            e
        }))
        .expect("connect");
        let root = client.root.clone();
        let err = client.write(&root, 0, b"abc", true).expect_err("1000 of 3 bytes written");
        assert!(err.to_string().contains("WRITE count of 1000 bytes exceeds the limit of 3"), "{err}");
    }

    #[test]
    fn read_data_beyond_the_count_asked_or_its_own_count_is_refused() {
        let reply = |count: u32, data: &'static [u8]| {
            move || {
                let mut e = Enc::new();
                e.u32(0).bool(false).u32(count).bool(false).opaque(data);
                e
            }
        };
        let mut client = Client::connect(&only(6, reply(20, &[7; 20]))).expect("connect");
        let root = client.root.clone();
        let err = client.read(&root, 0, 10).expect_err("20 of 10 bytes read");
        assert!(err.to_string().contains("READ data of 20 bytes exceeds the limit of 10"), "{err}");

        let mut client = Client::connect(&only(6, reply(3, b"hello"))).expect("connect");
        let err = client.read(&root, 0, 10).expect_err("count 3, 5 bytes of data");
        assert!(err.to_string().contains("invalid READ count"), "{err}");
    }

    /// A server whose READDIRPLUS cookies come round again would keep berth listing, and
    /// growing the listing, forever.
    #[test]
    fn a_readdirplus_cookie_loop_is_an_error_not_an_endless_listing() {
        for cycle in [1, 2, 3] {
            let calls = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&calls);
            let mut client = Client::connect(&only(17, move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let mut e = Enc::new();
                e.u32(0).bool(false).fixed(&[0; 8]);
                e.bool(true).u64(1).opaque(b"x").u64(5 + (n % cycle) as u64).bool(false).bool(false);
                e.bool(false).bool(false);
                e
            }))
            .expect("connect");
            let root = client.root.clone();
            let err = client.readdirplus(&root).expect_err("cookie loop");
            assert!(err.to_string().contains("READDIRPLUS cookie"), "cycle of {cycle}: {err}");
            assert_eq!(calls.load(Ordering::SeqCst), cycle + 1, "cycle of {cycle}");
        }
    }

    /// An export that offers only Kerberos says so at MOUNT; berth presents AUTH_SYS.
    #[test]
    fn an_export_without_auth_sys_is_refused_at_mount() {
        let ep = scripted(|prog, _| {
            (prog == MOUNT_PROGRAM).then(|| {
                let mut e = Enc::new();
                e.u32(0).opaque(&[1; 8]).u32(2).u32(390_003).u32(390_004);
                e.into_bytes()
            })
        });
        match Client::connect(&ep) {
            Err(Error::Mount { reason, .. }) => {
                assert!(reason.contains("AUTH_SYS") && reason.contains("390003"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
