use super::*;
use crate::nfs::xdr::Enc;
#[test]
fn attributes_decode_from_the_wire() {
    let mut e = Enc::new();
    e.u32(1).u32(0o100644).u32(1).u32(1000).u32(100).u64(10).u64(4096).u32(0).u32(0);
    e.u64(7).u64(99).u32(1).u32(2).u32(3).u32(4).u32(5).u32(6);
    let bytes = e.into_bytes();
    let attr = fattr(&mut Dec::new(&bytes)).expect("decodes");
    assert_eq!((attr.ftype, attr.mode, attr.uid, attr.size, attr.fileid), (FileType::Regular, 0o100644, 1000, 10, 99));
    assert_eq!(attr.mtime, Time { seconds: 3, nseconds: 4 });
    let mut bad = bytes.clone();
    bad[3] = 9;
    assert!(fattr(&mut Dec::new(&bad)).is_err());
}
