//! Parameters a user may change on a live volume (ControllerModifyVolume, and the
//! `mutable_parameters` of CreateVolume; Kubernetes sends a VolumeAttributesClass's
//! `parameters`). Each pool says which keys it takes ([`super::Controller::mutable_keys`])
//! and applies them ([`super::Controller::apply_mutable`]); the values are checked here.

use std::collections::BTreeMap;

use crate::config::OnDelete;

/// Transparent compression of what is written to a hostPath volume on btrfs from now on:
/// `zstd`, `lzo`, `zlib`, or `none` (never compress, whatever the mount options say).
pub const COMPRESSION: &str = "compression";
/// What DeleteVolume does with an NFS volume's directory: `delete`, `retain` or `archive`
/// (the pool's `onDelete` for volumes that never set it).
pub const ON_DELETE: &str = "onDelete";

const COMPRESSIONS: &[&str] = &["zstd", "lzo", "zlib", "none"];
const ON_DELETES: &[&str] = &["delete", "retain", "archive"];

/// Checks `params` against the keys a pool takes (`offered`, with `pool` naming it for
/// the message): the first key it does not take, or a value it does not know, is the
/// error, which names the key.
pub fn check(pool: &str, offered: &[&str], params: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in params {
        let values = match key.as_str() {
            COMPRESSION => COMPRESSIONS,
            ON_DELETE => ON_DELETES,
            _ => &[][..],
        };
        if !offered.contains(&key.as_str()) {
            let takes = if offered.is_empty() { "none".to_string() } else { offered.join(", ") };
            return Err(format!(
                "mutable parameter {key:?} cannot be changed on volumes of pool {pool}; it takes: {takes}"
            ));
        }
        if !values.contains(&value.as_str()) {
            return Err(format!("mutable parameter {key}: {value:?} is not one of {}", values.join(", ")));
        }
    }
    Ok(())
}

/// The `onDelete` a volume's mutable parameters set, if any.
#[must_use]
pub fn on_delete(params: &BTreeMap<String, String>) -> Option<OnDelete> {
    match params.get(ON_DELETE).map(String::as_str) {
        Some("delete") => Some(OnDelete::Delete),
        Some("retain") => Some(OnDelete::Retain),
        Some("archive") => Some(OnDelete::Archive),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn keys_a_pool_does_not_take_and_unknown_values_are_named() {
        check("p", &[COMPRESSION], &params(&[("compression", "zstd")])).expect("taken");
        check("p", &[COMPRESSION], &BTreeMap::new()).expect("nothing to change");
        let err = check("p", &[COMPRESSION], &params(&[("onDelete", "retain")])).expect_err("not offered");
        assert!(err.contains("\"onDelete\"") && err.contains("takes: compression"), "{err}");
        let err = check("p", &[], &params(&[("iops", "100")])).expect_err("unknown");
        assert!(err.contains("\"iops\"") && err.contains("takes: none"), "{err}");
        let err = check("p", &[ON_DELETE], &params(&[("onDelete", "shred")])).expect_err("bad value");
        assert!(err.contains("onDelete") && err.contains("\"shred\""), "{err}");
        assert_eq!(on_delete(&params(&[("onDelete", "archive")])), Some(OnDelete::Archive));
        assert_eq!(on_delete(&BTreeMap::new()), None);
    }
}
