//! Path validation: never panics; whatever passes has no `..`, `.`, empty component, NUL or
//! control character, and mount targets stay out of the system trees.
#![no_main]

use std::path::Component;

use berth::safepath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = safepath::absolute("p", text) {
        assert!(p.is_absolute());
        assert!(p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
        assert!(p != std::path::Path::new("/"));
    }
    if let Ok(p) = safepath::mount_target("p", text) {
        assert!(!p.starts_with("/etc") && !p.starts_with("/proc") && !p.starts_with("/dev"));
    }
    if let Ok(p) = safepath::relative("r", text) {
        assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
        assert!(!text.contains('\0') && !text.contains('\\'));
    }
    if safepath::component("c", text).is_ok() {
        assert!(!text.contains('/') && text != ".." && text != "." && !text.is_empty());
    }
    let flags: Vec<&str> = text.split(' ').collect();
    let _ = berth::mount::ops::parse_flags(&flags);
});
