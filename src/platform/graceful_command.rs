//! Starting the system's orderly reboot and power-off commands.
//!
//! Commands are looked up in fixed system directories, never through the
//! daemon's `PATH`, and run with a `PATH` of those directories only. A
//! started command is waited for asynchronously (`tokio::process`), so no
//! zombie is left and no thread is spent on it, and what it did afterwards
//! is logged, not reported: the Manager was already told `Initiated`.
//!
//! The wait is for the command's process itself, not for the end of its
//! output: a command may exit at once but leave a child behind that holds
//! its standard output open for as long as it likes. The output is read
//! alongside, at most `OUTPUT_KEPT` bytes of each stream kept and the rest
//! discarded, and given `OUTPUT_GRACE` to end once the process exited.

use std::{
    io,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::{Child, Command},
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
    #[cfg(any(test, feature = "test-backend"))]
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
    /// log. Must be called on a Tokio runtime, which reaps the process.
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
    /// Whether the command exited with status 0. The host is then probably
    /// on its way down, but not surely (a cancelled systemd job, an
    /// inhibitor or a chroot leave it up), so nothing is blocked on it.
    #[must_use]
    pub fn host_going_down(&self) -> bool {
        matches!(self, Self::Exited(status) if status.success())
    }
}

impl GracefulStart {
    /// Waits for the command's process to exit, then logs its exit status
    /// and the start of its output.
    ///
    /// Returns once the process has exited and been reaped, even while a
    /// child it left behind still holds its output open: the output is
    /// awaited for at most `OUTPUT_GRACE` more.
    pub async fn wait(self) -> CommandOutcome {
        let Self::Spawned(mut child) = self else {
            return CommandOutcome::Simulated;
        };
        let pid = child.id();
        let (mut stdout, mut stderr) = (KeptOutput::default(), KeptOutput::default());
        let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
        let status = {
            let reading = async {
                tokio::join!(
                    read_into(out_pipe, &mut stdout),
                    read_into(err_pipe, &mut stderr)
                );
            };
            tokio::pin!(reading);
            let mut output_ended = false;
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    () = &mut reading, if !output_ended => output_ended = true,
                }
            };
            let still_open = !output_ended
                && tokio::time::timeout(OUTPUT_GRACE, &mut reading)
                    .await
                    .is_err();
            (status, still_open)
        };
        let (status, held) = status;
        stdout.still_open = held;
        stderr.still_open = held;
        match status {
            Ok(status) => {
                let (out, err) = (stdout.text(), stderr.text());
                let (out_cut, err_cut) = (stdout.discarded, stderr.discarded);
                if status.success() {
                    tracing::info!(pid, %status, stdout = %out, stderr = %err, stdout_discarded = out_cut, stderr_discarded = err_cut, output_still_open = held, "graceful command finished");
                } else {
                    tracing::error!(pid, %status, stdout = %out, stderr = %err, stdout_discarded = out_cut, stderr_discarded = err_cut, output_still_open = held, "graceful command failed");
                }
                CommandOutcome::Exited(status)
            }
            Err(e) => {
                tracing::error!(pid, error = %e, "cannot wait for the graceful command");
                CommandOutcome::WaitFailed(e)
            }
        }
    }
}

/// Reads `pipe` to its end into `kept`, which keeps a bounded part.
async fn read_into(pipe: Option<impl AsyncRead + Unpin>, kept: &mut KeptOutput) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => kept.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Most bytes of each of a graceful command's output streams kept for the
/// log; the rest is read and discarded, so that the command never blocks on
/// a full pipe.
pub(crate) const OUTPUT_KEPT: usize = 4096;

/// How long the wait goes on, once the command exited, for its output to
/// end before it logs what it has.
pub(crate) const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// What was kept of one output stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct KeptOutput {
    /// The first [`OUTPUT_KEPT`] bytes at most.
    pub(crate) bytes: Vec<u8>,
    /// How many bytes after those were read and discarded.
    pub(crate) discarded: u64,
    /// Whether the stream was still open when collected: a child the
    /// command left behind holds it.
    pub(crate) still_open: bool,
}

impl KeptOutput {
    /// The kept bytes as text, for the log.
    #[must_use]
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim().to_owned()
    }

    /// Adds `piece`, keeping at most [`OUTPUT_KEPT`] bytes in all and
    /// counting the rest as discarded.
    pub(crate) fn push(&mut self, piece: &[u8]) {
        let room = OUTPUT_KEPT
            .saturating_sub(self.bytes.len())
            .min(piece.len());
        self.bytes.extend_from_slice(&piece[..room]);
        self.discarded += (piece.len() - room) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_kept_is_bounded_and_the_rest_counted() {
        let mut kept = KeptOutput::default();
        kept.push(&[b'a'; 3000]);
        kept.push(&[b'b'; 3000]);
        kept.push(b"more");
        assert_eq!(kept.bytes.len(), OUTPUT_KEPT);
        assert_eq!(kept.bytes[OUTPUT_KEPT - 1], b'b');
        assert_eq!(kept.discarded, 6004 - OUTPUT_KEPT as u64);
    }
}
