//! The bounds of the immediate power path as they ship, each pinned at its
//! edge: a Manager's answer just inside a bound counts, just outside it does
//! not. The decline window, the delivery bound and the reply-write bound are
//! checked on paused Tokio time through the dispatcher with the shipped
//! configuration; the sync bound in process with a step that never returns
//! (no root needed); and the delivery bound once more over real QUIC, with a
//! Manager that never acknowledges the reply.
#![cfg(feature = "test-backend")]

mod support;

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use roxyd::platform::recorder::journal::{Entry, Recorder};
use roxyd::{
    config::Config,
    dispatch::{DispatchConfig, DispatchEvent, StreamEnd},
    platform::Settlement,
    reply::{Delivery, ReplySink},
    wire,
};
use roxyd_lab::{Direction, Lab, UdpRelay};
use rstest::rstest;
use support::{
    backend_lifetime::BackendLifetime,
    immediate::Immediate,
    lab_agent::{LabAgent, LabAgents},
};
use tokio::{io::AsyncWrite, time::Instant};

/// The shipped decline window: a `STOP_SENDING(0)` this soon after the reply
/// became pending is a 0.19 Manager declining it (docs/power-contract.md).
const DECLINE_WINDOW: Duration = Duration::from_millis(500);
/// The shipped wait for the Manager's acknowledgement of a written reply.
const DELIVERY_BOUND: Duration = Duration::from_secs(2);
/// The shipped bound on writing the reply.
const REPLY_WRITE_BOUND: Duration = Duration::from_secs(10);
/// The shipped bound on `sync(2)` before `reboot(2)`.
const SYNC_BOUND: Duration = Duration::from_secs(5);

/// How far from a bound "just inside" and "just outside" are on paused time.
const EDGE: Duration = Duration::from_millis(1);

/// Just inside `bound`.
fn inside(bound: Duration) -> Duration {
    bound
        .checked_sub(EDGE)
        .expect("a bound longer than its edge")
}

/// Just outside `bound`.
fn outside(bound: Duration) -> Duration {
    bound + EDGE
}

/// The dispatch limits the daemon runs with when nothing is configured.
fn shipped() -> DispatchConfig {
    Config::default().dispatch()
}

/// What the Manager does with the reply write, on paused time.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// Grants credit after this long: the write completes then.
    AcceptAfter(Duration),
    /// Stops the stream with `STOP_SENDING(0)` after this long, the write
    /// still pending: the write fails then.
    StopAfter(Duration),
}

/// A Manager whose every move comes at a set point of paused time.
struct EdgeSink {
    write: Write,
    /// When the Manager acknowledges a written, finished reply.
    ack_after: Duration,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    stopped: bool,
}

impl EdgeSink {
    fn new(write: Write, ack_after: Duration) -> Self {
        Self {
            write,
            ack_after,
            wait: None,
            stopped: false,
        }
    }
}

impl AsyncWrite for EdgeSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let after = match self.write {
            Write::AcceptAfter(after) | Write::StopAfter(after) => after,
        };
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if wait.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        match self.write {
            Write::AcceptAfter(_) => Poll::Ready(Ok(bytes.len())),
            Write::StopAfter(_) => {
                self.stopped = true;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "stopped by peer",
                )))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ReplySink for EdgeSink {
    async fn finish_and_confirm(&mut self) -> Delivery {
        tokio::time::sleep(self.ack_after).await;
        Delivery::Acknowledged
    }

    async fn peer_stop(&mut self) -> Option<u64> {
        if self.stopped {
            Some(0)
        } else {
            std::future::pending().await
        }
    }
}

/// How one request at the edge of a bound went.
struct Served {
    end: StreamEnd,
    /// Paused time from the request to the end of serving.
    took: Duration,
    entries: Vec<Entry>,
}

