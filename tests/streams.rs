//! Closing waiting streams (`connection::streams`), in memory on paused time:
//! only a stream whose read is pending is closed, for the idle timeout or to
//! make room, and the owner's single timer looks again exactly when the
//! next waiting stream reaches the idle timeout.

mod support;

use std::{sync::Arc, time::Duration};

use roxyd::connection::streams::{self, CloseReason, StreamActivity, Streams};
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};

const IDLE: Duration = Duration::from_secs(60);

/// A stream parked at a read that completes when the returned sender sends.
fn parked(
    activity: &Arc<StreamActivity>,
) -> (oneshot::Sender<u8>, JoinHandle<Result<u8, CloseReason>>) {
    let (bytes, read) = oneshot::channel::<u8>();
    let activity = Arc::clone(activity);
    let task =
        tokio::spawn(
            async move { streams::wait(async { read.await.unwrap_or(0) }, &activity).await },
        );
    (bytes, task)
}

/// Lets every spawned task run until it waits.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_read_that_completes_at_once_never_marks_the_stream_waiting() {
    support::bounded(
        "a read that completes at once never marks the stream waiting",
        async move {
            let activity = StreamActivity::default();
            let output = streams::wait(async { 7 }, &activity).await;
            assert_eq!(output, Ok(7));
            assert_eq!(activity.waiting_since(), None);
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_pending_read_is_marked_waiting_from_its_first_poll_until_it_completes() {
    support::bounded(
        "a pending read is marked waiting from its first poll until it completes",
        async move {
            let activity = Arc::new(StreamActivity::default());
            let start = Instant::now();
            let (bytes, task) = parked(&activity);
            settle().await;
            assert_eq!(activity.waiting_since(), Some(start));
            tokio::time::advance(Duration::from_secs(5)).await;
            bytes.send(3).unwrap();
            assert_eq!(task.await.unwrap(), Ok(3));
            assert_eq!(activity.waiting_since(), None);
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_waiting_stream_is_closed_only_once_it_has_waited_since_the_cutoff() {
    support::bounded(
        "a waiting stream is closed only once it has waited since the cutoff",
        async move {
            let activity = Arc::new(StreamActivity::default());
            let (_bytes, task) = parked(&activity);
            settle().await;
            let since = Instant::now();
            let before = since - Duration::from_millis(1);
            assert_eq!(
                activity.close_if_waiting_since(before, CloseReason::Idle),
                Err(Some(since))
            );
            assert!(!task.is_finished());
            assert_eq!(
                activity.close_if_waiting_since(since, CloseReason::MakeRoom),
                Ok(())
            );
            // A second close finds it closing already.
            assert_eq!(
                activity.close_if_waiting_since(since, CloseReason::Idle),
                Err(None)
            );
            assert_eq!(task.await.unwrap(), Err(CloseReason::MakeRoom));
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_bytes_arrived_as_it_was_closed_goes_on() {
    support::bounded(
        "a stream whose bytes arrived as it was closed goes on",
        async move {
            let activity = Arc::new(StreamActivity::default());
            let (bytes, task) = parked(&activity);
            settle().await;
            // The bytes arrive, then the close, before the stream runs again.
            bytes.send(9).unwrap();
            assert_eq!(
                activity.close_if_waiting_since(Instant::now(), CloseReason::Idle),
                Ok(())
            );
            assert_eq!(task.await.unwrap(), Ok(9));
            // The close is not kept for a later wait.
            let (_bytes, task) = parked(&activity);
            settle().await;
            assert!(!task.is_finished());
            task.abort();
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_working_stream_is_never_closed() {
    support::bounded("a working stream is never closed", async move {
        let activity = StreamActivity::default();
        assert_eq!(
            activity.close_if_waiting_since(Instant::now(), CloseReason::MakeRoom),
            Err(None)
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_idle_sweep_closes_streams_past_the_timeout_and_looks_again_at_the_next_one() {
    support::bounded(
        "the idle sweep closes streams past the timeout and looks again at the next one",
        async move {
            let mut list = Streams::new(8);
            let first = list.track();
            let (_a, first_task) = parked(&first);
            settle().await;
            tokio::time::advance(Duration::from_secs(20)).await;
            let second = list.track();
            let (_b, second_task) = parked(&second);
            settle().await;
            let second_since = Instant::now();
            let _working = list.track();

            // Nothing is due yet: look again when the first reaches the timeout.
            let next = list.close_idle(Instant::now(), IDLE);
            assert_eq!(next, second_since - Duration::from_secs(20) + IDLE);
            tokio::time::advance(next - Instant::now()).await;
            let next = list.close_idle(Instant::now(), IDLE);
            assert_eq!(first_task.await.unwrap(), Err(CloseReason::Idle));
            assert!(!second_task.is_finished());
            assert_eq!(next, second_since + IDLE);
            tokio::time::advance(next - Instant::now()).await;
            let next = list.close_idle(Instant::now(), IDLE);
            assert_eq!(second_task.await.unwrap(), Err(CloseReason::Idle));
            // None waits now: a stream that starts waiting later is due no sooner.
            assert_eq!(next, Instant::now() + IDLE);
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn making_room_closes_the_longest_waiting_streams_that_waited_long_enough() {
    support::bounded(
        "making room closes the longest waiting streams that waited long enough",
        async move {
            let mut list = Streams::new(8);
            let mut tasks = Vec::new();
            // Four streams start waiting 10 ms apart.
            for _ in 0..4 {
                let (bytes, task) = parked(&list.track());
                settle().await;
                tasks.push((bytes, task));
                tokio::time::advance(Duration::from_millis(10)).await;
            }
            // Now they have waited 40, 30, 20 and 10 ms; only those of 25 ms or
            // more may go, and only two are asked for.
            let (closed, longest) =
                list.close_longest_waiting(Instant::now(), Duration::from_millis(25), 2);
            assert_eq!((closed, longest), (2, Duration::from_millis(40)));
            // The closed ones end before any bytes arrive.
            settle().await;
            let mut outcomes = Vec::new();
            for (bytes, task) in tasks {
                let _ = bytes.send(1);
                outcomes.push(task.await.unwrap());
            }
            assert_eq!(
                outcomes,
                [
                    Err(CloseReason::MakeRoom),
                    Err(CloseReason::MakeRoom),
                    Ok(1),
                    Ok(1)
                ]
            );
        },
    )
    .await;
}

#[cfg(feature = "test-backend")]
#[test]
fn ended_streams_are_dropped_from_the_list_as_it_grows() {
    let mut list = Streams::new(4);
    assert!(list.is_empty());
    // Only the last ten streams' activities are still held by anyone.
    let mut held = std::collections::VecDeque::new();
    for _ in 0..1_000 {
        held.push_back(list.track());
        if held.len() > 10 {
            held.pop_front();
        }
    }
    assert!(list.len() <= 2 * 10 + 1, "kept {} entries", list.len());
    assert!(list.len() >= 10);
    assert!(!list.is_empty());
}

#[cfg(feature = "test-backend")]
#[tokio::test(start_paused = true)]
async fn a_stream_served_on_its_own_is_closed_at_its_idle_timeout_not_before() {
    support::bounded(
        "a stream served on its own is closed at its idle timeout not before",
        async move {
            let activity = Arc::new(StreamActivity::default());
            let (_bytes, task) = parked(&activity);
            settle().await;
            let start = Instant::now();
            let watchdog = tokio::spawn({
                let activity = Arc::clone(&activity);
                async move { streams::close_when_idle(&activity, IDLE).await }
            });
            settle().await;
            tokio::time::advance(IDLE.checked_sub(Duration::from_millis(1)).unwrap()).await;
            settle().await;
            assert!(!task.is_finished(), "closed before its idle timeout");
            tokio::time::advance(Duration::from_millis(1)).await;
            assert_eq!(task.await.unwrap(), Err(CloseReason::Idle));
            assert_eq!(Instant::now(), start + IDLE);
            watchdog.abort();
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_task_ended_while_waiting_is_not_counted_as_room_made() {
    support::bounded(
        "a stream whose task ended while waiting is not counted as room made",
        async move {
            let mut list = Streams::new(8);
            let (_bytes, task) = parked(&list.track());
            settle().await;
            // The task is dropped at its read.
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
            tokio::time::advance(Duration::from_secs(1)).await;
            let (closed, _) =
                list.close_longest_waiting(Instant::now(), Duration::from_millis(50), 4);
            assert_eq!(closed, 0);
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_wait_dropped_while_pending_leaves_no_mark_and_no_close_for_the_next_stream() {
    support::bounded(
        "a wait dropped while pending leaves no mark and no close for the next stream",
        async move {
            // A stream task keeps its activity for the streams it serves next.
            let activity = Arc::new(StreamActivity::default());
            let (_bytes, task) = parked(&activity);
            settle().await;
            tokio::time::advance(Duration::from_secs(1)).await;
            // Closed while it waits, and dropped before it saw the close.
            assert_eq!(
                activity.close_if_waiting_since(Instant::now(), CloseReason::Idle),
                Ok(())
            );
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
            assert_eq!(activity.waiting_since(), None);
            let (bytes, next) = parked(&activity);
            settle().await;
            bytes.send(5).unwrap();
            assert_eq!(next.await.unwrap(), Ok(5));
        },
    )
    .await;
}
