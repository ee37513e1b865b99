//! The power log: a durable record, in roxyd's state directory, of every
//! power request (who asked, when, what the Manager was told, what became of
//! it) and of every start, so that the next start can say why the host went
//! down, or that it did not.
//!
//! Rules a reader must not break:
//! - The record never blocks power. One thread, `WRITER_THREAD`, owns the
//!   file and takes entries from a channel: recording from the async
//!   runtime never waits, and the immediate path's release thread waits for
//!   its entry at most [`RELEASE_WAIT`], far below the sync bound, before it
//!   goes on to `sync(2)` and `reboot(2)`. `sync(2)` is what makes that entry
//!   durable. A hung or unwritable state directory costs a release at most
//!   [`RELEASE_WAIT`], and never a power request.
//! - Nothing outside the writer thread touches the file while the daemon
//!   runs: even reading it at start (for [`explain()`]) happens there.
//! - The log stays within [`MAX_LOG_ENTRIES`] and [`MAX_LOG_BYTES`]. It is
//!   trimmed by writing the newest entries to a new file and renaming it over
//!   the log, so a crash mid-trim leaves the old file or the new one, never a
//!   torn one. The file is created with mode 0600.
//! - A line that cannot be read is skipped, with one WARN naming the file;
//!   a torn last line (a write cut short) is ended before the next entry, so
//!   the next entry is still readable.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
    time::{Duration, SystemTime},
};

pub(crate) mod entry;
pub mod explain;
pub mod read;

pub use entry::{Asked, Entry, Event, Op, Outcome, PowerRecord, Reply, RequestForm};
pub use explain::{Explanation, Level, explain};
pub use read::{ReadLog, read_log};

/// The log's file name in the state directory.
pub(crate) const LOG_FILE: &str = "power.log";

/// The name a trimmed log is written under before it is renamed over the log.
pub(crate) const TRIM_FILE: &str = "power.log.new";

/// Most entries the log keeps.
pub const MAX_LOG_ENTRIES: usize = 1000;

/// Most bytes the log keeps.
pub const MAX_LOG_BYTES: u64 = 1 << 20;

/// How long the immediate path's release thread waits for its entry to be
/// written before it goes on without: well under the sync bound (5 s by
/// default, at least 1 ms by configuration, and `sync(2)` follows this
/// wait), so a hung state directory cannot keep a node up for long after
/// `Initiated`. A healthy disk takes microseconds (the entry goes to the page
/// cache; `sync(2)` writes it out).
pub const RELEASE_WAIT: Duration = Duration::from_millis(250);

/// The boot id recorded when the kernel's cannot be read.
pub(crate) const UNKNOWN_BOOT_ID: &str = "unknown";

/// The name of the thread that owns the file.
pub(crate) const WRITER_THREAD: &str = "roxyd-power-log";

/// The log's path in `state_dir`.
#[must_use]
pub fn log_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOG_FILE)
}

/// The kernel's boot id: on Linux `/proc/sys/kernel/random/boot_id`, on
/// macOS the boot time from `sysctl kern.boottime`; `UNKNOWN_BOOT_ID`
/// when it cannot be read or the platform has none.
#[must_use]
pub fn boot_id() -> String {
    let id: Option<String> = {
        cfg_if::cfg_if! {
            if #[cfg(target_os = "linux")] {
                fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()
            } else if #[cfg(target_os = "macos")] {
                std::process::Command::new("/usr/sbin/sysctl")
                    .args(["-n", "kern.boottime"])
                    .output()
                    .ok()
                    .filter(|out| out.status.success())
                    .and_then(|out| String::from_utf8(out.stdout).ok())
            } else {
                None
            }
        }
    };
    id.map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| UNKNOWN_BOOT_ID.to_owned())
}

/// Whether the writer took an entry (see [`PowerLog::released`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The entry was written (to the page cache).
    Written,
    /// Writing it failed; the failure was logged.
    Failed,
    /// The writer did not answer within the bound: the state directory hangs,
    /// or entries queued before this one do.
    TimedOut,
    /// The log is off: nothing is recorded.
    Off,
}

/// A job for the writer thread.
enum Job {
    /// Append `line`; tell `done` how it went, if anyone waits.
    Append {
        line: String,
        done: Option<mpsc::SyncSender<Recorded>>,
    },
    /// Tell `done` once every earlier job was handled.
    Flush(mpsc::SyncSender<Recorded>),
}

/// The daemon's handle on the power log; clones share one writer thread.
/// Dropping the last one ends the writer after the entries already sent.
#[derive(Clone, Debug, Default)]
pub struct PowerLog {
    writer: Option<Writer>,
}

#[derive(Clone, Debug)]
struct Writer {
    jobs: mpsc::Sender<Job>,
    manager: Arc<str>,
    boot_id: Arc<str>,
}

impl PowerLog {
    /// A log that records nothing: `--check`, and tests of other parts.
    #[must_use]
    pub fn off() -> Self {
        Self::default()
    }

