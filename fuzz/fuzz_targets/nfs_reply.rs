//! NFS reply decoding (record marking, RPC reply headers, portmapper GETPORT, MOUNT MNT and
//! the NFSv3 results berth reads): never panics nor allocates beyond the bytes it is given,
//! whatever a server sends, and what decodes keeps the limits the client relies on.
//! The first byte sets what a READ asked for and a WRITE sent (1 byte to 1 MiB), and with
//! its top bit the call's xid differs from the reply's; the rest is the reply, decoded as
//! a record, as an RPC reply and as every procedure's results.
#![no_main]

use berth::nfs::decode::{self, Call, MAX_NAME, MAX_REPLY, Mnt};
use berth::nfs::types::MAX_FH;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&param, wire)) = data.split_first() else { return };
    let size = 1usize << ((param & 0x7f) % 21);
    if let Ok((record, used)) = decode::record(wire) {
        assert!(record.len() <= used && used <= wire.len() && record.len() <= MAX_REPLY);
        rpc(&record, param, size);
    }
    rpc(wire, param, size);
    results(wire, size);
});

fn rpc(reply: &[u8], param: u8, size: usize) {
    let own = reply.first_chunk::<4>().map_or(0, |x| u32::from_be_bytes(*x));
    let xid = if param & 0x80 == 0 { own } else { !own };
    if let Ok(body) = decode::rpc_reply(reply, &Call { xid, prog: 100_003, vers: 3, proc: 1 }) {
        assert!(reply.ends_with(body) && body.len() + 24 <= reply.len());
        results(body, size);
    }
}

fn results(body: &[u8], size: usize) {
    if let Ok(Some(port)) = decode::getport(body) {
        assert!(port > 0);
    }
    if let Ok(Mnt::Mounted { root, flavors }) = decode::mnt(body) {
        assert!(root.0.len() <= MAX_FH && 12 + root.0.len() + 4 * flavors.len() <= body.len());
    }
    let _ = decode::status(body);
    let _ = decode::getattr(body);
    if let Ok((fh, _)) = decode::lookup(body) {
        assert!(fh.0.len() <= MAX_FH);
    }
    if let Ok(target) = decode::readlink(body) {
        assert!(target.len() <= MAX_NAME);
    }
    let asked = u32::try_from(size).unwrap_or(u32::MAX);
    if let Ok((read, _)) = decode::read(body, asked) {
        assert!(read.len() <= size);
    }
    if let Ok(written) = decode::write(body, size) {
        assert!(usize::try_from(written).is_ok_and(|n| n <= size));
    }
    if let Ok((fh, _)) = decode::created(body) {
        assert!(fh.is_none_or(|fh| fh.0.len() <= MAX_FH));
    }
    if let Ok(page) = decode::readdirplus(body) {
        // Each entry takes at least 32 bytes of the reply, so the page is no bigger.
        assert!(32 * page.entries.len() <= body.len());
        for (_, entry) in &page.entries {
            assert!(entry.name.len() <= MAX_NAME);
            assert!(entry.fh.as_ref().is_none_or(|fh| fh.0.len() <= MAX_FH));
        }
    }
    let _ = decode::fsstat(body);
    if let Ok(info) = decode::fsinfo(body) {
        assert!((4096..=1 << 20).contains(&info.io_size()));
    }
}
