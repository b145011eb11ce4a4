//! The CSI protocol (generated from `proto/csi.proto`) and berth's thin gRPC services.
//!
//! Each RPC reads: validate the request into engine types → run the engine call on a
//! blocking thread (it takes the volume lock) → convert the error into a code. [`run`]
//! wraps every RPC in one span and logs its outcome once.

pub mod controller;
pub mod fields;
pub mod group;
pub mod identity;
pub mod node;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tonic::{Code, Response, Status};
use tracing::Instrument;

pub use fields::{Describe, Fields};

use tokio::sync::Semaphore;

use crate::engine::{AccessMode, Capability, Engine};
use crate::metrics::Registry;

/// Generated protocol types, clients and servers for package `csi.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("csi.v1");
}

/// The canonical name of a gRPC code (`OK`, `NOT_FOUND`, ...), as the CSI spec writes it;
/// logs, metrics labels and `berth csi` all use it.
#[must_use]
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One call in [`Registry::in_flight`](crate::metrics::Registry::in_flight) until dropped.
struct InFlight(Arc<Registry>);

impl InFlight {
    fn enter(registry: &Arc<Registry>) -> InFlight {
        registry.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(registry))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The spec's limit for one map (parameters, context, secrets).
pub const MAX_MAP_BYTES: usize = 4096;

pub use crate::sensitive::{SENSITIVE_KEYS, is_sensitive_key, redacted};

/// Runs one RPC's work on a blocking thread inside a span naming its volume, snapshot,
/// node and paths; counts it in the metrics and logs its outcome, code and duration once.
/// A panic inside becomes INTERNAL for this call only. No error message leaves this
/// function (to the log or the caller) with a secret or sensitive context value in it.
pub async fn run<T, F>(
    shared: &Shared,
    method: &'static str,
    fields: impl Into<Fields>,
    work: F,
) -> Result<Response<T>, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    run_as(shared, method, fields, Work::Quick, work).await
}

/// Like [`run`] for calls whose work can take as long as a pod makes it (volume stats walk
/// the volume's tree where the filesystem keeps no count): at most [`MAX_SLOW`] run at
/// once, and the rest wait for a turn before they take a worker, so a flood of them
/// never keeps a worker from other calls.
pub async fn run_slow<T, F>(
    shared: &Shared,
    method: &'static str,
    fields: impl Into<Fields>,
    work: F,
) -> Result<Response<T>, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    run_as(shared, method, fields, Work::Slow, work).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    Quick,
    Slow,
}

async fn run_as<T, F>(
    shared: &Shared,
    method: &'static str,
    fields: impl Into<Fields>,
    class: Work,
    work: F,
) -> Result<Response<T>, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    use tracing::field::Empty;
    let fields = fields.into();
    let registry = &shared.metrics;
    let in_flight = InFlight::enter(registry);
    let span = tracing::info_span!(
        "rpc",
        method,
        volume.id = Empty,
        snapshot.id = Empty,
        node.id = Empty,
        target.path = Empty,
        staging.path = Empty
    );
    fields.record(&span);
    if !registry.ready() {
        let status = Status::unavailable("berth is not ready: it is finishing work a restart interrupted, or stopping");
        registry.observe_rpc(method, code_name(status.code()), std::time::Duration::ZERO);
        return Err(status);
    }
    let start = Instant::now();
    let inner = span.clone();
    let slow = match class {
        Work::Quick => None,
        Work::Slow => {
            registry.slow_waiting.fetch_add(1, Ordering::SeqCst);
            let turn = Arc::clone(&shared.slow).acquire_owned().await;
            registry.slow_waiting.fetch_sub(1, Ordering::SeqCst);
            Some(turn.map_err(|_| Status::unavailable("berth is shutting down"))?)
        }
    };
    // At most WORKERS calls run at once; the rest wait here as small futures, so a flood
    // of calls costs memory for requests, not a thread and a reply each.
    let permit =
        Arc::clone(&shared.workers).acquire_owned().await.map_err(|_| Status::unavailable("berth is shutting down"))?;
    let scope = Arc::clone(registry);
    let result = tokio::task::spawn_blocking(move || {
        // Held by the work itself: a caller that stops waiting does not end it.
        let (_permit, _slow, _in_flight) = (permit, slow, in_flight);
        crate::metrics::scoped(&scope, || inner.in_scope(work))
    })
    .instrument(span.clone())
    .await
    .unwrap_or_else(|e| Err(Status::internal(format!("{method} failed unexpectedly: {e}"))))
    .map_err(|s| fields.scrub_status(s));
    let elapsed = start.elapsed();
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    let code = code_name(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
    registry.observe_rpc(method, code, elapsed);
    span.in_scope(|| match &result {
        Ok(_) => tracing::info!(code, elapsed_ms, "rpc finished"),
        Err(s) => tracing::warn!(code, error = s.message(), elapsed_ms, "rpc failed"),
    });
    result.map(Response::new)
}

