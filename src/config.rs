//! The daemon's configuration: a TOML file, every key of which can be
//! overridden by a `ROXYD_<KEY>` environment variable (`ROXYD_LOG_FILE`,
//! `ROXYD_MAX_FRAME_LEN`, ...).
//!
//! Unknown keys are errors, and so are unknown `ROXYD_` variables, so that a
//! typo is not silently ignored.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    connection::ConnectionLimits,
    dispatch::DispatchConfig,
    handshake::{DEFAULT_APP_NAME, DEFAULT_PROTOCOL_VERSION, Identity},
    reconnect::BackoffConfig,
    wire,
};

/// Largest `stream_slots_timeout_secs`: an hour; beyond that a Manager could
/// keep a node unreachable for power requests for too long.
const MAX_STREAM_SLOTS_TIMEOUT_SECS: u64 = 3600;

/// The state directory unless configured: the systemd unit's
/// `StateDirectory=roxyd`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/roxyd";

/// The configuration, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where logs go; standard output when absent.
    pub log_file: Option<PathBuf>,
    /// Where roxyd keeps its power log.
    pub state_dir: PathBuf,
    /// The application name announced in the handshake.
    pub app_name: String,
    /// The Manager protocol release announced in the handshake.
    pub protocol_version: String,
    /// Largest request frame accepted, in bytes.
    pub max_frame_len: u32,
    /// Most request streams the Manager may have open at once.
    pub max_concurrent_streams: u32,
    /// Seconds connecting and the handshake may take together.
    pub handshake_timeout_secs: u64,
    /// Seconds a request stream may stay silent before roxyd ends it.
    pub stream_idle_timeout_secs: u64,
    /// Seconds writing one reply may take; an immediate operation whose
    /// reply is not written in time is cancelled.
    pub reply_timeout_secs: u64,
    /// Seconds every request stream slot may be held by streams roxyd has
    /// closed on its side, with no answer from the Manager, before roxyd
    /// closes the connection and reconnects (1 to 3600).
    pub stream_slots_timeout_secs: u64,
    /// Milliseconds to wait for the Manager to acknowledge an immediate
    /// operation's reply before releasing it anyway. 0 does not wait, and
    /// the reply may then die with the host: for measurements only.
    pub delivery_timeout_ms: u64,
    /// Ceiling of the first reconnect delay, in milliseconds.
    pub reconnect_initial_ms: u64,
    /// Ceiling of every reconnect delay, in milliseconds.
    pub reconnect_max_ms: u64,
    /// Milliseconds `sync(2)` may take before an immediate operation's
    /// `reboot(2)` goes ahead anyway: a hung disk or mount must not keep the
    /// node up after `Initiated`.
    pub sync_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let dispatch = DispatchConfig::default();
        let backoff = BackoffConfig::default();
        Self {
            log_file: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            app_name: DEFAULT_APP_NAME.to_owned(),
            protocol_version: DEFAULT_PROTOCOL_VERSION.to_owned(),
            max_frame_len: wire::DEFAULT_MAX_FRAME_LEN,
            max_concurrent_streams: 64,
            handshake_timeout_secs: 10,
            stream_idle_timeout_secs: dispatch.stream_idle_timeout.as_secs(),
            reply_timeout_secs: dispatch.reply_timeout.as_secs(),
            stream_slots_timeout_secs: ConnectionLimits::DEFAULT_SLOTS_HELD_TIMEOUT.as_secs(),
            delivery_timeout_ms: millis(dispatch.delivery_timeout),
            reconnect_initial_ms: millis(backoff.initial),
            reconnect_max_ms: millis(backoff.max),
            sync_timeout_ms: 5000,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A configuration problem, naming the file or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file or an override is not valid.
    #[error("invalid config{}: {reason}", source_name(.path.as_deref()))]
    Invalid {
        /// The file, if the problem is in it.
        path: Option<String>,
        /// Why.
        reason: String,
    },
    /// A `ROXYD_` environment variable that is neither an option nor a key.
    #[error(
        "unknown environment variable {var}: roxyd reads {options} and ROXYD_ + a configuration key in capitals (ROXYD_LOG_FILE, ...)"
    )]
    UnknownEnv {
        /// The variable.
        var: String,
        /// The command-line options' variables, comma-separated.
        options: String,
    },
    /// An environment override does not parse.
    #[error("invalid {var}: expected {expected}, got {value:?}")]
    Env {
        /// The variable.
        var: String,
        /// What it should hold.
        expected: &'static str,
        /// What it holds.
        value: String,
    },
}

