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
//!
//! `sync(2)` runs before `reboot(2)`, on a thread of its own and for at most
//! the configured time: on a hung mount or a dead disk it may never return,
//! and the node must still go down after `Initiated`.

use std::{
    fmt, io,
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use nix::sys::reboot::{RebootMode, reboot};

use super::{
    GracefulCommands, GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError,
    StartError, graceful_command::CommandLine,
};

/// How long `sync(2)` may take by default before `reboot(2)` goes ahead.
pub(crate) const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// The step run before `reboot(2)`: `sync(2)`, or a stand-in in tests.
pub(crate) type SyncStep = Arc<dyn Fn() + Send + Sync>;

/// The Linux backend.
#[derive(Clone)]
pub struct LinuxBackend {
    commands: GracefulCommands,
    sync_step: SyncStep,
    sync_timeout: Duration,
}

impl fmt::Debug for LinuxBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinuxBackend")
            .field("commands", &self.commands)
            .field("sync_timeout", &self.sync_timeout)
            .finish_non_exhaustive()
    }
}

impl LinuxBackend {
    /// `reboot`, without arguments.
    pub const REBOOT: CommandLine = super::select::linux_commands::REBOOT;
    /// `poweroff`, without arguments.
    pub const POWER_OFF: CommandLine = super::select::linux_commands::POWER_OFF;

    /// The backend with commands looked up in the system directories.
    #[must_use]
    pub fn new() -> Self {
        Self::with_commands(GracefulCommands::new(Self::REBOOT, Self::POWER_OFF))
    }

    /// The backend with the given graceful commands; tests point their lookup
    /// at a temporary directory.
    #[must_use]
    pub fn with_commands(commands: GracefulCommands) -> Self {
        Self {
            commands,
            sync_step: Arc::new(nix::unistd::sync),
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
        }
    }

    /// Lets `sync(2)` take at most `timeout` before `reboot(2)` goes ahead.
    #[must_use]
    pub fn with_sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// Runs `step` instead of `sync(2)`: tests use one that never returns.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn with_sync_step(mut self, step: SyncStep) -> Self {
        self.sync_step = step;
        self
    }
}

/// How [`bounded_sync`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncEnd {
    /// The step returned within the timeout.
    Finished,
    /// The step was still running when the timeout ran out; it is left
    /// behind.
    TimedOut,
    /// No thread could be started for the step; it did not run.
    NoThread,
}

/// Runs `step` on a thread of its own and waits for it at most `timeout`.
/// A step still running then is left behind, so that `reboot(2)` can follow
/// at once: a hung disk or mount must not keep the node up after
/// `Initiated`. Kept apart from the syscall so that the bound is tested in
/// process, without root, with a step that never returns.
pub fn bounded_sync(step: impl FnOnce() + Send + 'static, timeout: Duration) -> SyncEnd {
    let (done, finished) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("roxyd-sync".to_owned())
        .spawn(move || {
            step();
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a thread for sync(2); going ahead without it");
        return SyncEnd::NoThread;
    }
    if finished.recv_timeout(timeout).is_ok() {
        SyncEnd::Finished
    } else {
        tracing::error!(
            timeout_ms = timeout.as_millis(),
            "sync(2) did not finish in time; going ahead without it"
        );
        SyncEnd::TimedOut
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

    /// Flushes file systems with `sync(2)`, waiting at most the sync
    /// timeout, then calls `reboot(2)`. Returns only when the kernel refused.
    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        let step = Arc::clone(&self.sync_step);
        bounded_sync(move || step(), self.sync_timeout);
        match reboot(reboot_mode(op)) {
            Ok(never) => match never {},
            Err(errno) => Err(io::Error::from(errno)),
        }
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        self.commands.start(op)
    }
}
