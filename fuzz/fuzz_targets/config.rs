//! Configuration parsing: never panics; an accepted config has valid, unique pool names and
//! absolute paths.
#![no_main]

use berth::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::parse(text, "fuzz") {
        let mut names = std::collections::HashSet::new();
        for pool in &config.pools {
            assert!(berth::ids::valid_pool_name(pool.name()));
            assert!(names.insert(pool.name().to_string()));
            if let Some(path) = pool.path() {
                assert!(path.is_absolute());
            }
        }
    }
    let _ = text.parse::<berth::units::Bytes>();
});
