//! Where roxyd's log lines go and what they may hold: standard output or a
//! log file reopened on SIGHUP, one line per event, and warnings that can
//! repeat at network speed summarised instead of repeated.
//!
//! Rules: every event goes through [`LogSink`], which escapes control
//! characters in the formatted line (a graceful command's output, a Manager's
//! text), so that untrusted text can never start a line of its own. A
//! warning a Manager can trigger at will is logged through `warn_repeated!`
//! with its [`Repeated`], never directly.

use std::{
    borrow::Cow,
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use tracing_subscriber::fmt::MakeWriter;

/// Where the lines go.
enum Target {
    Stdout,
    File(File),
}

/// The log's destination, shared by the subscriber and whoever reopens it.
#[derive(Clone)]
pub struct LogSink {
    path: Option<PathBuf>,
    target: Arc<Mutex<Target>>,
    /// Whether the lines carry ANSI colours (their ESC is then kept).
    ansi: bool,
}

impl LogSink {
    /// Standard output, with colours when `ansi`.
    #[must_use]
    pub fn stdout(ansi: bool) -> Self {
        Self {
            path: None,
            target: Arc::new(Mutex::new(Target::Stdout)),
            ansi,
        }
    }

    /// `path`, opened for appending (created if missing), without colours.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened.
    pub fn file(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: Some(path.to_owned()),
            target: Arc::new(Mutex::new(Target::File(open_append(path)?))),
            ansi: false,
        })
    }

    /// Whether lines carry ANSI colours.
    #[must_use]
    pub fn ansi(&self) -> bool {
        self.ansi
    }

    /// Opens the log file anew, at its path (after a rotation renamed it),
    /// and says so in one line; with logs on standard output, only says
    /// that there is nothing to reopen. A file that cannot be opened leaves
    /// the old one in use, and is logged as an error: roxyd never stops for
    /// its log.
    pub fn reopen(&self) {
        let Some(path) = &self.path else {
            tracing::info!("SIGHUP: logs go to standard output; nothing to reopen");
            return;
        };
        match open_append(path) {
            Ok(file) => {
                *self.lock() = Target::File(file);
                tracing::info!(log_file = %path.display(), "SIGHUP: log file reopened");
            }
            Err(e) => tracing::error!(
                log_file = %path.display(),
                error = %e,
                "SIGHUP: cannot reopen the log file; still writing to the one open before"
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Target> {
        // A panic while writing a line leaves nothing half-changed.
        self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Writes one formatted event, escaped, to the sink's target.
pub struct LineWriter<'a> {
    sink: &'a LogSink,
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { sink: self }
    }
}

impl Write for LineWriter<'_> {
    /// Takes a whole formatted event (the subscriber writes each in one
    /// call) and writes it as one line.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let event = String::from_utf8_lossy(buf);
        let line = one_line(&event, self.sink.ansi);
        match &mut *self.sink.lock() {
            Target::Stdout => io::stdout().lock().write_all(line.as_bytes())?,
            Target::File(file) => file.write_all(line.as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.sink.lock() {
            Target::Stdout => io::stdout().flush(),
            Target::File(file) => file.flush(),
        }
    }
}

/// `event` with every control character escaped as Rust escapes it (`\n`,
/// `\r`, `\t`, `\u{1b}`, ...), but its final line end; ESC is kept when
/// `ansi`, as the colours need it.
/// Borrows `event` when there is nothing to escape, the common case.
#[must_use]
pub fn one_line(event: &str, ansi: bool) -> Cow<'_, str> {
    let (body, end) = match event.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (event, ""),
    };
    let escaped = |c: char| c.is_control() && !(ansi && c == '\u{1b}');
    if !body.chars().any(escaped) {
        return Cow::Borrowed(event);
    }
    let mut line = String::with_capacity(event.len() + 8);
    for c in body.chars() {
        if escaped(c) {
            let _ = write!(line, "{}", c.escape_default());
        } else {
            line.push(c);
        }
    }
    line.push_str(end);
    Cow::Owned(line)
}

/// The `request` span of one stream's lines, `request{connection=… stream=…}`,
/// made when the first line needs it. A stream that only echoes logs nothing
/// and makes none: a span per stream cost about 1 µs of CPU, a sixth of an
/// echo at 8 in flight (docs/performance.md).
#[derive(Debug)]
pub struct RequestSpan {
    /// The connection's and the stream's ids; `None`: the caller's span.
    ids: Option<(usize, u64)>,
    span: OnceLock<tracing::Span>,
}