/// How many RPCs do their (blocking) work at once.
pub const MAX_WORKERS: usize = 64;

/// How many slow calls (see [`run_slow`]) do their work at once.
pub const MAX_SLOW: usize = 4;

/// How many calls one client connection may have open at once (HTTP/2 streams).
pub const MAX_STREAMS: u32 = 32;

/// The largest request berth decodes: CSI requests are small (each map at most 4 KiB), so
/// anything bigger is refused by the transport before any work starts.
pub const MAX_REQUEST_BYTES: usize = 256 << 10;

/// Answers an RPC that only reads in-memory facts (plugin info, capabilities, Probe) on the
/// calling task: counted in the metrics like any other, logged at debug level because
/// sidecars call some of them every few seconds.
pub fn answer<T>(
    shared: &Shared,
    method: &'static str,
    work: impl FnOnce() -> Result<T, Status>,
) -> Result<Response<T>, Status> {
    let _in_flight = InFlight::enter(&shared.metrics);
    let start = Instant::now();
    let result = work();
    let elapsed = start.elapsed();
    let code = code_name(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
    shared.metrics.observe_rpc(method, code, elapsed);
    tracing::debug!(method, code, elapsed_ms = elapsed.as_secs_f64() * 1000.0, "rpc finished");
    result.map(Response::new)
}

/// Checks a map's total size and turns it into an ordered map.
pub fn map(field: &'static str, map: &HashMap<String, String>) -> Result<BTreeMap<String, String>, Status> {
    let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_MAP_BYTES {
        return Err(Status::invalid_argument(format!("{field} is {bytes} bytes; at most {MAX_MAP_BYTES} are allowed")));
    }
    Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Checks a secrets map's size without ever echoing its content.
pub fn check_secrets(map: &HashMap<String, String>) -> Result<(), Status> {
    let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_MAP_BYTES {
        return Err(Status::invalid_argument(format!(
            "secrets are {bytes} bytes; at most {MAX_MAP_BYTES} are allowed"
        )));
    }
    Ok(())
}

/// Checks an ID or name field.
pub fn id(field: &'static str, value: &str) -> Result<(), Status> {
    crate::ids::check(field, value).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Checks an absolute path field.
pub fn path(field: &'static str, value: &str) -> Result<std::path::PathBuf, Status> {
    crate::safepath::absolute(field, value).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Converts a capability, refusing one without an access type or mode.
pub fn capability(field: &str, cap: &pb::VolumeCapability) -> Result<Capability, Status> {
    use pb::volume_capability::{AccessType, access_mode::Mode};
    let (block, fs_type, mount_flags) = match &cap.access_type {
        Some(AccessType::Mount(m)) => (false, m.fs_type.clone(), m.mount_flags.clone()),
        Some(AccessType::Block(_)) => (true, String::new(), Vec::new()),
        None => return Err(Status::invalid_argument(format!("{field}.access_type is required: mount or block"))),
    };
    let mode =
        cap.access_mode.as_ref().ok_or_else(|| Status::invalid_argument(format!("{field}.access_mode is required")))?;
    let mode = match Mode::try_from(mode.mode) {
        Ok(Mode::SingleNodeWriter) => AccessMode::SingleNodeWriter,
        Ok(Mode::SingleNodeReaderOnly) => AccessMode::SingleNodeReaderOnly,
        Ok(Mode::MultiNodeReaderOnly) => AccessMode::MultiNodeReaderOnly,
        Ok(Mode::MultiNodeSingleWriter) => AccessMode::MultiNodeSingleWriter,
        Ok(Mode::MultiNodeMultiWriter) => AccessMode::MultiNodeMultiWriter,
        Ok(Mode::SingleNodeSingleWriter) => AccessMode::SingleNodeSingleWriter,
        Ok(Mode::SingleNodeMultiWriter) => AccessMode::SingleNodeMultiWriter,
        Ok(Mode::Unknown) | Err(_) => {
            return Err(Status::invalid_argument(format!("{field}.access_mode {} is not a known mode", mode.mode)));
        }
    };
    Ok(Capability { block, fs_type, mount_flags, mode })
}

/// Converts a list of capabilities.
pub fn capabilities(caps: &[pb::VolumeCapability]) -> Result<Vec<Capability>, Status> {
    caps.iter().enumerate().map(|(i, c)| capability(&format!("volume_capabilities[{i}]"), c)).collect()
}

/// Shared state of the three services.
#[derive(Clone)]
pub struct Shared {
    pub engine: Arc<Engine>,
    pub driver_name: String,
    pub controller: bool,
    /// What this server counts and whether it is ready.
    pub metrics: Arc<Registry>,
    /// Turns for blocking work: at most [`MAX_WORKERS`] calls work at once.
    pub workers: Arc<Semaphore>,
    /// Turns for slow work: at most [`MAX_SLOW`] slow calls work at once.
    pub slow: Arc<Semaphore>,
}

impl Shared {
    /// The services' state for `engine`, counting into `metrics`.
    pub fn new(engine: Arc<Engine>, driver_name: &str, controller: bool, metrics: Arc<Registry>) -> Shared {
        Shared {
            engine,
            driver_name: driver_name.to_string(),
            controller,
            metrics,
            workers: Arc::new(Semaphore::new(MAX_WORKERS)),
            slow: Arc::new(Semaphore::new(MAX_SLOW)),
        }
    }
}

/// A byte count for the wire (CSI uses int64).
#[must_use]
pub fn wire_bytes(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// A byte count from the wire; negative values are refused.
pub fn request_bytes(field: &'static str, value: i64) -> Result<u64, Status> {
    u64::try_from(value).map_err(|_| Status::invalid_argument(format!("{field} must not be negative, got {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_maps_are_refused() {
        let mut m = HashMap::new();
        m.insert("k".to_string(), "v".repeat(MAX_MAP_BYTES));
        assert_eq!(map("parameters", &m).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(check_secrets(&m).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn capabilities_need_type_and_mode() {
        use pb::volume_capability::{AccessMode as PbMode, AccessType, MountVolume, access_mode::Mode};
        let mount = Some(AccessType::Mount(MountVolume::default()));
        let mode = Some(PbMode { mode: Mode::SingleNodeWriter as i32 });
        let ok = pb::VolumeCapability { access_type: mount.clone(), access_mode: mode };
        assert_eq!(capability("c", &ok).expect("valid").mode, AccessMode::SingleNodeWriter);
        let no_type = pb::VolumeCapability { access_type: None, access_mode: mode };
        let no_mode = pb::VolumeCapability { access_type: mount.clone(), access_mode: None };
        let unknown = pb::VolumeCapability { access_type: mount, access_mode: Some(PbMode { mode: 99 }) };
        for cap in [no_type, no_mode, unknown] {
            assert_eq!(capability("c", &cap).unwrap_err().code(), tonic::Code::InvalidArgument);
        }
    }
}
