//! The `roxyd` command line.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::platform::{self, BackendChoice};

/// roxyd's exit statuses. `--help` (`EXIT_STATUS_HELP`), the README and
/// the systemd unit's `RestartPreventExitStatus` state the same table; a test
/// checks that they agree.
pub mod exit_status {
    /// Stopped by SIGINT or SIGTERM, or `--check` succeeded.
    pub const SUCCESS: u8 = 0;
    /// `--check` could not connect to the Manager or verify it.
    pub(crate) const CHECK_FAILED: u8 = 1;
    /// Bad command line, environment, configuration, certificate, key or log
    /// file, or roxyd could not start: restarting cannot help.
    pub const BAD_SETUP: u8 = 2;
    /// The Manager refused roxyd's protocol version: restarting cannot help.
    pub(crate) const VERSION_REFUSED: u8 = 3;
    /// `--power-log` could not read the power log.
    pub const POWER_LOG_UNREADABLE: u8 = 4;
}

/// The exit status table of `--help`. Statuses that a restart cannot cure
/// end in "restarting cannot help"; the systemd unit lists exactly those in
/// `RestartPreventExitStatus`.
pub(crate) const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  stopped by SIGINT or SIGTERM, or --check succeeded
  1  --check could not connect to the Manager or verify it
  2  bad command line, environment, configuration, certificate, key or log file, or roxyd could not start; restarting cannot help
  3  the Manager refused roxyd's protocol version; restarting cannot help
  4  --power-log could not read the power log";

/// roxyd: carries out a Manager's power requests over QUIC with mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "roxyd", version, about, long_about = None, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// TOML configuration file; every key can also be set by a `ROXYD_<KEY>`
    /// environment variable.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "CONFIG.toml",
        env = "ROXYD_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// roxyd's certificate chain (PEM, leaf first); overrides the `cert`
    /// key and `ROXYD_CERT`.
    #[arg(long, value_name = "CERT.pem")]
    pub cert: Option<PathBuf>,

    /// roxyd's private key (PEM); overrides the `key` key and `ROXYD_KEY`.
    #[arg(long, value_name = "KEY.pem")]
    pub key: Option<PathBuf>,

    /// CA certificates that the Manager's certificate must chain to (PEM),
    /// comma-separated; overrides the `ca_certs` key and `ROXYD_CA_CERTS`.
    #[arg(long = "ca-certs", value_name = "CA.pem[,CA.pem]", value_parser = parse_path_list)]
    pub ca_certs: Option<PathList>,

    /// Connect once, run the handshake, report, and exit with a status below
    /// (0 when the Manager accepted roxyd), within `handshake_timeout_secs`.
    #[arg(long)]
    pub check: bool,

    /// Print the power log (every power request roxyd carried out or
    /// refused, and every start), newest last, and exit, without connecting.
    #[arg(long, conflicts_with = "check")]
    pub power_log: bool,

    /// With `--power-log`: print the entries as stored, one JSON object a
    /// line.
    #[arg(long, requires = "power_log")]
    pub json: bool,

    /// Which backend carries power requests out: `system` (this platform's
    /// own), or `recorder`, which only notes them in the log; the recorder
    /// exists only in builds with the `test-backend` feature, for tests and
    /// labs.
    #[arg(
        long,
        value_name = "system|recorder",
        default_value_t = BackendChoice::System,
        env = "ROXYD_BACKEND"
    )]
    pub backend: BackendChoice,

    /// The Manager: its TLS server name, `@`, and its address; overrides
    /// the `manager` key and `ROXYD_MANAGER`.
    #[arg(value_name = "NAME@IP:PORT")]
    pub manager: Option<ManagerAddress>,
}

/// The paths of a comma-separated list, as `--ca-certs` takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathList(pub Vec<PathBuf>);

fn parse_path_list(text: &str) -> Result<PathList, String> {
    path_list(text).map(PathList)
}

/// Splits a comma-separated list of paths, as `--ca-certs` and
/// `ROXYD_CA_CERTS` give them.
///
/// # Errors
///
/// When an entry is empty (`"ca.pem,"`, `",ca.pem"`, `""`), naming which.
pub(crate) fn path_list(text: &str) -> Result<Vec<PathBuf>, String> {
    text.split(',')
        .enumerate()
        .map(|(at, path)| {
            if path.is_empty() {
                Err(format!(
                    "comma-separated paths with none empty (entry {} of {text:?} is empty)",
                    at + 1
                ))
            } else {
                Ok(PathBuf::from(path))
            }
        })
        .collect()
}

impl Cli {
    /// Parses the process's arguments, with a `--version` line that names
    /// the backend and whether this build can record; exits on a bad
    /// command line, as [`Parser::parse`] does.
    #[must_use]
    pub fn parse_args() -> Self {
        let version: &'static str = Box::leak(platform::version_text().into_boxed_str());
        let matches = Self::command().version(version).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// `NAME@IP:PORT`: the name the Manager's certificate must be valid for, and
/// where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerAddress {
    /// The TLS server name.
    pub server_name: String,
    /// The UDP address.
    pub addr: SocketAddr,
}

/// A malformed `NAME@IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid Manager address {input:?}: {reason}; expected NAME@IP:PORT, e.g. manager.example@192.0.2.10:38390"
)]
pub struct AddressError {
    input: String,
    reason: &'static str,
}

impl AddressError {
    /// What is wrong, without the input.
    #[must_use]
    pub(crate) fn reason(&self) -> &'static str {
        self.reason
    }
}

impl FromStr for ManagerAddress {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| AddressError {
            input: input.to_owned(),
            reason,
        };
        let (name, addr) = input.rsplit_once('@').ok_or_else(|| fail("no '@'"))?;
        if name.is_empty() {
            return Err(fail("the server name is empty"));
        }
        if rustls_pki_types::ServerName::try_from(name).is_err() {
            return Err(fail(
                "the server name is not a valid DNS name or IP address",
            ));
        }
        let addr = addr
            .parse::<SocketAddr>()
            .map_err(|_| {
                fail("the address is not IP:PORT; host names are not resolved, and an IPv6 address needs brackets, as [2001:db8::1]:38390")
            })?;
        if addr.port() == 0 {
            return Err(fail("the port is 0"));
        }
        Ok(Self {
            server_name: name.to_owned(),
            addr,
        })
    }
}

impl fmt::Display for ManagerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.server_name, self.addr)
    }
}
