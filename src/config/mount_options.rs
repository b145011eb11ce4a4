//! NFS mount options: an allow-list of keys and values, the defaults berth adds, and the
//! mount(2) data string built from them. A value holding `,` or `=` would inject options
//! into that string, so such values are refused, never escaped.

use crate::mount::MsFlags;
use crate::mount::ops;

/// Options that take no value.
const FLAGS: &[&str] = &[
    "soft",
    "hard",
    "softerr",
    "intr",
    "nointr",
    "ac",
    "noac",
    "cto",
    "nocto",
    "lock",
    "nolock",
    "rdirplus",
    "nordirplus",
    "sharecache",
    "nosharecache",
    "resvport",
    "noresvport",
    "fsc",
    "nofsc",
    "acl",
    "noacl",
    "tcp",
    "posix",
    "noposix",
    "trunkdiscovery",
    "notrunkdiscovery",
];

/// Options whose value is a decimal number.
const NUMERIC: &[&str] = &[
    "timeo",
    "retrans",
    "rsize",
    "wsize",
    "acregmin",
    "acregmax",
    "acdirmin",
    "acdirmax",
    "actimeo",
    "port",
    "mountport",
    "mountvers",
    "nconnect",
    "max_connect",
    "namlen",
];

/// Options whose value comes from a fixed set.
const ENUMERATED: &[(&str, &[&str])] = &[
    ("vers", &["3", "4", "4.0", "4.1", "4.2"]),
    ("nfsvers", &["3", "4", "4.0", "4.1", "4.2"]),
    ("minorversion", &["0", "1", "2"]),
    ("proto", &["tcp", "tcp6", "rdma", "rdma6"]),
    ("mountproto", &["tcp", "tcp6", "udp", "udp6"]),
    ("sec", &["sys", "none", "krb5", "krb5i", "krb5p"]),
    ("lookupcache", &["all", "none", "pos", "positive"]),
    ("local_lock", &["all", "flock", "posix", "none"]),
    ("xprtsec", &["none", "tls", "mtls"]),
];

/// Added unless the pool or the capability says otherwise: a soft mount whose calls give up
/// after about half a minute, so no node RPC (and no kubelet teardown) can hang for ever on
/// a dead server.
pub const DEFAULTS: &[(&str, &str)] = &[("soft", ""), ("timeo", "30"), ("retrans", "3")];

/// Why an option was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("mount option {0:?} is not allowed for NFS volumes (see docs/nfs.md for the allowed options)")]
    Unknown(String),
    #[error("mount option {0:?} has a value that is not allowed")]
    BadValue(String),
    #[error("mount option {0:?} is set by berth itself")]
    Reserved(String),
}

/// Mount options, validated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Options {
    /// `key` or `key=value` entries for the data string, in order.
    pub data: Vec<String>,
    /// Generic VFS flags (`nosuid`, `noatime`, ...).
    pub flags: MsFlags,
    pub readonly: bool,
}

fn check_one(opt: &str) -> Result<(), OptionError> {
    if opt.chars().any(|c| c.is_control() || c == ',' || c.is_whitespace()) {
        return Err(OptionError::BadValue(opt.escape_debug().to_string()));
    }
    let (key, value) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    if matches!(key, "addr" | "clientaddr" | "mountaddr" | "context" | "fscontext" | "defcontext" | "rootcontext") {
        return Err(OptionError::Reserved(opt.to_string()));
    }
    match value {
        None if FLAGS.contains(&key) => Ok(()),
        Some(v) if NUMERIC.contains(&key) => {
            if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) {
                Ok(())
            } else {
                Err(OptionError::BadValue(opt.to_string()))
            }
        }
        Some(v) => match ENUMERATED.iter().find(|(k, _)| *k == key) {
            Some((_, allowed)) if allowed.contains(&v) => Ok(()),
            Some(_) => Err(OptionError::BadValue(opt.to_string())),
            None => Err(OptionError::Unknown(opt.to_string())),
        },
        None => Err(OptionError::Unknown(opt.to_string())),
    }
}

impl Default for Options {
    fn default() -> Options {
        Options { data: Vec::new(), flags: MsFlags::empty(), readonly: false }
    }
}

impl TryFrom<Vec<String>> for Options {
    type Error = OptionError;

    fn try_from(options: Vec<String>) -> Result<Options, OptionError> {
        Options::parse(&options)
    }
}

impl Options {
    /// Validates options from the pool and from a capability's mount flags (the
    /// StorageClass or PV `mountOptions`). Generic flags become mount(2) flags.
    pub fn parse<S: AsRef<str>>(options: &[S]) -> Result<Options, OptionError> {
        let mut out = Options::default();
        for opt in options {
            let opt = opt.as_ref();
            if let Ok(f) = ops::parse_flags(&[opt]) {
                out.readonly |= f.readonly;
                out.flags |= f.extra;
            } else {
                check_one(opt)?;
                out.data.push(opt.to_string());
            }
        }
        Ok(out)
    }

