//! Arbitrary bytes as a power log file, through the reader roxyd uses at
//! start and for `--power-log`.
//!
//! Besides "no panic": every non-blank line is either an entry or counted
//! as skipped; each entry read is stored as its own line; and an entry
//! written back out (`Entry::to_line`) reads as the same entry, so a log
//! that roxyd trims (it rewrites the readable entries) keeps what it held.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roxyd::power_log::{Entry, read::parse_log};

fuzz_target!(|data: &[u8]| {
    let log = parse_log(data);
    let lines = data
        .split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .count();
    assert_eq!(log.entries.len() + log.skipped, lines);
    assert_eq!(log.torn_tail, !data.is_empty() && !data.ends_with(b"\n"));
    for (entry, line) in &log.entries {
        assert!(!line.contains('\n'));
        let reread: Entry = serde_json::from_str(line).expect("a line read as an entry");
        assert_eq!(&reread, entry);
        let written = entry.to_line();
        let back: Entry = serde_json::from_str(&written).expect("an entry written reads");
        assert_eq!(&back, entry, "{written}");
    }
});
