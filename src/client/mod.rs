//! `berth csi`: a command-line client for any CSI driver's unix socket (berth's or
//! another's), for operators debugging a node. One subcommand per RPC of the Identity,
//! Controller and Node services; readable output by default, `--output json` for machines.
//! A failed call prints its gRPC code and message and exits non-zero; secrets and sensitive
//! context values the command sent are scrubbed from what the driver answers.

pub mod args;
pub mod render;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use self::args::{ControllerCmd, Group, IdentityCmd, NodeCmd, PageArgs, to_map};
use self::render::Reply;
use crate::csi::pb::controller_client::ControllerClient;
use crate::csi::pb::identity_client::IdentityClient;
use crate::csi::pb::node_client::NodeClient;
use crate::csi::{Describe, Fields, code_name, pb};

/// How replies are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned `key: value` lines and tables.
    Table,
    /// One JSON document.
    Json,
}

/// `berth csi`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CsiArgs {
    /// The driver's socket, as unix:///path/csi.sock.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/berth/csi.sock"
    )]
    pub endpoint: String,
    /// Output format.
    #[arg(long, global = true, help_heading = "Global options", value_enum, default_value = "table")]
    pub output: Output,
    /// Seconds to wait for an answer (the kubelet waits 120).
    #[arg(long, global = true, help_heading = "Global options", default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
    #[command(subcommand)]
    pub group: Group,
}

/// A call that did not succeed: the gRPC code (or the closest one for a local problem) and
/// the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    fn local(code: Code, message: impl Into<String>) -> Failure {
        Failure { code: code_name(code), message: message.into() }
    }

    fn status(fields: &Fields, status: Status) -> Failure {
        let status = fields.scrub_status(status);
        Failure { code: code_name(status.code()), message: status.message().to_string() }
    }
}

/// Runs the command and prints its reply (stdout) or failure (stderr; stdout too with
/// `--output json`). Returns whether it succeeded.
#[must_use]
pub fn main(args: &CsiArgs) -> bool {
    let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(call(args)),
        Err(e) => Err(Failure::local(Code::Internal, format!("starting the async runtime: {e}"))),
    };
    match (result, args.output) {
        (Ok(reply), Output::Table) => {
            print!("{}", render::human(&reply));
            true
        }
        (Ok(reply), Output::Json) => {
            println!("{}", serde_json::to_string_pretty(&reply.json).unwrap_or_default());
            true
        }
        (Err(f), output) => {
            if output == Output::Json {
                let doc = serde_json::json!({ "error": { "code": f.code, "message": f.message } });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            eprintln!("berth csi: {}: {}", f.code, f.message);
            false
        }
    }
}

/// Connects to a unix-socket endpoint.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel, Failure> {
    let path: PathBuf =
        crate::server::socket_path(endpoint).map_err(|e| Failure::local(Code::InvalidArgument, e.to_string()))?;
    if !path.exists() {
        return Err(Failure::local(
            Code::Unavailable,
            format!("no socket at {} (is the driver running? is --endpoint right?)", path.display()),
        ));
    }
    // The URI is a placeholder: the connector below always dials the socket.
    let endpoint_uri =
        Endpoint::from_static("http://[::1]:1").timeout(timeout).connect_timeout(Duration::from_secs(10));
    endpoint_uri
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .map_err(|e| {
            let mut message = format!("cannot connect to {endpoint}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            Failure::local(Code::Unavailable, message)
        })
}

/// Awaits one RPC, scrubbing what the request sent from any error.
async fn send<T>(fields: Fields, call: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Failure> {
    call.await.map(tonic::Response::into_inner).map_err(|s| Failure::status(&fields, s))
}

async fn call(args: &CsiArgs) -> Result<Reply, Failure> {
    let channel = connect(&args.endpoint, Duration::from_secs(args.timeout)).await?;
    match &args.group {
        Group::Identity(cmd) => identity(IdentityClient::new(channel), cmd).await,
        Group::Controller(cmd) => controller(ControllerClient::new(channel), cmd).await,
        Group::Node(cmd) => node(NodeClient::new(channel), cmd).await,
    }
}

async fn identity(mut c: IdentityClient<Channel>, cmd: &IdentityCmd) -> Result<Reply, Failure> {
    let none = Fields::default;
    Ok(match cmd {
        IdentityCmd::Info => {
            let r = send(none(), c.get_plugin_info(pb::GetPluginInfoRequest {})).await?;
            serde_json::json!({ "name": r.name, "vendor_version": r.vendor_version, "manifest": render::map(&r.manifest) })
                .into()
        }
        IdentityCmd::Capabilities => render::plugin_capabilities(
            &send(none(), c.get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})).await?,
        )
        .into(),
        IdentityCmd::Probe => {
            let r = send(none(), c.probe(pb::ProbeRequest {})).await?;
            serde_json::json!({ "ready": r.ready }).into()
        }
    })
}

