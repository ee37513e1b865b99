//! The daemon's configuration: a TOML file, every key of which can be
//! overridden by a `ROXYD_<KEY>` environment variable (`ROXYD_LOG_FILE`,
//! `ROXYD_MAX_FRAME_LEN`, ...); the command line overrides both for the
//! Manager address and the TLS files.
//!
//! Rules: unknown keys are errors, and so are unknown `ROXYD_` variables, so
//! that a typo is not silently ignored. Every error is one line that names
//! its source (the file with line and column, or the variable), the key, the
//! value, and what the key accepts. A key is added in one place: `KEYS`,
//! then its field in [`Config::load`].

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    cli::ManagerAddress,
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
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/roxyd";

/// The configuration, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The Manager, unless the command line gives it.
    pub manager: Option<ManagerAddress>,
    /// roxyd's certificate chain (PEM), unless the command line gives it.
    pub cert: Option<PathBuf>,
    /// roxyd's private key (PEM), unless the command line gives it.
    pub key: Option<PathBuf>,
    /// The CA certificates the Manager's must chain to, unless the command
    /// line gives them.
    pub ca_certs: Option<Vec<PathBuf>>,
    /// Where logs go; standard output when absent.
    pub log_file: Option<PathBuf>,
    /// Where roxyd keeps its power log.
    pub(crate) state_dir: PathBuf,
    /// The application name announced in the handshake.
    pub(crate) app_name: String,
    /// The Manager protocol release announced in the handshake.
    pub(crate) protocol_version: String,
    /// Largest request frame accepted, in bytes.
    pub(crate) max_frame_len: u32,
    /// Most request streams the Manager may have open at once.
    pub max_concurrent_streams: u32,
    /// Seconds connecting and the handshake may take together.
    pub(crate) handshake_timeout_secs: u64,
    /// Seconds a request stream may stay silent before roxyd ends it.
    pub(crate) stream_idle_timeout_secs: u64,
    /// Seconds writing one reply may take; an immediate operation whose
    /// reply is not written in time is cancelled.
    pub(crate) reply_timeout_secs: u64,
    /// Seconds every request stream slot may be held by streams roxyd has
    /// closed on its side, with no answer from the Manager, before roxyd
    /// closes the connection and reconnects (1 to 3600).
    pub(crate) stream_slots_timeout_secs: u64,
    /// Milliseconds to wait for the Manager to acknowledge an immediate
    /// operation's reply before releasing it anyway. 0 does not wait, and
    /// the reply may then die with the host: for measurements only.
    pub(crate) delivery_timeout_ms: u64,
    /// Ceiling of the first reconnect delay, in milliseconds.
    pub(crate) reconnect_initial_ms: u64,
    /// Ceiling of every reconnect delay, in milliseconds.
    pub(crate) reconnect_max_ms: u64,
    /// Milliseconds `sync(2)` may take before an immediate operation's
    /// `reboot(2)` goes ahead anyway: a hung disk or mount must not keep the
    /// node up after `Initiated`.
    pub(crate) sync_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let dispatch = DispatchConfig::default();
        let backoff = BackoffConfig::default();
        Self {
            manager: None,
            cert: None,
            key: None,
            ca_certs: None,
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

/// Where a setting came from, as an error names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file.
    File {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
    },
    /// A `ROXYD_` environment variable.
    Env(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { path, line, column } => {
                write!(f, "config file {path}, line {line}, column {column}")
            }
            Self::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// A configuration problem, in one line that names the source at fault.
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
    /// The file is not valid TOML, or holds a key twice.
    #[error("invalid {origin}: {reason}; the line reads {text:?}")]
    Syntax {
        /// Where the parser stopped.
        origin: Origin,
        /// The parser's reason.
        reason: String,
        /// The line at fault, trimmed.
        text: String,
    },
    /// A key that roxyd does not know.
    #[error("invalid {origin}: unknown key {key}; the keys are {}", key_list())]
    UnknownKey {
        /// Where the key is.
        origin: Origin,
        /// The key.
        key: String,
    },
    /// A value outside what its key accepts.
    #[error("invalid {origin}: {key} = {value}; expected {expected}")]
    Value {
        /// Where the value is.
        origin: Origin,
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What the key accepts.
        expected: String,
    },
    /// Two settings that contradict each other.
    #[error(
        "invalid configuration: {low_key} = {low} ({low_origin}) exceeds {high_key} = {high} ({high_origin}); expected {low_key} <= {high_key}"
    )]
    Order {
        /// The key that must be the smaller.
        low_key: &'static str,
        /// Its value.
        low: u64,
        /// Where it was set ("default" when it was not).
        low_origin: String,
        /// The key that must be the larger.
        high_key: &'static str,
        /// Its value.
        high: u64,
        /// Where it was set.
        high_origin: String,
    },
    /// A setting roxyd cannot run without, given nowhere.
    #[error("no {what} given: pass {flag}, set {var}, or set {key} in the config file (-c)")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// The command-line form.
        flag: &'static str,
        /// The environment variable.
        var: String,
        /// The configuration key.
        key: &'static str,
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
}

