//! What an operation's failure is, and the one place that gives each failure its gRPC
//! code: adding a variant (here or in [`backend::Error`]) does not compile until its
//! code is chosen.

use crate::backend;

/// An operation's failure, classified the way the CSI spec classifies it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("recording state for {id}: {source}")]
    State { id: String, source: std::io::Error },
    #[error(transparent)]
    Backend(#[from] backend::Error),
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for tonic::Status {
    fn from(err: Error) -> tonic::Status {
        use tonic::Status;
        let message = err.to_string();
        match err {
            Error::InvalidArgument(_) => Status::invalid_argument(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::AlreadyExists(_) => Status::already_exists(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::OutOfRange(_) => Status::out_of_range(message),
            Error::ResourceExhausted(_) => Status::resource_exhausted(message),
            Error::Aborted(_) => Status::aborted(message),
            Error::Unimplemented(_) => Status::unimplemented(message),
            // A full state disk: the journal has no room and no checkpoint can be written.
            Error::State { ref source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull
                    || matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                Status::resource_exhausted(message)
            }
            Error::State { .. } => Status::internal(message),
            Error::Backend(b) => backend_status(b, message),
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
        | E::NotPlainDirectory { .. } => Status::invalid_argument(message),
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
        | E::FsTypeConflict { .. }
        | E::UnformattedReadOnly { .. }
        | E::WrongFilesystem { .. }
        | E::PartitionTable { .. }
        | E::ForeignMount { .. }
        | E::UnservedLayer { .. }
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
        E::PoolUnavailable { .. } | E::ServerUnreachable { .. } | E::UsageUnmeasured { .. } => {
            Status::unavailable(message)
        }
    }
}
