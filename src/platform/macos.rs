//! macOS: graceful operations only, with `sudo reboot` and
//! `sudo shutdown -h now`; immediate ones are refused (`invalid command`).
//!
//! The code is portable and compiled on every host, so its logic is tested
//! on Linux too.

use std::io;

use super::{
    GracefulCommands, GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError,
    StartError, graceful_command::CommandLine,
};

/// The macOS backend.
#[derive(Clone, Debug)]
pub struct MacosBackend {
    commands: GracefulCommands,
}

impl MacosBackend {
    /// `sudo reboot`.
    pub const REBOOT: CommandLine = CommandLine {
        program: "sudo",
        args: &["reboot"],
    };
    /// `sudo shutdown -h now`.
    pub const POWER_OFF: CommandLine = CommandLine {
        program: "sudo",
        args: &["shutdown", "-h", "now"],
    };

    /// The backend with `sudo` looked up in the system directories.
    #[must_use]
    pub(crate) fn new() -> Self {
        Self::with_commands(GracefulCommands::new(Self::REBOOT, Self::POWER_OFF))
    }

    /// The backend with the given graceful commands.
    #[must_use]
    pub fn with_commands(commands: GracefulCommands) -> Self {
        Self { commands }
    }
}

impl Default for MacosBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerBackend for MacosBackend {
    /// Always [`PrepareError::Unsupported`].
    fn prepare(&self, _op: ImmediateOp) -> Result<(), PrepareError> {
        Err(PrepareError::Unsupported)
    }

    /// Never called, since [`Self::prepare`] always fails.
    fn perform(&self, _op: ImmediateOp) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        self.commands.start(op)
    }
}
