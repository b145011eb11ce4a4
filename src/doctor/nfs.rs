//! The checks of an NFS pool, run from the machine the doctor runs on (a node, or the
//! controller's pod): each thing the server must allow berth's userspace NFSv3 client, as
//! its own check, in the order a connection needs them. The first that fails ends the
//! pool's checks, since the later ones cannot run.

use std::net::IpAddr;
use std::sync::Arc;

use super::Check;
use super::checks::Host;
use crate::backend::nfs::access::{self, Failure, Owner};
use crate::config::NfsPool;
use crate::nfs::client::{self, ConnectError, MOUNT_PROGRAM, NFS_PROGRAM, PMAP_PORT, Stage};
use crate::nfs::{Client, Endpoint};

/// Where the server's requirements are written down.
const DOCS: &str = "docs/nfs.md, \"What the server must allow\"";

fn failed(ep: &Endpoint, stage: Stage, error: crate::nfs::Error) -> String {
    Failure::from_connect(ep, ConnectError { stage, error }).to_string()
}

/// The portmapper's answer for one program: its port, or the failed check.
fn registered(s: &str, ep: &Endpoint, ip: IpAddr, check: &'static str, prog: u32, what: &str) -> Result<u16, Check> {
    match client::getport(ip, ep, prog, 3) {
        Ok(Some(port)) => Ok(port),
        Ok(None) => Err(Check::fail(
            s,
            check,
            format!(
                "the portmapper on {} does not list {what} over TCP: berth's userspace client (node registration and \
                 the controller) needs NFSv3, so an NFSv4-only server does not work",
                ep.host
            ),
            format!("enable NFSv3 and MOUNT v3 over TCP on the server ({DOCS})"),
        )),
        Err(e) => Err(Check::fail(
            s,
            check,
            failed(ep, Stage::Portmapper, e),
            format!(
                "let this host reach {}:{PMAP_PORT} (TCP) and run rpcbind there, or name both ports with port= and \
                 mountport= in the pool's mountOptions ({DOCS})",
                ep.host
            ),
        )),
    }
}

/// Checks one NFS pool against its server, as this host reaches it: the portmapper and
/// the programs it lists, MOUNT's answer for the export, NFS v3, the source port, and a
/// file created and removed under `.berth/nodes/` as uid 0 (what a node's registration
/// writes), with the owner the server gave it.
pub fn checks(host: &Host, pool: &NfsPool) -> Vec<Check> {
    let subject = format!("pool {}", pool.name);
    let s = subject.as_str();
    let opened = match crate::backend::nfs::NfsPool::open(pool, Arc::clone(&host.sys)) {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::fail(
                s,
                "config",
                e.to_string(),
                "fix the pool's server, export, mountOptions, subDir or permissions",
            )];
        }
    };
    let ep = opened.endpoint().clone();
    let mut out = vec![Check::ok(s, "config", format!("{}:{}", pool.server, pool.export))];
    let ip = match client::resolve(&ep.host) {
        Ok(ips) => ips[0],
        Err(e) => {
            out.push(Check::fail(s, "server", failed(&ep, Stage::Resolve, e), "fix the pool's server name or DNS"));
            return out;
        }
    };

    // The portmapper, asked only for the ports the pool's options do not name.
    let mount_port = match ep.mount_port {
        Some(port) => {
            out.push(Check::ok(
                s,
                "portmapper",
                format!(
                    "not asked: mountOptions name mountport={port}{}",
                    ep.nfs_port.map_or(String::new(), |p| format!(" and port={p}"))
                ),
            ));
            port
        }
        None => match registered(s, &ep, ip, "portmapper", MOUNT_PROGRAM, "MOUNT v3") {
            Ok(port) => {
                out.push(Check::ok(
                    s,
                    "portmapper",
                    format!("{}:{PMAP_PORT} answers; MOUNT v3 over TCP is on port {port}", ep.host),
                ));
                port
            }
            Err(c) => {
                out.push(c);
                return out;
            }
        },
    };
    let nfs_port = match ep.nfs_port {
        Some(port) => port,
        None => match registered(s, &ep, ip, "nfsv3", NFS_PROGRAM, "NFS v3") {
            Ok(port) => port,
            Err(c) => {
                out.push(c);
                return out;
            }
        },
    };

    let root = match client::mnt(ip, mount_port, &ep) {
        Ok(root) => {
            out.push(Check::ok(
                s,
                "mount export",
                format!("MOUNT v3 on port {mount_port} grants {} to this host", ep.export),
            ));
            root
        }
        Err(e) => {
            out.push(Check::fail(
                s,
                "mount export",
                failed(&ep, Stage::Mount, e),
                format!(
                    "set the pool's export to a path the server exports, export it read-write to this host's \
                     address (for a pod behind SNAT, the node's address), and with `secure` keep the source port \
                     below 1024 or export with `insecure` ({DOCS})"
                ),
            ));
            return out;
        }
    };
    let mut c = match Client::open(ip, nfs_port, root, &ep) {
        Ok(c) => {
            out.push(Check::ok(s, "nfsv3", format!("NFS v3 answers on port {nfs_port}")));
            c
        }
        Err(e) => {
            out.push(Check::fail(
                s,
                "nfsv3",
                failed(&ep, Stage::Nfs, e),
                format!(
                    "serve NFS v3 over TCP on port {nfs_port} to this host's address, and with `secure` keep the \
                     source port below 1024 or export with `insecure` ({DOCS})"
                ),
            ));
            return out;
        }
    };
    out.push(source_port(s, &c));
    out.push(write_as_root(s, &mut c, &ep));
    out
}

