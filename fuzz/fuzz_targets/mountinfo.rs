//! mountinfo and blkid parsing: never panics on any bytes the kernel or a tool could print.
#![no_main]

use std::path::Path;

use berth::mount::{mountinfo, tools};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(entries) = mountinfo::parse(&text) {
        let _ = mountinfo::binds_of(&entries, Path::new("/pool/volumes/x"));
        let _ = mountinfo::containing(&entries, Path::new("/a/b"));
    }
    let _ = tools::parse_blkid(&text);
    let _ = tools::ext4_bytes(data);
});
