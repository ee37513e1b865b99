//! The `test-backend` recorder: a backend that notes each call, in order,
//! instead of acting, and reports it to a `CallLog`.
//!
//! The recorder itself knows nothing above `platform`: the [`journal`] that
//! puts its calls beside the dispatch layer's steps, for tests, the demo and
//! benchmarks, is one `CallLog`; the daemon's recorder uses `LogLines`,
//! which keeps nothing (every call is logged as it happens).

use std::{
    fmt, io,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

pub mod journal;

use super::{
    GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError, Settlement, StartError,
};

/// A call the recorder saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// [`PowerBackend::prepare`].
    Prepare(ImmediateOp),
    /// [`PowerBackend::perform`]: on a real backend, the host would now go
    /// down.
    Perform(ImmediateOp),
    /// [`PowerBackend::pending_settled`]: a prepared operation was released
    /// or cancelled.
    Settled(ImmediateOp, Settlement),
    /// [`PowerBackend::start_graceful`], which succeeded.
    StartGraceful(GracefulOp),
}

/// Where a [`RecordingBackend`] reports its calls.
pub(crate) trait CallLog: Send + Sync + fmt::Debug {
    /// Called once per call, in order, as it happens.
    fn note(&self, call: Call);
}

/// The daemon's call log: keeps nothing, since the recorder logs each call
/// as it happens and a long-running daemon must not grow.
#[cfg(feature = "test-backend")]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LogLines;

#[cfg(feature = "test-backend")]
impl CallLog for LogLines {
    fn note(&self, call: Call) {
        tracing::debug!(?call, "recording backend call");
    }
}

/// The recording backend. Clones share one log and one behaviour.
#[derive(Clone, Debug)]
pub struct RecordingBackend {
    log: Arc<dyn CallLog>,
    refuse_prepare: Arc<AtomicBool>,
    fail_start: Arc<AtomicBool>,
    perform_gate: Arc<PerformGate>,
}

/// Holds [`PowerBackend::perform`] until opened, as a real backend never
/// returns from it: lets tests send a second power request while the first
/// is still running.
#[derive(Debug, Default)]
struct PerformGate {
    held: Mutex<bool>,
    opened: Condvar,
}

impl RecordingBackend {
    /// A recorder that accepts every call and reports each to `log`.
    #[must_use]
    pub(crate) fn logging_to(log: Arc<dyn CallLog>) -> Self {
        Self {
            log,
            refuse_prepare: Arc::default(),
            fail_start: Arc::default(),
            perform_gate: Arc::default(),
        }
    }

    /// The recorder a daemon runs on with `--backend recorder`: it logs each
    /// call and keeps nothing.
    #[cfg(feature = "test-backend")]
    #[must_use]
    pub(crate) fn for_daemon() -> Self {
        Self::logging_to(Arc::new(LogLines))
    }

    /// Makes [`PowerBackend::prepare`] fail (or succeed again).
    pub(crate) fn set_refuse_prepare(&self, refuse: bool) {
        self.refuse_prepare.store(refuse, Ordering::SeqCst);
    }

    /// Makes [`PowerBackend::start_graceful`] fail (or succeed again).
    pub(crate) fn set_fail_start(&self, fail: bool) {
        self.fail_start.store(fail, Ordering::SeqCst);
    }

    /// Makes [`PowerBackend::perform`] wait, after recording the call, until
    /// the gate is opened again with `false`.
    pub(crate) fn set_hold_perform(&self, hold: bool) {
        *self
            .perform_gate
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = hold;
        self.perform_gate.opened.notify_all();
    }
}

impl PowerBackend for RecordingBackend {
    fn prepare(&self, op: ImmediateOp) -> Result<(), PrepareError> {
        self.log.note(Call::Prepare(op));
        if self.refuse_prepare.load(Ordering::SeqCst) {
            return Err(PrepareError::Refused);
        }
        Ok(())
    }

    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        tracing::info!(%op, "recording backend: would perform now (nothing done)");
        self.log.note(Call::Perform(op));
        let gate = &self.perform_gate;
        let held = gate.held.lock().unwrap_or_else(PoisonError::into_inner);
        drop(
            gate.opened
                .wait_while(held, |held| *held)
                .unwrap_or_else(PoisonError::into_inner),
        );
        Ok(())
    }

    fn pending_settled(&self, op: ImmediateOp, how: Settlement) {
        self.log.note(Call::Settled(op, how));
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        if self.fail_start.load(Ordering::SeqCst) {
            return Err(StartError::Refused);
        }
        tracing::info!(%op, "recording backend: would start the command now (nothing done)");
        self.log.note(Call::StartGraceful(op));
        Ok(GracefulStart::Simulated)
    }
}
