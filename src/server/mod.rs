//! Serving the CSI services on a unix socket, with graceful shutdown on SIGTERM.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::csi::{
    Shared, controller::ControllerService, group::GroupControllerService, identity::IdentityService, node::NodeService,
    pb,
};
use crate::engine::Engine;
use crate::metrics::{Limits, Registry};

/// Which services one process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Identity, Controller and Node.
    All,
    /// Identity and Controller.
    Controller,
    /// Identity and Node.
    Node,
}

/// Why serving stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("endpoint {0:?} must look like unix:///path/to/csi.sock")]
    Endpoint(String),
    #[error("{path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("HTTP address {address}: {source}")]
    Http { address: String, source: io::Error },
}

/// Where berth serves HTTP (`HOST:PORT`, or `:PORT` for every address); none by default.
#[derive(Debug, Clone, Default)]
pub struct HttpAddresses {
    /// `/metrics`, `/healthz` and `/readyz` (`--metrics-address`).
    pub metrics: Option<String>,
    /// `/healthz` and `/readyz` only (`--health-address`), for liveness and readiness
    /// probes whether or not metrics are on.
    pub health: Option<String>,
}

/// The socket path of a `unix://` endpoint.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let rest = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or_else(|| ServeError::Endpoint(endpoint.to_string()))?;
    let path = PathBuf::from(rest);
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(ServeError::Endpoint(endpoint.to_string()));
    }
    Ok(path)
}

fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            fs::remove_file(path).map_err(|source| ServeError::Socket { path: path.into(), source })
        }
        Ok(_) => Err(ServeError::NotASocket { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServeError::Socket { path: path.into(), source }),
    }
}

/// Binds the socket with owner-only permissions (0600), or, with `group`, readable and
/// writable by that group too (0660), for sidecars that run as another, non-root user.
fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ServeError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| ServeError::Socket { path: parent.into(), source })?;
    }
    remove_stale_socket(path)?;
    // The socket is created with the process umask; narrow it so that no other user can
    // connect even for an instant, then set the mode explicitly.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|source| ServeError::Socket { path: path.into(), source })?;
    let socket_error = |source: io::Error| ServeError::Socket { path: path.into(), source };
    if let Some(gid) = group {
        // The group first, then the mode: no other group ever gets the 0660.
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(socket_error)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(if group.is_some() { 0o660 } else { 0o600 }))
        .map_err(socket_error)?;
    Ok(listener)
}

mod collect;
mod connections;
mod http;

pub use connections::MAX_CONNECTIONS;
use connections::{Incoming, TrackCalls};

/// Resolves once no RPC has been in flight for a moment (so the last replies are written),
/// or after `limit`.
async fn drained(registry: &Registry, limit: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut idle_ticks = 0;
    while idle_ticks < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if registry.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            idle_ticks += 1;
        } else {
            idle_ticks = 0;
        }
    }
}

/// Checkpoints the records in the background once the journal is half full, so a change
/// rarely has to wait for one (see [`crate::state`]); a failure is logged once, not every
/// second.
async fn keep_checkpoints(engine: Arc<Engine>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        every.tick().await;
        // Checked here so an idle driver does not wake a blocking thread every second.
        if !engine.store.checkpoint_due() {
            continue;
        }
        let engine = Arc::clone(&engine);
        match tokio::task::spawn_blocking(move || engine.store.checkpoint()).await {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot checkpoint the records; changes will wait for one when the journal is full");
            }
            _ => {}
        }
    }
}

/// Checkpoints as the process stops, so the next start reads one file.
async fn save_checkpoint(engine: Arc<Engine>) {
    match tokio::task::spawn_blocking(move || engine.store.checkpoint_if_changed()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot checkpoint the records; the next start replays the journal"),
        Err(e) => tracing::warn!(error = %e, "checkpointing the records failed"),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop berth with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight calls, then exiting (mounts stay)"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing in-flight calls, then exiting (mounts stay)"),
    }
}

