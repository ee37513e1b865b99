//! The `test-backend` recorder: notes each call, in order, instead of acting.
//!
//! Its [`Journal`] is also a [`DispatchObserver`], so one list holds both the
//! dispatch layer's steps (reply written, released) and the backend calls, in
//! the order they happened. Tests wait on it with [`Journal::wait_for`], an
//! explicit signal, never a sleep.

use std::{
    io,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError, StartError};
use crate::{
    dispatch::{DispatchConfig, DispatchEvent, DispatchObserver, Dispatcher},
    reply::Delivery,
};

/// One thing the recorder saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A step of the dispatch layer.
    Dispatch(DispatchEvent),
    /// [`PowerBackend::prepare`] was called.
    Prepare(ImmediateOp),
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
#[derive(Clone, Debug)]
pub struct Journal {
    entries: Arc<watch::Sender<Vec<(Instant, Entry)>>>,
    /// Most entries kept; the oldest half goes when it is reached.
    capacity: usize,
}

impl Default for Journal {
    /// A journal that keeps everything, for tests that read it whole.
    fn default() -> Self {
        Self::with_capacity(usize::MAX)
    }
}

impl Journal {
    /// A journal that keeps at most about `capacity` recent entries.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Arc::new(watch::Sender::new(Vec::new())),
            capacity: capacity.max(2),
        }
    }

    /// Appends `entry` and wakes every waiter.
    pub fn push(&self, entry: Entry) {
        self.entries.send_modify(|entries| {
            if entries.len() >= self.capacity {
                entries.drain(..self.capacity / 2);
            }
            entries.push((Instant::now(), entry));
        });
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
    pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

    /// Waits until `done` holds for the entries, then returns a copy of them.
    ///
    /// # Panics
    ///
    /// When `done` does not hold within [`Self::WAIT_LIMIT`].
    pub async fn wait_for(&self, done: impl FnMut(&[Entry]) -> bool) -> Vec<Entry> {
        self.wait_for_within(Self::WAIT_LIMIT, done).await
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

/// Entries a daemon's recorder keeps.
const DAEMON_JOURNAL_CAPACITY: usize = 1024;

/// The recording backend. Clones share one journal and one behaviour.
#[derive(Clone, Debug, Default)]
pub struct RecordingBackend {
    journal: Journal,
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
    /// A recorder that accepts every call and keeps its whole journal.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The recorder a `test-backend` daemon runs on: nothing reads its
    /// journal (the calls are logged), so it keeps only the latest entries
    /// and a long-running daemon does not grow.
    #[must_use]
    pub fn for_daemon() -> Self {
        Self {
            journal: Journal::with_capacity(DAEMON_JOURNAL_CAPACITY),
            ..Self::default()
        }
    }

    /// The journal shared by this recorder and its clones.
    #[must_use]
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// A dispatcher on this recorder (a clone) that reports its steps to the
    /// same journal, so that one list shows "reply written" before
    /// "performed".
    #[must_use]
    pub fn dispatcher(&self, config: DispatchConfig) -> Dispatcher<Self> {
        Dispatcher::new(self.clone(), config).with_observer(Arc::new(self.journal.clone()))
    }

    /// Makes [`PowerBackend::prepare`] fail (or succeed again).
    pub fn set_refuse_prepare(&self, refuse: bool) {
        self.refuse_prepare.store(refuse, Ordering::SeqCst);
    }

    /// Makes [`PowerBackend::start_graceful`] fail (or succeed again).
    pub fn set_fail_start(&self, fail: bool) {
        self.fail_start.store(fail, Ordering::SeqCst);
    }

    /// Makes [`PowerBackend::perform`] wait, after recording the call, until
    /// the gate is opened again with `false`.
    pub fn set_hold_perform(&self, hold: bool) {
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
        self.journal.push(Entry::Prepare(op));
        if self.refuse_prepare.load(Ordering::SeqCst) {
            return Err(PrepareError::Refused);
        }
        Ok(())
    }

    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        tracing::info!(%op, "recording backend: would perform now (nothing done)");
        self.journal.push(Entry::Perform(op));
        let gate = &self.perform_gate;
        let held = gate.held.lock().unwrap_or_else(PoisonError::into_inner);
        drop(
            gate.opened
                .wait_while(held, |held| *held)
                .unwrap_or_else(PoisonError::into_inner),
        );
        Ok(())
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        if self.fail_start.load(Ordering::SeqCst) {
            return Err(StartError::Refused);
        }
        tracing::info!(%op, "recording backend: would start the command now (nothing done)");
        self.journal.push(Entry::StartGraceful(op));
        Ok(GracefulStart::Simulated)
    }
}
