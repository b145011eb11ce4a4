//! What a node plugin needs of the NFS server besides its kernel mount: it registers itself
//! as `<export>/.berth/nodes/<node-id>`, written through berth's userspace NFSv3 client as
//! uid 0, so the controller can tell a node that exists from an unknown node ID. This module
//! does that write, and names the server setting behind a failure in words a user can act
//! on (root squash, the export's client list, no portmapper or NFSv3, a reserved port),
//! for the node plugin's log and for `berth doctor`.

use std::fmt;

use super::export::{self, META, NODES};
use crate::nfs::client::{ConnectError, Stage};
use crate::nfs::rpc::RpcError;
use crate::nfs::{self, Attr, Client, Endpoint, Fh, FileType, Status};

/// NFS3ERR_PERM and NFS3ERR_ACCES: the server refused the caller.
const PERM: Status = Status(1);
const ACCES: Status = Status(13);
const ROFS: Status = Status(30);
const NOSPC: Status = Status(28);
const DQUOT: Status = Status(69);

/// Who owns what uid 0 created on the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// uid 0: the server does not squash this host's root.
    Root,
    /// Another uid: the server maps this host's root to it (root_squash, all_squash), and
    /// the directory let that user write.
    Squashed(u32),
}

impl Owner {
    fn of(attr: &Attr) -> Owner {
        if attr.uid == 0 { Owner::Root } else { Owner::Squashed(attr.uid) }
    }
}

/// The owner and mode of the directory a refused operation ran in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dir {
    pub uid: u32,
    pub mode: u32,
}

impl From<Attr> for Dir {
    fn from(a: Attr) -> Dir {
        Dir { uid: a.uid, mode: a.mode }
    }
}

/// Why uid 0 could not write under `.berth/nodes/`, with what is known about the place.
#[derive(Debug)]
pub struct Failure {
    pub server: String,
    pub export: String,
    /// The connection stage that failed; `None` when connected and an operation failed.
    pub stage: Option<Stage>,
    pub error: nfs::Error,
    /// The directory the refused operation ran in (its owner tells root squash apart).
    pub dir: Option<Dir>,
}

impl Failure {
    fn op(ep: &Endpoint, error: nfs::Error, dir: Option<Dir>) -> Box<Failure> {
        Box::new(Failure { server: ep.host.clone(), export: ep.export.clone(), stage: None, error, dir })
    }

    /// A failed connection to `ep`.
    #[must_use]
    pub fn from_connect(ep: &Endpoint, e: ConnectError) -> Box<Failure> {
        Box::new(Failure {
            server: ep.host.clone(),
            export: ep.export.clone(),
            stage: Some(e.stage),
            error: e.error,
            dir: None,
        })
    }

    /// True when the server refused uid 0 (NFS3ERR_ACCES or NFS3ERR_PERM) once connected.
    #[must_use]
    pub fn refused_root(&self) -> bool {
        self.stage.is_none() && matches!(self.error.status(), Some(PERM | ACCES))
    }
}

/// A credential refusal or a program the server does not run, from the RPC layer.
fn rpc_source(e: &nfs::Error) -> Option<&RpcError> {
    match e {
        nfs::Error::Rpc { source, .. } => Some(source),
        _ => None,
    }
}

const NO_SECURE: &str = "a server exporting with `secure` (the Linux default) accepts only reserved source ports \
                         (below 1024); export with `insecure`, or make sure no NAT rewrites the source port";