/// Serves `request` (its Manager finishes its side right after it) with the
/// shipped limits against `sink`, on paused time, and waits until nothing
/// can perform any more.
async fn serve_at_edge(request: Immediate, mut sink: EdgeSink, rule: &str) -> Served {
    let recorder = Recorder::new();
    let (dispatcher, lifetime) = BackendLifetime::dispatcher(&recorder, shipped());
    let mut frame = Vec::new();
    wire::write_frame(&mut frame, &request.frame())
        .await
        .unwrap();
    // The Manager's side: the request, then its FIN.
    let mut recv: &[u8] = &frame;
    let start = Instant::now();
    // Paused time: this limit fires only once every bound under test has
    // had its chance, whatever the machine's load.
    let end = tokio::time::timeout(
        REPLY_WRITE_BOUND * 3,
        dispatcher.serve_stream(&mut recv, &mut sink),
    )
    .await
    .unwrap_or_else(|_| panic!("rule broken: {rule}: serving did not end within its bounds"));
    let took = start.elapsed();
    drop(dispatcher);
    // What follows waits on other threads: on real time, so that the limits
    // below are not skipped over while the runtime idles.
    tokio::time::resume();
    if let StreamEnd::Released(op) = end {
        recorder
            .journal()
            .wait_for_within(BackendLifetime::LIMIT, |e| e.contains(&Entry::Perform(op)))
            .await;
    }
    lifetime.wait_all_gone().await;
    Served {
        end,
        took,
        entries: recorder.journal().entries(),
    }
}

fn performed(served: &Served) -> usize {
    served
        .entries
        .iter()
        .filter(|e| e.is_power_operation())
        .count()
}

/// The delivery bound: an acknowledgement just inside it is waited for, one
/// just outside is not. Either way the operation is released (the Manager
/// may have been told), the moment the wait ends.
#[rstest]
#[case::ack_just_inside(inside(DELIVERY_BOUND), Delivery::Acknowledged, inside(DELIVERY_BOUND))]
#[case::ack_just_outside(outside(DELIVERY_BOUND), Delivery::TimedOut, DELIVERY_BOUND)]
#[tokio::test(start_paused = true)]
async fn the_delivery_bound_ships_at_two_seconds(
    #[case] ack_after: Duration,
    #[case] delivery: Delivery,
    #[case] released_at: Duration,
    #[values(Immediate::GroupedReboot, Immediate::FlatShutdown)] request: Immediate,
) {
    let rule = "the wait for the acknowledgement ends at the 2 s delivery bound";
    support::bounded(rule, async move {
        let sink = EdgeSink::new(Write::AcceptAfter(Duration::ZERO), ack_after);
        let served = serve_at_edge(request, sink, rule).await;
        assert_eq!(served.end, StreamEnd::Released(request.op()), "{rule}");
        assert!(
            served
                .entries
                .contains(&Entry::Dispatch(DispatchEvent::DeliveryConfirmed(
                    delivery.clone()
                ))),
            "rule broken: {rule}: expected {delivery:?}; {:#?}",
            served.entries
        );
        assert_eq!(served.took, released_at, "rule broken: {rule}");
        assert_eq!(performed(&served), 1, "{:#?}", served.entries);
    })
    .await;
}

/// The reply-write bound: a write that completes just inside it is a
/// written reply (released); one that would complete just outside it drops
/// the operation, which is then never performed.
#[rstest]
#[case::written_just_inside(inside(REPLY_WRITE_BOUND), true)]
#[case::written_just_outside(outside(REPLY_WRITE_BOUND), false)]
#[tokio::test(start_paused = true)]
async fn the_reply_write_bound_ships_at_ten_seconds(
    #[case] accept_after: Duration,
    #[case] released: bool,
    #[values(Immediate::GroupedReboot, Immediate::FlatShutdown)] request: Immediate,
) {
    let rule = "a reply not written within the 10 s reply-write bound drops the operation";
    support::bounded(rule, async move {
        let sink = EdgeSink::new(Write::AcceptAfter(accept_after), Duration::ZERO);
        let served = serve_at_edge(request, sink, rule).await;
        let op = request.op();
        if released {
            assert_eq!(served.end, StreamEnd::Released(op), "rule broken: {rule}");
            assert_eq!(performed(&served), 1, "{:#?}", served.entries);
        } else {
            assert_dropped_never_performed(&served, rule);
            assert_eq!(served.took, REPLY_WRITE_BOUND, "rule broken: {rule}");
            assert!(
                served
                    .entries
                    .contains(&Entry::Settled(op, Settlement::Cancelled)),
                "{:#?}",
                served.entries
            );
        }
    })
    .await;
}

