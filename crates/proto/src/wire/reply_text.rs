//! The error strings roxyd puts on the wire. They are part of the contract
//! with the Manager: change none of them.

/// An immediate power operation that cannot run here (unsupported platform,
/// missing CAP_SYS_BOOT, another operation in progress).
pub const INVALID_COMMAND: &str = "invalid command";

/// A graceful power command that could not be started.
pub const FAIL: &str = "fail";

/// A request the reference knows but roxyd does not implement.
pub const NOT_SUPPORTED: &str = "not supported";

/// A request code the reference does not know, `N` in decimal.
#[must_use]
pub fn unknown_request_code(code: u32) -> String {
    format!("unknown request code: {code}")
}