fn topology(pairs: &[(String, String)]) -> Option<pb::Topology> {
    (!pairs.is_empty()).then(|| pb::Topology { segments: to_map(pairs) })
}

fn range(required: Option<i64>, limit: Option<i64>) -> Option<pb::CapacityRange> {
    (required.is_some() || limit.is_some())
        .then(|| pb::CapacityRange { required_bytes: required.unwrap_or(0), limit_bytes: limit.unwrap_or(0) })
}

async fn controller(mut c: ControllerClient<Channel>, cmd: &ControllerCmd) -> Result<Reply, Failure> {
    use serde_json::json;
    Ok(match cmd {
        ControllerCmd::CreateVolume(a) => {
            use pb::volume_content_source::{SnapshotSource, Type, VolumeSource};
            let source = match (&a.from_snapshot, &a.from_volume) {
                (Some(id), _) => Some(Type::Snapshot(SnapshotSource { snapshot_id: id.clone() })),
                (None, Some(id)) => Some(Type::Volume(VolumeSource { volume_id: id.clone() })),
                (None, None) => None,
            };
            let req = pb::CreateVolumeRequest {
                name: a.name.clone(),
                capacity_range: range(a.capacity, a.limit),
                volume_capabilities: a.cap.capability(true).into_iter().collect(),
                parameters: to_map(&a.params),
                secrets: to_map(&a.secrets.secrets),
                volume_content_source: source.map(|t| pb::VolumeContentSource { r#type: Some(t) }),
                accessibility_requirements: topology(&a.topology)
                    .map(|t| pb::TopologyRequirement { requisite: vec![t.clone()], preferred: vec![t] }),
                mutable_parameters: to_map(&a.mutable_params),
            };
            let r = send(req.fields(), c.create_volume(req.clone())).await?;
            json!({ "volume": r.volume.as_ref().map(render::volume) }).into()
        }
        ControllerCmd::DeleteVolume(a) => {
            let req = pb::DeleteVolumeRequest { volume_id: a.volume_id.clone(), secrets: to_map(&a.secrets.secrets) };
            send(req.fields(), c.delete_volume(req.clone())).await?;
            json!({}).into()
        }
        ControllerCmd::Publish(a) => {
            let req = pb::ControllerPublishVolumeRequest {
                volume_id: a.volume_id.clone(),
                node_id: a.node_id.clone(),
                volume_capability: a.cap.capability(true),
                readonly: a.readonly,
                secrets: to_map(&a.secrets.secrets),
                volume_context: to_map(&a.context),
            };
            let r = send(req.fields(), c.controller_publish_volume(req.clone())).await?;
            json!({ "publish_context": render::map(&r.publish_context) }).into()
        }
        ControllerCmd::Unpublish(a) => {
            let req = pb::ControllerUnpublishVolumeRequest {
                volume_id: a.volume_id.clone(),
                node_id: a.node_id.clone(),
                secrets: to_map(&a.secrets.secrets),
            };
            send(req.fields(), c.controller_unpublish_volume(req.clone())).await?;
            json!({}).into()
        }
        ControllerCmd::Validate(a) => {
            let req = pb::ValidateVolumeCapabilitiesRequest {
                volume_id: a.volume_id.clone(),
                volume_context: to_map(&a.context),
                volume_capabilities: a.cap.capability(true).into_iter().collect(),
                parameters: to_map(&a.params),
                secrets: to_map(&a.secrets.secrets),
                mutable_parameters: std::collections::HashMap::default(),
            };
            let r = send(req.fields(), c.validate_volume_capabilities(req.clone())).await?;
            let confirmed = r.confirmed.as_ref().map(|conf| {
                json!({
                    "volume_context": render::map(&conf.volume_context),
                    "volume_capabilities": conf.volume_capabilities.iter().map(render::capability).collect::<Vec<_>>(),
                    "parameters": render::map(&conf.parameters),
                })
            });
            json!({ "confirmed": confirmed, "message": r.message }).into()
        }
        ControllerCmd::ListVolumes(page) => {
            let (entries, next) = pages(page, |max_entries, starting_token| {
                let req = pb::ListVolumesRequest { max_entries, starting_token };
                let mut c = c.clone();
                async move {
                    let r = send(req.fields(), c.list_volumes(req.clone())).await?;
                    Ok((r.entries, r.next_token))
                }
            })
            .await?;
            render::volumes(&entries, &next)
        }
        ControllerCmd::GetVolume(a) => {
            let req = pb::ControllerGetVolumeRequest { volume_id: a.volume_id.clone() };
            let r = send(req.fields(), c.controller_get_volume(req.clone())).await?;
            let status = r.status.unwrap_or_default();
            json!({
                "volume": r.volume.as_ref().map(render::volume),
                "status": {
                    "published_node_ids": status.published_node_ids,
                    "volume_condition": render::condition(status.volume_condition.as_ref()),
                },
            })
            .into()
        }
        ControllerCmd::Capacity(a) => {
            let req = pb::GetCapacityRequest {
                volume_capabilities: a.cap.capability(false).into_iter().collect(),
                parameters: to_map(&a.params),
                accessible_topology: topology(&a.topology),
            };
            let r = send(req.fields(), c.get_capacity(req.clone())).await?;
            json!({
                "available_capacity_bytes": r.available_capacity,
                "maximum_volume_size_bytes": r.maximum_volume_size,
                "minimum_volume_size_bytes": r.minimum_volume_size,
            })
            .into()
        }
        ControllerCmd::Capabilities => {
            let r =
                send(Fields::default(), c.controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})).await?;
            render::controller_capabilities(&r).into()
        }
        ControllerCmd::CreateSnapshot(a) => {
            let req = pb::CreateSnapshotRequest {
                source_volume_id: a.source_volume_id.clone(),
                name: a.name.clone(),
                secrets: to_map(&a.secrets.secrets),
                parameters: to_map(&a.params),
            };
            let r = send(req.fields(), c.create_snapshot(req.clone())).await?;
            json!({ "snapshot": r.snapshot.as_ref().map(render::snapshot) }).into()
        }
        ControllerCmd::DeleteSnapshot(a) => {
            let req =
                pb::DeleteSnapshotRequest { snapshot_id: a.snapshot_id.clone(), secrets: to_map(&a.secrets.secrets) };
            send(req.fields(), c.delete_snapshot(req.clone())).await?;
            json!({}).into()
        }
        ControllerCmd::ListSnapshots(a) => {
            let (entries, next) = pages(&a.page, |max_entries, starting_token| {
                let req = pb::ListSnapshotsRequest {
                    max_entries,
                    starting_token,
                    source_volume_id: a.source_volume_id.clone(),
                    snapshot_id: a.snapshot_id.clone(),
                    secrets: to_map(&a.secrets.secrets),
                };
                let mut c = c.clone();
                async move {
                    let r = send(req.fields(), c.list_snapshots(req.clone())).await?;
                    Ok((r.entries, r.next_token))
                }
            })
            .await?;
            render::snapshots(&entries, &next)
        }
        ControllerCmd::GetSnapshot(a) => {
            let req =
                pb::GetSnapshotRequest { snapshot_id: a.snapshot_id.clone(), secrets: to_map(&a.secrets.secrets) };
            let r = send(req.fields(), c.get_snapshot(req.clone())).await?;
            json!({ "snapshot": r.snapshot.as_ref().map(render::snapshot) }).into()
        }
        ControllerCmd::Expand(a) => {
            let req = pb::ControllerExpandVolumeRequest {
                volume_id: a.volume_id.clone(),
                capacity_range: range(Some(a.capacity), a.limit),
                secrets: to_map(&a.secrets.secrets),
                volume_capability: a.cap.capability(false),
            };
            let r = send(req.fields(), c.controller_expand_volume(req.clone())).await?;
            json!({ "capacity_bytes": r.capacity_bytes, "node_expansion_required": r.node_expansion_required }).into()
        }
        ControllerCmd::Modify(a) => {
            let req = pb::ControllerModifyVolumeRequest {
                volume_id: a.volume_id.clone(),
                secrets: to_map(&a.secrets.secrets),
                mutable_parameters: to_map(&a.mutable_params),
            };
            send(req.fields(), c.controller_modify_volume(req.clone())).await?;
            json!({}).into()
        }
    })
}