/// The source port this host's calls leave from. The server answered, so it accepted
/// that port; a NAT between here and the server is invisible from here and may change
/// the address and port it sees.
fn source_port(s: &str, c: &Client) -> Check {
    const C: &str = "source port";
    let nat = "if a NAT lies between this host and the server (a pod network reaching an off-cluster server), the \
               server sees the node's address and possibly a port above 1023 instead";
    match c.source() {
        Some(addr) if addr.port() < 1024 => Check::ok(
            s,
            C,
            format!("calls leave from {addr}, a reserved port, so exports with `secure` accept them; {nat}"),
        ),
        Some(addr) => Check::ok(
            s,
            C,
            format!(
                "calls leave from {addr}, not a reserved port (this process may not bind ports below 1024), and the \
                 server accepted them: it exports with `insecure`; {nat}"
            ),
        ),
        None => Check::ok(s, C, "the connection's local address is unknown"),
    }
}

/// What a node's registration does: create a file under `.berth/nodes/` as uid 0, and
/// remove it; the owner the server gave it shows root squash.
fn write_as_root(s: &str, c: &mut Client, ep: &Endpoint) -> Check {
    const C: &str = "write as root";
    let fix_squash = format!(
        "export {} with no_root_squash (and rw) to the node addresses and the controller's (e.g. /etc/exports: \
         {} 10.0.0.0/16(rw,no_root_squash)) ({DOCS})",
        ep.export, ep.export
    );
    match access::probe(c, ep) {
        Ok(Owner::Root) => Check::ok(
            s,
            C,
            "created and removed a file in .berth/nodes/ as uid 0, owned by uid 0: no root squash for this host, so \
             this node can register",
        ),
        Ok(Owner::Squashed(uid)) => Check::warn(
            s,
            C,
            format!(
                "root squash: a file created in .berth/nodes/ as uid 0 was owned by uid {uid}, so the server maps this \
                 host's root to uid {uid} (root_squash or all_squash); registration works only because that \
                 directory lets uid {uid} write, and containers running as root write as uid {uid} in this pool's \
                 volumes"
            ),
            fix_squash,
        ),
        Err(f) => {
            let fix = if f.refused_root() { fix_squash } else { format!("see {DOCS}") };
            Check::fail(
                s,
                C,
                format!("cannot create a file in .berth/nodes/ as uid 0, so this node cannot register: {f}"),
                fix,
            )
        }
    }
}