fn source_name(path: Option<&str>) -> String {
    path.map(|p| format!(" file {p}")).unwrap_or_default()
}

/// The kind of value a key holds, for parsing its environment override.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Number,
}

/// Every key, for the environment overrides.
const KEYS: [(&str, Kind); 14] = [
    ("log_file", Kind::Text),
    ("state_dir", Kind::Text),
    ("app_name", Kind::Text),
    ("protocol_version", Kind::Text),
    ("max_frame_len", Kind::Number),
    ("max_concurrent_streams", Kind::Number),
    ("handshake_timeout_secs", Kind::Number),
    ("stream_idle_timeout_secs", Kind::Number),
    ("reply_timeout_secs", Kind::Number),
    ("stream_slots_timeout_secs", Kind::Number),
    ("delivery_timeout_ms", Kind::Number),
    ("reconnect_initial_ms", Kind::Number),
    ("reconnect_max_ms", Kind::Number),
    ("sync_timeout_ms", Kind::Number),
];

/// Each number's allowed range, inclusive (the lower bound is 0 or 1).
/// Zero would mean "never" or "at once" for most; the upper bounds stop a typo from turning a bounded
/// wait into one that never ends. `delivery_timeout_ms` may be 0 (do not
/// wait: for measurements) but at most 10 s, as the wait holds a node that
/// was told to go down.
type Range = (&'static str, fn(&Config) -> u64, u64, u64);
const RANGES: [Range; 9] = [
    ("max_frame_len", |c| u64::from(c.max_frame_len), 1, 1 << 32),
    (
        "max_concurrent_streams",
        |c| u64::from(c.max_concurrent_streams),
        1,
        10_000,
    ),
    (
        "handshake_timeout_secs",
        |c| c.handshake_timeout_secs,
        1,
        300,
    ),
    (
        "stream_idle_timeout_secs",
        |c| c.stream_idle_timeout_secs,
        1,
        86_400,
    ),
    ("reply_timeout_secs", |c| c.reply_timeout_secs, 1, 3600),
    ("delivery_timeout_ms", |c| c.delivery_timeout_ms, 0, 10_000),
    (
        "reconnect_initial_ms",
        |c| c.reconnect_initial_ms,
        1,
        3_600_000,
    ),
    ("reconnect_max_ms", |c| c.reconnect_max_ms, 1, 3_600_000),
    ("sync_timeout_ms", |c| c.sync_timeout_ms, 1, 60_000),
];

/// Checks that every variable among `names` that starts with `ROXYD_` is
/// one roxyd reads: one of `options` (the command line's variables) or
/// `ROXYD_` + a configuration key in capitals. An unknown one is an error,
/// as an unknown key in the configuration file is, so that a typo is not
/// silently ignored.
///
/// # Errors
///
/// [`ConfigError::UnknownEnv`] naming the first unknown variable in
/// alphabetical order.
pub fn check_env_names<S: AsRef<str>>(
    names: impl IntoIterator<Item = std::ffi::OsString>,
    options: &[S],
) -> Result<(), ConfigError> {
    let known = |name: &str| {
        options.iter().any(|option| option.as_ref() == name)
            || KEYS
                .iter()
                .any(|(key, _)| format!("ROXYD_{}", key.to_ascii_uppercase()) == name)
    };
    let mut unknown: Vec<String> = names
        .into_iter()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.starts_with("ROXYD_") && !known(name))
        .collect();
    unknown.sort();
    match unknown.into_iter().next() {
        None => Ok(()),
        Some(var) => Err(ConfigError::UnknownEnv {
            var,
            options: options
                .iter()
                .map(AsRef::as_ref)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

impl Config {
    /// Reads `path` (defaults when `None`), applies the `ROXYD_*` overrides
    /// found by `env`, and checks the result.
    ///
    /// # Errors
    ///
    /// See [`ConfigError`].
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let shown = path.map(|p| p.display().to_string());
        let mut table = match path {
            None => toml::Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid {
                        path: shown.clone(),
                        reason: e.message().to_owned(),
                    })?
            }
        };
        let mut overridden = false;
        for (key, kind) in KEYS {
            let var = format!("ROXYD_{}", key.to_ascii_uppercase());
            let Some(value) = env(&var) else { continue };
            overridden = true;
            let value = match kind {
                Kind::Text => toml::Value::String(value),
                Kind::Number => value
                    .trim()
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| ConfigError::Env {
                        var,
                        expected: "a whole number",
                        value,
                    })?,
            };
            table.insert(key.to_owned(), value);
        }
        let config = Self::deserialize(table).map_err(|e| ConfigError::Invalid {
            // Name the file only when no override could be at fault.
            path: if overridden { None } else { shown.clone() },
            reason: e.message().to_owned(),
        })?;
        config.check().map_err(|reason| ConfigError::Invalid {
            path: shown,
            reason,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        for (key, value, low, high) in RANGES {
            let value = value(self);
            if value < low {
                return Err(format!("{key} must be greater than 0"));
            }
            if value > high {
                return Err(format!("{key} is {value}; it must be at most {high}"));
            }
        }
        if !(1..=MAX_STREAM_SLOTS_TIMEOUT_SECS).contains(&self.stream_slots_timeout_secs) {
            return Err(format!(
                "stream_slots_timeout_secs must be between 1 and {MAX_STREAM_SLOTS_TIMEOUT_SECS}"
            ));
        }
        if self.reconnect_initial_ms > self.reconnect_max_ms {
            return Err("reconnect_initial_ms must not exceed reconnect_max_ms".to_owned());
        }
        if self.app_name.is_empty() || self.protocol_version.is_empty() {
            return Err("app_name and protocol_version must not be empty".to_owned());
        }
        Ok(())
    }

    /// What roxyd announces in the handshake.
    #[must_use]
    pub fn identity(&self) -> Identity {
        Identity {
            app_name: self.app_name.clone(),
            protocol_version: self.protocol_version.clone(),
            ..Identity::default()
        }
    }

    /// The dispatch layer's limits.
    #[must_use]
    pub fn dispatch(&self) -> DispatchConfig {
        DispatchConfig {
            max_frame_len: self.max_frame_len,
            stream_idle_timeout: Duration::from_secs(self.stream_idle_timeout_secs),
            reply_timeout: Duration::from_secs(self.reply_timeout_secs),
            delivery_timeout: Duration::from_millis(self.delivery_timeout_ms),
            ..DispatchConfig::default()
        }
    }

    /// How long every stream slot may be held by streams roxyd closed before
    /// it reconnects.
    #[must_use]
    pub fn slots_held_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_slots_timeout_secs)
    }

    /// How long connecting and the handshake may take together.
    #[must_use]
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// How long `sync(2)` may take before `reboot(2)` goes ahead.
    #[must_use]
    pub fn sync_timeout(&self) -> Duration {
        Duration::from_millis(self.sync_timeout_ms)
    }

    /// Where the power log is kept.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The reconnect bounds.
    #[must_use]
    pub fn backoff(&self) -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(self.reconnect_initial_ms),
            max: Duration::from_millis(self.reconnect_max_ms),
        }
    }
}
