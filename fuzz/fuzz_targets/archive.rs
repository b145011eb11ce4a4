//! What berth reads back from a shared store, which anyone with access to the export can
//! change: a pack's index and a manifest. Neither panics nor allocates beyond what the
//! bytes hold; an index that reads names every chunk once at the offset that follows the
//! one before it, and a manifest that decodes encodes to bytes that decode to itself.
//! The input is tried as a pack under the name its index would have (so the checksum can
//! pass) and under a wrong one, as a manifest, and as a manifest's body under a header
//! that matches it (so the JSON and the consistency checks are reached).
#![no_main]

use berth::archive::manifest::{MAGIC, Manifest, VERSION};
use berth::archive::{Hash, pack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = data
        .get(8..12)
        .map(|c| 12 + 36 * u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .filter(|&body| body <= data.len())
        .unwrap_or(0);
    for name in [Hash::of(&data[..body]), Hash([7; 32])] {
        match pack::parse(&name, data) {
            Ok(pack::Parsed::Index(index)) => {
                let mut at = (body + 32) as u64;
                for e in &index.entries {
                    assert_eq!(e.offset, at);
                    at += u64::from(e.len);
                }
                assert_eq!(index.name, name);
            }
            Ok(pack::Parsed::NeedMore(n)) => assert!(n > data.len()),
            Err(_) => {}
        }
    }
    let mut wrapped = format!("{MAGIC} {VERSION} {} {}\n", data.len(), Hash::of(data)).into_bytes();
    wrapped.extend_from_slice(data);
    for bytes in [data, &wrapped[..]] {
        if let Ok(m) = Manifest::decode("fuzz", bytes) {
            let again = Manifest::decode("fuzz", &m.encode()).expect("an encoded manifest decodes");
            assert_eq!(again, m);
        }
    }
});