impl RequestSpan {
    /// The span of stream `stream` on connection `connection`.
    #[must_use]
    pub fn new(connection: usize, stream: u64) -> Self {
        Self {
            ids: Some((connection, stream)),
            span: OnceLock::new(),
        }
    }

    /// For a stream served on its own, as tests serve them: its lines go to
    /// the span current when the first is logged.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn current() -> Self {
        Self {
            ids: None,
            span: OnceLock::new(),
        }
    }

    /// The span, made on the first call.
    pub fn get(&self) -> &tracing::Span {
        self.span.get_or_init(|| match self.ids {
            Some((connection, stream)) => tracing::info_span!("request", connection, stream),
            None => tracing::Span::current(),
        })
    }
}

/// How often at most a [`Repeated`] warning is logged after its first.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);

/// A warning a Manager can trigger at will (oversized frames, refused or
/// unknown requests, streams running short): logged the first time, then at
/// most once per [`REPEAT_INTERVAL`], on the next occurrence after it, with
/// the count of those not logged; `summarise_repeats` logs what is left
/// when the connection ends. No timer: each occurrence does the counting.
pub struct Repeated {
    what: &'static str,
    state: Mutex<RepeatState>,
}

struct RepeatState {
    /// When this warning was last logged; `None` before its first.
    logged_at: Option<Instant>,
    /// Occurrences since then that were not logged.
    unlogged: u64,
}

/// What `Repeated::occurred` says to do with an occurrence.
#[derive(Debug, PartialEq, Eq)]
pub enum Occurrence {
    /// Log it: the first, or the first after the interval; `unlogged`
    /// occurrences since the last logged one were not.
    Log {
        /// How many were not logged in between.
        unlogged: u64,
    },
    /// Count it only.
    Counted,
}

impl Repeated {
    /// A warning about `what`, never logged yet.
    #[must_use]
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            state: Mutex::new(RepeatState {
                logged_at: None,
                unlogged: 0,
            }),
        }
    }

    /// Notes an occurrence at `now`.
    pub fn occurred_at(&self, now: Instant) -> Occurrence {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.logged_at {
            Some(at) if now.saturating_duration_since(at) < REPEAT_INTERVAL => {
                state.unlogged += 1;
                Occurrence::Counted
            }
            _ => {
                state.logged_at = Some(now);
                Occurrence::Log {
                    unlogged: std::mem::take(&mut state.unlogged),
                }
            }
        }
    }

    /// Notes an occurrence now.
    pub(crate) fn occurred(&self) -> Occurrence {
        self.occurred_at(Instant::now())
    }

    /// Logs how many occurrences were not logged, if any, and starts afresh:
    /// the next occurrence is logged as a first.
    pub fn summarise(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let unlogged = std::mem::take(&mut state.unlogged);
        state.logged_at = None;
        if unlogged > 0 {
            tracing::warn!(
                warning = self.what,
                unlogged,
                "repeated warning: occurrences not logged one by one"
            );
        }
    }
}

/// A frame over `max_frame_len`.
pub(crate) static OVERSIZED_FRAME: Repeated = Repeated::new("oversized frame");
/// A power request refused or not started.
pub(crate) static REFUSED_REQUEST: Repeated = Repeated::new("refused request");
/// A request with an unknown or unsupported code, or a malformed one.
pub(crate) static BAD_REQUEST: Repeated = Repeated::new("unknown or malformed request");
/// Request streams running short.
pub(crate) static STREAM_PRESSURE: Repeated = Repeated::new("request streams run short");

/// Logs what every repeated warning left unlogged: at a connection's end.
pub(crate) fn summarise_repeats() {
    for repeated in [
        &OVERSIZED_FRAME,
        &REFUSED_REQUEST,
        &BAD_REQUEST,
        &STREAM_PRESSURE,
    ] {
        repeated.summarise();
    }
}

/// `tracing::warn!` for a [`Repeated`] warning: the first occurrence, then
/// at most one per [`REPEAT_INTERVAL`] with the field `unlogged`, the count
/// of those in between.
#[macro_export]
macro_rules! warn_repeated {
    ($repeated:expr, $($arg:tt)+) => {
        if let $crate::logging::Occurrence::Log { unlogged } = $repeated.occurred() {
            ::tracing::warn!(unlogged, $($arg)+);
        }
    };
}
