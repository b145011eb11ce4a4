//! berth: a Kubernetes CSI driver serving hostPath, block and NFS volumes.
//!
//! The crate is split the way the driver works: `csi` holds the generated protocol and the
//! thin gRPC services, `engine` orchestrates state, locks and backends per RPC, `backend`
//! holds one module per pool type, and `mount` every syscall that touches the kernel.

pub mod archive;
pub mod authority;
pub mod backend;
pub mod bench;
pub mod client;
pub mod config;
pub mod crypt;
pub mod csi;
pub mod doctor;
pub mod drill;
pub mod durable;
pub mod engine;
pub mod failpoint;
pub mod ids;
pub mod locks;
pub mod metrics;
pub mod mount;
pub mod nfs;
pub mod progress;
pub mod safepath;
pub mod sensitive;
pub mod server;
pub mod state;
pub mod units;

/// The version reported by `berth version` and GetPluginInfo.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
