use super::*;
use crate::nfs::xdr::Enc;

/// Errors that say the reply ended early: what every truncation must give.
trait Short {
    fn is_short(&self) -> bool;
}

impl Short for XdrError {
    fn is_short(&self) -> bool {
        matches!(self, XdrError::Short { .. })
    }
}

impl Short for ReplyError {
    fn is_short(&self) -> bool {
        matches!(self, ReplyError::Xdr(e) if e.is_short())
    }
}

impl Short for RpcError {
    fn is_short(&self) -> bool {
        matches!(self, RpcError::Xdr(e) if e.is_short())
    }
}

/// Cuts `full` at every byte offset: before `used` (the bytes the decoder reads) each cut
/// is a short reply, from there on each decodes to `want`, whatever follows.
#[track_caller]
fn truncations<T: PartialEq + std::fmt::Debug, E: Short + std::fmt::Debug>(
    full: &[u8],
    used: usize,
    want: &T,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) {
    assert!(used <= full.len());
    for n in 0..full.len() {
        match decode(&full[..n]) {
            Err(e) if n < used => assert!(e.is_short(), "cut at {n} of {used}: {e:?}"),
            Ok(got) if n >= used => assert_eq!(&got, want, "cut at {n}"),
            other => panic!("cut at {n} of {used}: {other:?}"),
        }
    }
    assert_eq!(&decode(full).expect("the whole reply decodes"), want);
}

const RPC_OK: u32 = 0;

fn sample_attr(ftype: FileType) -> Attr {
    Attr {
        ftype,
        mode: 0o755,
        nlink: 2,
        uid: 1000,
        gid: 100,
        size: 4096,
        used: 8192,
        rdev: (0, 0),
        fsid: 7,
        fileid: 99,
        atime: Time { seconds: 1, nseconds: 2 },
        mtime: Time { seconds: 3, nseconds: 4 },
        ctime: Time { seconds: 5, nseconds: 6 },
    }
}

fn put_attr(e: &mut Enc, a: &Attr) {
    e.u32(a.ftype.wire()).u32(a.mode).u32(a.nlink).u32(a.uid).u32(a.gid).u64(a.size).u64(a.used);
    e.u32(a.rdev.0).u32(a.rdev.1).u64(a.fsid).u64(a.fileid);
    for t in [a.atime, a.mtime, a.ctime] {
        e.u32(t.seconds).u32(t.nseconds);
    }
}

fn put_post_op_attr(e: &mut Enc, a: Option<&Attr>) {
    match a {
        Some(a) => {
            e.bool(true);
            put_attr(e, a);
        }
        None => {
            e.bool(false);
        }
    }
}

fn nfs_ok() -> Enc {
    let mut e = Enc::new();
    e.u32(RPC_OK);
    e
}

