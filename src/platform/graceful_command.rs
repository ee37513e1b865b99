//! Starting the system's orderly reboot and power-off commands.
//!
//! Commands are looked up in fixed system directories, never through the
//! daemon's `PATH`, and run with a `PATH` of those directories only. A
//! started command is waited for by its own reaper thread, so no zombie is
//! left, and what it did afterwards is logged, not reported: the Manager was
//! already told `Initiated`.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
};

use super::GracefulOp;

/// Where graceful commands are looked up, in order.
pub const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A command line: a program name looked up in the search directories, and
/// its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// The program's file name.
    pub program: &'static str,
    /// Its arguments.
    pub args: &'static [&'static str],
}

/// Why a graceful command could not be started; answered with `fail`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// This platform has no graceful power commands.
    #[error("graceful power operations are not available on this platform")]
    Unsupported,
    /// The program is in none of the search directories.
    #[error("{program} not found in {dirs}")]
    NotFound {
        /// The program looked for.
        program: &'static str,
        /// The directories searched, joined by `:`.
        dirs: String,
    },
    /// The program was found but could not be spawned.
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        /// The program's path.
        path: PathBuf,
        /// The spawn error.
        source: io::Error,
    },
    /// Another power operation is already under way.
    #[error("another power operation is in progress")]
    InProgress,
    /// The recording backend was told to fail.
    #[error("refused by the recording backend")]
    Refused,
}

/// The reboot and power-off commands of one platform and where to find them.
#[derive(Clone, Debug)]
pub struct GracefulCommands {
    reboot: CommandLine,
    power_off: CommandLine,
    search_dirs: Vec<PathBuf>,
}

impl GracefulCommands {
    /// Commands looked up in [`SYSTEM_DIRS`].
    #[must_use]
    pub fn new(reboot: CommandLine, power_off: CommandLine) -> Self {
        Self {
            reboot,
            power_off,
            search_dirs: SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
        }
    }

    /// Looks commands up in `dirs` instead of the system directories; for
    /// tests, which point it at a temporary directory.
    #[must_use]
    pub fn with_search_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.search_dirs = dirs;
        self
    }

    /// The command line for `op`.
    #[must_use]
    pub fn command_line(&self, op: GracefulOp) -> CommandLine {
        match op {
            GracefulOp::Reboot => self.reboot,
            GracefulOp::PowerOff => self.power_off,
        }
    }

    /// The first executable file named like `op`'s program in the search
    /// directories.
    ///
    /// # Errors
    ///
    /// [`StartError::NotFound`] when there is none.
    pub fn resolve(&self, op: GracefulOp) -> Result<PathBuf, StartError> {
        let program = self.command_line(op).program;
        self.search_dirs
            .iter()
            .map(|dir| dir.join(program))
            .find(|path| is_executable_file(path))
            .ok_or_else(|| StartError::NotFound {
                program,
                dirs: self.path_env(),
            })
    }

    /// Spawns `op`'s command with no input and its output captured for the
    /// log.
    ///
    /// # Errors
    ///
    /// When the program is not found or cannot be spawned.
    pub fn start(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        let path = self.resolve(op)?;
        let line = self.command_line(op);
        let child = Command::new(&path)
            .args(line.args)
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| StartError::Spawn {
                path: path.clone(),
                source,
            })?;
        tracing::info!(%op, command = %path.display(), args = ?line.args, pid = child.id(), "graceful command started");
        Ok(GracefulStart::Spawned(child))
    }

    fn path_env(&self) -> String {
        let dirs: Vec<_> = self
            .search_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(":")
    }
}

#[cfg(unix)]
fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable_file(path: &Path) -> bool {
    path.is_file()
}

/// A graceful operation that has been started.
#[derive(Debug)]
pub enum GracefulStart {
    /// A system command is running.
    Spawned(Child),
    /// Nothing was run: the recording backend only noted the call.
    Simulated,
}

/// How a started graceful operation ended.
#[derive(Debug)]
pub enum CommandOutcome {
    /// The command exited; the host goes down if it succeeded.
    Exited(ExitStatus),
    /// The command could not be waited for.
    WaitFailed(io::Error),
    /// Nothing ran; the host stays up.
    Simulated,
}

impl CommandOutcome {
    /// Whether the host is now on its way down, so that no other power
    /// operation may start.
    #[must_use]
    pub fn host_going_down(&self) -> bool {
        matches!(self, Self::Exited(status) if status.success())
    }
}

impl GracefulStart {
    /// Waits for the command to end, logging its exit status and output.
    /// Blocks; run it on a thread of its own.
    #[must_use]
    pub fn wait(self) -> CommandOutcome {
        let Self::Spawned(child) = self else {
            return CommandOutcome::Simulated;
        };
        let pid = child.id();
        match child.wait_with_output() {
            Ok(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let stdout = String::from_utf8_lossy(&output.stdout);
                if output.status.success() {
                    tracing::info!(pid, status = %output.status, stdout = %stdout.trim(), stderr = %stderr.trim(), "graceful command finished");
                } else {
                    tracing::error!(pid, status = %output.status, stdout = %stdout.trim(), stderr = %stderr.trim(), "graceful command failed");
                }
                CommandOutcome::Exited(output.status)
            }
            Err(e) => {
                tracing::error!(pid, error = %e, "cannot wait for the graceful command");
                CommandOutcome::WaitFailed(e)
            }
        }
    }
}
