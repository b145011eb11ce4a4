//! Every decoder of what an NFS server sends back: ONC RPC record marking and reply
//! headers, the portmapper's GETPORT, MOUNT v3's MNT and the NFSv3 results berth reads.
//! Each is a pure function over the received bytes, so tests and the `nfs_reply` fuzz
//! target reach all of them without a server. None panics, and none allocates by a
//! length the bytes claim: every length from the wire is checked against its limit and
//! the bytes left before it is used, so what a decoder builds grows only with the bytes
//! it was given. A reply that does not decode is a precise error.

use super::failure::RpcError;
use super::types::{Attr, Entry, Fh, FileType, FsStat, MAX_FH, Status, Time};
use super::xdr::{Dec, XdrError};

/// The largest reply berth accepts (a READ or READDIRPLUS of 1 MiB plus headers fits).
pub const MAX_REPLY: usize = 8 << 20;
/// The longest file name or symlink target berth accepts.
pub const MAX_NAME: usize = 4096;

/// One record-marking header (RFC 5531 section 11): a fragment's length and whether it
/// is the record's last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub len: usize,
    pub last: bool,
}

/// Decodes the header of the next fragment of a record of which `so_far` bytes arrived;
/// refuses a record that would grow past [`MAX_REPLY`].
pub fn fragment(mark: [u8; 4], so_far: usize) -> Result<Fragment, RpcError> {
    let mark = u32::from_be_bytes(mark);
    let len = usize::try_from(mark & 0x7fff_ffff).unwrap_or(usize::MAX);
    let total = so_far.saturating_add(len);
    if total > MAX_REPLY {
        return Err(RpcError::TooLarge(total));
    }
    Ok(Fragment { len, last: mark & 0x8000_0000 != 0 })
}

/// Joins the fragments of the record at the start of `bytes`; returns the record and how
/// many bytes of `bytes` it took (marks included).
pub fn record(bytes: &[u8]) -> Result<(Vec<u8>, usize), RpcError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    loop {
        let at = bytes.len() - rest.len();
        let Some((mark, after)) = rest.split_first_chunk::<4>() else {
            return Err(XdrError::Short { need: 4 - rest.len(), at }.into());
        };
        let frag = fragment(*mark, out.len())?;
        let Some((data, after)) = after.split_at_checked(frag.len) else {
            return Err(XdrError::Short { need: frag.len - after.len(), at: at + 4 }.into());
        };
        out.extend_from_slice(data);
        rest = after;
        if frag.last {
            return Ok((out, bytes.len() - rest.len()));
        }
    }
}

/// The call a reply answers: its transaction ID, to match, and what it asked for, to
/// explain a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc: u32,
}

/// Decodes an RPC reply message (RFC 5531 section 9) to `call`: the procedure's
/// encoded results when the server accepted and ran the call, else why it did not.
pub fn rpc_reply<'a>(reply: &'a [u8], call: &Call) -> Result<&'a [u8], RpcError> {
    let Call { xid, prog, vers, proc } = *call;
    let mut d = Dec::new(reply);
    let got = d.u32()?;
    if got != xid {
        return Err(RpcError::Xid { want: xid, got });
    }
    if d.u32()? != 1 {
        return Err(RpcError::Xdr(XdrError::Invalid("message type")));
    }
    match d.u32()? {
        0 => {
            d.u32()?; // verifier flavor
            d.opaque("verifier", 400)?;
            match d.u32()? {
                0 => Ok(d.rest()),
                1 => Err(RpcError::NotRun(format!("program {prog} is not available"))),
                2 => {
                    let (low, high) = (d.u32()?, d.u32()?);
                    Err(RpcError::NotRun(format!(
                        "program {prog} version {vers} is not offered (versions {low} to {high} are)"
                    )))
                }
                3 => Err(RpcError::NotRun(format!("procedure {proc} of program {prog} is not offered"))),
                4 => Err(RpcError::NotRun("the server could not decode the arguments".into())),
                other => Err(RpcError::NotRun(format!("server error (accept status {other})"))),
            }
        }
        1 => {
            match d.u32()? {
                0 => {
                    let (low, high) = (d.u32()?, d.u32()?);
                    Err(RpcError::Denied(format!("RPC version mismatch (the server speaks versions {low} to {high})")))
                }
                1 => {
                    let why = match d.u32()? {
                    1 => "bad credential".into(),
                    2 => "credential rejected (the export may require a reserved source port or another security flavor)"
                        .into(),
                    3 => "bad verifier".into(),
                    4 => "verifier rejected".into(),
                    5 => "security flavor too weak".into(),
                    other => format!("authentication failed (auth status {other})"),
                };
                    Err(RpcError::Denied(why))
                }
                _ => Err(RpcError::Xdr(XdrError::Invalid("reject status"))),
            }
        }
        _ => Err(RpcError::Xdr(XdrError::Invalid("reply status"))),
    }
}

