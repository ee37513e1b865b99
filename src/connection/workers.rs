//! Stream tasks that outlive their stream. A task that has served one
//! request stream waits for the next one, so that a new stream costs a
//! hand-off instead of a task: the task's allocation (cache-line aligned,
//! so never from the allocator's fast path) and its release were the
//! largest per-stream cost roxyd had left beside the bare agent (issue 12).
//!
//! A worker is started only when no idle one is left, so there are never
//! more than the most streams served at once, which the stream limit
//! bounds. Ways out: closing the pool (the connection's end, or its drop)
//! ends every idle worker at once and every busy one after its stream; a
//! worker that panics ends alone, its stream's guards dropped on the way.

use std::{
    collections::VecDeque,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::Notify;

/// Hands jobs to idle workers, or says that a new one is needed.
#[derive(Debug)]
pub struct Workers<J> {
    shared: Arc<Shared<J>>,
}

#[derive(Debug)]
struct Shared<J> {
    queue: Mutex<Queue<J>>,
    /// Wakes idle workers: one per job handed off, all on close.
    wake: Notify,
}

#[derive(Debug)]
struct Queue<J> {
    /// Jobs handed off and not yet taken, each by a worker woken for it;
    /// never more than `idle`.
    jobs: VecDeque<J>,
    /// Workers waiting for a job, counted until they have looked again.
    idle: usize,
    /// Set once: no job is handed off any more.
    closed: bool,
}

impl<J> Shared<J> {
    fn lock(&self) -> MutexGuard<'_, Queue<J>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<J> Default for Workers<J> {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    idle: 0,
                    closed: false,
                }),
                wake: Notify::new(),
            }),
        }
    }
}

impl<J> Workers<J> {
    /// Gives `job` to an idle worker; when none is left (or the pool is
    /// closed), returns it, for a worker of its own: see [`Self::worker`].
    ///
    /// # Errors
    ///
    /// The job itself, when no idle worker takes it.
    pub fn hand_off(&self, job: J) -> Result<(), J> {
        let mut queue = self.shared.lock();
        if queue.closed || queue.idle <= queue.jobs.len() {
            return Err(job);
        }
        queue.jobs.push_back(job);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// A new worker: runs `serve` on `first`, then on every job handed off
    /// to it, until the pool is closed.
    pub fn worker<S>(&self, first: J, mut serve: S) -> impl Future<Output = ()> + use<J, S>
    where
        S: AsyncFnMut(J),
    {
        let shared = Arc::clone(&self.shared);
        async move {
            let mut job = Some(first);
            loop {
                if let Some(job) = job.take() {
                    serve(job).await;
                }
                // Registered before it is counted idle: the hand-off that
                // counts on it wakes it. A queued job is the woken worker's
                // alone: a worker that has just finished its stream does not
                // take it (that woke the other for nothing, and measured 5%
                // slower at 32 in flight).
                let mut woken = pin!(shared.wake.notified());
                woken.as_mut().enable();
                {
                    let mut queue = shared.lock();
                    if queue.closed {
                        return;
                    }
                    queue.idle += 1;
                }
                woken.await;
                let mut queue = shared.lock();
                queue.idle -= 1;
                job = queue.jobs.pop_front();
                if job.is_none() && queue.closed {
                    return;
                }
            }
        }
    }

    /// Closes the pool: jobs not yet taken are dropped, idle workers end
    /// now, busy ones after their job.
    pub fn close(&self) {
        let mut queue = self.shared.lock();
        queue.closed = true;
        let dropped = std::mem::take(&mut queue.jobs);
        drop(queue);
        drop(dropped);
        self.shared.wake.notify_waiters();
    }

    /// How many workers wait for a job.
    #[must_use]
    pub fn idle(&self) -> usize {
        self.shared.lock().idle
    }
}

impl<J> Drop for Workers<J> {
    fn drop(&mut self) {
        self.close();
    }
}
