//! Linux: immediate operations with [`reboot(2)`], graceful ones with the
//! system's `reboot` and `poweroff` commands.
//!
//! [`reboot(2)`]: https://man7.org/linux/man-pages/man2/reboot.2.html
//!
//! `reboot(2)` with `RB_AUTOBOOT` or `RB_POWER_OFF` needs CAP_SYS_BOOT in the
//! effective set; [`LinuxBackend::prepare`] checks it so that roxyd never
//! answers `Initiated` for an operation the kernel would refuse with EPERM.
//! Inside a PID namespace other than the first, the kernel kills that
//! namespace's init (SIGHUP for restart, SIGINT for power-off) instead: that
//! is how this backend is tested without taking the machine down.

use std::io;

use nix::sys::reboot::{RebootMode, reboot};

use super::{
    GracefulCommands, GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError,
    StartError, graceful_command::CommandLine,
};

/// The Linux backend.
#[derive(Clone, Debug)]
pub struct LinuxBackend {
    commands: GracefulCommands,
}

impl LinuxBackend {
    /// `reboot` and `poweroff`, each without arguments.
    pub const REBOOT: CommandLine = CommandLine {
        program: "reboot",
        args: &[],
    };
    /// See [`Self::REBOOT`].
    pub const POWER_OFF: CommandLine = CommandLine {
        program: "poweroff",
        args: &[],
    };

    /// The backend with commands looked up in the system directories.
    #[must_use]
    pub fn new() -> Self {
        Self::with_commands(GracefulCommands::new(Self::REBOOT, Self::POWER_OFF))
    }

    /// The backend with the given graceful commands; tests point their lookup
    /// at a temporary directory.
    #[must_use]
    pub fn with_commands(commands: GracefulCommands) -> Self {
        Self { commands }
    }
}

/// The `reboot(2)` command for `op`: `RB_AUTOBOOT` restarts, `RB_POWER_OFF`
/// switches off. Kept apart from the syscall so that a test without root (and
/// without a PID namespace) catches the two being swapped.
#[must_use]
pub fn reboot_mode(op: ImmediateOp) -> RebootMode {
    match op {
        ImmediateOp::Reboot => RebootMode::RB_AUTOBOOT,
        ImmediateOp::PowerOff => RebootMode::RB_POWER_OFF,
    }
}

impl Default for LinuxBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerBackend for LinuxBackend {
    /// Fails with [`PrepareError::MissingCapability`] when CAP_SYS_BOOT is not
    /// in the effective set.
    fn prepare(&self, _op: ImmediateOp) -> Result<(), PrepareError> {
        match caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_BOOT,
        ) {
            Ok(true) => Ok(()),
            Ok(false) => Err(PrepareError::MissingCapability),
            Err(e) => Err(PrepareError::CapabilityCheck(e.to_string())),
        }
    }

    /// Flushes file systems with `sync(2)`, then calls `reboot(2)`. Returns
    /// only when the kernel refused.
    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        nix::unistd::sync();
        match reboot(reboot_mode(op)) {
            Ok(never) => match never {},
            Err(errno) => Err(io::Error::from(errno)),
        }
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        self.commands.start(op)
    }
}