    /// Starts the writer thread for the log in `state_dir`, for requests from
    /// the Manager `manager` (`NAME@IP:PORT`). On that thread, it reads the
    /// newest entries, logs the [`explain()`] line, and appends a `start`
    /// entry; an unwritable or missing state directory gets one WARN there.
    /// Returns at once.
    #[must_use]
    pub fn start(state_dir: &Path, manager: &str) -> Self {
        let boot_id: Arc<str> = boot_id().into();
        let (jobs, queue) = mpsc::channel();
        let mut file = LogFile::new(state_dir);
        let start = stamp(Event::Start, &boot_id);
        let now = Arc::clone(&boot_id);
        let spawned = thread::Builder::new()
            .name(WRITER_THREAD.to_owned())
            .spawn(move || {
                file.open_and_explain(&now);
                file.append(&start.to_line());
                file.serve(&queue);
            });
        match spawned {
            Ok(_) => Self {
                writer: Some(Writer {
                    jobs,
                    manager: manager.into(),
                    boot_id,
                }),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the power log's thread; power requests are not recorded");
                Self::off()
            }
        }
    }

    /// Records an immediate operation released to `reboot(2)`, with what the
    /// Manager was told, and waits at most [`RELEASE_WAIT`] for it to be
    /// written. Call it on the release thread, before `perform`.
    #[must_use = "a record not written in time is worth a log line"]
    pub fn released(&self, asked: Asked, reply: Reply) -> Recorded {
        let Some(writer) = &self.writer else {
            return Recorded::Off;
        };
        let line = writer.entry(asked, reply, Outcome::Released, None, None);
        let (done, answer) = mpsc::sync_channel(1);
        if writer
            .jobs
            .send(Job::Append {
                line,
                done: Some(done),
            })
            .is_err()
        {
            return Recorded::Failed;
        }
        answer
            .recv_timeout(RELEASE_WAIT)
            .unwrap_or(Recorded::TimedOut)
    }

    /// Records an immediate operation cancelled because its reply could not
    /// be written: nothing was done.
    pub fn cancelled(&self, asked: Asked, reason: &str) {
        self.send(|w| {
            w.entry(
                asked,
                Reply::Cancelled,
                Outcome::Cancelled,
                None,
                Some(reason),
            )
        });
    }

    /// Records a refused request: `reply` is the error string sent, `reason`
    /// why.
    pub fn refused(&self, asked: Asked, reply: &str, reason: &str) {
        self.send(|w| {
            w.entry(
                asked,
                Reply::Error(reply.to_owned()),
                Outcome::Refused,
                None,
                Some(reason),
            )
        });
    }

    /// Records a graceful command started (`Initiated` is being sent).
    pub fn command_started(&self, asked: Asked) {
        self.send(|w| w.entry(asked, Reply::Initiated, Outcome::CommandStarted, None, None));
    }

    /// Records a graceful command's exit: its status, or why it has none.
    pub fn command_exited(&self, asked: Asked, status: Option<i32>, reason: Option<&str>) {
        self.send(|w| {
            w.entry(
                asked,
                Reply::Initiated,
                Outcome::CommandExited,
                status,
                reason,
            )
        });
    }

    /// Waits at most `bound` until every entry recorded so far was handled:
    /// before the daemon exits, and in tests.
    #[must_use]
    pub fn flush(&self, bound: Duration) -> Recorded {
        let Some(writer) = &self.writer else {
            return Recorded::Off;
        };
        let (done, answer) = mpsc::sync_channel(1);
        if writer.jobs.send(Job::Flush(done)).is_err() {
            return Recorded::Failed;
        }
        answer.recv_timeout(bound).unwrap_or(Recorded::TimedOut)
    }

    fn send(&self, line: impl FnOnce(&Writer) -> String) {
        if let Some(writer) = &self.writer {
            // The writer ends only when every handle is gone.
            let _ = writer.jobs.send(Job::Append {
                line: line(writer),
                done: None,
            });
        }
    }
}

impl Writer {
    fn entry(
        &self,
        asked: Asked,
        reply: Reply,
        outcome: Outcome,
        exit_status: Option<i32>,
        reason: Option<&str>,
    ) -> String {
        let record = PowerRecord {
            op: asked.op,
            request: asked.request,
            manager: self.manager.to_string(),
            reply,
            outcome,
            exit_status,
            reason: reason.map(str::to_owned),
        };
        stamp(Event::Power(record), &self.boot_id).to_line()
    }
}

/// `event`, now, on boot `boot_id`, by this roxyd.
fn stamp(event: Event, boot_id: &str) -> Entry {
    Entry {
        at: entry::rfc3339_millis(SystemTime::now()),
        event,
        boot_id: boot_id.to_owned(),
        roxyd: entry::VERSION.to_owned(),
    }
}

/// The file as the writer thread keeps it.
struct LogFile {
    dir: PathBuf,
    path: PathBuf,
    /// Lines in the file (readable or not).
    lines: usize,
    /// Its length.
    bytes: u64,
    /// It does not end with a newline: the next append starts with one.
    torn_tail: bool,
    /// The last write failed (and was logged): the next failure is not.
    failing: bool,
}

