//! What an operation's failure is, and the one place that gives each failure its gRPC
//! code: adding a variant (here or in [`backend::Error`]) does not compile until its
//! code is chosen.

use std::path::PathBuf;

use crate::backend;

/// What went wrong in an operation, with what it concerns. Each variant's gRPC code is
/// chosen once, in the `From` below.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The request itself.
    /// A field, parameter or attribute berth does not accept; the text says which and why.
    #[error("{0}")]
    BadRequest(String),
    /// A path in the request that berth will not mount on, publish onto or unmount.
    #[error("{field} {}: {problem}", path.display())]
    BadPath { field: &'static str, path: PathBuf, problem: &'static str },
    /// The request's sizes contradict each other.
    #[error("required_bytes {required} exceeds limit_bytes {limit}")]
    RequiredOverLimit { required: u64, limit: u64 },
    /// What the volume must hold does not fit in what the request allows.
    #[error("{what} needs {needs} bytes; {allowed}")]
    TooSmall { what: String, needs: u64, allowed: String },
    /// An encrypted volume's call without the key in its secrets.
    #[error(
        "volume {volume} is encrypted ({scheme}): {} needs its key in the secrets' {} entry; {}",
        from.call(), crate::crypt::SECRET_KEY, from.how()
    )]
    KeyMissing { volume: String, scheme: crate::crypt::Scheme, from: crate::crypt::KeyFrom },
    /// The secrets' key is not the one the volume or snapshot is encrypted under.
    #[error(
        "the key in the secrets is not the key of {what}: its identifier is {given}, and {what} is encrypted under {recorded}"
    )]
    WrongKey { what: String, given: crate::crypt::KeyId, recorded: crate::crypt::KeyId },
    /// A group snapshot call's snapshot_ids that are not the group's members.
    #[error("snapshot_ids do not match group snapshot {id}: {detail}")]
    GroupMismatch { id: String, detail: String },
    /// A continuation token this driver did not hand out.
    #[error("starting_token {token:?} was not issued by this driver")]
    UnknownToken { token: String },

    // What the request names, and does not exist.
    #[error("volume {id} does not exist on node {node}")]
    NoVolume { id: String, node: String },
    #[error("snapshot {id} does not exist on node {node}")]
    NoSnapshot { id: String, node: String },
    #[error("group snapshot {id} does not exist on node {node}")]
    NoGroup { id: String, node: String },
    /// The snapshot or volume a new volume is to be made from.
    #[error("source {kind} {id} does not exist on node {node}")]
    NoSource { kind: &'static str, id: String, node: String },
    /// A clone's source volume is not here; it may be on another node.
    #[error(
        "source volume {id} does not exist on node {node}; a clone is made on the node that holds its source, so a volume on another node cannot be cloned here: take a VolumeSnapshot of it with a class whose copyTo names a shared pool, and restore that snapshot on this node"
    )]
    NoCloneSource { id: String, node: String },
    #[error("pool {pool:?} is not configured on node {node}")]
    NoPool { pool: String, node: String },
    /// A node no berth node plugin of the pool has registered as.
    #[error("node {node:?} is not known: no berth node plugin for pool {pool} has registered under that ID{why}")]
    UnknownNode { node: String, pool: String, why: String },
    #[error("the parent directory of {field} {} does not exist", path.display())]
    NoParent { field: &'static str, path: PathBuf },
    /// NodeGetVolumeStats on a path that is not this volume's mount.
    #[error("volume {volume}: {}: {problem}", path.display())]
    NotMountedHere { volume: String, path: PathBuf, problem: &'static str },

    // Something is already there.
    #[error("{kind} name {name:?} is already used by {holder}")]
    NameTaken { kind: &'static str, name: String, holder: String },
    /// A different volume or filesystem occupies a path the request names.
    #[error("{occupant} is mounted at {field} {}", path.display())]
    Occupied { occupant: &'static str, field: &'static str, path: PathBuf },
    /// Published there already, with the other readonly setting.
    #[error("volume {volume} is already published {at} with readonly={readonly}")]
    PublishedOtherwise { volume: String, at: String, readonly: bool },
    #[error("volume {volume} exists and is not an ephemeral volume; publish it without {key}")]
    NotEphemeral { volume: String, key: &'static str },

    // Another operation is at work.
    #[error("an operation on {} is already in progress", keys.join(", "))]
    Busy { keys: Vec<String> },
    #[error("an operation on {} is already in progress, or {} is being deleted", keys.join(", "), sources.join(", "))]
    BusyOrDeleting { keys: Vec<String>, sources: Vec<String> },
    #[error("volume {volume} is being deleted")]
    BeingDeleted { volume: String },
    /// A volume's content is still being copied in the background; the retry after the
    /// copy ends answers for good.
    #[error(
        "volume {volume} is being filled from {source_id}: {files} files and {bytes} bytes of data copied in {seconds} s so far; the copy goes on in the background, retry later"
    )]
    CopyInProgress { volume: String, source_id: String, files: u64, bytes: u64, seconds: u64 },

    // The state of the volume or pool does not allow it now.
    #[error("volume {volume} is still published to node(s) {}; unpublish it first", nodes.join(", "))]
    StillPublished { volume: String, nodes: Vec<String> },
    #[error("volume {volume} is still mounted at {}; unpublish and unstage it first", paths(mounts))]
    StillMounted { volume: String, mounts: Vec<PathBuf> },
    #[error("volume {volume} is not staged at {}; call NodeStageVolume first", path.display())]
    NotStaged { volume: String, path: PathBuf },
    /// A ReadWriteOncePod volume, or a single-writer mode, already has its writer.
    #[error("volume {volume} allows a single writer and is already published at {}", paths(at))]
    WriterHeld { volume: String, at: Vec<PathBuf> },
    /// A node-local volume asked for on another node, or a one-node volume published elsewhere.
    #[error("volume {volume} {held}; it cannot be published to node {node}")]
    WrongNode { volume: String, held: String, node: String },
    /// The volume cannot be used with the capability asked for.
    #[error("{0}")]
    Unusable(String),
    /// Volumes that cannot be snapshotted together at one point in time; the reasons
    /// name each member and why.
    #[error("these volumes cannot be snapshotted together at one point in time: {reasons}")]
    CannotGroup { reasons: String },
    #[error("volume {volume} is in pool {pool} which is no longer configured")]
    PoolGone { volume: String, pool: String },
    /// The pool is configured, but not for this: node-local at the central controller,
    /// or not serving ephemeral volumes.
    #[error("pool {pool:?} {refusal}")]
    PoolRefuses { pool: String, refusal: &'static str },
    /// The pool is configured but could not be opened (its directory is not its filesystem).
    #[error("pool {pool:?} is unavailable: {reason}")]
    PoolUnavailable { pool: String, reason: String },

    // No room.
    #[error("pool {pool} has {available} bytes free; {requested} bytes do not fit")]
    PoolFull { pool: String, available: u64, requested: u64 },
    #[error("node {node} holds pool {pool}, but the requisite topology allows only: {allowed}")]
    OutsideTopology { node: String, pool: String, allowed: String },

    /// A snapshot's copy on a shared pool: making, checking, restoring or deleting it.
    #[error("{what}: {source}")]
    Archive {
        what: String,
        #[source]
        source: Box<crate::archive::Error>,
    },

    // Below the engine.
    #[error("recording state for {id}: {source}")]
    State { id: String, source: std::io::Error },
    #[error(transparent)]
    Backend(#[from] backend::Error),
}

/// Paths for a message, comma-separated.
fn paths(list: &[PathBuf]) -> String {
    list.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for tonic::Status {
    fn from(err: Error) -> tonic::Status {
        use tonic::Status;
        let message = err.to_string();
        match err {
            Error::BadRequest(_) | Error::BadPath { .. } | Error::KeyMissing { .. } | Error::GroupMismatch { .. } => {
                Status::invalid_argument(message)
            }
            Error::WrongKey { .. } => Status::permission_denied(message),
            Error::RequiredOverLimit { .. } | Error::TooSmall { .. } => Status::out_of_range(message),
            Error::UnknownToken { .. }
            | Error::Busy { .. }
            | Error::BusyOrDeleting { .. }
            | Error::BeingDeleted { .. }
            | Error::CopyInProgress { .. } => Status::aborted(message),
            Error::NoVolume { .. }
            | Error::NoSnapshot { .. }
            | Error::NoGroup { .. }
            | Error::NoSource { .. }
            | Error::NoCloneSource { .. }
            | Error::NoPool { .. }
            | Error::UnknownNode { .. }
            | Error::NoParent { .. }
            | Error::NotMountedHere { .. } => Status::not_found(message),
            Error::NameTaken { .. }
            | Error::Occupied { .. }
            | Error::PublishedOtherwise { .. }
            | Error::NotEphemeral { .. } => Status::already_exists(message),
            Error::StillPublished { .. }
            | Error::StillMounted { .. }
            | Error::NotStaged { .. }
            | Error::WriterHeld { .. }
            | Error::WrongNode { .. }
            | Error::Unusable(_)
            | Error::CannotGroup { .. }
            | Error::PoolGone { .. }
            | Error::PoolRefuses { .. } => Status::failed_precondition(message),
            Error::PoolUnavailable { .. } => Status::unavailable(message),
            Error::PoolFull { .. } | Error::OutsideTopology { .. } => Status::resource_exhausted(message),
            // A full state disk: the journal has no room and no checkpoint can be written.
            Error::State { ref source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull
                    || matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                Status::resource_exhausted(message)
            }
            Error::State { .. } => Status::internal(message),
            Error::Backend(b) => backend_status(b, message),
            Error::Archive { source, .. } => archive_status(&source, message),
        }
    }
}

/// The code of a failure of a snapshot copy: what the store holds is damaged (DATA_LOSS,
/// no retry brings it back), the store is out of reach or full, or the copy met another.
fn archive_status(err: &crate::archive::Error, message: String) -> tonic::Status {
    use crate::archive::Error as E;
    use tonic::Status;
    match err {
        E::ChunkMissing { .. } | E::ChunkCorrupt { .. } | E::ChunkLength { .. } | E::Manifest { .. } => {
            Status::data_loss(message)
        }
        E::ReadBack { .. } => Status::data_loss(message),
        E::ManifestMissing { .. } => Status::not_found(message),
        E::Unreachable { .. } => Status::unavailable(message),
        E::Busy { .. } | E::LeaseLost { .. } | E::MarkerLost { .. } | E::Stopped { .. } => Status::aborted(message),
        E::ManifestExists { .. } => Status::already_exists(message),
        E::Io { source, .. }
            if source.kind() == std::io::ErrorKind::StorageFull
                || matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
        {
            Status::resource_exhausted(message)
        }
        E::Io { source, .. } if source.raw_os_error() == Some(libc::EROFS) => Status::failed_precondition(message),
        E::Io { .. } => Status::internal(message),
        E::BadName { .. } | E::Unsupported { .. } | E::DestinationInUse { .. } | E::TooDeep { .. } => {
            Status::failed_precondition(message)
        }
    }
}

/// The code of a backend's failure: the one place backend errors get their codes.
fn backend_status(err: backend::Error, message: String) -> tonic::Status {
    use backend::Error as E;
    use tonic::Status;
    match err {
        _ if err.is_no_space() => Status::resource_exhausted(message),
        // The pool's filesystem is read-only (remounted after errors, or mounted so):
        // nothing a retry changes until an operator acts.
        E::Io { ref source, .. } if source.raw_os_error() == Some(libc::EROFS) => {
            Status::failed_precondition(format!("{message} (the pool's filesystem is read-only)"))
        }
        E::Io { .. } | E::EncodeRecord(_) => Status::internal(message),
        // A request, a volume context or a static volume's attributes name something berth
        // refuses: the caller must change them.
        E::NoStaticVolumes { .. }
        | E::BadPath(_)
        | E::ManagedSubPath { .. }
        | E::BadSubDir { .. }
        | E::LoneNfsAttribute { .. }
        | E::BadMountFlag(_)
        | E::BadMountOption(_)
        | E::NotPlainDirectory { .. }
        | E::CannotEncrypt { .. } => Status::invalid_argument(message),
        // The volume's storage is not where its record or context says.
        E::NoVolumeDirectory { .. }
        | E::NoImage { .. }
        | E::NoDeviceRecorded { .. }
        | E::NoExportDirectory { .. }
        | E::NotOnServer { .. } => Status::not_found(message),
        // The pool, the node or the volume's storage is not in a state the operation needs:
        // an operator (or the pod) must act before a retry can succeed.
        E::Unenforceable { .. }
        | E::ReadOnlyPool { .. }
        | E::ReadWriteStageOfReadOnlyPool { .. }
        | E::NoProjectId { .. }
        | E::ProjectQuotasGone { .. }
        | E::NestedSubvolumes { .. }
        | E::EncryptedOtherwise { .. }
        | E::PlaintextInEncrypted { .. }
        | E::FsTypeConflict { .. }
        | E::UnformattedReadOnly { .. }
        | E::WrongFilesystem { .. }
        | E::PartitionTable { .. }
        | E::ForeignMount { .. }
        | E::UnservedLayer { .. }
        | E::NoKeyForLayer { .. }
        | E::NotLuks { .. }
        | E::LuksKeyRefused { .. }
        | E::MappedElsewhere { .. }
        | E::NoLayers { .. }
        | E::StillMounted { .. }
        | E::DeviceMissing { .. }
        | E::DeviceClaimedTwice { .. }
        | E::NotOnAllowList { .. }
        | E::NotABlockDevice { .. }
        | E::DeviceReplaced(_)
        | E::NotADirectory { .. }
        | E::NoNfsClient { .. } => Status::failed_precondition(message),
        E::NoBlankDevice { .. } => Status::resource_exhausted(message),
        E::DiskTooSmall { .. } => Status::out_of_range(message),
        E::SubdirTaken { .. } | E::ExistingData { .. } => Status::already_exists(message),
        E::NoSnapshots { .. } => Status::unimplemented(message),
        // Storage that cannot be reached now may be reachable on a retry.
        E::ServerUnreachable { .. } | E::UsageUnmeasured { .. } => Status::unavailable(message),
        // Stopped because what it concerned is being deleted or berth is stopping: the
        // retry finds out which, and answers for good.
        E::Stopped { .. } => Status::aborted(message),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tonic::Code;

    use super::*;

    fn io(errno: i32) -> backend::Error {
        backend::Error::Io {
            op: "write",
            path: PathBuf::from("/pool/volumes/k"),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn backend_failures_get_the_code_their_variant_says() {
        use backend::Error as E;
        let cases = [
            (E::NoBlankDevice { pool: "disks".into(), bytes: 1 << 30 }, Code::ResourceExhausted),
            (E::ReadOnlyPool { pool: "fast".into(), root: "/srv/fast".into() }, Code::FailedPrecondition),
            (
                E::ServerUnreachable { op: "claim", location: "nfs:/export/a".into(), reason: "timed out".into() },
                Code::Unavailable,
            ),
            (E::NoSnapshots { pool: "disks".into() }, Code::Unimplemented),
            (
                E::DiskTooSmall { volume: "vol-1".into(), device: "/dev/sdb".into(), size: 10, bytes: 20 },
                Code::OutOfRange,
            ),
            (E::SubdirTaken { path: "nfs:/export/a".into(), holder: "vol-2".into() }, Code::AlreadyExists),
            (E::NoImage { volume: "vol-1".into(), image: "/pool/volumes/k.img".into() }, Code::NotFound),
            (E::BadMountFlag(crate::mount::ops::FlagError("exec=1".into())), Code::InvalidArgument),
            (io(libc::ENOSPC), Code::ResourceExhausted),
            (io(libc::EDQUOT), Code::ResourceExhausted),
            (io(libc::EROFS), Code::FailedPrecondition),
            (io(libc::EIO), Code::Internal),
        ];
        for (err, code) in cases {
            let shown = err.to_string();
            let status = tonic::Status::from(Error::from(err));
            assert_eq!(status.code(), code, "{shown}");
            assert!(status.message().starts_with(&shown), "the message is the error's: {}", status.message());
        }
    }

    #[test]
    fn messages_name_what_the_failure_concerns() {
        let status =
            tonic::Status::from(Error::from(backend::Error::NoBlankDevice { pool: "disks".into(), bytes: 4096 }));
        assert_eq!(status.message(), "device pool disks has no free blank device of at least 4096 bytes");
        let status = tonic::Status::from(Error::from(io(libc::EROFS)));
        assert!(status.message().ends_with("(the pool's filesystem is read-only)"), "{}", status.message());
    }
}
