//! Stream tasks that serve one stream after another (`connection::workers`):
//! a job goes to an idle worker or comes back for a new one, and every way
//! out ends the workers: a close, the pool's drop, a panic.

use std::time::Duration;

use roxyd::connection::workers::Workers;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// Longest any step may take; a test that needs more has failed.
const BOUND: Duration = Duration::from_secs(10);

/// A job: a name, and what the worker waits for before it is done with it.
struct Job {
    name: u32,
    done: Option<oneshot::Receiver<()>>,
    /// Told when the job is dropped, served or not.
    dropped: Option<oneshot::Sender<u32>>,
}

impl Job {
    fn quick(name: u32) -> Self {
        Self {
            name,
            done: None,
            dropped: None,
        }
    }

    /// A job that lasts until the returned sender sends (or is dropped).
    fn held(name: u32) -> (Self, oneshot::Sender<()>) {
        let (finish, done) = oneshot::channel();
        (
            Self {
                name,
                done: Some(done),
                dropped: None,
            },
            finish,
        )
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(dropped) = self.dropped.take() {
            let _ = dropped.send(self.name);
        }
    }
}

/// Starts a worker on `first`; it reports `(worker, job)` for every job it
/// serves. Returns its task.
fn start(
    pool: &Workers<Job>,
    worker: u32,
    first: Job,
    served: &mpsc::UnboundedSender<(u32, u32)>,
) -> JoinHandle<()> {
    let served = served.clone();
    tokio::spawn(pool.worker(first, async move |mut job: Job| {
        if let Some(done) = job.done.take() {
            let _ = done.await;
        }
        let _ = served.send((worker, job.name));
    }))
}

