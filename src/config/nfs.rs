//! An NFS pool's configuration, parsed once into typed values: the server and export are
//! checked, the mount options validated against the allow-list, the subdirectory
//! template compiled and the permissions read as a mode while the file is loaded, so the
//! backend receives only values that are already known to be good.

use serde::Deserialize;

use super::OnDelete;
use super::mount_options::Options;
use super::template::Template;
use crate::safepath;

/// An NFS pool: each volume a subdirectory of `export` on `server`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NfsPool {
    pub name: String,
    /// Host name or address of the NFS server (IPv6 literals may be bracketed).
    pub server: Server,
    /// The exported path on the server.
    pub export: Export,
    /// Mount options for the nodes' kernel mounts, from berth's allow-list. `port=` and
    /// `mountport=` also tell the controller's userspace client where to connect.
    #[serde(default)]
    pub mount_options: Options,
    /// Template of each volume's directory under the export.
    #[serde(default)]
    pub sub_dir: Template,
    /// What DeleteVolume does with the directory.
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Mode of new volume directories, written in octal, e.g. "0770".
    #[serde(default)]
    pub permissions: Permissions,
    /// Whether pods may ask for inline ephemeral volumes in this pool (off unless set).
    #[serde(default)]
    pub ephemeral: bool,
    /// The pool only receives snapshot copies of node-local volumes (a class's `copyTo`):
    /// the node-local driver lists it for that, and refuses to make volumes in it.
    #[serde(default)]
    pub copies_only: bool,
}

/// An NFS server's host name or IP address, as mount(2) and the userspace client take it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Server(String);

impl TryFrom<String> for Server {
    type Error = String;

    fn try_from(server: String) -> Result<Server, String> {
        let bare = server.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(&server);
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_');
        if bare.is_empty() || bare.len() > 253 || !bare.chars().all(ok_char) {
            return Err(format!("server {server:?} must be a host name or an IP address"));
        }
        Ok(Server(server))
    }
}

impl Server {
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An exported path: absolute, without `.`/`..` components or `,`, at most 1024 bytes,
/// kept without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Export(String);

impl TryFrom<String> for Export {
    type Error = String;

    fn try_from(export: String) -> Result<Export, String> {
        let path = safepath::absolute("export", &export).map_err(|e| e.to_string())?;
        if export.contains(',') || path.as_os_str().len() > 1024 {
            return Err(format!("export {export:?} must not contain ',' and must be at most 1024 bytes"));
        }
        Ok(Export(export.trim_end_matches('/').to_string()))
    }
}

impl Export {
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The mode of new volume directories, written as 3 or 4 octal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Permissions(pub u32);

impl Default for Permissions {
    fn default() -> Permissions {
        Permissions(0o777)
    }
}

impl TryFrom<String> for Permissions {
    type Error = String;

    fn try_from(digits: String) -> Result<Permissions, String> {
        if !(3..=4).contains(&digits.len()) || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!("permissions {digits:?} must be 3 or 4 octal digits, e.g. \"0770\""));
        }
        u32::from_str_radix(&digits, 8).map(Permissions).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_exports_and_permissions_are_checked_as_they_are_read() {
        for good in ["nfs.example.com", "[2001:db8::1]", "10.0.0.1"] {
            assert!(Server::try_from(good.to_string()).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a,b", "[]", &"a".repeat(254)] {
            assert!(Server::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
        assert_eq!(Export::try_from("/exports/k8s/".to_string()).map(|e| e.0), Ok("/exports/k8s".to_string()));
        for bad in ["x", "/", "/a/../b", "/a,b"] {
            assert!(Export::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
        assert_eq!(Permissions::try_from("0770".to_string()), Ok(Permissions(0o770)));
        for bad in ["77", "0778", "07777", "rwx"] {
            assert!(Permissions::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }
}