/// Calls a list RPC: one page when the user asked for one, else every page, following
/// next_token (a driver that repeats a token is stopped rather than followed forever).
async fn pages<E, F, Fut>(page: &PageArgs, mut call: F) -> Result<(Vec<E>, String), Failure>
where
    F: FnMut(i32, String) -> Fut,
    Fut: Future<Output = Result<(Vec<E>, String), Failure>>,
{
    let max_entries = page.max_entries.or(page.page_size).unwrap_or(0);
    let mut token = page.starting_token.clone().unwrap_or_default();
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    loop {
        let (entries, next) = call(max_entries, token).await?;
        all.extend(entries);
        if page.single_page() || next.is_empty() {
            return Ok((all, next));
        }
        if !seen.insert(next.clone()) {
            return Err(Failure::local(
                Code::Aborted,
                format!("the driver returned next_token {next:?} twice; stopped after {} entries", all.len()),
            ));
        }
        token = next;
    }
}

async fn node(mut c: NodeClient<Channel>, cmd: &NodeCmd) -> Result<Reply, Failure> {
    use serde_json::json;
    Ok(match cmd {
        NodeCmd::Stage(a) => {
            let req = pb::NodeStageVolumeRequest {
                volume_id: a.volume_id.clone(),
                publish_context: to_map(&a.publish_context),
                staging_target_path: a.staging_path.clone(),
                volume_capability: a.cap.capability(true),
                secrets: to_map(&a.secrets.secrets),
                volume_context: to_map(&a.context),
            };
            send(req.fields(), c.node_stage_volume(req.clone())).await?;
            json!({}).into()
        }
        NodeCmd::Unstage(a) => {
            let req = pb::NodeUnstageVolumeRequest {
                volume_id: a.volume_id.clone(),
                staging_target_path: a.staging_path.clone(),
            };
            send(req.fields(), c.node_unstage_volume(req.clone())).await?;
            json!({}).into()
        }
        NodeCmd::Publish(a) => {
            let req = pb::NodePublishVolumeRequest {
                volume_id: a.volume_id.clone(),
                publish_context: to_map(&a.publish_context),
                staging_target_path: a.staging_path.clone(),
                target_path: a.target_path.clone(),
                volume_capability: a.cap.capability(true),
                readonly: a.readonly,
                secrets: to_map(&a.secrets.secrets),
                volume_context: to_map(&a.context),
            };
            send(req.fields(), c.node_publish_volume(req.clone())).await?;
            json!({}).into()
        }
        NodeCmd::Unpublish(a) => {
            let req =
                pb::NodeUnpublishVolumeRequest { volume_id: a.volume_id.clone(), target_path: a.target_path.clone() };
            send(req.fields(), c.node_unpublish_volume(req.clone())).await?;
            json!({}).into()
        }
        NodeCmd::Stats(a) => {
            let req = pb::NodeGetVolumeStatsRequest {
                volume_id: a.volume_id.clone(),
                volume_path: a.volume_path.clone(),
                staging_target_path: a.staging_path.clone(),
            };
            render::stats(&send(req.fields(), c.node_get_volume_stats(req.clone())).await?)
        }
        NodeCmd::Expand(a) => {
            let req = pb::NodeExpandVolumeRequest {
                volume_id: a.volume_id.clone(),
                volume_path: a.volume_path.clone(),
                capacity_range: range(Some(a.capacity), a.limit),
                staging_target_path: a.staging_path.clone(),
                volume_capability: a.cap.capability(false),
                secrets: to_map(&a.secrets.secrets),
            };
            let r = send(req.fields(), c.node_expand_volume(req.clone())).await?;
            json!({ "capacity_bytes": r.capacity_bytes }).into()
        }
        NodeCmd::Info => {
            let r = send(Fields::default(), c.node_get_info(pb::NodeGetInfoRequest {})).await?;
            json!({
                "node_id": r.node_id,
                "max_volumes_per_node": r.max_volumes_per_node,
                "accessible_topology": r.accessible_topology.as_ref().map(|t| render::map(&t.segments)),
            })
            .into()
        }
        NodeCmd::Capabilities => render::node_capabilities(
            &send(Fields::default(), c.node_get_capabilities(pb::NodeGetCapabilitiesRequest {})).await?,
        )
        .into(),
    })
}
