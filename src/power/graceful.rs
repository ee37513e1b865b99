//! The graceful start's second half: the reaper that waits for the started
//! command and frees its latch the moment it exits, with any status.
//!
//! Rules a reader must not break: a command that has exited blocks nothing
//! (exit status 0 does not mean the host goes down); what it did is logged,
//! never reported, since the Manager was already told `Initiated`.

use tokio::sync::oneshot;

use tracing::Instrument;

use super::latch::PowerLatch;
use crate::{
    platform::{CommandOutcome, GracefulStart},
    power_log::{Asked, PowerLog},
};

/// Waits for `started` on a task of its own (in the request's span), then
/// frees `latch` and records the command's exit in `log`. Must be called on
/// a Tokio runtime.
pub(super) fn reap(
    started: GracefulStart,
    latch: PowerLatch,
    log: PowerLog,
    asked: Asked,
) -> GracefulRun {
    let (done, finished) = oneshot::channel();
    if let GracefulStart::Simulated = started {
        // Nothing runs: settle the latch now, before the reply is sent.
        drop(latch);
        let _ = done.send(false);
        return GracefulRun { finished };
    }
    tokio::spawn(
        async move {
            let outcome = started.wait().await;
            let going_down = outcome.host_going_down();
            // Exited, with any status: it no longer blocks anything.
            drop(latch);
            record_exit(&log, asked, &outcome);
            // Nobody may be waiting; the outcome was logged either way.
            let _ = done.send(going_down);
        }
        .in_current_span(),
    );
    GracefulRun { finished }
}

/// Records how the command ended: its exit status, or why it has none.
fn record_exit(log: &PowerLog, asked: Asked, outcome: &CommandOutcome) {
    match outcome {
        CommandOutcome::Exited(status) => match status.code() {
            Some(code) => log.command_exited(asked, Some(code), None),
            None => log.command_exited(asked, None, Some(&status.to_string())),
        },
        CommandOutcome::WaitFailed(e) => {
            log.command_exited(asked, None, Some(&format!("cannot wait for it: {e}")));
        }
        CommandOutcome::Simulated => {}
    }
}

/// A started graceful command. Dropping it changes nothing: the command's end
/// is still awaited and logged.
#[derive(Debug)]
pub struct GracefulRun {
    finished: oneshot::Receiver<bool>,
}

impl GracefulRun {
    /// Resolves when the command has ended and its latch was freed, with
    /// whether it exited with status 0 (the host may still stay up).
    pub async fn finished(self) -> bool {
        self.finished.await.unwrap_or(false)
    }
}