impl fmt::Display for Failure {
    /// The cause, named after the server setting, then the server's own answer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (server, export, e) = (&self.server, &self.export, &self.error);
        match self.stage {
            Some(Stage::Resolve) => write!(f, "cannot resolve the NFS server's name: {e}"),
            Some(Stage::Portmapper) => match rpc_source(e) {
                Some(RpcError::NotRun(_)) => write!(
                    f,
                    "the portmapper on {server} does not list MOUNT v3 and NFS v3 over TCP, which berth's userspace \
                     client needs (an NFSv4-only server cannot take node registrations): {e}"
                ),
                _ => write!(
                    f,
                    "no portmapper answers on {server} port 111, which berth's userspace client asks where MOUNT v3 and \
                     NFS v3 listen (an NFSv4-only server, or a firewall that passes only port 2049, cannot take node \
                     registrations; naming both ports with port= and mountport= in mountOptions avoids the \
                     portmapper): {e}"
                ),
            },
            Some(Stage::Mount) => match e {
                nfs::Error::Mount { status: Some(1 | 13), .. } => write!(
                    f,
                    "MOUNT refuses {export} to this host: {server} does not export that path (servers answer the \
                     same for an absent export; `showmount -e {server}` lists them), or the export's client list \
                     leaves out the address it sees, or it exports with `secure` and the source port it saw was \
                     above 1023: {e}"
                ),
                nfs::Error::Mount { status: Some(2), .. } => {
                    write!(f, "{server} has no export {export} (check the pool's export path): {e}")
                }
                _ if matches!(rpc_source(e), Some(RpcError::Denied(_))) => {
                    write!(f, "MOUNT refused this host's call: {NO_SECURE}: {e}")
                }
                _ => write!(f, "MOUNT v3 on {server} does not answer: {e}"),
            },
            Some(Stage::Nfs) => match (rpc_source(e), e.status()) {
                (Some(RpcError::Denied(_)), _) => write!(f, "NFS refused this host's call: {NO_SECURE}: {e}"),
                (Some(RpcError::NotRun(_)), _) => {
                    write!(f, "{server} does not serve NFS v3 on the port it names: {e}")
                }
                (_, Some(PERM | ACCES)) => write!(
                    f,
                    "NFS refuses {export} to this host although MOUNT granted it: the server exports it with `secure` \
                     and the source port it saw was above 1023 (a NAT on the way may have changed it), or its \
                     client list leaves out the address it sees: {e}"
                ),
                (None, Some(_)) => write!(f, "NFS v3 on {server} refused the export's root: {e}"),
                _ => write!(f, "NFS v3 on {server} does not answer: {e}"),
            },
            None => match e.status() {
                Some(PERM | ACCES) => match self.dir {
                    Some(dir) if dir.uid == 0 => write!(
                        f,
                        "root squash: the server refused uid 0 in a directory uid 0 owns, so it maps this node's root \
                         to another user (root_squash or all_squash for this node's address); export {export} with \
                         no_root_squash to the node addresses: {e}"
                    ),
                    Some(dir) => write!(
                        f,
                        "permission denied to uid 0 in a directory owned by uid {} (mode {:o}): the server squashes \
                         this node's root (root_squash or all_squash for its address); export {export} with \
                         no_root_squash to the node addresses: {e}",
                        dir.uid,
                        dir.mode & 0o7777
                    ),
                    None => write!(
                        f,
                        "permission denied to uid 0: the server squashes this node's root (root_squash or all_squash \
                         for its address); export {export} with no_root_squash to the node addresses: {e}"
                    ),
                },
                Some(ROFS) => write!(
                    f,
                    "export {export} is read-only for this node's address; berth needs it read-write (rw): {e}"
                ),
                Some(NOSPC | DQUOT) => write!(f, "export {export} is full: {e}"),
                _ => write!(f, "{e}"),
            },
        }
    }
}

/// `.berth/nodes`, created when missing; on failure, the attributes of the directory the
/// refused operation ran in.
fn nodes_dir(c: &mut Client) -> Result<Fh, (nfs::Error, Option<Dir>)> {
    let mut cur = c.root.clone();
    for part in [META, NODES] {
        let attr = Dir::from(c.getattr(&cur).map_err(|e| (e, None))?);
        let found = c.lookup(&cur, part.as_bytes()).map_err(|e| (e, Some(attr)))?;
        cur = match found {
            Some((fh, a)) if a.ftype == FileType::Directory => fh,
            Some(_) => return Err((nfs::Error::Status { proc: "LOOKUP", status: Status::NOTDIR }, Some(attr))),
            None => match c.mkdir(&cur, part.as_bytes(), 0o700) {
                Ok((fh, _)) => fh,
                Err(e) if e.is_exist() => match c.lookup(&cur, part.as_bytes()) {
                    Ok(Some((fh, _))) => fh,
                    Ok(None) => return Err((e, Some(attr))),
                    Err(e) => return Err((e, Some(attr))),
                },
                Err(e) => return Err((e, Some(attr))),
            },
        };
    }
    Ok(cur)
}

/// Writes `.berth/nodes/<node>` as uid 0; says who owns the file the server made.
pub fn register(ep: &Endpoint, node: &str, stamp: &[u8]) -> Result<Owner, Box<Failure>> {
    let mut c = Client::connect_staged(ep).map_err(|e| Failure::from_connect(ep, e))?;
    let dir = nodes_dir(&mut c).map_err(|(e, attr)| Failure::op(ep, e, attr))?;
    let in_dir = |c: &mut Client, e: nfs::Error| Failure::op(ep, e, c.getattr(&dir).ok().map(Dir::from));
    if let Err(e) = export::write_file(&mut c, &dir, node, stamp) {
        return Err(in_dir(&mut c, e));
    }
    match c.lookup(&dir, node.as_bytes()) {
        Ok(Some((_, attr))) => Ok(Owner::of(&attr)),
        Ok(None) => Err(in_dir(&mut c, nfs::Error::Status { proc: "LOOKUP", status: Status::NOENT })),
        Err(e) => Err(in_dir(&mut c, e)),
    }
}

