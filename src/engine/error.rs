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