    /// Appends another set (the capability's after the pool's; the kernel keeps the last).
    pub fn extend(&mut self, other: Options) {
        self.data.extend(other.data);
        self.flags |= other.flags;
        self.readonly |= other.readonly;
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.data.iter().rev().find_map(|o| match o.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            _ => None,
        })
    }

    fn has(&self, key: &str) -> bool {
        self.data.iter().any(|o| o == key || o.split_once('=').is_some_and(|(k, _)| k == key))
    }

    /// The NFS version asked for, if any (`vers` or `nfsvers`).
    #[must_use]
    pub fn version(&self) -> Option<&str> {
        self.data.iter().rev().find_map(|o| match o.split_once('=') {
            Some(("vers" | "nfsvers", v)) => Some(v),
            _ => None,
        })
    }

    /// The NFS server port (`port=`), used by the controller's client as well.
    #[must_use]
    pub fn port(&self) -> Option<u16> {
        self.value("port").and_then(|v| v.parse().ok()).filter(|p| *p > 0)
    }

    /// The MOUNT port (`mountport=`), used by the controller's client as well.
    #[must_use]
    pub fn mount_port(&self) -> Option<u16> {
        self.value("mountport").and_then(|v| v.parse().ok()).filter(|p| *p > 0)
    }

    /// The filesystem type for mount(2): `nfs` for version 3, else `nfs4`.
    #[must_use]
    pub fn fs_type(&self) -> &'static str {
        if self.version() == Some("3") { "nfs" } else { "nfs4" }
    }

    /// The mount(2) data string: the options, berth's defaults where neither the pool nor
    /// the capability chose, version 4 (negotiating the minor version) when none is named,
    /// and the server's resolved address, which the kernel needs and cannot look up.
    #[must_use]
    pub fn data(&self, addr: std::net::IpAddr) -> String {
        let mut parts = self.data.clone();
        let chose_softness = ["soft", "hard", "softerr"].iter().any(|k| self.has(k));
        for (key, value) in DEFAULTS {
            let skip = match *key {
                "soft" => chose_softness,
                k => self.has(k),
            };
            if !skip {
                parts.push(if value.is_empty() { key.to_string() } else { format!("{key}={value}") });
            }
        }
        if self.version().is_none() {
            parts.push("vers=4".into());
        }
        parts.push(format!("addr={addr}"));
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_options_pass_and_others_are_refused() {
        let ok = Options::parse(&["nfsvers=4.1", "hard", "timeo=600", "noatime", "ro", "port=2049"]).expect("valid");
        assert_eq!(ok.data, vec!["nfsvers=4.1", "hard", "timeo=600", "port=2049"]);
        assert_eq!(ok.flags, MsFlags::MS_NOATIME);
        assert!(ok.readonly);
        assert_eq!((ok.fs_type(), ok.port(), ok.mount_port()), ("nfs4", Some(2049), None));
        let cases = [
            ("vers=4,addr=1.2.3.4", "BadValue"),
            ("addr=10.0.0.1", "Reserved"),
            ("clientaddr=10.0.0.1", "Reserved"),
            ("vers=5", "BadValue"),
            ("timeo=1e3", "BadValue"),
            ("timeo=", "BadValue"),
            ("sec=krb5,sec=sys", "BadValue"),
            ("context=\"system_u:object_r:x\"", "Reserved"),
            ("remount", "Unknown"),
            ("bogus=1", "Unknown"),
            ("soft\n", "BadValue"),
            ("proto=udp", "BadValue"),
            ("", "Unknown"),
        ];
        for (opt, want) in cases {
            let err = Options::parse(&[opt]).expect_err(opt);
            assert!(format!("{err:?}").starts_with(want), "{opt:?}: {err:?}");
        }
    }

    #[test]
    fn data_gets_defaults_version_and_address() {
        let ip: std::net::IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(Options::default().data(ip), "soft,timeo=30,retrans=3,vers=4,addr=192.0.2.7");
        let chosen = Options::parse(&["hard", "timeo=600", "nfsvers=3"]).expect("valid");
        assert_eq!(chosen.data(ip), "hard,timeo=600,nfsvers=3,retrans=3,addr=192.0.2.7");
        assert_eq!(chosen.fs_type(), "nfs");
        let v6: std::net::IpAddr = "2001:db8::1".parse().expect("ip");
        assert!(Options::default().data(v6).ends_with("addr=2001:db8::1"));
    }
}
