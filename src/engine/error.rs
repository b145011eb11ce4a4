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
            Error::Backend(b) => match b {
                _ if b.is_no_space() => Status::resource_exhausted(message),
                // The pool's filesystem is read-only (remounted after errors, or mounted so):
                // nothing a retry changes until an operator acts.
                backend::Error::Io { ref source, .. } if source.raw_os_error() == Some(libc::EROFS) => {
                    Status::failed_precondition(format!("{message} (the pool's filesystem is read-only)"))
                }
                backend::Error::Io { .. } => Status::internal(message),
                backend::Error::Unenforceable { .. } => Status::failed_precondition(message),
                backend::Error::Unsupported(_) => Status::failed_precondition(message),
                backend::Error::InvalidArgument(_) => Status::invalid_argument(message),
                backend::Error::NotFound(_) => Status::not_found(message),
                backend::Error::Exhausted(_) => Status::resource_exhausted(message),
                backend::Error::OutOfRange(_) => Status::out_of_range(message),
                backend::Error::FailedPrecondition(_) => Status::failed_precondition(message),
                backend::Error::Unimplemented(_) => Status::unimplemented(message),
                backend::Error::AlreadyExists(_) => Status::already_exists(message),
                backend::Error::Unavailable(_) => Status::unavailable(message),
            },
        }
    }
}
