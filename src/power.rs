//! The power handler: turns a power request into a pending immediate
//! operation or a started graceful command.
//!
//! Rules a reader must not break:
//! - An immediate operation is only ever run by [`PendingPowerOp::release`],
//!   which needs a [`ReleaseProof`]: the success reply was written, or the
//!   Manager declined it; dropping a [`PendingPowerOp`] cancels it. Either
//!   way the backend hears of it at that moment
//!   ([`PowerBackend::pending_settled`]).
//! - At most one power operation is under way at a time. A second request
//!   while one is pending, running, or has taken the host down is refused:
//!   `invalid command` for an immediate one, `fail` for a graceful one. The
//!   latch is freed when a pending operation is cancelled, when `reboot(2)`
//!   returns (it only returns on failure, or with the recorder), and when a
//!   graceful command fails; it stays taken once a graceful command
//!   succeeded, because the host is then on its way down.

use std::{
    sync::{Arc, Mutex, PoisonError},
    thread,
};

use tokio::sync::{oneshot, watch};

use crate::{
    platform::{
        GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError, Settlement, StartError,
    },
    reply::ReleaseProof,
};

/// Prepares immediate operations and starts graceful ones on backend `B`.
#[derive(Debug)]
pub struct PowerHandler<B> {
    backend: Arc<B>,
    /// `true` while a power operation is pending, running or has taken the
    /// host down.
    busy: Arc<watch::Sender<bool>>,
    /// `true` from a release until the backend's `perform` returned.
    performing: Arc<watch::Sender<bool>>,
}

