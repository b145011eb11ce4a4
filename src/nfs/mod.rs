//! A small userspace NFSv3 client, so the controller can create, copy and remove volume
//! directories on an export without kernel mounts, root, or an NFS client on its node.
//!
//! It speaks ONC RPC over TCP ([`rpc`]) in XDR ([`xdr`]): the portmapper to find ports,
//! MOUNT v3 for the export's root handle, and the NFSv3 procedures in [`client`]. Every
//! call carries a deadline. Everything the server sends back is decoded by the pure
//! functions in [`decode`], which the `nfs_reply` fuzz target exercises. NFSv4-only servers are not reachable this way (see
//! docs/nfs.md).

pub mod client;
pub mod decode;
pub mod failure;
pub mod rpc;
pub mod types;
pub mod xdr;

pub use client::{Client, Endpoint};
pub use types::{Attr, Entry, Error, Fh, FileType, FsStat, Result, SetAttr, Status, Time};
