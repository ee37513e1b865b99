//! Which backend the daemon runs on: the run-time choice first, where only
//! an explicit `--backend recorder` gives the recorder (and only in a build
//! with the `test-backend` feature, which adds it without replacing
//! anything); then, at compile time, one `cfg_if!`: Linux, then macOS, then
//! a fallback that supports nothing.

use std::{fmt, io, str::FromStr, time::Duration};

#[cfg(immediate_power)]
use super::linux;
#[cfg(feature = "test-backend")]
use super::recorder;
use super::{
    CommandLine, GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError, Settlement,
    StartError,
};

/// Settings the daemon's backend takes from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendOptions {
    /// How long `sync(2)` may take before `reboot(2)` goes ahead anyway.
    pub sync_timeout: Duration,
}

/// An operating system as roxyd sees it, and the backend it gets. The
/// selection is plain code, so that a test on any host can check every arm;
/// the `cfg_if!` below only picks the type this build runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Linux: immediate operations by `reboot(2)`, graceful by commands.
    Linux,
    /// macOS: graceful operations by commands only.
    Macos,
    /// Any other system: nothing of the power family.
    Other,
}

impl Platform {
    /// The platform of an operating system named as `std::env::consts::OS`
    /// names it.
    #[must_use]
    pub const fn from_os(os: &str) -> Self {
        match os.as_bytes() {
            b"linux" => Self::Linux,
            b"macos" => Self::Macos,
            _ => Self::Other,
        }
    }

    /// The platform this build runs on.
    #[must_use]
    pub const fn current() -> Self {
        Self::from_os(std::env::consts::OS)
    }

    /// The name of its backend, as logs and `--version` show it.
    #[must_use]
    pub const fn backend_name(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::Macos => "macos",
            Self::Other => "unsupported",
        }
    }

    /// Its graceful reboot and power-off commands, if it has any; for tests
    /// of every platform's table.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn graceful_commands(self) -> Option<(CommandLine, CommandLine)> {
        match self {
            Self::Linux => Some((linux_commands::REBOOT, linux_commands::POWER_OFF)),
            Self::Macos => Some((
                super::macos::MacosBackend::REBOOT,
                super::macos::MacosBackend::POWER_OFF,
            )),
            Self::Other => None,
        }
    }

    /// Whether it has immediate operations (`reboot(2)`); for tests.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn has_immediate(self) -> bool {
        self == Self::Linux
    }

    /// Its backend, boxed, for code that must handle any platform: tests of
    /// the non-native arms. Linux's needs `reboot(2)` and is only built
    /// there, so elsewhere this gives the fallback for it.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn backend(self, options: BackendOptions) -> Box<dyn PowerBackend> {
        match self {
            #[cfg(immediate_power)]
            Self::Linux => {
                Box::new(linux::LinuxBackend::new().with_sync_timeout(options.sync_timeout))
            }
            Self::Macos => Box::new(super::macos::MacosBackend::new()),
            _ => {
                let _ = options;
                Box::new(super::unsupported::UnsupportedBackend)
            }
        }
    }
}

/// The Linux command table, kept beside the others so that tests check every
/// platform's table on every host; other builds need it only on Linux.
#[cfg(any(immediate_power, test, feature = "test-backend"))]
pub(super) mod linux_commands {
    use super::CommandLine;

    /// `reboot`, without arguments.
    pub(crate) const REBOOT: CommandLine = CommandLine {
        program: "reboot",
        args: &[],
    };
    /// `poweroff`, without arguments.
    pub(crate) const POWER_OFF: CommandLine = CommandLine {
        program: "poweroff",
        args: &[],
    };
}

/// This platform's own backend, as named in logs and `--version`.
pub const SYSTEM_BACKEND_NAME: &str = Platform::current().backend_name();

