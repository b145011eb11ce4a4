//! Why a call failed below the NFS layer: the transport, or a reply that does not decode
//! or does not answer the call. The decoders ([`super::decode`]) and the transport
//! ([`super::rpc`]) both report it, so it sits below both.

use std::io;

use super::xdr::XdrError;

/// Why a call failed below the NFS layer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed reply: {0}")]
    Xdr(#[from] XdrError),
    #[error("reply {got:#x} does not answer call {want:#x}")]
    Xid { want: u32, got: u32 },
    #[error("reply of {0} bytes is larger than berth accepts")]
    TooLarge(usize),
    #[error("server refused the call: {0}")]
    Denied(String),
    #[error("server did not run the call: {0}")]
    NotRun(String),
}