impl LogFile {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            path: log_path(dir),
            lines: 0,
            bytes: 0,
            torn_tail: false,
            failing: false,
        }
    }

    /// Reads the log, logs what it explains, and learns its size.
    fn open_and_explain(&mut self, boot_id: &str) {
        let read = match read_log(&self.path) {
            Ok(read) => read.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the power log; the previous power event is not explained");
                ReadLog::default()
            }
        };
        warn_skipped(&self.path, read.skipped);
        self.lines = read.entries.len() + read.skipped;
        self.bytes = fs::metadata(&self.path).map_or(0, |m| m.len());
        self.torn_tail = read.torn_tail;
        let entries: Vec<Entry> = read.entries.into_iter().map(|(e, _)| e).collect();
        match explain(&entries, boot_id) {
            Some(Explanation {
                level: Level::Warn,
                text,
            }) => tracing::warn!("{text}"),
            Some(Explanation {
                level: Level::Info,
                text,
            }) => tracing::info!("{text}"),
            None => {}
        }
    }

    fn serve(&mut self, queue: &mpsc::Receiver<Job>) {
        for job in queue {
            match job {
                Job::Append { line, done } => {
                    let recorded = self.append(&line);
                    if let Some(done) = done {
                        let _ = done.try_send(recorded);
                    }
                }
                Job::Flush(done) => {
                    let _ = done.try_send(Recorded::Written);
                }
            }
        }
    }

    /// Appends `line`, then trims the log if it grew too long. A failure is
    /// logged once, until a write succeeds again.
    fn append(&mut self, line: &str) -> Recorded {
        let mut text = String::with_capacity(line.len() + 2);
        if self.torn_tail {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
        let written = open_private(&self.path, OpenOptions::new().append(true).create(true))
            .and_then(|mut file| file.write_all(text.as_bytes()));
        match written {
            Ok(()) => {
                self.failing = false;
                self.torn_tail = false;
                self.lines += 1;
                self.bytes += text.len() as u64;
                if self.lines > MAX_LOG_ENTRIES || self.bytes > MAX_LOG_BYTES {
                    self.trim();
                }
                Recorded::Written
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(state_dir = %self.dir.display(), error = %e, "cannot write the power log; power requests are still carried out, but not recorded");
                }
                self.failing = true;
                Recorded::Failed
            }
        }
    }

    /// Keeps the newest readable entries, three quarters of each bound, so
    /// that a rewrite comes once every few hundred entries: written to
    /// [`TRIM_FILE`], made durable, renamed over the log.
    fn trim(&mut self) {
        let read = match read_log(&self.path) {
            Ok(read) => read.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the power log to trim it");
                return;
            }
        };
        let (kept_lines, kept_bytes) = trim_keep(&read);
        let mut text = String::with_capacity(usize::try_from(kept_bytes).unwrap_or(0));
        for (_, line) in &read.entries[read.entries.len() - kept_lines..] {
            text.push_str(line);
            text.push('\n');
        }
        let new_path = self.dir.join(TRIM_FILE);
        // A file left by a crash mid-trim goes first: created anew, the file
        // gets mode 0600 whatever the leftover had.
        match fs::remove_file(&new_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %new_path.display(), error = %e, "cannot remove a leftover trim file");
            }
            _ => {}
        }
        let replaced = open_private(&new_path, OpenOptions::new().write(true).create_new(true))
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&new_path, &self.path))
            .and_then(|()| File::open(&self.dir)?.sync_all());
        match replaced {
            Ok(()) => {
                self.lines = kept_lines;
                self.bytes = text.len() as u64;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot trim the power log");
            }
        }
    }
}

/// How many of the newest entries of `read` a trim keeps, and their bytes.
fn trim_keep(read: &ReadLog) -> (usize, u64) {
    let (max_lines, max_bytes) = (MAX_LOG_ENTRIES * 3 / 4, MAX_LOG_BYTES * 3 / 4);
    let mut kept = (0, 0);
    for (_, line) in read.entries.iter().rev().take(max_lines) {
        let bytes = kept.1 + line.len() as u64 + 1;
        if bytes > max_bytes {
            break;
        }
        kept = (kept.0 + 1, bytes);
    }
    kept
}

/// Logs one WARN naming `path` when `skipped` lines could not be read.
pub(crate) fn warn_skipped(path: &Path, skipped: usize) {
    if skipped > 0 {
        tracing::warn!(path = %path.display(), skipped, "skipped lines of the power log that are not entries (corrupt, truncated or edited)");
    }
}

/// Opens `path` with `options`, creating it with mode 0600.
fn open_private(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options.open(path)
}

/// Whether `state_dir` can be written: a file is created in it and removed.
///
/// # Errors
///
/// Why it cannot.
pub fn check_writable(state_dir: &Path) -> io::Result<()> {
    let probe = state_dir.join(format!(".roxyd-check-{}", std::process::id()));
    open_private(&probe, OpenOptions::new().write(true).create_new(true))?;
    fs::remove_file(&probe)
}