/// The port from a portmapper GETPORT reply (RFC 1833); `None` when the program is not
/// registered.
pub fn getport(reply: &[u8]) -> Result<Option<u16>, XdrError> {
    match u16::try_from(Dec::new(reply).u32()?) {
        Ok(0) => Ok(None),
        Ok(port) => Ok(Some(port)),
        Err(_) => Err(XdrError::Invalid("port")),
    }
}

/// A MOUNT v3 MNT reply (RFC 1813 section 5.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mnt {
    /// The export's root handle and the RPC security flavors it accepts.
    Mounted { root: Fh, flavors: Vec<u32> },
    /// The server's mountstat3, not MNT3_OK.
    Refused(u32),
}

pub fn mnt(reply: &[u8]) -> Result<Mnt, XdrError> {
    let mut d = Dec::new(reply);
    let status = d.u32()?;
    if status != 0 {
        return Ok(Mnt::Refused(status));
    }
    let root = fh(&mut d)?;
    // The list grows with the flavors read, never with the count the server claims.
    let count = d.u32()?;
    let mut flavors = Vec::new();
    for _ in 0..count {
        flavors.push(d.u32()?);
    }
    Ok(Mnt::Mounted { root, flavors })
}

/// Why an NFSv3 reply yields no results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The server answered with an error status.
    #[error("{0}")]
    Status(Status),
    #[error(transparent)]
    Xdr(#[from] XdrError),
}

type Reply<T> = Result<T, ReplyError>;

/// The results after an NFS3_OK status.
fn ok(reply: &[u8]) -> Reply<Dec<'_>> {
    let mut d = Dec::new(reply);
    match d.u32()? {
        0 => Ok(d),
        status => Err(ReplyError::Status(Status(status))),
    }
}

/// A reply of which berth needs only the status: SETATTR, REMOVE, RMDIR, RENAME, LINK,
/// COMMIT.
pub fn status(reply: &[u8]) -> Reply<()> {
    ok(reply).map(drop)
}

pub fn getattr(reply: &[u8]) -> Reply<Attr> {
    Ok(fattr(&mut ok(reply)?)?)
}

/// LOOKUP: the object's handle and, when the server sent them, its attributes.
pub fn lookup(reply: &[u8]) -> Reply<(Fh, Option<Attr>)> {
    let mut d = ok(reply)?;
    let obj = fh(&mut d)?;
    Ok((obj, post_op_attr(&mut d)?))
}

/// READLINK: the symlink's target.
pub fn readlink(reply: &[u8]) -> Reply<Vec<u8>> {
    let mut d = ok(reply)?;
    post_op_attr(&mut d)?;
    Ok(d.opaque("symlink target", MAX_NAME)?.to_vec())
}

/// READ of `asked` bytes: the data and whether the file ended. More data than asked
/// for, or a count that is not the data's length, is a broken reply.
pub fn read(reply: &[u8], asked: u32) -> Reply<(Vec<u8>, bool)> {
    let mut d = ok(reply)?;
    post_op_attr(&mut d)?;
    let count = d.u32()?;
    let eof = d.bool()?;
    let max = usize::try_from(asked).unwrap_or(usize::MAX);
    let data = d.opaque("READ data", max)?;
    if usize::try_from(count).ok() != Some(data.len()) {
        return Err(XdrError::Invalid("READ count").into());
    }
    Ok((data.to_vec(), eof))
}

