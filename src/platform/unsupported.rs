//! The fallback for operating systems without a backend: every power request
//! is refused (`invalid command` for immediate, `fail` for graceful), and the
//! crate still builds.

use std::io;

use super::{GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError, StartError};

/// The backend that supports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnsupportedBackend;

impl PowerBackend for UnsupportedBackend {
    fn prepare(&self, _op: ImmediateOp) -> Result<(), PrepareError> {
        Err(PrepareError::Unsupported)
    }

    fn perform(&self, _op: ImmediateOp) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    fn start_graceful(&self, _op: GracefulOp) -> Result<GracefulStart, StartError> {
        Err(StartError::Unsupported)
    }
}