// The one place a backend type is picked for this build; `immediate_power`
// (from build.rs) means `reboot(2)` is there.
cfg_if::cfg_if! {
    if #[cfg(immediate_power)] {
        /// This platform's own backend: Linux.
        pub(crate) type SystemBackend = linux::LinuxBackend;
        /// This platform's own backend, which carries power requests out.
        #[must_use]
        pub(crate) fn system_backend(options: BackendOptions) -> SystemBackend {
            linux::LinuxBackend::new().with_sync_timeout(options.sync_timeout)
        }
    } else if #[cfg(target_os = "macos")] {
        /// This platform's own backend: macOS.
        pub(crate) type SystemBackend = super::macos::MacosBackend;
        /// This platform's own backend, which carries power requests out.
        #[must_use]
        pub(crate) fn system_backend(_options: BackendOptions) -> SystemBackend {
            super::macos::MacosBackend::new()
        }
    } else {
        /// This platform's own backend: none of the power family is available.
        pub(crate) type SystemBackend = super::unsupported::UnsupportedBackend;
        /// This platform's own backend, which refuses every power request.
        #[must_use]
        pub(crate) fn system_backend(_options: BackendOptions) -> SystemBackend {
            super::unsupported::UnsupportedBackend
        }
    }
}

/// Whether this build has the recorder (the `test-backend` feature).
pub const CAN_RECORD: bool = cfg!(feature = "test-backend");

/// The backend asked for at run time (`--backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// This platform's own backend, which carries power requests out.
    #[default]
    System,
    /// The recorder, which notes power requests and carries nothing out.
    Recorder,
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(Self::System),
            "recorder" => Ok(Self::Recorder),
            _ => Err("expected system or recorder".to_owned()),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::System => "system",
            Self::Recorder => "recorder",
        })
    }
}

/// The recorder was asked for in a build that does not have it.
#[derive(Debug, thiserror::Error)]
#[error(
    "--backend recorder: this roxyd was built without the test-backend feature and cannot record; it carries power requests out"
)]
pub struct NoRecorder;

/// The backend the daemon runs on: the one chosen at run time.
#[derive(Debug)]
pub enum DaemonBackend {
    /// This platform's own backend.
    System(SystemBackend),
    /// The recorder, chosen explicitly.
    #[cfg(feature = "test-backend")]
    Recorder(recorder::RecordingBackend),
}

/// The daemon's backend for `choice`: the run-time choice first, then this
/// platform's own backend.
///
/// # Errors
///
/// [`NoRecorder`] when the recorder is asked for in a build without it.
pub fn daemon_backend(
    choice: BackendChoice,
    options: BackendOptions,
) -> Result<DaemonBackend, NoRecorder> {
    match choice {
        #[cfg(feature = "test-backend")]
        BackendChoice::Recorder => Ok(DaemonBackend::Recorder(
            recorder::RecordingBackend::for_daemon(),
        )),
        #[cfg(not(feature = "test-backend"))]
        BackendChoice::Recorder => Err(NoRecorder),
        BackendChoice::System => Ok(DaemonBackend::System(system_backend(options))),
    }
}

impl DaemonBackend {
    /// The backend's name, for logs: `recorder` or the platform's.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::System(_) => SYSTEM_BACKEND_NAME,
            #[cfg(feature = "test-backend")]
            Self::Recorder(_) => "recorder",
        }
    }
}

impl DaemonBackend {
    /// Whether this is the recorder, which carries nothing out.
    #[must_use]
    pub fn records(&self) -> bool {
        !matches!(self, Self::System(_))
    }
}

impl PowerBackend for DaemonBackend {
    fn prepare(&self, op: ImmediateOp) -> Result<(), PrepareError> {
        match self {
            Self::System(b) => b.prepare(op),
            #[cfg(feature = "test-backend")]
            Self::Recorder(b) => b.prepare(op),
        }
    }

    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        match self {
            Self::System(b) => b.perform(op),
            #[cfg(feature = "test-backend")]
            Self::Recorder(b) => b.perform(op),
        }
    }

    fn pending_settled(&self, op: ImmediateOp, how: Settlement) {
        match self {
            Self::System(b) => b.pending_settled(op, how),
            #[cfg(feature = "test-backend")]
            Self::Recorder(b) => b.pending_settled(op, how),
        }
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        match self {
            Self::System(b) => b.start_graceful(op),
            #[cfg(feature = "test-backend")]
            Self::Recorder(b) => b.start_graceful(op),
        }
    }
}

/// The version line: the version, this platform's backend, and whether this
/// build can record instead.
#[must_use]
pub(crate) fn version_text() -> String {
    let record = if CAN_RECORD {
        "this build can also record instead, with --backend recorder"
    } else {
        "this build cannot record"
    };
    format!(
        "{} (backend: {SYSTEM_BACKEND_NAME}; {record})",
        env!("CARGO_PKG_VERSION")
    )
}
