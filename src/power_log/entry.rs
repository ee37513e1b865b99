//! One line of the power log: what was asked, by whom, what the Manager was
//! told, and what became of it; or a `start` line.
//!
//! Rules a reader must not break: a line is one JSON object; fields this
//! roxyd does not know are ignored on read (a newer roxyd may add some), so
//! no type here denies unknown fields; what is written is never renamed.

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    platform::{GracefulOp, ImmediateOp, PowerOp},
    reply::WireForm,
    wire::NodePowerRequest,
};

/// roxyd's version, as entries state it.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One entry of the power log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When it happened: UTC, RFC 3339, milliseconds.
    pub at: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
    /// The kernel's boot id when it happened (see [`super::boot_id`]).
    pub boot_id: String,
    /// The version of roxyd that wrote it.
    pub roxyd: String,
}

/// What an entry records; its `kind` field says which.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// A power request.
    Power(PowerRecord),
    /// roxyd started.
    Start,
    /// A kind a newer roxyd wrote: read, shown, never taken as a power event.
    #[serde(other)]
    Unknown,
}

/// A power request and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerRecord {
    /// The operation asked for.
    pub op: Op,
    /// The request's wire form.
    pub request: RequestForm,
    /// The Manager that asked: `NAME@IP:PORT`, the name its certificate was
    /// checked for and the address roxyd connected to.
    pub manager: String,
    /// What the Manager was told.
    pub reply: Reply,
    /// What roxyd did.
    pub outcome: Outcome,
    /// The graceful command's exit status, when it exited with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// Why it was refused or cancelled, or how the command ended without an
    /// exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl PowerRecord {
    /// Whether this entry means the host should now go down: a release to
    /// `reboot(2)`, a graceful command started, or one that exited 0.
    #[must_use]
    pub(crate) fn takes_host_down(&self) -> bool {
        match self.outcome {
            Outcome::Released | Outcome::CommandStarted => true,
            Outcome::CommandExited => self.exit_status == Some(0),
            Outcome::Refused | Outcome::Cancelled => false,
        }
    }
}

/// The operation asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Immediate reboot.
    Reboot,
    /// Immediate power-off.
    PowerOff,
    /// Graceful reboot, by the system's command.
    GracefulReboot,
    /// Graceful power-off, by the system's command.
    GracefulPowerOff,
}

impl From<PowerOp> for Op {
    fn from(op: PowerOp) -> Self {
        match op {
            PowerOp::Immediate(ImmediateOp::Reboot) => Self::Reboot,
            PowerOp::Immediate(ImmediateOp::PowerOff) => Self::PowerOff,
            PowerOp::Graceful(GracefulOp::Reboot) => Self::GracefulReboot,
            PowerOp::Graceful(GracefulOp::PowerOff) => Self::GracefulPowerOff,
        }
    }
}

impl From<NodePowerRequest> for Op {
    fn from(request: NodePowerRequest) -> Self {
        PowerOp::from(request).into()
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reboot => "reboot",
            Self::PowerOff => "power-off",
            Self::GracefulReboot => "graceful-reboot",
            Self::GracefulPowerOff => "graceful-power-off",
        })
    }
}

/// The wire form a power request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestForm {
    /// `NodePower` with a body naming the operation.
    NodePower,
    /// The flat reboot request.
    FlatReboot,
    /// The flat shutdown request.
    FlatShutdown,
}

impl RequestForm {
    /// The form of `request` received in wire form `form`: the flat forms
    /// carry only an immediate reboot or shutdown.
    #[must_use]
    pub(crate) fn of(request: NodePowerRequest, form: WireForm) -> Self {
        match (form, request) {
            (WireForm::Grouped, _) => Self::NodePower,
            (WireForm::Flat, NodePowerRequest::Reboot | NodePowerRequest::GracefulReboot) => {
                Self::FlatReboot
            }
            (WireForm::Flat, _) => Self::FlatShutdown,
        }
    }
}

impl fmt::Display for RequestForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NodePower => "node-power",
            Self::FlatReboot => "flat-reboot",
            Self::FlatShutdown => "flat-shutdown",
        })
    }
}

/// A power request as asked: the operation and the wire form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Asked {
    /// The operation.
    pub op: Op,
    /// The wire form.
    pub request: RequestForm,
}

impl Asked {
    /// `request`, received in wire form `form`.
    #[must_use]
    pub(crate) fn new(request: NodePowerRequest, form: RequestForm) -> Self {
        Self {
            op: request.into(),
            request: form,
        }
    }
}

/// What the Manager was told.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Reply {
    /// Immediate: the reply was written and the Manager acknowledged it.
    Delivered,
    /// Immediate: the Manager declined the reply (fire-and-forget).
    Declined,
    /// Immediate: the reply was written; no acknowledgement within the bound.
    Unconfirmed,
    /// Immediate: the reply could not be written; nothing was done.
    Cancelled,
    /// Graceful: `Initiated` was sent.
    Initiated,
    /// A refusal: the error string sent.
    Error(String),
}

impl From<String> for Reply {
    fn from(text: String) -> Self {
        match text.as_str() {
            "delivered" => Self::Delivered,
            "declined" => Self::Declined,
            "unconfirmed" => Self::Unconfirmed,
            "cancelled" => Self::Cancelled,
            "initiated" => Self::Initiated,
            _ => Self::Error(text),
        }
    }
}

impl From<Reply> for String {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Error(text) => text,
            known => known.to_string(),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delivered => "delivered",
            Self::Declined => "declined",
            Self::Unconfirmed => "unconfirmed",
            Self::Cancelled => "cancelled",
            Self::Initiated => "initiated",
            Self::Error(text) => text,
        })
    }
}

/// What roxyd did with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Handed to `reboot(2)`.
    Released,
    /// The graceful command was started.
    CommandStarted,
    /// The graceful command exited (see `exit_status` and `reason`).
    CommandExited,
    /// Refused (see `reason`).
    Refused,
    /// The reply could not be written, so nothing was done (see `reason`).
    Cancelled,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Released => "released",
            Self::CommandStarted => "command-started",
            Self::CommandExited => "command-exited",
            Self::Refused => "refused",
            Self::Cancelled => "cancelled",
        })
    }
}

impl Entry {
    /// The entry as one line of JSON, without the newline.
    #[must_use]
    pub fn to_line(&self) -> String {
        // Plain strings, numbers and enums: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The entry as `--power-log` shows it: one line for a person.
    #[must_use]
    pub fn human(&self) -> String {
        let what = match &self.event {
            Event::Start => format!("roxyd {} started", self.roxyd),
            Event::Unknown => "an entry of a kind this roxyd does not know".to_owned(),
            Event::Power(record) => {
                let status = record
                    .exit_status
                    .map(|status| format!(" with exit status {status}"))
                    .unwrap_or_default();
                let reason = record
                    .reason
                    .as_ref()
                    .map(|reason| format!(": {reason}"))
                    .unwrap_or_default();
                format!(
                    "{} ({}) asked by {}: reply {}, {}{status}{reason}",
                    record.op, record.request, record.manager, record.reply, record.outcome
                )
            }
        };
        format!("{}  {what}  (boot {})", self.at, self.boot_id)
    }
}

/// `time` as UTC, RFC 3339, with milliseconds: `2026-12-04T15:24:05.123Z`.
/// A time before 1970 (a clock set wrong) is shown as the epoch.
#[must_use]
pub(crate) fn rfc3339_millis(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days since the epoch only).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_are_utc_rfc3339_with_milliseconds() {
        let at = |secs, millis| {
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_796_225_045, 123), "2026-12-02T15:24:05.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
