//! The line roxyd logs at start about the previous power event, from the
//! newest entries of the power log and the kernel's boot id now.
//!
//! Rules a reader must not break: refusals and cancellations are not power
//! events (nothing was meant to go down) and are passed over; the newest
//! `start` entry or power event decides; an unknown boot id never claims the
//! host restarted or stayed up.

use super::entry::{Entry, Event, PowerRecord};

/// How loud the start line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// What was expected, or nothing to act on.
    Info,
    /// A power request that did not take the host down.
    Warn,
}

/// The start line: its level and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// How loud.
    pub level: Level,
    /// What it says.
    pub text: String,
}

impl Explanation {
    fn info(text: String) -> Self {
        Self {
            level: Level::Info,
            text,
        }
    }
}

/// Explains the previous power event from `entries` (oldest first), with
/// the kernel's boot id now `boot_id`. `None` when the log holds no `start`
/// entry and no power event (the first start).
#[must_use]
pub fn explain(entries: &[Entry], boot_id: &str) -> Option<Explanation> {
    let newest = entries.iter().rev().find(|entry| match &entry.event {
        Event::Start => true,
        Event::Power(record) => !matches!(
            record.outcome,
            super::entry::Outcome::Refused | super::entry::Outcome::Cancelled
        ),
        Event::Unknown => false,
    })?;
    if newest.boot_id == super::UNKNOWN_BOOT_ID || boot_id == super::UNKNOWN_BOOT_ID {
        return Some(Explanation::info(format!(
            "cannot tell whether the host restarted since {}: the boot id is unknown",
            newest.at
        )));
    }
    let same_boot = newest.boot_id == boot_id;
    match &newest.event {
        Event::Power(record) if record.takes_host_down() => {
            if same_boot {
                Some(did_not_go_down(newest, record))
            } else {
                Some(Explanation::info(format!(
                    "the host came back from {} asked by {} at {}, reply {}",
                    record.op, record.manager, newest.at, record.reply
                )))
            }
        }
        // A command that failed: it was logged when it exited.
        Event::Power(record) if same_boot => Some(did_not_go_down(newest, record)),
        _ if same_boot => None,
        _ => Some(Explanation::info(
            "the host restarted without a power request through roxyd".to_owned(),
        )),
    }
}

fn did_not_go_down(entry: &Entry, record: &PowerRecord) -> Explanation {
    let status = record
        .exit_status
        .map(|status| format!(" (exit status {status})"))
        .unwrap_or_default();
    Explanation {
        level: Level::Warn,
        text: format!(
            "the {} asked by {} at {} did not take the host down{status}",
            record.op, record.manager, entry.at
        ),
    }
}
