//! Which request streams wait for the Manager, since when, and closing them:
//! a stream silent for the idle timeout, and, when stream slots run short,
//! the streams that have waited longest.
//!
//! A stream is closed only while its read is pending: one at work (a request
//! being answered, a power operation pending) never is, and neither is one
//! whose bytes have arrived. Neither side keeps a timer per stream: a stream
//! marks itself waiting (one lock, no clock read unless its read is
//! pending), and the owner of its [`StreamActivity`] (the connection)
//! decides, on one timer of its own, which to close. Per-stream timers and
//! wake-up registrations were most of roxyd's cost per request when many
//! were in flight (docs/performance.md).

use std::{
    future::Future,
    pin::pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Poll, Waker},
    time::Duration,
};

use tokio::time::Instant;

/// Why a waiting stream was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// It waited for the Manager's bytes for the idle timeout.
    Idle,
    /// Stream slots ran short and it had waited longest.
    MakeRoom,
    /// roxyd is stopping: the stream serves no further request.
    Stopping,
}

#[derive(Debug, Default)]
struct State {
    /// Since when the stream's read is pending; `None` while it works.
    waiting_since: Option<Instant>,
    /// Set by the owner while the stream waits; the stream then ends.
    close: Option<CloseReason>,
    /// Wakes the waiting stream when it is closed.
    waker: Option<Waker>,
}

/// One stream's side of the bargain: whether it waits for the Manager's
/// next bytes, and since when, and a way to close it while it does.
#[derive(Debug, Default)]
pub struct StreamActivity {
    state: Mutex<State>,
    /// Set once by [`Self::stop`], never cleared: every later wait ends at
    /// once, whatever the stream was doing when the stop came.
    stopping: AtomicBool,
}

impl StreamActivity {
    /// Since when the stream waits for the Manager's bytes; `None` while it
    /// works, before it started, and once bytes that arrived are read.
    #[must_use]
    pub fn waiting_since(&self) -> Option<Instant> {
        self.lock().waiting_since
    }

    /// Closes the stream, for `reason`, if it has waited since `cutoff` or
    /// earlier and is still waiting.
    ///
    /// # Errors
    ///
    /// When it was not closed: since when it waits, or `None` when it works
    /// or is closing already.
    pub fn close_if_waiting_since(
        &self,
        cutoff: Instant,
        reason: CloseReason,
    ) -> Result<(), Option<Instant>> {
        let mut state = self.lock();
        if state.close.is_some() {
            return Err(None);
        }
        match state.waiting_since {
            Some(since) if since <= cutoff => {
                state.close = Some(reason);
                let waker = state.waker.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                Ok(())
            }
            since => Err(since),
        }
    }

    /// Ends the stream's wait for a request now, or its next one if it is at
    /// work: a stop lets work under way finish, and starts no more.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let waker = self.lock().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the stream was closed for `reason` and has not yet seen it.
    fn closing_for(&self, reason: CloseReason) -> bool {
        self.lock().close == Some(reason)
    }