/// Every key, in the order of the documentation.
const KEYS: [&str; 18] = [
    "manager",
    "cert",
    "key",
    "ca_certs",
    "log_file",
    "state_dir",
    "app_name",
    "protocol_version",
    "max_frame_len",
    "max_concurrent_streams",
    "handshake_timeout_secs",
    "stream_idle_timeout_secs",
    "reply_timeout_secs",
    "stream_slots_timeout_secs",
    "delivery_timeout_ms",
    "reconnect_initial_ms",
    "reconnect_max_ms",
    "sync_timeout_ms",
];

fn key_list() -> String {
    KEYS.join(", ")
}

/// The environment variable that overrides `key`.
fn env_var(key: &str) -> String {
    format!("ROXYD_{}", key.to_ascii_uppercase())
}

/// What a missing required setting is called, and its command-line form.
fn missing(key: &'static str) -> ConfigError {
    let (what, flag) = match key {
        "manager" => ("Manager address", "NAME@IP:PORT as the last argument"),
        "cert" => ("certificate", "--cert"),
        "key" => ("private key", "--key"),
        _ => ("CA certificates", "--ca-certs"),
    };
    ConfigError::Missing {
        what,
        flag,
        var: env_var(key),
        key,
    }
}

/// `value`, or the error naming the three places `key` can be given.
///
/// # Errors
///
/// [`ConfigError::Missing`] when `value` is `None`.
pub fn required<T>(value: Option<T>, key: &'static str) -> Result<T, ConfigError> {
    value.ok_or_else(|| missing(key))
}

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
            || KEYS.iter().any(|key| env_var(key) == name)
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

/// The 1-based line and column of byte `at` in `text`, and that line.
fn locate(text: &str, at: usize) -> (usize, usize, &str) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column, text[line_start..line_end].trim())
}

/// A value of the file, as far as the keys' kinds tell them apart.
enum FileValue {
    /// A whole number; `None` when negative or beyond 64 bits.
    Number(Option<u64>),
    Text(String),
    /// An array; `None` for an item that is not a string.
    Texts(Vec<Option<String>>),
    /// Anything else: a float, a boolean, a date, a table.
    Other,
}