fn word(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn attributes_decode_from_the_wire() {
    let mut e = Enc::new();
    e.u32(1).u32(0o100644).u32(1).u32(1000).u32(100).u64(10).u64(4096).u32(0).u32(0);
    e.u64(7).u64(99).u32(1).u32(2).u32(3).u32(4).u32(5).u32(6);
    let bytes = e.into_bytes();
    let attr = fattr(&mut Dec::new(&bytes)).expect("decodes");
    assert_eq!((attr.ftype, attr.mode, attr.uid, attr.size, attr.fileid), (FileType::Regular, 0o100644, 1000, 10, 99));
    assert_eq!(attr.mtime, Time { seconds: 3, nseconds: 4 });
    for wrong in [0, 8, u32::MAX] {
        let mut bad = bytes.clone();
        word(&mut bad, 0, wrong);
        assert_eq!(fattr(&mut Dec::new(&bad)), Err(XdrError::Invalid("file type")));
    }
}

#[test]
fn records_join_their_fragments_and_stop_at_the_last() {
    let mut wire = Vec::new();
    wire.extend_from_slice(&3u32.to_be_bytes());
    wire.extend_from_slice(b"abc");
    wire.extend_from_slice(&0u32.to_be_bytes());
    wire.extend_from_slice(&(0x8000_0000u32 | 2).to_be_bytes());
    wire.extend_from_slice(b"de");
    let used = wire.len();
    wire.extend_from_slice(b"next record");
    truncations(&wire, used, &(b"abcde".to_vec(), used), record);
}

#[test]
fn records_longer_than_berth_accepts_are_refused_before_their_bytes() {
    for (mark, so_far) in
        [(0xffff_ffffu32, 0), (0x7fff_ffff, 0), (0x8000_0001 | MAX_REPLY as u32, 0), (2, MAX_REPLY - 1)]
    {
        assert!(matches!(fragment(mark.to_be_bytes(), so_far), Err(RpcError::TooLarge(_))), "{mark:#x}");
    }
    assert_eq!(fragment((0x8000_0000u32 | 5).to_be_bytes(), MAX_REPLY - 5).ok(), Some(Fragment { len: 5, last: true }));
    // A mark that promises 8 MiB followed by 4 bytes: short, and nothing of 8 MiB is made.
    let mut wire = (0x8000_0000u32 | MAX_REPLY as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(b"abcd");
    assert!(matches!(record(&wire), Err(RpcError::Xdr(XdrError::Short { need, at: 4 })) if need == MAX_REPLY - 4));
    // Second fragment pushes the record over the limit.
    let mut wire = (MAX_REPLY as u32 - 1).to_be_bytes().to_vec();
    wire.resize(4 + MAX_REPLY - 1, 0);
    wire.extend_from_slice(&(0x8000_0002u32).to_be_bytes());
    wire.extend_from_slice(b"xy");
    assert!(matches!(record(&wire), Err(RpcError::TooLarge(n)) if n == MAX_REPLY + 1));
}

const CALL: Call = Call { xid: 0x1234_5678, prog: 100_003, vers: 3, proc: 6 };

fn accepted(stat: u32) -> Enc {
    let mut e = Enc::new();
    e.u32(CALL.xid).u32(1).u32(0).u32(0).opaque(&[]).u32(stat);
    e
}

#[test]
fn accepted_replies_yield_their_results() {
    let mut e = accepted(0);
    let used = e.len();
    e.u32(42).u32(43);
    let wire = e.into_bytes();
    // The results are whatever follows the header, so every cut past it is accepted too.
    for n in 0..=wire.len() {
        match rpc_reply(&wire[..n], &CALL) {
            Err(e) if n < used => assert!(e.is_short(), "cut at {n}: {e:?}"),
            Ok(results) if n >= used => assert_eq!(results, &wire[used..n]),
            other => panic!("cut at {n}: {other:?}"),
        }
    }
    assert_eq!(rpc_reply(&wire, &CALL).expect("accepted"), [0, 0, 0, 42, 0, 0, 0, 43]);
    // A verifier the server sends (AUTH_SHORT, say) is skipped, padding included.
    let mut e = Enc::new();
    e.u32(CALL.xid).u32(1).u32(0).u32(2).opaque(b"abcde").u32(0).u32(7);
    assert_eq!(rpc_reply(e.bytes(), &CALL).expect("accepted"), [0, 0, 0, 7]);
}

#[test]
fn refused_and_malformed_rpc_replies_are_precise_errors() {
    let not_run = |e: Enc| match rpc_reply(e.bytes(), &CALL) {
        Err(RpcError::NotRun(why)) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(not_run(accepted(1)), "program 100003 is not available");
    let mut e = accepted(2);
    e.u32(2).u32(4);
    assert_eq!(not_run(e), "program 100003 version 3 is not offered (versions 2 to 4 are)");
    assert!(rpc_reply(accepted(2).bytes(), &CALL).is_err_and(|e| e.is_short()));
    assert_eq!(not_run(accepted(3)), "procedure 6 of program 100003 is not offered");
    assert_eq!(not_run(accepted(4)), "the server could not decode the arguments");
    assert_eq!(not_run(accepted(5)), "server error (accept status 5)");
    assert_eq!(not_run(accepted(u32::MAX)), "server error (accept status 4294967295)");

    let denied = |words: &[u32]| {
        let mut e = Enc::new();
        e.u32(CALL.xid).u32(1).u32(1);
        for &w in words {
            e.u32(w);
        }
        match rpc_reply(e.bytes(), &CALL) {
            Err(RpcError::Denied(why)) => why,
            other => panic!("{words:?}: {other:?}"),
        }
    };
    assert!(denied(&[1, 2]).contains("reserved source port"));
    assert_eq!(denied(&[1, 5]), "security flavor too weak");
    assert_eq!(denied(&[1, 99]), "authentication failed (auth status 99)");
    assert_eq!(denied(&[0, 2, 2]), "RPC version mismatch (the server speaks versions 2 to 2)");
    // A reject status other than RPC_MISMATCH (0) and AUTH_ERROR (1) is not an auth error.
    let mut e = Enc::new();
    e.u32(CALL.xid).u32(1).u32(1).u32(2).u32(2);
    assert!(matches!(rpc_reply(e.bytes(), &CALL), Err(RpcError::Xdr(XdrError::Invalid("reject status")))));

    let mut e = Enc::new();
    e.u32(CALL.xid ^ 1).u32(1).u32(0);
    assert!(matches!(rpc_reply(e.bytes(), &CALL), Err(RpcError::Xid { want: 0x1234_5678, got: 0x1234_5679 })));
    let mut call_not_reply = accepted(0).into_bytes();
    word(&mut call_not_reply, 4, 0);
    assert!(matches!(rpc_reply(&call_not_reply, &CALL), Err(RpcError::Xdr(XdrError::Invalid("message type")))));
    let mut bad_stat = accepted(0).into_bytes();
    word(&mut bad_stat, 8, 2);
    assert!(matches!(rpc_reply(&bad_stat, &CALL), Err(RpcError::Xdr(XdrError::Invalid("reply status")))));
    // A verifier longer than RFC 5531 allows (400 bytes) or than the reply holds.
    for len in [401, 1 << 20, u32::MAX] {
        let mut e = Enc::new();
        e.u32(CALL.xid).u32(1).u32(0).u32(0).u32(len);
        assert!(matches!(rpc_reply(e.bytes(), &CALL), Err(RpcError::Xdr(XdrError::TooLong { .. }))), "{len}");
    }
    let mut e = Enc::new();
    e.u32(CALL.xid).u32(1).u32(0).u32(0).u32(400);
    assert!(rpc_reply(e.bytes(), &CALL).is_err_and(|e| e.is_short()));
}

#[test]
fn portmapper_ports_decode() {
    truncations(&2049u32.to_be_bytes(), 4, &Some(2049), getport);
    assert_eq!(getport(&0u32.to_be_bytes()), Ok(None));
    // Not "unregistered": a port no TCP port can be.
    assert_eq!(getport(&65536u32.to_be_bytes()), Err(XdrError::Invalid("port")));
}

fn mnt_reply(root: &[u8], flavors: &[u32]) -> Enc {
    let mut e = Enc::new();
    e.u32(0).opaque(root).u32(u32::try_from(flavors.len()).unwrap());
    for &f in flavors {
        e.u32(f);
    }
    e
}

#[test]
fn mount_replies_yield_the_root_handle_or_the_refusal() {
    let root = [7u8; 28];
    let wire = mnt_reply(&root, &[1, 390_003]).into_bytes();
    truncations(&wire, wire.len(), &Mnt::Mounted { root: Fh(root.to_vec()), flavors: vec![1, 390_003] }, mnt);
    assert_eq!(mnt(&13u32.to_be_bytes()), Ok(Mnt::Refused(13)));
    // Handles longer than NFSv3's 64 bytes, however long the reply claims they are.
    for len in [65, 1 << 30, u32::MAX] {
        let mut e = Enc::new();
        e.u32(0).u32(len);
        assert!(matches!(mnt(e.bytes()), Err(XdrError::TooLong { what: "file handle", .. })), "{len}");
    }
    let wire = mnt_reply(&[9u8; 64], &[]).into_bytes();
    assert_eq!(mnt(&wire), Ok(Mnt::Mounted { root: Fh(vec![9u8; 64]), flavors: vec![] }));
    // A flavor count of 4 billion followed by one flavor: short, after reading that one.
    let mut e = Enc::new();
    e.u32(0).opaque(&[1; 8]).u32(u32::MAX).u32(1);
    assert_eq!(mnt(e.bytes()), Err(XdrError::Short { need: 4, at: e.len() }));
}

#[test]
fn nfs_statuses_are_errors_whatever_follows() {
    for status in [2, 13, 70, 10008, u32::MAX] {
        let want = ReplyError::Status(Status(status));
        let reply = status.to_be_bytes();
        assert_eq!(super::status(&reply), Err(want.clone()));
        assert_eq!(getattr(&reply), Err(want.clone()));
        assert_eq!(lookup(&reply), Err(want.clone()));
        assert_eq!(readlink(&reply), Err(want.clone()));
        assert_eq!(read(&reply, 10), Err(want.clone()));
        assert_eq!(write(&reply, 10), Err(want.clone()));
        assert_eq!(created(&reply), Err(want.clone()));
        assert_eq!(readdirplus(&reply), Err(want.clone()));
        assert_eq!(fsstat(&reply), Err(want.clone()));
        assert_eq!(fsinfo(&reply), Err(want));
    }
    truncations(&0u32.to_be_bytes(), 4, &(), super::status);
}

#[test]
fn getattr_lookup_and_create_replies_decode() {
    let a = sample_attr(FileType::Directory);
    let mut e = nfs_ok();
    put_attr(&mut e, &a);
    truncations(e.bytes(), e.len(), &a, getattr);

    let fh = Fh(vec![1, 2, 3, 4, 5]);
    for attr in [Some(&a), None] {
        let mut e = nfs_ok();
        e.opaque(&fh.0);
        put_post_op_attr(&mut e, attr);
        let used = e.len();
        put_post_op_attr(&mut e, Some(&a)); // the directory's attributes, not read
        truncations(e.bytes(), used, &(fh.clone(), attr.copied()), lookup);

        let mut e = nfs_ok();
        e.bool(true).opaque(&fh.0);
        put_post_op_attr(&mut e, attr);
        let used = e.len();
        e.bool(false).bool(false); // the directory's wcc_data, not read
        truncations(e.bytes(), used, &(Some(fh.clone()), attr.copied()), created);
    }
    let mut e = nfs_ok();
    e.bool(false).bool(false);
    assert_eq!(created(e.bytes()), Ok((None, None)));

    // A post_op_attr's flag is a boolean: 2 is not one.
    let mut e = nfs_ok();
    e.opaque(&fh.0).u32(2);
    assert_eq!(lookup(e.bytes()), Err(ReplyError::Xdr(XdrError::Invalid("boolean"))));
}

#[test]
fn read_write_and_readlink_replies_decode() {
    let a = sample_attr(FileType::Regular);
    let mut e = nfs_ok();
    put_post_op_attr(&mut e, Some(&a));
    let head = e.len();
    e.u32(5).bool(true).opaque(b"hello");
    truncations(e.bytes(), e.len(), &(b"hello".to_vec(), true), |r| read(r, 5));
    // More than asked for, a count that is not the data's length, a length beyond the reply.
    let full = e.into_bytes();
    assert_eq!(read(&full, 4), Err(ReplyError::Xdr(XdrError::TooLong { what: "READ data", len: 5, max: 4 })));
    let mut wrong_count = full.clone();
    word(&mut wrong_count, head, 6);
    assert_eq!(read(&wrong_count, 10), Err(ReplyError::Xdr(XdrError::Invalid("READ count"))));
    let mut huge = full;
    word(&mut huge, head, u32::MAX);
    word(&mut huge, head + 8, u32::MAX);
    assert!(read(&huge, u32::MAX).is_err_and(|e| e.is_short()));

    let mut e = nfs_ok();
    e.bool(true).u64(4096).u32(1).u32(2).u32(3).u32(4); // wcc_data: before
    put_post_op_attr(&mut e, Some(&a));
    e.u32(4096);
    let used = e.len();
    e.u32(2).fixed(&[0xab; 8]); // committed, verifier: not read
    truncations(e.bytes(), used, &4096, |r| write(r, 4096));
    assert_eq!(
        write(e.bytes(), 4095),
        Err(ReplyError::Xdr(XdrError::TooLong { what: "WRITE count", len: 4096, max: 4095 }))
    );

    let mut e = nfs_ok();
    put_post_op_attr(&mut e, None);
    e.opaque(b"../target");
    truncations(e.bytes(), e.len(), &b"../target".to_vec(), readlink);
    let mut e = nfs_ok();
    e.bool(false).u32(u32::try_from(MAX_NAME).unwrap() + 1);
    assert!(matches!(readlink(e.bytes()), Err(ReplyError::Xdr(XdrError::TooLong { .. }))));
}

fn dir_page(entries: &[(u64, &Entry)], eof: bool) -> Enc {
    let mut e = nfs_ok();
    put_post_op_attr(&mut e, None);
    e.fixed(&[1, 2, 3, 4, 5, 6, 7, 8]);
    for (cookie, entry) in entries {
        e.bool(true).u64(entry.fileid).opaque(&entry.name).u64(*cookie);
        put_post_op_attr(&mut e, entry.attr.as_ref());
        match &entry.fh {
            Some(fh) => e.bool(true).opaque(&fh.0),
            None => e.bool(false),
        };
    }
    e.bool(false).bool(eof);
    e
}

#[test]
fn readdirplus_pages_decode() {
    let a =
        Entry { name: b"a".to_vec(), fileid: 10, attr: Some(sample_attr(FileType::Regular)), fh: Some(Fh(vec![4; 8])) };
    let b = Entry { name: b"\xffnot utf-8".to_vec(), fileid: 11, attr: None, fh: None };
    let wire = dir_page(&[(3, &a), (u64::MAX, &b)], true);
    let want = DirPage { verf: [1, 2, 3, 4, 5, 6, 7, 8], entries: vec![(3, a.clone()), (u64::MAX, b)], eof: true };
    truncations(wire.bytes(), wire.len(), &want, readdirplus);

    let empty = dir_page(&[], false);
    assert_eq!(readdirplus(empty.bytes()), Ok(DirPage { verf: [1, 2, 3, 4, 5, 6, 7, 8], entries: vec![], eof: false }));

    // A name longer than berth accepts; a handle longer than NFSv3 allows.
    let mut long = a.clone();
    long.name = vec![b'x'; MAX_NAME + 1];
    assert!(matches!(
        readdirplus(dir_page(&[(1, &long)], true).bytes()),
        Err(ReplyError::Xdr(XdrError::TooLong { what: "file name", .. }))
    ));
    let mut long = a;
    long.fh = Some(Fh(vec![0; MAX_FH + 1]));
    assert!(matches!(
        readdirplus(dir_page(&[(1, &long)], true).bytes()),
        Err(ReplyError::Xdr(XdrError::TooLong { what: "file handle", .. }))
    ));
}

#[test]
fn fsstat_and_fsinfo_replies_decode() {
    let mut e = nfs_ok();
    put_post_op_attr(&mut e, None);
    e.u64(1000).u64(600).u64(500).u64(10).u64(6).u64(5);
    let used = e.len();
    e.u32(0); // invarsec
    let want =
        FsStat { total_bytes: 1000, free_bytes: 600, avail_bytes: 500, total_files: 10, free_files: 6, avail_files: 5 };
    truncations(e.bytes(), used, &want, fsstat);

    let fsinfo_reply = |rtmax: u32, rtpref: u32, wtmax: u32, wtpref: u32| {
        let mut e = nfs_ok();
        put_post_op_attr(&mut e, None);
        e.u32(rtmax).u32(rtpref).u32(4096).u32(wtmax).u32(wtpref);
        let used = e.len();
        e.u32(4096).u32(4096).u64(u64::MAX).u32(0).u32(1).u32(0x1b);
        (e, used)
    };
    let (e, used) = fsinfo_reply(1 << 20, 1 << 20, 1 << 20, 1 << 20);
    let info = FsInfo { rtmax: 1 << 20, rtpref: 1 << 20, wtmax: 1 << 20, wtpref: 1 << 20 };
    truncations(e.bytes(), used, &info, fsinfo);
    for (rtmax, rtpref, wtmax, wtpref, io) in [
        (1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20),
        (1 << 24, 1 << 24, 1 << 24, 1 << 24, 1 << 20),
        (65536, 32768, 1 << 20, 65536, 65536),
        (0, 0, 0, 0, 4096),
        (u32::MAX, u32::MAX, u32::MAX, u32::MAX, 1 << 20),
    ] {
        let (e, _) = fsinfo_reply(rtmax, rtpref, wtmax, wtpref);
        assert_eq!(fsinfo(e.bytes()).map(|i| i.io_size()), Ok(io), "{rtmax} {rtpref} {wtmax} {wtpref}");
    }
}