/// The decline window: a `STOP_SENDING(0)` with the Manager's FIN just
/// inside 500 ms of the reply becoming pending is a decline (carried out);
/// just outside it is a Manager that gave up (dropped, never performed).
#[rstest]
#[case::stop_just_inside(inside(DECLINE_WINDOW), true)]
#[case::stop_just_outside(outside(DECLINE_WINDOW), false)]
#[tokio::test(start_paused = true)]
async fn the_decline_window_ships_at_500_ms(
    #[case] stop_after: Duration,
    #[case] declined: bool,
    #[values(Immediate::GroupedReboot, Immediate::FlatShutdown)] request: Immediate,
) {
    let rule = "a STOP_SENDING(0) within the 500 ms decline window is a decline, later is not";
    support::bounded(rule, async move {
        let sink = EdgeSink::new(Write::StopAfter(stop_after), Duration::ZERO);
        let served = serve_at_edge(request, sink, rule).await;
        let op = request.op();
        if declined {
            assert_eq!(served.end, StreamEnd::Released(op), "rule broken: {rule}");
            assert!(
                served
                    .entries
                    .contains(&Entry::Dispatch(DispatchEvent::ReplyDeclined(op))),
                "{:#?}",
                served.entries
            );
            assert_eq!(performed(&served), 1, "{:#?}", served.entries);
        } else {
            assert_dropped_never_performed(&served, rule);
        }
    })
    .await;
}

/// The reply write failed, the operation was dropped, and nothing was
/// performed.
fn assert_dropped_never_performed(served: &Served, rule: &str) {
    assert!(
        matches!(served.end, StreamEnd::WriteFailed(_)),
        "rule broken: {rule}: {:?}",
        served.end
    );
    assert_eq!(
        performed(served),
        0,
        "rule broken: {rule}: {:#?}",
        served.entries
    );
}

/// The sync bound, in process and without root: the step run before
/// `reboot(2)` is left behind at the shipped bound. Never the real syscall:
/// only the bounded step is run.
#[cfg(target_os = "linux")]
mod sync_bound {
    use std::{sync::mpsc, time::Instant};

    use roxyd::platform::linux::{SyncEnd, bounded_sync};

    use super::*;

    /// How far from the bound "just inside" and "just outside" are: real
    /// time on a loaded machine, so a margin a scheduler cannot eat.
    const MARGIN: Duration = Duration::from_millis(700);

