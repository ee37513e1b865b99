//! The power family in one place: the latches, the pending immediate
//! operation and its release proofs, the immediate ordering (write the
//! reply, confirm or recognise a decline, release), and the graceful start
//! with its reaper. [`crate::dispatch`] only routes requests here.
//!
//! [`PowerHandler`] turns a power request into a pending immediate
//! operation (`pending`) or a started graceful command (`graceful`);
//! `immediate::serve` is the only place that orders "write the reply, then
//! release".
//!
//! Rules a reader must not break:
//! - An immediate operation is only ever run by `PendingPowerOp::release`,
//!   which needs a `ReleaseProof`: the success reply was written, or the
//!   Manager declined it; dropping a [`PendingPowerOp`] cancels it. Either
//!   way the backend hears of it at that moment
//!   ([`PowerBackend::pending_settled`]).
//! - At most one immediate operation is under way at a time: a second
//!   immediate request while one is pending or running gets
//!   `invalid command`, so two requests never lead to two operations. Its
//!   latch is freed when the pending operation is cancelled, or when
//!   `reboot(2)` returns (it only returns on failure, or with the recorder).
//! - A running graceful command never blocks an immediate request: the
//!   immediate path is the operator's way out when a graceful shutdown
//!   hangs. A graceful request while an immediate operation is under way, or
//!   while another graceful command still runs, gets `fail`: one system
//!   command at a time, and a hung one still leaves the immediate path.
//! - A graceful command that has exited, with any status, blocks nothing:
//!   exit status 0 does not mean the host goes down (a cancelled systemd
//!   job, an inhibitor or a chroot all leave it up).

use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    platform::{GracefulOp, ImmediateOp, PowerBackend, PowerOp, PrepareError, StartError},
    power_log::{Asked, PowerLog, RequestForm},
};

pub(crate) mod graceful;
pub mod immediate;
mod latch;
pub(crate) mod pending;

pub use graceful::GracefulRun;
pub use pending::PendingPowerOp;

use latch::{Busy, Kind, PowerLatch};

/// Prepares immediate operations and starts graceful ones on backend `B`.
#[derive(Debug)]
pub struct PowerHandler<B> {
    backend: Arc<B>,
    /// What is under way: an immediate operation, a graceful command, both.
    busy: Arc<watch::Sender<Busy>>,
    /// How many released operations are being performed: counted by a
    /// [`pending::Performing`] guard from the release until `perform`
    /// returned or panicked.
    performing: Arc<watch::Sender<usize>>,
    /// Where releases and graceful commands are recorded.
    log: PowerLog,
}

impl<B: PowerBackend> PowerHandler<B> {
    /// A handler with no operation under way.
    pub(crate) fn new(backend: B) -> Self {
        Self {
            backend: Arc::new(backend),
            busy: Arc::new(watch::Sender::new(Busy::default())),
            performing: Arc::new(watch::Sender::new(0)),
            log: PowerLog::off(),
        }
    }

    /// Records releases and graceful commands in `log`.
    #[must_use]
    pub(crate) fn with_power_log(mut self, log: PowerLog) -> Self {
        self.log = log;
        self
    }

    /// The power log.
    #[must_use]
    pub(crate) fn power_log(&self) -> &PowerLog {
        &self.log
    }

    /// Whether a power operation is under way; for tests.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn is_busy(&self) -> bool {
        self.busy.borrow().any()
    }

    /// Resolves once no power operation is under way: an explicit signal for
    /// tests and the demo, which send several power requests to one agent
    /// whose recorder returns from every operation.
    #[cfg(any(test, feature = "test-backend"))]
    pub async fn wait_idle(&self) {
        let mut rx = self.busy.subscribe();
        // The sender lives in `self`, so the channel cannot close.
        let _ = rx.wait_for(|busy| !busy.any()).await;
    }

    /// The backend: for the demo, which tells its recorder to refuse.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Resolves once no released operation is still being performed. On a
    /// real system a successful `reboot(2)` never returns, so the daemon,
    /// which waits for this before it exits, never exits ahead of it.
    pub async fn wait_performed(&self) {
        let mut rx = self.performing.subscribe();
        let _ = rx.wait_for(|performing| *performing == 0).await;
    }

    /// Checks that `op`, asked in wire form `request`, can run now and
    /// returns it pending, not run.
    ///
    /// # Errors
    ///
    /// [`PrepareError::InProgress`] when another immediate operation is
    /// pending or running (a graceful command does not count), or the
    /// backend's reason; the Manager is told `invalid command`.
    pub fn prepare(
        &self,
        op: ImmediateOp,
        request: RequestForm,
    ) -> Result<PendingPowerOp<B>, PrepareError> {
        let latch =
            PowerLatch::acquire(&self.busy, Kind::Immediate).ok_or(PrepareError::InProgress)?;
        self.backend.prepare(op)?;
        Ok(PendingPowerOp::new(
            op,
            Arc::clone(&self.backend),
            Arc::clone(&self.performing),
            latch,
            self.log.clone(),
            Asked {
                op: PowerOp::Immediate(op).into(),
                request,
            },
        ))
    }

    /// Starts `op`'s system command, asked in wire form `request`, and
    /// records it. Its end is waited for on a task of its own, logged and
    /// recorded.
    ///
    /// # Errors
    ///
    /// [`StartError::InProgress`] when an immediate operation is pending or
    /// running or another graceful command still runs, or the backend's
    /// reason; the Manager is told `fail`.
    pub fn start_graceful(
        &self,
        op: GracefulOp,
        request: RequestForm,
    ) -> Result<GracefulRun, StartError> {
        let latch =
            PowerLatch::acquire(&self.busy, Kind::Graceful).ok_or(StartError::InProgress)?;
        let started = self.backend.start_graceful(op)?;
        let asked = Asked {
            op: PowerOp::Graceful(op).into(),
            request,
        };
        self.log.command_started(asked);
        Ok(graceful::reap(started, latch, self.log.clone(), asked))
    }
}
