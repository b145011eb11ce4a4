//! Volume and snapshot identifiers minted by berth.
//!
//! IDs have the form `vol:<pool>:<32 hex>`, `snap:<pool>:<32 hex>` and, for group
//! snapshots, `group:<pool>:<32 hex>` (the pool of the group's first member). They name the pool,
//! never a path, and stay far below the spec's 128-byte limit whatever the pool is called
//! (pool names are at most 40 bytes). Any other well-formed string is simply an unknown ID.

use uuid::Uuid;

/// The spec's limit for names and IDs.
pub const MAX_ID_BYTES: usize = 128;

/// What can be wrong with an ID or name as a string, before it is looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{field} is required")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes; at most {MAX_ID_BYTES} are allowed")]
    TooLong { field: &'static str, len: usize },
    #[error("{field} contains a NUL or control character")]
    Control { field: &'static str },
}

/// Checks a request's ID or name as an opaque string: present, within 128 bytes, and free
/// of NUL and control characters (which never appear in IDs berth mints).
pub fn check(field: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { field });
    }
    if value.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong { field, len: value.len() });
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::Control { field });
    }
    Ok(())
}

/// The kind of object an ID names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Volume,
    Snapshot,
    /// A group snapshot.
    Group,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Volume => "vol",
            Kind::Snapshot => "snap",
            Kind::Group => "group",
        }
    }
}

/// A parsed berth ID: the pool it lives in and the key that names its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub kind: Kind,
    pub pool: &'a str,
    pub key: &'a str,
}

/// Mints a fresh ID in `pool`. The key is 32 lowercase hex digits.
#[must_use]
pub fn mint(kind: Kind, pool: &str) -> (String, String) {
    let key = Uuid::new_v4().simple().to_string();
    (format!("{}:{pool}:{key}", kind.prefix()), key)
}

/// Parses an ID berth minted; `None` for anything else (which callers treat as unknown).
#[must_use]
pub fn parse(kind: Kind, id: &str) -> Option<Parsed<'_>> {
    let mut parts = id.splitn(3, ':');
    let (prefix, pool, key) = (parts.next()?, parts.next()?, parts.next()?);
    if prefix != kind.prefix() || !valid_pool_name(pool) || !is_key(key) {
        return None;
    }
    Some(Parsed { kind, pool, key })
}

/// True for a storage key: exactly 32 lowercase hex digits.
#[must_use]
pub fn is_key(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Pool names: 1 to 40 bytes of lowercase letters, digits and `-`, starting and ending
/// with a letter or digit (a DNS label, so it can appear in labels and IDs alike).
#[must_use]
pub fn valid_pool_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 40
        && bytes.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_parse_back() {
        let (id, key) = mint(Kind::Volume, "fast-ssd");
        let parsed = parse(Kind::Volume, &id).expect("minted id parses");
        assert_eq!(parsed.pool, "fast-ssd");
        assert_eq!(parsed.key, key);
        assert!(parse(Kind::Snapshot, &id).is_none(), "kinds do not mix");
    }

    #[test]
    fn longest_pool_name_keeps_ids_short() {
        let pool = "a".repeat(40);
        let (id, _) = mint(Kind::Snapshot, &pool);
        assert!(id.len() <= MAX_ID_BYTES, "{} bytes", id.len());
    }

    #[test]
    fn foreign_and_hostile_ids_do_not_parse() {
        for id in [
            "fake-vol-id-0123abcd",
            "vol:default:../../etc",
            "vol:default:0123456789abcdef0123456789ABCDEF",
            "vol::0123456789abcdef0123456789abcdef",
            "vol:Default:0123456789abcdef0123456789abcdef",
            "vol:default:0123456789abcdef0123456789abcdef:x",
            "vol:-x:0123456789abcdef0123456789abcdef",
        ] {
            assert!(parse(Kind::Volume, id).is_none(), "{id}");
        }
    }

    #[test]
    fn check_classifies_bad_strings() {
        let cases: &[(&str, Option<IdError>)] = &[
            ("ok", None),
            ("", Some(IdError::Empty { field: "name" })),
            ("a\0b", Some(IdError::Control { field: "name" })),
            ("a\nb", Some(IdError::Control { field: "name" })),
        ];
        for (value, want) in cases {
            assert_eq!(check("name", value).err(), *want, "{value:?}");
        }
        let long = "x".repeat(129);
        assert_eq!(check("name", &long), Err(IdError::TooLong { field: "name", len: 129 }));
        assert!(check("name", &"x".repeat(128)).is_ok());
    }
}