/// Waits, within the bound, until `count` workers are idle.
async fn until_idle(pool: &Workers<Job>, count: usize) {
    tokio::time::timeout(BOUND, async {
        while pool.idle() != count {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("workers did not become idle");
}

async fn next(served: &mut mpsc::UnboundedReceiver<(u32, u32)>) -> (u32, u32) {
    tokio::time::timeout(BOUND, served.recv())
        .await
        .expect("no job served in time")
        .expect("every worker ended")
}

async fn ends(task: JoinHandle<()>) {
    tokio::time::timeout(BOUND, task)
        .await
        .expect("the worker did not end")
        .expect("the worker panicked");
}

/// A pool with one worker, 7, that has served job 1 and waits for the next.
struct OneIdle {
    pool: Workers<Job>,
    served_tx: mpsc::UnboundedSender<(u32, u32)>,
    served: mpsc::UnboundedReceiver<(u32, u32)>,
    task: JoinHandle<()>,
}

async fn one_idle_worker() -> OneIdle {
    let pool = Workers::default();
    let (served_tx, mut served) = mpsc::unbounded_channel();
    let task = start(&pool, 7, Job::quick(1), &served_tx);
    assert_eq!(next(&mut served).await, (7, 1));
    until_idle(&pool, 1).await;
    OneIdle {
        pool,
        served_tx,
        served,
        task,
    }
}

#[tokio::test]
async fn with_no_worker_the_job_comes_back() {
    let pool = Workers::default();
    let job = pool
        .hand_off(Job::quick(1))
        .expect_err("no worker to take it");
    assert_eq!(job.name, 1);
}

#[tokio::test]
async fn a_worker_done_with_its_job_takes_the_next_one() {
    let OneIdle {
        pool, mut served, ..
    } = one_idle_worker().await;
    assert!(pool.hand_off(Job::quick(2)).is_ok());
    assert_eq!(next(&mut served).await, (7, 2));
    until_idle(&pool, 1).await;
}

#[tokio::test]
async fn a_busy_worker_is_not_handed_a_job() {
    let pool = Workers::default();
    let (served_tx, mut served) = mpsc::unbounded_channel();
    let (first, finish) = Job::held(1);
    let _task = start(&pool, 7, first, &served_tx);
    tokio::task::yield_now().await;
    let job = pool
        .hand_off(Job::quick(2))
        .expect_err("the only worker is busy");
    assert_eq!(job.name, 2);
    finish.send(()).unwrap();
    assert_eq!(next(&mut served).await, (7, 1));
}

#[tokio::test]
async fn one_idle_worker_takes_one_job_and_the_next_comes_back() {
    let OneIdle {
        pool, mut served, ..
    } = one_idle_worker().await;
    let (second, finish) = Job::held(2);
    assert!(pool.hand_off(second).is_ok());
    // Handed off but not yet taken: the idle worker is spoken for.
    let third = pool
        .hand_off(Job::quick(3))
        .expect_err("the one idle worker already has a job");
    assert_eq!(third.name, 3);
    finish.send(()).unwrap();
    assert_eq!(next(&mut served).await, (7, 2));
}

#[tokio::test]
async fn close_ends_an_idle_worker_at_once() {
    let OneIdle { pool, task, .. } = one_idle_worker().await;
    pool.close();
    ends(task).await;
    assert_eq!(pool.idle(), 0);
}

#[tokio::test]
async fn close_lets_a_busy_worker_finish_its_job_then_ends_it() {
    let pool = Workers::default();
    let (served_tx, mut served) = mpsc::unbounded_channel();
    let (first, finish) = Job::held(1);
    let task = start(&pool, 7, first, &served_tx);
    tokio::task::yield_now().await;
    pool.close();
    assert!(!task.is_finished());
    finish.send(()).unwrap();
    assert_eq!(next(&mut served).await, (7, 1));
    ends(task).await;
}

#[tokio::test]
async fn after_close_every_job_comes_back() {
    let OneIdle { pool, task, .. } = one_idle_worker().await;
    pool.close();
    assert_eq!(pool.hand_off(Job::quick(2)).expect_err("closed").name, 2);
    ends(task).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_not_yet_taken_at_close_is_dropped_unserved() {
    let OneIdle {
        pool,
        served_tx,
        mut served,
        task,
    } = one_idle_worker().await;
    let (dropped_tx, dropped) = oneshot::channel();
    let mut job = Job::quick(2);
    job.dropped = Some(dropped_tx);
    assert!(pool.hand_off(job).is_ok());
    // One thread: the worker cannot run before the close.
    pool.close();
    assert_eq!(dropped.await, Ok(2));
    ends(task).await;
    drop(served_tx);
    assert_eq!(served.recv().await, None, "the job was served after all");
}

#[tokio::test]
async fn dropping_the_pool_ends_its_idle_workers() {
    let OneIdle { pool, task, .. } = one_idle_worker().await;
    drop(pool);
    ends(task).await;
}

#[tokio::test]
async fn a_worker_that_panics_ends_alone() {
    let pool: Workers<Job> = Workers::default();
    let (served_tx, mut served) = mpsc::unbounded_channel();
    let steady = start(&pool, 7, Job::quick(1), &served_tx);
    next(&mut served).await;
    let failing = tokio::spawn(pool.worker(Job::quick(2), async move |_job: Job| {
        panic!("a stream task's bug");
    }));
    let outcome = tokio::time::timeout(BOUND, failing).await.unwrap();
    assert!(outcome.unwrap_err().is_panic());
    until_idle(&pool, 1).await;
    assert!(pool.hand_off(Job::quick(3)).is_ok());
    assert_eq!(next(&mut served).await, (7, 3));
    pool.close();
    ends(steady).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_threads_every_job_is_served_exactly_once() {
    const JOBS: u32 = 2_000;
    let pool = Workers::default();
    let (served_tx, mut served) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for name in 0..JOBS {
        if let Err(job) = pool.hand_off(Job::quick(name)) {
            let served = served_tx.clone();
            // Each job yields once, so that workers overlap and idle ones
            // are woken from another thread.
            tasks.push(tokio::spawn(pool.worker(job, async move |job: Job| {
                tokio::task::yield_now().await;
                let _ = served.send(job.name);
            })));
        }
        if name % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut seen = vec![0_u32; JOBS as usize];
    for _ in 0..JOBS {
        let name = tokio::time::timeout(BOUND, served.recv())
            .await
            .expect("not every job was served in time")
            .expect("a worker ended early");
        seen[name as usize] += 1;
    }
    assert!(
        seen.iter().all(|count| *count == 1),
        "a job was served twice"
    );
    pool.close();
    for task in tasks {
        ends(task).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_handed_off_goes_to_the_worker_woken_for_it() {
    let pool = Workers::default();
    let (served_tx, mut served) = mpsc::unbounded_channel();
    let (first, finish) = Job::held(1);
    let busy = start(&pool, 1, first, &served_tx);
    let idle = start(&pool, 2, Job::quick(2), &served_tx);
    assert_eq!(next(&mut served).await, (2, 2));
    until_idle(&pool, 1).await;
    // One thread, run in the order woken: worker 1 finishes its job before
    // worker 2, woken for the new one, runs; it must leave that job alone.
    finish.send(()).unwrap();
    assert!(pool.hand_off(Job::quick(3)).is_ok());
    assert_eq!(next(&mut served).await, (1, 1));
    assert_eq!(next(&mut served).await, (2, 3));
    until_idle(&pool, 2).await;
    pool.close();
    ends(busy).await;
    ends(idle).await;
}
