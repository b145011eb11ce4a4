//! ID parsing and checking: never panics, and every parsed ID names a valid pool and key.
#![no_main]

use berth::ids::{self, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = ids::check("id", text);
    for kind in [Kind::Volume, Kind::Snapshot] {
        if let Some(parsed) = ids::parse(kind, text) {
            assert!(ids::valid_pool_name(parsed.pool));
            assert!(ids::is_key(parsed.key));
            assert!(text.len() <= ids::MAX_ID_BYTES);
        }
    }
});
