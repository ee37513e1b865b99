//! One ordered list of what the dispatch layer did and what the recorder was
//! asked to do, for tests, the demo and benchmarks (`test-backend` feature).
//!
//! [`Journal`] is both a [`DispatchObserver`] and the recorder's
//! `CallLog`, so one list shows "reply written" before "performed".
//! [`Recorder`] is the recording backend wired to a fresh journal. Tests wait
//! on the journal with [`Journal::wait_for`], an explicit signal with a time
//! limit, never a sleep.

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{Call, CallLog, RecordingBackend};
use crate::{
    dispatch::{DispatchConfig, DispatchEvent, DispatchObserver, Dispatcher},
    platform::{
        GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError, Settlement, StartError,
    },
    reply::Delivery,
};

/// One thing the recorder saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A step of the dispatch layer.
    Dispatch(DispatchEvent),
    /// [`PowerBackend::prepare`] was called.
    Prepare(ImmediateOp),
    /// A prepared operation was released or cancelled, noted by the pending
    /// operation itself at that moment ([`PowerBackend::pending_settled`]).
    Settled(ImmediateOp, Settlement),
    /// [`PowerBackend::perform`] was called: on a real backend, the host
    /// would now go down.
    Perform(ImmediateOp),
    /// [`PowerBackend::start_graceful`] was called and succeeded.
    StartGraceful(GracefulOp),
}

impl Entry {
    /// Whether this entry is a power operation actually carried out.
    #[must_use]
    pub fn is_power_operation(&self) -> bool {
        matches!(self, Self::Perform(_) | Self::StartGraceful(_))
    }

    /// Whether this entry says a reply reached the Manager: acknowledged,
    /// or the stream closed by the Manager with code 0 once it had read the
    /// reply (the reference Manager drops its streams, so its `STOP_SENDING`
    /// may overtake the acknowledgement).
    #[must_use]
    pub fn is_reply_delivered(&self) -> bool {
        matches!(
            self,
            Self::Dispatch(DispatchEvent::DeliveryConfirmed(
                Delivery::Acknowledged | Delivery::Stopped(0)
            ))
        )
    }
}

/// The shared, ordered list of [`Entry`]s, each with the time it was noted.
///
/// It keeps everything: tests, the demo and benchmarks read it whole. The
/// daemon's recorder keeps nothing (`super::LogLines`).
#[derive(Clone, Debug, Default)]
pub struct Journal {
    entries: Arc<watch::Sender<Vec<(Instant, Entry)>>>,
}

impl Journal {
    /// Appends `entry` and wakes every waiter.
    pub(crate) fn push(&self, entry: Entry) {
        self.entries
            .send_modify(|entries| entries.push((Instant::now(), entry)));
    }

    /// A copy of everything recorded so far.
    #[must_use]
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .borrow()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// A copy of everything recorded so far, with the time of each.
    #[must_use]
    pub fn timed_entries(&self) -> Vec<(Instant, Entry)> {
        self.entries.borrow().clone()
    }

    /// The power operations carried out so far.
    #[must_use]
    pub fn power_operations(&self) -> Vec<Entry> {
        self.entries
            .borrow()
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.is_power_operation())
            .cloned()
            .collect()
    }

    /// How long [`Self::wait_for`] waits: a safety net that turns a hang
    /// into a failure that shows the entries, not a time tests rely on.
    pub(crate) const WAIT_LIMIT: Duration = Duration::from_secs(60);

    /// Waits until `done` holds for the entries, then returns a copy of them.
    ///
    /// # Panics
    ///
    /// When `done` does not hold within `Self::WAIT_LIMIT`.
    pub async fn wait_for(&self, done: impl FnMut(&[Entry]) -> bool) -> Vec<Entry> {
        self.wait_for_within(Self::WAIT_LIMIT, done).await
    }

    /// Waits until the pending `op` was released or cancelled, and returns
    /// which: the mark is left before anything runs.
    ///
    /// # Panics
    ///
    /// When `op` is not settled within `Self::WAIT_LIMIT`.
    pub async fn settlement(&self, op: ImmediateOp) -> Settlement {
        let settled = |e: &Entry| match e {
            Entry::Settled(o, how) if *o == op => Some(*how),
            _ => None,
        };
        self.wait_for(|entries| entries.iter().any(|e| settled(e).is_some()))
            .await
            .iter()
            .find_map(settled)
            .expect("the settlement waited for")
    }

    /// [`Self::wait_for`] with its own time limit.
    ///
    /// # Panics
    ///
    /// When `done` does not hold within `limit`; the message lists the
    /// entries recorded by then.
    pub async fn wait_for_within(
        &self,
        limit: Duration,
        mut done: impl FnMut(&[Entry]) -> bool,
    ) -> Vec<Entry> {
        let mut rx = self.entries.subscribe();
        let mut plain = Vec::new();
        // The sender lives in `self`, so the channel cannot close.
        let reached = tokio::time::timeout(
            limit,
            rx.wait_for(|entries| {
                plain = entries.iter().map(|(_, e)| e.clone()).collect();
                done(&plain)
            }),
        )
        .await
        .is_ok();
        assert!(
            reached,
            "the journal did not reach the awaited state within {limit:?}; it holds {:#?}",
            self.entries()
        );
        plain
    }
}

impl DispatchObserver for Journal {
    fn on_event(&self, event: &DispatchEvent) {
        self.push(Entry::Dispatch(event.clone()));
    }
}

impl CallLog for Journal {
    fn note(&self, call: Call) {
        self.push(match call {
            Call::Prepare(op) => Entry::Prepare(op),
            Call::Perform(op) => Entry::Perform(op),
            Call::Settled(op, how) => Entry::Settled(op, how),
            Call::StartGraceful(op) => Entry::StartGraceful(op),
        });
    }
}

/// The recording backend wired to a journal of its own. Clones share both.
#[derive(Clone, Debug)]
pub struct Recorder {
    backend: RecordingBackend,
    journal: Journal,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder that accepts every call, with a journal that keeps all.
    #[must_use]
    pub fn new() -> Self {
        let journal = Journal::default();
        Self {
            backend: RecordingBackend::logging_to(Arc::new(journal.clone())),
            journal,
        }
    }

    /// The journal shared by this recorder and its clones.
    #[must_use]
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// A dispatcher on this recorder (a clone) that reports its steps to the
    /// same journal.
    #[must_use]
    pub fn dispatcher(&self, config: DispatchConfig) -> Dispatcher<Self> {
        Dispatcher::new(self.clone(), config).with_observer(Arc::new(self.journal.clone()))
    }

    /// Makes [`PowerBackend::prepare`] fail (or succeed again).
    pub fn set_refuse_prepare(&self, refuse: bool) {
        self.backend.set_refuse_prepare(refuse);
    }

    /// Makes [`PowerBackend::start_graceful`] fail (or succeed again).
    pub fn set_fail_start(&self, fail: bool) {
        self.backend.set_fail_start(fail);
    }

    /// Makes [`PowerBackend::perform`] wait, after recording the call, until
    /// the gate is opened again with `false`.
    pub fn set_hold_perform(&self, hold: bool) {
        self.backend.set_hold_perform(hold);
    }
}

impl PowerBackend for Recorder {
    fn prepare(&self, op: ImmediateOp) -> Result<(), PrepareError> {
        self.backend.prepare(op)
    }

    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        self.backend.perform(op)
    }

    fn pending_settled(&self, op: ImmediateOp, how: Settlement) {
        self.backend.pending_settled(op, how);
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        self.backend.start_graceful(op)
    }
}