impl FileValue {
    fn of(value: &toml::de::DeValue<'_>) -> Self {
        use toml::de::DeValue;
        match value {
            DeValue::Integer(n) => Self::Number(u64::from_str_radix(n.as_str(), n.radix()).ok()),
            DeValue::String(s) => Self::Text(s.to_string()),
            DeValue::Array(items) => Self::Texts(
                items
                    .iter()
                    .map(|item| match item.get_ref() {
                        DeValue::String(s) => Some(s.to_string()),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => Self::Other,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// One key's setting, as found in the file or the environment.
enum Raw {
    File {
        /// The value as written, for errors.
        written: String,
        value: FileValue,
    },
    Env(String),
}

impl Raw {
    /// The setting if it is text: a TOML string, or any variable.
    fn text(&self) -> Option<&str> {
        match self {
            Self::File { value, .. } => value.text(),
            Self::Env(s) => Some(s),
        }
    }
}

/// The settings found, with their origins: the environment's over the
/// file's.
struct Found {
    settings: std::collections::BTreeMap<&'static str, (Raw, Origin)>,
}

impl Found {
    fn read(
        path: Option<&Path>,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut settings = std::collections::BTreeMap::new();
        if let Some(path) = path {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            let origin = |at: usize| {
                let (line, column, _) = locate(&text, at);
                Origin::File {
                    path: shown.clone(),
                    line,
                    column,
                }
            };
            // Parsed without typing the values, so that a number beyond 64
            // bits reaches its key's check, which names the range.
            let table = toml::de::DeTable::parse(&text).map_err(|e| {
                let at = e.span().map_or(0, |span| span.start);
                let (_, _, line) = locate(&text, at);
                let mut reason = e.message().trim().to_owned();
                if reason == "duplicate key" {
                    let key = e.span().and_then(|span| text.get(span)).unwrap_or_default();
                    reason = format!("duplicate key {}", key.trim());
                }
                ConfigError::Syntax {
                    origin: origin(at),
                    reason,
                    text: line.to_owned(),
                }
            })?;
            for (key, value) in table.get_ref() {
                let Some(known) = KEYS.iter().find(|k| **k == key.get_ref().as_ref()) else {
                    return Err(ConfigError::UnknownKey {
                        origin: origin(key.span().start),
                        key: key.get_ref().to_string(),
                    });
                };
                let span = value.span();
                let raw = Raw::File {
                    written: text.get(span.clone()).unwrap_or_default().to_owned(),
                    value: FileValue::of(value.get_ref()),
                };
                settings.insert(*known, (raw, origin(span.start)));
            }
        }
        for key in KEYS {
            let var = env_var(key);
            if let Some(value) = env(&var) {
                settings.insert(key, (Raw::Env(value), Origin::Env(var)));
            }
        }
        Ok(Self { settings })
    }

    fn origin(&self, key: &str) -> String {
        self.settings
            .get(key)
            .map_or_else(|| "default".to_owned(), |(_, origin)| origin.to_string())
    }

    /// `key`'s setting converted by `parse`, which says what it expected
    /// when the setting does not convert.
    fn get<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&Raw) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some((raw, origin)) = self.settings.get(key) else {
            return Ok(None);
        };
        parse(raw).map(Some).map_err(|expected| ConfigError::Value {
            origin: origin.clone(),
            key,
            value: match raw {
                Raw::File { written, .. } => written.clone(),
                Raw::Env(text) => format!("{text:?}"),
            },
            expected,
        })
    }

    /// A whole number from `low` to `high`.
    fn number<T: TryFrom<u64>>(
        &self,
        key: &'static str,
        default: T,
        low: u64,
        high: u64,
    ) -> Result<T, ConfigError> {
        let parsed = self.get(key, |raw| {
            let value = match raw {
                Raw::File {
                    value: FileValue::Number(n),
                    ..
                } => *n,
                Raw::File { .. } => None,
                Raw::Env(text) => text.trim().parse::<u64>().ok(),
            };
            value
                .filter(|n| (low..=high).contains(n))
                .and_then(|n| T::try_from(n).ok())
                .ok_or_else(|| format!("a whole number from {low} to {high}"))
        })?;
        Ok(parsed.unwrap_or(default))
    }

    /// A non-empty string.
    fn text(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        self.get(key, |raw| {
            raw.text()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| "a non-empty string".to_owned())
        })
    }

    /// A list of non-empty paths: a TOML array of strings, or the
    /// variable's comma-separated text.
    fn paths(&self, key: &'static str) -> Result<Option<Vec<PathBuf>>, ConfigError> {
        self.get(key, |raw| match raw {
            Raw::File {
                value: FileValue::Texts(items),
                ..
            } if !items.is_empty() => items
                .iter()
                .map(|item| item.as_deref().filter(|s| !s.is_empty()).map(PathBuf::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| "an array of non-empty path strings".to_owned()),
            Raw::File { .. } => Err("an array of non-empty path strings".to_owned()),
            Raw::Env(text) => crate::cli::path_list(text),
        })
    }
}

/// Whether `text` is a semantic version, `MAJOR.MINOR.PATCH` with optional
/// pre-release and build parts, as the Manager parses `protocol_version`.
fn is_semver(text: &str) -> bool {
    semver::Version::parse(text).is_ok()
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
        let found = Found::read(path, &env)?;
        let defaults = Self::default();
        let manager = found.get("manager", |raw| {
            let text = raw.text().ok_or("a string NAME@IP:PORT")?;
            text.parse::<ManagerAddress>()
                .map_err(|e| format!("NAME@IP:PORT ({})", e.reason()))
        })?;
        let protocol_version = found
            .get("protocol_version", |raw| {
                raw.text()
                    .filter(|s| is_semver(s))
                    .map(str::to_owned)
                    .ok_or_else(|| "a semantic version MAJOR.MINOR.PATCH, as 0.47.0".to_owned())
            })?
            .unwrap_or(defaults.protocol_version);
        // The upper bounds stop a typo from turning a bounded wait into one
        // that never ends; zero would mean "never" or "at once" for most.
        // `delivery_timeout_ms` may be 0 (do not wait: for measurements) but
        // at most 10 s, as the wait holds a node that was told to go down.
        let config = Self {
            manager,
            cert: found.text("cert")?.map(PathBuf::from),
            key: found.text("key")?.map(PathBuf::from),
            ca_certs: found.paths("ca_certs")?,
            log_file: found.text("log_file")?.map(PathBuf::from),
            state_dir: found
                .text("state_dir")?
                .map_or(defaults.state_dir, PathBuf::from),
            app_name: found.text("app_name")?.unwrap_or(defaults.app_name),
            protocol_version,
            max_frame_len: found.number(
                "max_frame_len",
                defaults.max_frame_len,
                1,
                u64::from(u32::MAX),
            )?,
            max_concurrent_streams: found.number(
                "max_concurrent_streams",
                defaults.max_concurrent_streams,
                1,
                10_000,
            )?,
            handshake_timeout_secs: found.number(
                "handshake_timeout_secs",
                defaults.handshake_timeout_secs,
                1,
                300,
            )?,
            stream_idle_timeout_secs: found.number(
                "stream_idle_timeout_secs",
                defaults.stream_idle_timeout_secs,
                1,
                86_400,
            )?,
            reply_timeout_secs: found.number(
                "reply_timeout_secs",
                defaults.reply_timeout_secs,
                1,
                3600,
            )?,
            stream_slots_timeout_secs: found.number(
                "stream_slots_timeout_secs",
                defaults.stream_slots_timeout_secs,
                1,
                MAX_STREAM_SLOTS_TIMEOUT_SECS,
            )?,
            delivery_timeout_ms: found.number(
                "delivery_timeout_ms",
                defaults.delivery_timeout_ms,
                0,
                10_000,
            )?,
            reconnect_initial_ms: found.number(
                "reconnect_initial_ms",
                defaults.reconnect_initial_ms,
                1,
                3_600_000,
            )?,
            reconnect_max_ms: found.number(
                "reconnect_max_ms",
                defaults.reconnect_max_ms,
                1,
                3_600_000,
            )?,
            sync_timeout_ms: found.number(
                "sync_timeout_ms",
                defaults.sync_timeout_ms,
                1,
                60_000,
            )?,
        };
        if config.reconnect_initial_ms > config.reconnect_max_ms {
            return Err(ConfigError::Order {
                low_key: "reconnect_initial_ms",
                low: config.reconnect_initial_ms,
                low_origin: found.origin("reconnect_initial_ms"),
                high_key: "reconnect_max_ms",
                high: config.reconnect_max_ms,
                high_origin: found.origin("reconnect_max_ms"),
            });
        }
        Ok(config)
    }

    /// What roxyd announces in the handshake.
    #[must_use]
    pub(crate) fn identity(&self) -> Identity {
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
    pub(crate) fn slots_held_timeout(&self) -> Duration {
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
    pub(crate) fn backoff(&self) -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(self.reconnect_initial_ms),
            max: Duration::from_millis(self.reconnect_max_ms),
        }
    }
}
