//! A recorder whose every handle is counted, so that a test can wait until
//! no thread can still perform an operation: an operation is performed
//! through the backend, so once the last handle the dispatcher gave out is
//! gone, nothing left can perform. "Cancelled" then means "and never
//! performed", checked in process and not at the cancellation mark.

use std::{io, sync::Arc, time::Duration};

use roxyd::platform::recorder::journal::Recorder;
use roxyd::{
    dispatch::{DispatchConfig, Dispatcher},
    platform::{
        GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError, Settlement, StartError,
    },
};
use tokio::sync::watch;

/// The [`Recorder`] a dispatcher gets, counted: every copy alive is one
/// place an operation could still be performed from.
#[derive(Debug)]
pub struct CountedRecorder {
    recorder: Recorder,
    alive: Arc<watch::Sender<usize>>,
}

impl CountedRecorder {
    fn new(recorder: Recorder, alive: Arc<watch::Sender<usize>>) -> Self {
        alive.send_modify(|n| *n += 1);
        Self { recorder, alive }
    }
}

impl Clone for CountedRecorder {
    fn clone(&self) -> Self {
        Self::new(self.recorder.clone(), Arc::clone(&self.alive))
    }
}

impl Drop for CountedRecorder {
    fn drop(&mut self) {
        self.alive.send_modify(|n| *n -= 1);
    }
}

impl PowerBackend for CountedRecorder {
    fn prepare(&self, op: ImmediateOp) -> Result<(), PrepareError> {
        self.recorder.prepare(op)
    }

    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        self.recorder.perform(op)
    }

    fn pending_settled(&self, op: ImmediateOp, how: Settlement) {
        self.recorder.pending_settled(op, how);
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        self.recorder.start_graceful(op)
    }
}

/// Counts the [`CountedRecorder`]s handed out for one recorder.
#[derive(Debug, Clone)]
pub struct BackendLifetime {
    alive: Arc<watch::Sender<usize>>,
}

impl BackendLifetime {
    /// How long [`Self::wait_all_gone`] waits: far more than a thread needs
    /// to end once nothing holds it, and far less than nextest's limit.
    pub const LIMIT: Duration = Duration::from_secs(20);

    /// A dispatcher on a counted copy of `recorder`, reporting to its
    /// journal, and the lifetime that counts it.
    pub fn dispatcher(
        recorder: &Recorder,
        config: DispatchConfig,
    ) -> (Dispatcher<CountedRecorder>, Self) {
        let (backend, lifetime) = Self::counted(recorder);
        let dispatcher =
            Dispatcher::new(backend, config).with_observer(Arc::new(recorder.journal().clone()));
        (dispatcher, lifetime)
    }

    /// A counted copy of `recorder` for a dispatcher the test builds itself,
    /// and the lifetime that counts it.
    pub fn counted(recorder: &Recorder) -> (CountedRecorder, Self) {
        let alive = Arc::new(watch::Sender::new(0));
        let backend = CountedRecorder::new(recorder.clone(), Arc::clone(&alive));
        (backend, Self { alive })
    }

    /// Waits until every counted copy was dropped: the dispatcher and every
    /// pending operation, thread or task that held one has ended, so no
    /// operation can be performed any more. Drop the dispatcher first. The
    /// limit runs on real time, also in tests on paused Tokio time: the last
    /// holder may be a thread, which paused time does not wait for.
    ///
    /// # Panics
    ///
    /// After [`Self::LIMIT`], naming the rule: something still holds the
    /// backend after the operation was settled.
    pub async fn wait_all_gone(&self) {
        let mut rx = self.alive.subscribe();
        let (expired, limit) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(Self::LIMIT);
            let _ = expired.send(());
        });
        let gone = tokio::select! {
            _ = rx.wait_for(|n| *n == 0) => true,
            _ = limit => false,
        };
        assert!(
            gone,
            "rule broken: something still holds the power backend {:?} after the operation \
             was settled ({} copies alive), so it could still perform it",
            Self::LIMIT,
            *self.alive.borrow()
        );
    }
}