/// For `berth doctor`: creates and removes a probe file in `.berth/nodes/` as uid 0 on an
/// open connection, as a registration would; says who owned it.
pub fn probe(c: &mut Client, ep: &Endpoint) -> Result<Owner, Box<Failure>> {
    let dir = nodes_dir(c).map_err(|(e, attr)| Failure::op(ep, e, attr))?;
    let name = format!(".berth-doctor-{}", std::process::id());
    let created = c.create(&dir, name.as_bytes(), 0o600, false);
    let owner = match created {
        Ok((_, attr)) => Owner::of(&attr),
        Err(e) => return Err(Failure::op(ep, e, c.getattr(&dir).ok().map(Dir::from))),
    };
    match c.remove(&dir, name.as_bytes()) {
        Ok(()) => Ok(owner),
        Err(e) => Err(Failure::op(ep, e, c.getattr(&dir).ok().map(Dir::from))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(uid: u32, mode: u32) -> Dir {
        Dir { uid, mode }
    }

    /// A failure's stage, error and directory, and words its message must hold.
    type Case = (Option<Stage>, nfs::Error, Option<Dir>, &'static [&'static str]);

    fn failure(stage: Option<Stage>, error: nfs::Error, dir: Option<Dir>) -> String {
        Failure { server: "nfs.example".into(), export: "/srv/k8s".into(), stage, error, dir }.to_string()
    }

    fn status(code: u32) -> nfs::Error {
        nfs::Error::Status { proc: "CREATE", status: Status(code) }
    }

    fn rpc(source: RpcError) -> nfs::Error {
        nfs::Error::Rpc { server: "nfs.example".into(), source }
    }

    #[test]
    fn each_refusal_names_its_cause() {
        let mount = |status| nfs::Error::Mount {
            server: "nfs.example".into(),
            export: "/srv/k8s".into(),
            status,
            reason: "refused".into(),
        };
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases: Vec<Case> = vec![
            (None, status(13), Some(dir(0, 0o700)), &["root squash", "uid 0 owns", "no_root_squash", "NFS3ERR_ACCES"]),
            (None, status(1), Some(dir(0, 0o755)), &["root squash", "NFS3ERR_PERM"]),
            (None, status(13), Some(dir(1000, 0o750)), &["uid 1000", "mode 750", "root_squash", "NFS3ERR_ACCES"]),
            (None, status(13), None, &["root_squash", "no_root_squash"]),
            (None, status(30), None, &["read-only", "NFS3ERR_ROFS"]),
            (None, status(28), None, &["full"]),
            (Some(Stage::Portmapper), rpc(RpcError::Io(refused)), None, &["no portmapper", "port 111", "NFSv4-only"]),
            (Some(Stage::Portmapper), rpc(RpcError::NotRun("x".into())), None, &["does not list MOUNT v3"]),
            (Some(Stage::Mount), mount(Some(13)), None, &["does not export that path", "client list", "`secure`"]),
            (Some(Stage::Nfs), status(1), None, &["`secure`", "above 1023", "NAT", "NFS3ERR_PERM"]),
            (Some(Stage::Mount), mount(Some(2)), None, &["has no export /srv/k8s"]),
            (Some(Stage::Mount), rpc(RpcError::Denied("credential rejected".into())), None, &["`secure`", "insecure"]),
            (Some(Stage::Nfs), rpc(RpcError::Denied("credential rejected".into())), None, &["reserved source ports"]),
            (Some(Stage::Nfs), rpc(RpcError::NotRun("v3".into())), None, &["does not serve NFS v3"]),
        ];
        for (stage, error, attr, words) in cases {
            let text = failure(stage, error, attr);
            for w in words {
                assert!(text.contains(w), "{w:?} missing from {text:?}");
            }
        }
    }

    #[test]
    fn only_refusals_after_connecting_count_as_refused_root() {
        let f = |stage, error| Failure { server: String::new(), export: String::new(), stage, error, dir: None };
        assert!(f(None, status(13)).refused_root());
        assert!(f(None, status(1)).refused_root());
        assert!(!f(None, status(30)).refused_root());
        assert!(!f(Some(Stage::Nfs), status(13)).refused_root());
    }
}