impl<B: PowerBackend> PowerHandler<B> {
    /// A handler with no operation under way.
    pub fn new(backend: B) -> Self {
        Self {
            backend: Arc::new(backend),
            busy: Arc::new(watch::Sender::new(false)),
            performing: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Whether a power operation is under way.
    #[must_use]
    pub fn is_busy(&self) -> bool {
        *self.busy.borrow()
    }

    /// Resolves once no power operation is under way: an explicit signal for
    /// tests and the demo, which send several power requests to one agent
    /// whose recorder returns from every operation.
    pub async fn wait_idle(&self) {
        let mut rx = self.busy.subscribe();
        // The sender lives in `self`, so the channel cannot close.
        let _ = rx.wait_for(|busy| !*busy).await;
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Resolves once no released operation is still being performed. On a
    /// real system a successful `reboot(2)` never returns, so the daemon,
    /// which waits for this before it exits, never exits ahead of it.
    pub async fn wait_performed(&self) {
        let mut rx = self.performing.subscribe();
        let _ = rx.wait_for(|performing| !*performing).await;
    }

    /// Checks that `op` can run now and returns it pending, not run.
    ///
    /// # Errors
    ///
    /// [`PrepareError::InProgress`] when another power operation is under
    /// way, or the backend's reason; the Manager is told `invalid command`.
    pub fn prepare(&self, op: ImmediateOp) -> Result<PendingPowerOp<B>, PrepareError> {
        let latch = PowerLatch::acquire(&self.busy).ok_or(PrepareError::InProgress)?;
        self.backend.prepare(op)?;
        Ok(PendingPowerOp {
            op,
            backend: Arc::clone(&self.backend),
            performing: Arc::clone(&self.performing),
            latch: Some(latch),
        })
    }

    /// Starts `op`'s system command. Its end is waited for on a thread of its
    /// own and logged.
    ///
    /// # Errors
    ///
    /// [`StartError::InProgress`] when another power operation is under way,
    /// or the backend's reason; the Manager is told `fail`.
    pub fn start_graceful(&self, op: GracefulOp) -> Result<GracefulRun, StartError> {
        let latch = PowerLatch::acquire(&self.busy).ok_or(StartError::InProgress)?;
        let started = self.backend.start_graceful(op)?;
        let (done, finished) = oneshot::channel();
        if let GracefulStart::Simulated = started {
            // Nothing runs: settle the latch now, before the reply is sent.
            drop(latch);
            let _ = done.send(false);
            return Ok(GracefulRun { finished });
        }
        run_detached("roxyd-reaper", move || {
            let outcome = started.wait();
            let going_down = outcome.host_going_down();
            if going_down {
                latch.hold_forever();
            } else {
                drop(latch);
            }
            // Nobody may be waiting; the outcome was logged either way.
            let _ = done.send(going_down);
        });
        Ok(GracefulRun { finished })
    }
}

/// A started graceful command. Dropping it changes nothing: the command's end
/// is still awaited and logged.
#[derive(Debug)]
pub struct GracefulRun {
    finished: oneshot::Receiver<bool>,
}

impl GracefulRun {
    /// Resolves when the command has ended and the latch has been settled,
    /// with whether the host is now going down.
    pub async fn finished(self) -> bool {
        self.finished.await.unwrap_or(false)
    }
}

/// An immediate power operation that has been checked but not run.
///
/// It runs only through [`release`](Self::release), which consumes it and
/// takes a [`ReleaseProof`] that only the reply writer
/// ([`crate::reply::write_initiated`]) or the decline check
/// ([`crate::reply::recognise_decline`]) can make, so "release before the
/// reply", "release twice" and "use after release" do not compile. Dropping
/// it instead cancels it: nothing happens, and the next power request may
/// proceed.
#[must_use = "dropping a PendingPowerOp cancels it"]
#[derive(Debug)]
pub struct PendingPowerOp<B: PowerBackend> {
    op: ImmediateOp,
    backend: Arc<B>,
    performing: Arc<watch::Sender<bool>>,
    /// `Some` until released; a drop with it still here is a cancellation.
    latch: Option<PowerLatch>,
}

impl<B: PowerBackend> PendingPowerOp<B> {
    /// The operation.
    #[must_use]
    pub fn op(&self) -> ImmediateOp {
        self.op
    }

    /// Runs the operation on a thread of its own, off the async runtime, and
    /// returns at once. The caller must have written the success reply on the
    /// request's stream, or seen the Manager decline it: `proof` says which.
    ///
    /// An error from the backend is logged; the Manager was already told
    /// `Initiated`, or asked for no answer.
    pub fn release(mut self, proof: impl Into<ReleaseProof>) {
        let op = self.op;
        let backend = Arc::clone(&self.backend);
        let latch = self.latch.take();
        let performing = Arc::clone(&self.performing);
        performing.send_replace(true);
        backend.pending_settled(op, Settlement::Released);
        let after = match proof.into() {
            ReleaseProof::Written(_) => "reply written",
            ReleaseProof::Declined(_) => "reply declined",
        };
        tracing::warn!(%op, after, "releasing power operation");
        run_detached("roxyd-power", move || {
            let result = backend.perform(op);
            drop(latch);
            match result {
                // Only the recorder returns from a successful operation.
                Ok(()) => tracing::info!(%op, "backend returned; the host stays up"),
                Err(e) => tracing::error!(%op, error = %e, "power operation failed after release"),
            }
            performing.send_replace(false);
        });
    }
}

impl<B: PowerBackend> Drop for PendingPowerOp<B> {
    fn drop(&mut self) {
        if self.latch.is_some() {
            self.backend.pending_settled(self.op, Settlement::Cancelled);
            tracing::warn!(op = %self.op, "pending power operation cancelled; nothing done");
        }
    }
}

/// The "one power operation at a time" latch; dropping it frees it.
#[derive(Debug)]
struct PowerLatch(Option<Arc<watch::Sender<bool>>>);

impl PowerLatch {
    fn acquire(busy: &Arc<watch::Sender<bool>>) -> Option<Self> {
        let acquired = busy.send_if_modified(|taken| !std::mem::replace(taken, true));
        acquired.then(|| Self(Some(Arc::clone(busy))))
    }

    /// Keeps the latch taken for the rest of the process's life.
    fn hold_forever(mut self) {
        self.0 = None;
    }
}

impl Drop for PowerLatch {
    fn drop(&mut self) {
        if let Some(busy) = self.0.take() {
            busy.send_replace(false);
        }
    }
}

/// Runs `job` on a new named thread, or here if no thread can be started: a
/// power operation that was promised must not be lost to a full thread table.
fn run_detached(name: &str, job: impl FnOnce() + Send + 'static) {
    let slot = Arc::new(Mutex::new(Some(job)));
    let theirs = Arc::clone(&slot);
    let spawned = thread::Builder::new().name(name.to_owned()).spawn(move || {
        let job = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(job) = job {
            job();
        }
    });
    if let Err(e) = spawned {
        tracing::error!(thread = name, error = %e, "cannot start a thread; running the job here");
        let job = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(job) = job {
            job();
        }
    }
}