    /// Runs `bounded_sync(step, shipped bound)` on a thread, with a limit of
    /// its own that names the rule; returns how it ended and how long it
    /// took.
    fn bounded(step: impl FnOnce() + Send + 'static) -> (SyncEnd, Duration) {
        let bound = Config::default().sync_timeout();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let start = Instant::now();
            let end = bounded_sync(step, bound);
            let _ = tx.send((end, start.elapsed()));
        });
        rx.recv_timeout(SYNC_BOUND * 3).unwrap_or_else(|_| {
            panic!(
                "rule broken: the sync step before reboot(2) is bounded by {SYNC_BOUND:?}; \
                 it was still waited for after {:?}",
                SYNC_BOUND * 3
            )
        })
    }

    #[test]
    fn a_sync_step_that_never_returns_is_left_behind_at_five_seconds() {
        let (end, took) = bounded(|| {
            loop {
                std::thread::park();
            }
        });
        assert_eq!(end, SyncEnd::TimedOut);
        assert!(
            took >= SYNC_BOUND && took < SYNC_BOUND + MARGIN,
            "rule broken: a hung sync(2) is left behind at the {SYNC_BOUND:?} bound; took {took:?}"
        );
    }

    #[rstest]
    #[case::just_inside(SYNC_BOUND.checked_sub(MARGIN).unwrap(), SyncEnd::Finished)]
    #[case::just_outside(SYNC_BOUND + MARGIN, SyncEnd::TimedOut)]
    fn a_sync_step_counts_only_within_five_seconds(
        #[case] returns_after: Duration,
        #[case] expected: SyncEnd,
    ) {
        let (end, took) = bounded(move || std::thread::sleep(returns_after));
        assert_eq!(
            end, expected,
            "rule broken: sync(2) is waited for up to {SYNC_BOUND:?}, no longer; took {took:?}"
        );
        assert!(took < SYNC_BOUND + MARGIN, "took {took:?}");
    }
}

/// A Manager that never acknowledges the reply, over real QUIC: every packet
/// the agent sends after the handshake is swallowed by the relay in front of
/// the Manager, so the reply is written (the write only queues it) and no
/// acknowledgement ever comes. The wait for it ends at the shipped delivery
/// bound, and the operation is released then, as the contract says: a
/// Manager that never acknowledges cannot keep the node up.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn a_manager_that_never_acknowledges_holds_the_release_only_to_the_delivery_bound(
    #[case] request: Immediate,
) {
    let rule = "the wait for the Manager's acknowledgement ends at the 2 s delivery bound";
    support::bounded(rule, async move {
        let lab = Lab::new().unwrap();
        let relay = UdpRelay::start(lab.manager.local_addr().unwrap(), 23)
            .await
            .unwrap();
        let recorder = Recorder::new();
        let (dispatcher, _lifetime) = BackendLifetime::dispatcher(&recorder, shipped());
        let (session, agent): (_, LabAgent) = lab
            .connect_via(relay.addr(), Arc::new(dispatcher))
            .await
            .unwrap();
        // The handshake is over (the Manager had the agent's acknowledgement of
        // its answer): from now on nothing the agent sends reaches the Manager.
        relay.block(Direction::ToManager, true);
        let (mut send, _recv) = session.open_stream().await.unwrap();
        wire::write_frame(&mut send, &request.frame())
            .await
            .unwrap();
        send.finish().unwrap();
        let op = request.op();
        let entries = recorder
            .journal()
            .wait_for_within(DELIVERY_BOUND * 5, |e| e.contains(&Entry::Perform(op)))
            .await;
        let timed = recorder.journal().timed_entries();
        let at = |wanted: &Entry| {
            timed.iter().find(|(_, e)| e == wanted).map_or_else(
                || panic!("rule broken: {rule}: no {wanted:?} in {entries:#?}"),
                |(t, _)| *t,
            )
        };
        let written = at(&Entry::Dispatch(DispatchEvent::ReplyWritten {
            code: request.code_and_body().0,
            ok: true,
        }));
        let gave_up = at(&Entry::Dispatch(DispatchEvent::DeliveryConfirmed(
            Delivery::TimedOut,
        )));
        let released = at(&Entry::Settled(op, Settlement::Released));
        let waited = gave_up - written;
        assert!(
            waited >= DELIVERY_BOUND && waited < DELIVERY_BOUND * 2,
            "rule broken: {rule}: waited {waited:?}"
        );
        assert!(released >= gave_up, "{entries:#?}");
        let (forwarded, dropped) = relay.counts(Direction::ToManager);
        assert!(
            dropped > 0,
            "the relay swallowed nothing ({forwarded} forwarded)"
        );
        drop(agent);
    })
    .await;
}