    /// Since when the stream waits, unless it is closing already.
    fn waiting_open(&self) -> Option<Instant> {
        let state = self.lock();
        state
            .close
            .is_none()
            .then_some(state.waiting_since)
            .flatten()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `read`, marking the stream as waiting only while the read is
/// pending.
///
/// # Errors
///
/// When the stream was closed while it waited: the read is dropped then,
/// never once it has completed. After `StreamActivity::stop` it ends
/// before the read is polled: bytes that arrived are not served.
pub async fn wait<F: Future>(read: F, activity: &StreamActivity) -> Result<F::Output, CloseReason> {
    let mut read = pin!(read);
    let mut mark = Mark {
        activity,
        waiting: false,
    };
    std::future::poll_fn(|cx| {
        if activity.stopping.load(Ordering::Acquire) {
            mark.clear();
            return Poll::Ready(Err(CloseReason::Stopping));
        }
        if let Poll::Ready(output) = read.as_mut().poll(cx) {
            // A close that came with the bytes is moot: the stream works.
            mark.clear();
            return Poll::Ready(Ok(output));
        }
        let mut state = activity.lock();
        // A stop that took the waker before this wait registered it.
        if activity.stopping.load(Ordering::Acquire) {
            *state = State::default();
            mark.waiting = false;
            return Poll::Ready(Err(CloseReason::Stopping));
        }
        if let Some(reason) = state.close {
            *state = State::default();
            mark.waiting = false;
            return Poll::Ready(Err(reason));
        }
        if !mark.waiting {
            mark.waiting = true;
            state.waiting_since = Some(Instant::now());
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}

/// A stream's waiting mark, cleared when the wait ends, also by a drop: a
/// wait dropped while pending must not leave a mark or a close behind for
/// the stream's next read.
struct Mark<'a> {
    activity: &'a StreamActivity,
    waiting: bool,
}

impl Mark<'_> {
    fn clear(&mut self) {
        if std::mem::take(&mut self.waiting) {
            *self.activity.lock() = State::default();
        }
    }
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Closes `activity`'s stream once it has waited `idle` for the Manager;
/// never returns. For a stream served on its own, without a [`Streams`], as
/// tests serve it.
#[cfg(any(test, feature = "test-backend"))]
pub async fn close_when_idle(activity: &StreamActivity, idle: Duration) {
    let mut check = Instant::now() + idle;
    loop {
        tokio::time::sleep_until(check).await;
        check = close_if_idle(activity, Instant::now(), idle);
    }
}

/// Closes `activity`'s stream if it has waited `idle` or longer at `now`;
/// returns when to look at it again: when it reaches `idle`, if it waits
/// and was not closed, else `idle` from now (a stream that starts waiting
/// later is due no sooner).
fn close_if_idle(activity: &StreamActivity, now: Instant, idle: Duration) -> Instant {
    let later = now + idle;
    // Earlier than the clock's origin: no stream can have waited so long.
    let Some(cutoff) = now.checked_sub(idle) else {
        return later;
    };
    match activity.close_if_waiting_since(cutoff, CloseReason::Idle) {
        Err(Some(since)) => since + idle,
        Ok(()) | Err(None) => later,
    }
}

/// The stream tasks of one connection, by their [`StreamActivity`] (one per
/// task). A task is tracked while anyone else
/// holds its activity (the task does, until it ends); entries of ended tasks
/// are dropped in bulk as the list grows, so that a long connection does not
/// accumulate them.
#[derive(Debug)]
pub struct Streams {
    live: Vec<Arc<StreamActivity>>,
    /// Length past which ended entries are dropped.
    prune_at: usize,
}

impl Streams {
    /// An empty list that expects at most about `limit` streams at once.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self {
            live: Vec::new(),
            prune_at: limit.saturating_mul(2).max(16),
        }
    }

    /// A new stream task's activity, tracked until every other holder
    /// dropped it.
    pub fn track(&mut self) -> Arc<StreamActivity> {
        if self.live.len() >= self.prune_at {
            self.live.retain(|activity| Arc::strong_count(activity) > 1);
            self.prune_at = self.live.len().saturating_mul(2).max(self.prune_at);
        }
        let activity = Arc::new(StreamActivity::default());
        self.live.push(Arc::clone(&activity));
        activity
    }

    /// The activities whose task still runs (holds its activity).
    fn running(&self) -> impl Iterator<Item = &Arc<StreamActivity>> {
        self.live
            .iter()
            .filter(|activity| Arc::strong_count(activity) > 1)
    }

    /// How many entries the list holds, ended streams' included until they
    /// are dropped; for tests.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether the list holds no entry; for tests.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// How many running streams were closed to make room and have not yet
    /// seen it.
    #[must_use]
    pub(crate) fn closing_to_make_room(&self) -> usize {
        self.running()
            .filter(|activity| activity.closing_for(CloseReason::MakeRoom))
            .count()
    }

    /// Since when the stream that has waited longest waits, among those not
    /// closing already.
    #[must_use]
    pub(crate) fn earliest_waiting(&self) -> Option<Instant> {
        self.running().filter_map(|a| a.waiting_open()).min()
    }

    /// Closes every stream that has waited `idle` or longer at `now`, and
    /// returns when to look again: when the next waiting stream reaches
    /// `idle`, or `idle` from now.
    #[must_use = "the time to look again"]
    pub fn close_idle(&self, now: Instant, idle: Duration) -> Instant {
        self.running()
            .map(|activity| close_if_idle(activity, now, idle))
            .fold(now + idle, Instant::min)
    }

    /// Stops every running stream ([`StreamActivity::stop`]): those waiting
    /// for a request end now, those at work once their work is done.
    pub(crate) fn stop(&self) {
        for activity in self.running() {
            activity.stop();
        }
    }

    /// Closes up to `count` of the streams that have waited longest, each for
    /// at least `closable_after` at `now`; returns how many and the longest
    /// wait among them.
    #[must_use = "how many were closed"]
    pub fn close_longest_waiting(
        &self,
        now: Instant,
        closable_after: Duration,
        count: usize,
    ) -> (usize, Duration) {
        let Some(cutoff) = now.checked_sub(closable_after) else {
            return (0, Duration::ZERO);
        };
        let mut waiting: Vec<(Instant, &StreamActivity)> = self
            .running()
            .filter_map(|activity| Some((activity.waiting_since()?, &**activity)))
            .filter(|(since, _)| *since <= cutoff)
            .collect();
        waiting.sort_unstable_by_key(|(since, _)| *since);
        let longest = waiting
            .first()
            .map_or(Duration::ZERO, |(since, _)| now - *since);
        let mut closed = 0;
        for (_, activity) in waiting {
            if closed == count {
                break;
            }
            if activity
                .close_if_waiting_since(cutoff, CloseReason::MakeRoom)
                .is_ok()
            {
                closed += 1;
            }
        }
        (closed, longest)
    }
}
