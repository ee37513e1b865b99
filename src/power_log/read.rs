//! Reading the power log: every line that is an entry, and a count of those
//! that are not.
//!
//! Rules a reader must not break: no line may stop the reading (corrupt,
//! truncated, huge, not UTF-8, hand-edited: it is counted and skipped); at
//! most `READ_LIMIT` bytes from the end of the file are read, so a file
//! grown by hand cannot exhaust memory.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    path::Path,
};

use super::{MAX_LOG_BYTES, entry::Entry};

/// Most bytes read from the end of the log: twice what roxyd keeps.
pub(crate) const READ_LIMIT: u64 = 2 * MAX_LOG_BYTES;

/// Longest line taken as an entry; a longer one is skipped unparsed.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// What was read from the log, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadLog {
    /// Each readable entry with its line as stored.
    pub entries: Vec<(Entry, String)>,
    /// How many lines could not be read.
    pub skipped: usize,
    /// Whether the file does not end with a newline (a write cut short): the
    /// next append must start a new line first.
    pub torn_tail: bool,
}

/// Reads the log at `path`; `None` when there is none.
///
/// # Errors
///
/// When the file exists but cannot be read.
pub fn read_log(path: &Path) -> io::Result<Option<ReadLog>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(READ_LIMIT);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(READ_LIMIT).read_to_end(&mut bytes)?;
    // Started mid-file: the first piece is the end of a line, not a line.
    let whole_lines = if start > 0 {
        let first_end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        &bytes[first_end..]
    } else {
        &bytes[..]
    };
    let mut log = parse_log(whole_lines);
    log.torn_tail = !bytes.is_empty() && !bytes.ends_with(b"\n");
    Ok(Some(log))
}

/// The entries among `bytes`, one per line.
#[must_use]
pub fn parse_log(bytes: &[u8]) -> ReadLog {
    let mut log = ReadLog {
        torn_tail: !bytes.is_empty() && !bytes.ends_with(b"\n"),
        ..ReadLog::default()
    };
    for line in bytes.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(line) {
            Some(entry) => log.entries.push(entry),
            None => log.skipped += 1,
        }
    }
    log
}

fn parse_line(line: &[u8]) -> Option<(Entry, String)> {
    if line.len() > MAX_LINE {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?.trim();
    let entry = serde_json::from_str(text).ok()?;
    Some((entry, text.to_owned()))
}