/// WRITE of `sent` bytes: how many of them the server wrote. A count beyond `sent`
/// would have berth skip data that was never written, so it is a broken reply.
pub fn write(reply: &[u8], sent: usize) -> Reply<u32> {
    let mut d = ok(reply)?;
    wcc_data(&mut d)?;
    let count = d.u32()?;
    let len = usize::try_from(count).unwrap_or(usize::MAX);
    if len > sent {
        return Err(XdrError::TooLong { what: "WRITE count", len, max: sent }.into());
    }
    Ok(count)
}

/// CREATE, MKDIR, SYMLINK and MKNOD: the new object's handle and attributes, each when
/// the server sent it.
pub fn created(reply: &[u8]) -> Reply<(Option<Fh>, Option<Attr>)> {
    let mut d = ok(reply)?;
    let obj = post_op_fh(&mut d)?;
    Ok((obj, post_op_attr(&mut d)?))
}

/// One READDIRPLUS reply: a page of entries with their cookies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPage {
    pub verf: [u8; 8],
    pub entries: Vec<(u64, Entry)>,
    pub eof: bool,
}

pub fn readdirplus(reply: &[u8]) -> Reply<DirPage> {
    let mut d = ok(reply)?;
    post_op_attr(&mut d)?;
    let mut verf = [0u8; 8];
    verf.copy_from_slice(d.fixed(8)?);
    let mut entries = Vec::new();
    while d.bool()? {
        let fileid = d.u64()?;
        let name = d.opaque("file name", MAX_NAME)?.to_vec();
        let cookie = d.u64()?;
        let attr = post_op_attr(&mut d)?;
        let fh = post_op_fh(&mut d)?;
        entries.push((cookie, Entry { name, fileid, attr, fh }));
    }
    Ok(DirPage { verf, entries, eof: d.bool()? })
}

pub fn fsstat(reply: &[u8]) -> Reply<FsStat> {
    let mut d = ok(reply)?;
    post_op_attr(&mut d)?;
    Ok(FsStat {
        total_bytes: d.u64()?,
        free_bytes: d.u64()?,
        avail_bytes: d.u64()?,
        total_files: d.u64()?,
        free_files: d.u64()?,
        avail_files: d.u64()?,
    })
}

/// The READ and WRITE sizes from FSINFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsInfo {
    pub rtmax: u32,
    pub rtpref: u32,
    pub wtmax: u32,
    pub wtpref: u32,
}

impl FsInfo {
    /// The size berth reads and writes in: what the server prefers or allows, between
    /// 4 KiB and 1 MiB.
    pub fn io_size(&self) -> u32 {
        let FsInfo { rtmax, rtpref, wtmax, wtpref } = *self;
        let size = rtpref.min(wtpref).max(rtmax.min(wtmax).min(1 << 20)).min(rtmax).min(wtmax);
        size.clamp(4096, 1 << 20)
    }
}

pub fn fsinfo(reply: &[u8]) -> Reply<FsInfo> {
    let mut d = ok(reply)?;
    post_op_attr(&mut d)?;
    let (rtmax, rtpref, _rtmult, wtmax, wtpref) = (d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u32()?);
    Ok(FsInfo { rtmax, rtpref, wtmax, wtpref })
}

fn time(d: &mut Dec<'_>) -> Result<Time, XdrError> {
    Ok(Time { seconds: d.u32()?, nseconds: d.u32()? })
}

/// File attributes (fattr3).
pub(super) fn fattr(d: &mut Dec<'_>) -> Result<Attr, XdrError> {
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

fn post_op_attr(d: &mut Dec<'_>) -> Result<Option<Attr>, XdrError> {
    if d.bool()? { Ok(Some(fattr(d)?)) } else { Ok(None) }
}

fn wcc_data(d: &mut Dec<'_>) -> Result<(), XdrError> {
    if d.bool()? {
        d.u64()?;
        time(d)?;
        time(d)?;
    }
    post_op_attr(d)?;
    Ok(())
}

fn fh(d: &mut Dec<'_>) -> Result<Fh, XdrError> {
    Ok(Fh(d.opaque("file handle", MAX_FH)?.to_vec()))
}

fn post_op_fh(d: &mut Dec<'_>) -> Result<Option<Fh>, XdrError> {
    if d.bool()? { Ok(Some(fh(d)?)) } else { Ok(None) }
}

#[cfg(test)]
mod tests;
