//! A prepared immediate operation and the proofs that let it run.
//!
//! Rules a reader must not break: a [`PendingPowerOp`] runs only through
//! [`PendingPowerOp::release`], which consumes it and takes a
//! [`ReleaseProof`]; the proofs are made only in [`super::immediate`], by the
//! reply writer and by the decline check. Dropping it cancels it. Either way
//! the backend hears of it at that moment ([`PowerBackend::pending_settled`]).

use std::{
    sync::{Arc, Mutex, PoisonError},
    thread,
};

use tokio::sync::watch;

use super::latch::PowerLatch;
use crate::{
    platform::{ImmediateOp, PowerBackend, Settlement},
    power_log::{self, Asked, PowerLog, Recorded, Reply},
    reply::Delivery,
};

/// Proof that a success reply for a power request was written on the
/// request's stream. Only [`super::immediate::write_initiated`] makes one.
#[derive(Debug)]
pub(crate) struct ReplyWritten {
    /// The Manager acknowledged it (see [`Self::confirmed`]).
    acknowledged: bool,
}

impl ReplyWritten {
    /// Only the reply writer, [`super::immediate::write_initiated`], calls this.
    pub(super) fn new() -> Self {
        Self {
            acknowledged: false,
        }
    }

    /// The proof, with what the wait for the Manager's acknowledgement gave:
    /// the power log records the reply `delivered` or `unconfirmed`.
    #[must_use]
    #[allow(
        clippy::unused_self,
        reason = "consumes the proof it replaces, so only one of the two can be used"
    )]
    pub(crate) fn confirmed(self, delivery: &Delivery) -> Self {
        Self {
            acknowledged: matches!(delivery, Delivery::Acknowledged),
        }
    }
}

/// Proof that the Manager declined the success reply of an immediate power
/// request, as a review-protocol 0.19 Manager does: it stopped roxyd's send
/// side with `STOP_SENDING` code 0 promptly, and finished its own send side
/// right after the request. Only [`super::immediate::recognise_decline`] makes one.
#[derive(Debug)]
pub(crate) struct ReplyDeclined {
    _private: (),
}

impl ReplyDeclined {
    /// Only the decline check, [`super::immediate::recognise_decline`],
    /// calls this.
    pub(super) fn new() -> Self {
        Self { _private: () }
    }
}

/// What entitles a pending immediate operation to run: either the Manager
/// was given the reply, or it declined it. Nothing else converts into this.
#[derive(Debug)]
pub(crate) enum ReleaseProof {
    /// The success reply was written on the request's stream.
    Written(ReplyWritten),
    /// The Manager declined the reply (fire-and-forget).
    Declined(ReplyDeclined),
}

impl From<ReplyWritten> for ReleaseProof {
    fn from(proof: ReplyWritten) -> Self {
        Self::Written(proof)
    }
}

impl From<ReplyDeclined> for ReleaseProof {
    fn from(proof: ReplyDeclined) -> Self {
        Self::Declined(proof)
    }
}

/// An immediate power operation that has been checked but not run.
///
/// It runs only through `release`, which consumes it and
/// takes a `ReleaseProof` that only the reply writer
/// (`super::immediate::write_initiated`) or the decline check
/// (`super::immediate::recognise_decline`) can make, so "release before the
/// reply", "release twice" and "use after release" do not compile. Dropping
/// it instead cancels it: nothing happens, and the next power request may
/// proceed.
#[must_use = "dropping a PendingPowerOp cancels it"]
#[derive(Debug)]
pub struct PendingPowerOp<B: PowerBackend> {
    op: ImmediateOp,
    backend: Arc<B>,
    performing: Arc<watch::Sender<usize>>,
    /// `Some` until released; a drop with it still here is a cancellation.
    latch: Option<PowerLatch>,
    /// Where the release is recorded.
    log: PowerLog,
    /// What was asked, as the power log records it.
    asked: Asked,
}

impl<B: PowerBackend> PendingPowerOp<B> {
    /// A pending `op`, asked as `asked`, holding the immediate `latch`; its
    /// release is recorded in `log`.
    pub(super) fn new(
        op: ImmediateOp,
        backend: Arc<B>,
        performing: Arc<watch::Sender<usize>>,
        latch: PowerLatch,
        log: PowerLog,
        asked: Asked,
    ) -> Self {
        Self {
            op,
            backend,
            performing,
            latch: Some(latch),
            log,
            asked,
        }
    }
}

impl<B: PowerBackend> PendingPowerOp<B> {
    /// The operation.
    #[must_use]
    pub(crate) fn op(&self) -> ImmediateOp {
        self.op
    }

    /// Runs the operation on a thread of its own, off the async runtime, and
    /// returns at once; if no thread can be started, it runs here instead,
    /// since a promised operation must not be lost. The caller must have
    /// written the success reply on the request's stream, or seen the Manager
    /// decline it: `proof` says which.
    ///
    /// On that thread, before the operation, the release is recorded in the
    /// power log, waiting at most [`power_log::RELEASE_WAIT`]; the backend's
    /// `sync(2)` then makes the entry durable.
    ///
    /// An error from the backend is logged; the Manager was already told
    /// `Initiated`, or asked for no answer.
    pub(crate) fn release(mut self, proof: impl Into<ReleaseProof>) {
        let op = self.op;
        let backend = Arc::clone(&self.backend);
        let latch = self.latch.take();
        let performing = Performing::start(&self.performing);
        backend.pending_settled(op, Settlement::Released);
        let (after, reply) = match proof.into() {
            ReleaseProof::Written(ReplyWritten { acknowledged: true }) => {
                ("reply written", Reply::Delivered)
            }
            ReleaseProof::Written(_) => ("reply written", Reply::Unconfirmed),
            ReleaseProof::Declined(_) => ("reply declined", Reply::Declined),
        };
        tracing::info!(%op, after, "releasing power operation");
        let (log, asked) = (std::mem::take(&mut self.log), self.asked);
        run_detached("roxyd-power", move || {
            let recorded = log.released(asked, reply);
            if recorded == Recorded::TimedOut {
                tracing::warn!(%op, wait_ms = power_log::RELEASE_WAIT.as_millis(), "the power log did not take the entry in time; going on without it");
            } else {
                tracing::debug!(%op, ?recorded, "release recorded in the power log");
            }
            let result = backend.perform(op);
            drop(latch);
            match result {
                // Only the recorder returns from a successful operation.
                Ok(()) => tracing::info!(%op, "backend returned; the host stays up"),
                Err(e) => tracing::error!(%op, error = %e, "power operation failed after release"),
            }
            drop(performing);
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

/// One released operation being performed, counted from its release until
/// the guard is dropped: when `perform` returned, or by the unwinding of a
/// panic in it, or with the job should it never run.
pub(super) struct Performing(Arc<watch::Sender<usize>>);

impl Performing {
    fn start(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(Arc::clone(count))
    }
}

impl Drop for Performing {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Runs `job` on a new named thread, or here if no thread can be started: a
/// power operation that was promised must not be lost to a full thread table.
pub(super) fn run_detached(name: &str, job: impl FnOnce() + Send + 'static) {
    let slot = Arc::new(Mutex::new(Some(job)));
    let theirs = Arc::clone(&slot);
    // The job's lines carry the request's span, as the caller's do.
    let span = tracing::Span::current();
    let spawned = thread::Builder::new().name(name.to_owned()).spawn(move || {
        let job = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(job) = job {
            span.in_scope(job);
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
