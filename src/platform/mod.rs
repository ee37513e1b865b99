//! Platform backends: the operating-system end of the power family.
//!
//! Every backend implements [`PowerBackend`]:
//!
//! - [`PowerBackend::prepare`] checks that an immediate operation can run now
//!   and does nothing irreversible. Its failure becomes `invalid command`.
//! - [`PowerBackend::perform`] runs an immediate operation. On a real system
//!   success does not return. Only `crate::power::PendingPowerOp::release`
//!   calls it, and only after the reply was written.
//! - [`PowerBackend::start_graceful`] starts the system's orderly reboot or
//!   power-off command and returns once it has been spawned. Its failure
//!   becomes `fail`.
//!
//! The daemon's backend is chosen in [`daemon_backend`] (`select.rs`).
//! Backends whose code is portable are compiled everywhere so that their
//! logic is tested on every host.

use std::{fmt, io};

use crate::wire::NodePowerRequest;

pub mod graceful_command;
#[cfg(immediate_power)]
pub mod linux;
pub mod macos;
#[cfg(any(test, feature = "test-backend"))]
pub mod recorder;
mod select;
pub mod unsupported;

pub(crate) use select::version_text;
pub use select::{
    BackendChoice, BackendOptions, CAN_RECORD, DaemonBackend, NoRecorder, Platform,
    SYSTEM_BACKEND_NAME, daemon_backend,
};

pub use graceful_command::{
    CommandLine, CommandOutcome, GracefulCommands, GracefulStart, StartError,
};

/// A boxed backend is a backend: tests get one for any platform from
/// `Platform::backend`.
impl<T: PowerBackend + ?Sized> PowerBackend for Box<T> {
    fn prepare(&self, op: ImmediateOp) -> Result<(), PrepareError> {
        (**self).prepare(op)
    }

    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        (**self).perform(op)
    }

    fn pending_settled(&self, op: ImmediateOp, how: Settlement) {
        (**self).pending_settled(op, how);
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        (**self).start_graceful(op)
    }
}

/// An operation that takes the host down at once, without an orderly shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImmediateOp {
    /// Restart the host.
    Reboot,
    /// Switch the host off.
    PowerOff,
}

/// An operation carried out by the system's own orderly shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GracefulOp {
    /// Restart the host.
    Reboot,
    /// Switch the host off.
    PowerOff,
}

/// What a power request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PowerOp {
    /// Reply first, then act (see [`crate::power::PendingPowerOp`]).
    Immediate(ImmediateOp),
    /// Start the system command, then reply.
    Graceful(GracefulOp),
}

impl From<NodePowerRequest> for PowerOp {
    fn from(request: NodePowerRequest) -> Self {
        match request {
            NodePowerRequest::Reboot => Self::Immediate(ImmediateOp::Reboot),
            NodePowerRequest::Shutdown => Self::Immediate(ImmediateOp::PowerOff),
            NodePowerRequest::GracefulReboot => Self::Graceful(GracefulOp::Reboot),
            NodePowerRequest::GracefulShutdown => Self::Graceful(GracefulOp::PowerOff),
        }
    }
}

impl fmt::Display for ImmediateOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reboot => "immediate reboot",
            Self::PowerOff => "immediate power-off",
        })
    }
}

impl fmt::Display for GracefulOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reboot => "graceful reboot",
            Self::PowerOff => "graceful power-off",
        })
    }
}

/// How a pending immediate operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Settlement {
    /// It was released: [`PowerBackend::perform`] follows on its own thread.
    Released,
    /// It was dropped: nothing happens.
    Cancelled,
}

/// Why an immediate operation cannot run; answered with `invalid command`.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// This platform has no immediate power operations.
    #[error("immediate power operations are not available on this platform")]
    Unsupported,
    /// The process lacks CAP_SYS_BOOT in its effective set, so `reboot(2)`
    /// would fail with EPERM.
    #[error("CAP_SYS_BOOT is not in the effective capability set")]
    MissingCapability,
    /// The capability check itself failed.
    #[error("cannot read the process capabilities: {0}")]
    CapabilityCheck(String),
    /// Another power operation is already under way.
    #[error("another power operation is in progress")]
    InProgress,
    /// The recording backend was told to refuse.
    #[error("refused by the recording backend")]
    Refused,
}

/// The operating-system end of the power family; see the module docs.
pub trait PowerBackend: Send + Sync + 'static {
    /// Checks that `op` can run now. Must do nothing irreversible.
    ///
    /// # Errors
    ///
    /// Why `op` cannot run; the Manager is told `invalid command`.
    fn prepare(&self, op: ImmediateOp) -> Result<(), PrepareError>;

    /// Runs `op`. On a real system success does not return.
    ///
    /// Called off the async runtime, once, after the reply was written.
    ///
    /// # Errors
    ///
    /// The system's refusal; it is logged, as the Manager was already told.
    fn perform(&self, op: ImmediateOp) -> io::Result<()>;

    /// Told, at the very moment it happens, that a prepared `op` was released
    /// or cancelled, before any thread runs [`Self::perform`]. Real backends
    /// have nothing to do; the recorder notes it, so that a test can see a
    /// release that came too early from inside the reply write itself.
    fn pending_settled(&self, op: ImmediateOp, how: Settlement) {
        let _ = (op, how);
    }

    /// Starts the system command for `op` and returns once it was spawned.
    ///
    /// # Errors
    ///
    /// Why the command could not be started; the Manager is told `fail`.
    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError>;
}