/// Serves until SIGTERM or SIGINT: then stops accepting, lets in-flight RPCs finish, and
/// returns without unmounting anything. With `http.metrics` (`HOST:PORT`), Prometheus
/// metrics, `/healthz` and `/readyz` are served there; with `http.health`, only the last two.
pub async fn serve(
    engine: Arc<Engine>,
    endpoint: &str,
    driver_name: &str,
    mode: Mode,
    http: &HttpAddresses,
    drain: std::time::Duration,
    socket_group: Option<u32>,
) -> Result<(), ServeError> {
    let path = socket_path(endpoint)?;
    let registry = Arc::new(Registry::new(Limits { slow_calls: crate::csi::MAX_SLOW, connections: MAX_CONNECTIONS }));
    let collector = Arc::new(collect::Collector::new(Arc::clone(&registry), Some(Arc::clone(&engine))));
    let mut endpoints = Vec::new();
    for (address, routes) in [(&http.metrics, http::Routes::All), (&http.health, http::Routes::Health)] {
        let Some(address) = address else { continue };
        let failed = |source| ServeError::Http { address: address.clone(), source };
        let listener = http::bind(address).await.map_err(failed)?;
        let local = listener.local_addr().map_err(failed)?;
        match routes {
            http::Routes::All => tracing::info!(address = %local, "serving metrics on /metrics, /healthz and /readyz"),
            http::Routes::Health => tracing::info!(address = %local, "serving health on /healthz and /readyz"),
        }
        endpoints.push(tokio::spawn(http::serve(listener, Arc::clone(&collector), routes)));
    }
    let listener = bind(&path, socket_group)?;
    let checkpoints = tokio::spawn(keep_checkpoints(Arc::clone(&engine)));
    let controller = mode != Mode::Node;
    let shared = Shared::new(engine, driver_name, controller, Arc::clone(&registry));
    // Each connection carries at most this many calls at once (a call's reply counts until
    // it is sent), so memory stays bounded however many calls a client fires; the client
    // queues the rest.
    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(crate::csi::MAX_STREAMS))
        .layer(tower::layer::layer_fn(TrackCalls))
        .add_service(
            pb::identity_server::IdentityServer::new(IdentityService(shared.clone()))
                .max_decoding_message_size(crate::csi::MAX_REQUEST_BYTES),
        )
        .add_optional_service(controller.then(|| {
            pb::controller_server::ControllerServer::new(ControllerService(shared.clone()))
                .max_decoding_message_size(crate::csi::MAX_REQUEST_BYTES)
        }))
        .add_optional_service(controller.then(|| {
            pb::group_controller_server::GroupControllerServer::new(GroupControllerService(shared.clone()))
                .max_decoding_message_size(crate::csi::MAX_REQUEST_BYTES)
        }))
        .add_optional_service((mode != Mode::Controller).then(|| {
            pb::node_server::NodeServer::new(NodeService(shared.clone()))
                .max_decoding_message_size(crate::csi::MAX_REQUEST_BYTES)
        }));
    tracing::info!(endpoint, driver = driver_name, mode = ?mode, node.id = %shared.engine.node_id, version = crate::VERSION, "serving CSI");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = Incoming::new(listener, Arc::clone(&registry));
    let server = builder.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);
    // Finishing interrupted work (a long copy, say) happens while Probe answers "not
    // ready" and other calls UNAVAILABLE, rather than with no socket at all: a liveness
    // check sees a live process, not one to restart (which would start the work over).
    let recovering = Arc::clone(&shared.engine);
    let recovered = Arc::clone(&registry);
    let recovery = tokio::task::spawn_blocking(move || {
        crate::metrics::scoped(&recovered, || recovering.recover());
        recovered.set_ready(true);
        tracing::info!("ready");
    });
    tokio::select! {
        result = &mut server => result?,
        () = shutdown_signal() => {
            let deadline = std::time::Instant::now() + drain;
            registry.set_stopping();
            registry.set_ready(false);
            // Background copies can run for hours: they stop now, between two chunks,
            // leaving their intent for the next start, rather than outlive the drain.
            shared.engine.stop_copies_for_shutdown();
            // Stop accepting, then wait for the calls in flight. Idle client connections
            // (a sidecar keeps one open) must not hold the exit hostage.
            let _ = stop_tx.send(());
            tokio::select! {
                result = &mut server => result?,
                () = drained(&registry, drain) => {}
            }
            let unfinished = registry.in_flight.load(std::sync::atomic::Ordering::SeqCst);
            if unfinished > 0 {
                // Abandoned as a crash would leave them: their intent is recorded, and the
                // next start finishes or rolls them back. Holding the state any longer
                // would keep the replacement process from starting.
                tracing::warn!(unfinished, drain_seconds = drain.as_secs(), "stopping with operations unfinished after the drain limit; the next start finishes or rolls them back");
            }
            let engine = Arc::clone(&shared.engine);
            let copying = tokio::task::spawn_blocking(move || engine.wait_for_copies(deadline)).await.unwrap_or(0);
            if copying > 0 {
                tracing::warn!(copies = copying, drain_seconds = drain.as_secs(), "stopping with background copies that did not stop within the drain limit; the next start takes them up again");
            }
        }
    }
    registry.set_ready(false);
    drop(recovery);
    for task in endpoints {
        task.abort();
    }
    checkpoints.abort();
    save_checkpoint(Arc::clone(&shared.engine)).await;
    let _ = fs::remove_file(&path);
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_absolute_unix_paths() {
        assert_eq!(socket_path("unix:///run/berth/csi.sock").expect("ok"), PathBuf::from("/run/berth/csi.sock"));
        assert_eq!(socket_path("unix:/tmp/x.sock").expect("ok"), PathBuf::from("/tmp/x.sock"));
        for bad in ["tcp://127.0.0.1:1", "unix://relative.sock", "/no/scheme", "unix:///"] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_socket_is_owner_only_or_shared_with_the_sidecars_group() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let own = dir.path().join("own.sock");
        let _own = bind(&own, None).expect("bind");
        let meta = fs::metadata(&own).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o600);
        let shared = dir.path().join("shared.sock");
        // Root may give the socket any group; another user only one of its own.
        let gid = if nix::unistd::geteuid().is_root() { 65532 } else { nix::unistd::getgid().as_raw() };
        let _shared = bind(&shared, Some(gid)).expect("bind");
        let meta = fs::metadata(&shared).expect("stat");
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, gid));
    }

    #[test]
    fn stale_socket_is_removed_but_other_files_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("regular");
        fs::write(&file, b"keep").expect("write");
        assert!(matches!(remove_stale_socket(&file), Err(ServeError::NotASocket { .. })));
        assert!(file.exists());
        let sock = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        remove_stale_socket(&sock).expect("removed");
        assert!(!sock.exists());
    }
}
