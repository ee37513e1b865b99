//! Both Manager generations over real QUIC on loopback: a review-protocol
//! 0.18 Manager reads the reply to an immediate request, a 0.19 Manager sends
//! it fire-and-forget and declines the reply. Each packet order the contract
//! names is forced with explicit signals (a send half that holds the reply
//! until the Manager's `STOP_SENDING` arrived, the recorder's journal),
//! never left to timing.
#![cfg(feature = "test-backend")]

mod support;

use std::{future::Future, sync::Arc, time::Duration};

use roxyd::platform::recorder::journal::{Entry, Journal, Recorder};
use roxyd::{
    dispatch::{DispatchConfig, DispatchEvent, Dispatcher},
    platform::{ImmediateOp, Settlement},
    power::immediate::DeclineRule,
    wire::{self, NodePowerRequest, NodePowerResponse, RequestCode},
};
use roxyd_lab::{
    Lab, LabOptions,
    manager::{AgentSession, Generation},
};
use rstest::rstest;
use support::{
    backend_lifetime::BackendLifetime, held_reply::HeldUntilStopped, immediate::Immediate,
    lab_agent::LabAgents,
};

/// Fails the test if one step takes longer than any step here can.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("a step of this test hung")
}

struct Rig {
    _lab: Lab,
    session: AgentSession,
    /// The agent's accept loop; it ends with the connection.
    serving: tokio::task::JoinHandle<()>,
    _endpoint: quinn::Endpoint,
    recorder: Recorder,
    lifetime: BackendLifetime,
}

impl Rig {
    async fn new(hold: bool) -> Self {
        Self::with(hold, DispatchConfig::default(), LabOptions::default()).await
    }

    /// An agent serving each stream with the dispatcher, on its own task;
    /// with `hold`, the reply on the Manager's first stream (the immediate
    /// request under test) waits as [`HeldUntilStopped`] says, and later
    /// streams (an echo that checks the agent still serves) are answered at
    /// once.
    async fn with(hold: bool, config: DispatchConfig, options: LabOptions) -> Self {
        let lab = Lab::with_options(options).unwrap();
        let recorder = Recorder::new();
        let (backend, lifetime) = BackendLifetime::counted(&recorder);
        let dispatcher = Arc::new(
            Dispatcher::new(backend, config).with_observer(Arc::new(recorder.journal().clone())),
        );
        let (session, connection, endpoint) = lab.establish(config.max_frame_len).await.unwrap();
        let serving = tokio::spawn(async move {
            let mut hold = hold;
            while let Ok((send, mut recv)) = connection.accept_bi().await {
                let dispatcher = Arc::clone(&dispatcher);
                let hold_this = std::mem::take(&mut hold);
                tokio::spawn(async move {
                    if hold_this {
                        let mut send = HeldUntilStopped::new(send);
                        dispatcher.serve_stream(&mut recv, &mut send).await;
                    } else {
                        let mut send = send;
                        dispatcher.serve_stream(&mut recv, &mut send).await;
                    }
                });
            }
        });
        Self {
            _lab: lab,
            session,
            serving,
            _endpoint: endpoint,
            recorder,
            lifetime,
        }
    }

    fn journal(&self) -> &Journal {
        self.recorder.journal()
    }

    /// Waits for `entry` in the journal.
    async fn until(&self, entry: Entry) {
        within(self.journal().wait_for(|e| e.contains(&entry))).await;
    }

    /// Waits until the pending operation was released or dropped, and
    /// returns which; a release has left its mark before anything runs.
    async fn settlement(&self, op: ImmediateOp) -> Settlement {
        within(self.journal().settlement(op)).await
    }

    /// Opens a stream and writes `request` on it; both halves are the
    /// test's to finish, stop or drop.
    async fn open_with(&self, request: Immediate) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, recv) = self.session.open_stream().await.unwrap();
        wire::write_frame(&mut send, &request.frame())
            .await
            .unwrap();
        (send, recv)
    }

    /// Checks that `op` was released and carried out, once.
    async fn assert_carried_out(&self, op: ImmediateOp) {
        assert_eq!(self.settlement(op).await, Settlement::Released);
        self.until(Entry::Perform(op)).await;
        assert_eq!(self.journal().power_operations(), vec![Entry::Perform(op)]);
    }

    /// Checks that `op` was carried out once, after a decline.
    async fn assert_carried_out_after_decline(&self, op: ImmediateOp) {
        assert_eq!(self.settlement(op).await, Settlement::Released);
        let entries = within(self.journal().wait_for(|e| e.contains(&Entry::Perform(op)))).await;
        let declined = position(&entries, &Entry::Dispatch(DispatchEvent::ReplyDeclined(op)));
        assert!(declined < position(&entries, &Entry::Perform(op)));
        assert_eq!(self.journal().power_operations(), vec![Entry::Perform(op)]);
    }

    /// Checks that `op` was dropped and the connection still serves, then
    /// that it is never performed.
    async fn assert_dropped(self, op: ImmediateOp) {
        assert_eq!(self.settlement(op).await, Settlement::Cancelled);
        self.until(Entry::Dispatch(DispatchEvent::Cancelled(op)))
            .await;
        assert_eq!(
            within(self.session.unit_request(RequestCode::ECHO))
                .await
                .unwrap(),
            Ok(())
        );
        self.assert_nothing_performed().await;
    }

    /// Ends the connection and waits until nothing holds the backend any
    /// more (the serving task and every thread or task that could still
    /// perform an operation have ended), then checks that nothing was
    /// performed: "cancelled" means "and never performed".
    async fn assert_nothing_performed(self) {
        self.session.connection().close(0u32.into(), b"test over");
        within(self.serving).await.unwrap();
        self.lifetime.wait_all_gone().await;
        assert_eq!(
            self.recorder.journal().power_operations(),
            vec![],
            "rule broken: a cancelled operation is never performed"
        );
    }
}

fn position(entries: &[Entry], wanted: &Entry) -> usize {
    entries
        .iter()
        .position(|e| e == wanted)
        .unwrap_or_else(|| panic!("{wanted:?} not in {entries:#?}"))
}

/// A 0.19 Manager's request, its FIN and its `STOP_SENDING(0)` all reach the
/// agent before the reply is written: carried out.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::grouped_shutdown(Immediate::GroupedShutdown)]
#[case::flat_reboot(Immediate::FlatReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn fire_and_forget_stop_and_fin_before_the_write_is_carried_out(#[case] request: Immediate) {
    support::bounded("a fire-and-forget Manager's STOP_SENDING(0) and FIN before the write still get the operation carried out", async move {
    let rig = Rig::new(true).await;
    let (code, body) = request.code_and_body();
    within(rig.session.fire_and_forget(code, &body))
        .await
        .unwrap();
    rig.assert_carried_out_after_decline(request.op()).await;
    })
    .await;
}

/// The 0.19 Manager exactly as it is, with no order forced: carried out,
/// whichever way its packets and the reply cross.
#[rstest]
#[case::reboot(NodePowerRequest::Reboot, ImmediateOp::Reboot)]
#[case::shutdown(NodePowerRequest::Shutdown, ImmediateOp::PowerOff)]
#[tokio::test]
async fn fire_and_forget_manager_gets_its_operation(
    #[case] request: NodePowerRequest,
    #[case] op: ImmediateOp,
) {
    support::bounded(
        "a fire-and-forget (0.19) Manager gets its operation carried out",
        async move {
            let rig = Rig::new(false).await;
            let sent = within(rig.session.node_power_as(Generation::V0_19, request)).await;
            assert_eq!(sent.unwrap(), None, "a 0.19 Manager reads no reply");
            rig.assert_carried_out(op).await;
        },
    )
    .await;
}

/// The Manager stops the stream only once the reply was written: carried
/// out (the reply was written; the stop ends the wait for its delivery).
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn stop_after_the_write_is_carried_out(#[case] request: Immediate) {
    support::bounded(
        "a STOP_SENDING after the reply was written still gets the operation carried out",
        async move {
            let rig = Rig::new(false).await;
            let (mut send, recv) = rig.open_with(request).await;
            send.finish().unwrap();
            let (code, _) = request.code_and_body();
            rig.until(Entry::Dispatch(DispatchEvent::ReplyWritten {
                code,
                ok: true,
            }))
            .await;
            drop(recv);
            let op = request.op();
            rig.assert_carried_out(op).await;
        },
    )
    .await;
}

/// On a lossy path the FIN can come after the `STOP_SENDING`: the agent
/// waits for it, and carries out.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::grouped_shutdown(Immediate::GroupedShutdown)]
#[case::flat_reboot(Immediate::FlatReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn stop_first_fin_later_is_carried_out(#[case] request: Immediate) {
    support::bounded(
        "STOP_SENDING(0) first and the FIN later is a decline that is carried out",
        async move {
            let rig = Rig::new(true).await;
            let (mut send, recv) = rig.open_with(request).await;
            drop(recv);
            let (code, _) = request.code_and_body();
            // The reply failed on the stop; the agent now waits for the FIN.
            rig.until(Entry::Dispatch(DispatchEvent::ReplyFailed { code }))
                .await;
            send.finish().unwrap();
            rig.assert_carried_out_after_decline(request.op()).await;
        },
    )
    .await;
}

/// `STOP_SENDING(0)` while the Manager's send side stays open is not a
/// decline: dropped once the wait for the FIN ends.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn stop_without_fin_drops(#[case] request: Immediate) {
    support::bounded(
        "STOP_SENDING(0) without a FIN within the wait drops the operation",
        Box::pin(async move {
            let config = DispatchConfig {
                decline: DeclineRule {
                    fin_wait: Duration::from_millis(100),
                    ..DeclineRule::default()
                },
                ..DispatchConfig::default()
            };
            let rig = Rig::with(true, config, LabOptions::default()).await;
            let (send, recv) = rig.open_with(request).await;
            drop(recv);
            rig.assert_dropped(request.op()).await;
            // Only now may the Manager's side end.
            drop(send);
        }),
    )
    .await;
}

/// A 0.18 Manager that gave up: its reply was held up (four bytes of credit,
/// never read) past the decline window before it dropped both halves of the
/// stream. Not a decline: dropped.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn stop_and_fin_after_the_reply_was_held_up_drops(#[case] request: Immediate) {
    support::bounded(
        "STOP_SENDING and FIN after the decline window drop the operation",
        Box::pin(async move {
            let window = Duration::from_millis(100);
            let config = DispatchConfig {
                decline: DeclineRule {
                    window,
                    ..DeclineRule::default()
                },
                ..DispatchConfig::default()
            };
            let options = LabOptions {
                stream_receive_window: Some(4),
                ..LabOptions::default()
            };
            let rig = Rig::with(false, config, options).await;
            let (mut send, recv) = rig.open_with(request).await;
            send.finish().unwrap();
            rig.until(Entry::Dispatch(DispatchEvent::Prepared(request.op())))
                .await;
            // The reply became pending before `Prepared` was noted; waiting three
            // windows from here puts the stop past the window whatever the
            // scheduling (the clock only moves forward).
            tokio::time::sleep(window * 3).await;
            drop(recv);
            rig.assert_dropped(request.op()).await;
        }),
    )
    .await;
}

/// `STOP_SENDING` with an error code is not a decline: dropped.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::grouped_shutdown(Immediate::GroupedShutdown)]
#[case::flat_reboot(Immediate::FlatReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn stop_with_an_error_code_drops(#[case] request: Immediate) {
    support::bounded(
        "STOP_SENDING with an error code drops the operation",
        Box::pin(async move {
            let rig = Rig::new(true).await;
            let (mut send, mut recv) = rig.open_with(request).await;
            send.finish().unwrap();
            recv.stop(7u32.into()).unwrap();
            rig.assert_dropped(request.op()).await;
        }),
    )
    .await;
}

/// The Manager resets its side of the stream and stops the agent's: no FIN,
/// so not a decline: dropped.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn stream_reset_drops(#[case] request: Immediate) {
    support::bounded(
        "a reset stream drops the operation",
        Box::pin(async move {
            let rig = Rig::new(true).await;
            let (mut send, mut recv) = rig.open_with(request).await;
            // Only once the agent has read the request: a reset before that would
            // discard it unread.
            rig.until(Entry::Dispatch(DispatchEvent::Prepared(request.op())))
                .await;
            send.reset(3u32.into()).unwrap();
            recv.stop(0u32.into()).unwrap();
            rig.assert_dropped(request.op()).await;
        }),
    )
    .await;
}

/// The connection is lost before the reply could be written: dropped.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn connection_lost_before_the_write_drops(#[case] request: Immediate) {
    support::bounded(
        "a connection lost before the reply write drops the operation",
        Box::pin(async move {
            let rig = Rig::new(true).await;
            let (mut send, _recv) = rig.session.open_stream().await.unwrap();
            wire::write_frame(&mut send, &request.frame())
                .await
                .unwrap();
            send.finish().unwrap();
            rig.until(Entry::Dispatch(DispatchEvent::Prepared(request.op())))
                .await;
            rig.session.connection().close(0u32.into(), b"manager gone");
            assert_eq!(rig.settlement(request.op()).await, Settlement::Cancelled);
            rig.assert_nothing_performed().await;
        }),
    )
    .await;
}

/// A 0.18 Manager reads the reply: written, its delivery awaited, then
/// released, as before the 0.19 rule existed.
#[rstest]
#[case::reboot(NodePowerRequest::Reboot, ImmediateOp::Reboot)]
#[case::shutdown(NodePowerRequest::Shutdown, ImmediateOp::PowerOff)]
#[tokio::test]
async fn manager_that_reads_the_reply_is_unchanged(
    #[case] request: NodePowerRequest,
    #[case] op: ImmediateOp,
) {
    support::bounded(
        "a 0.18 Manager that reads the reply gets it, then the operation",
        async move {
            let rig = Rig::new(false).await;
            let reply = within(rig.session.node_power_as(Generation::V0_18, request)).await;
            assert_eq!(reply.unwrap(), Some(Ok(NodePowerResponse::Initiated)));
            let entries = within(rig.journal().wait_for(|e| e.contains(&Entry::Perform(op)))).await;
            let written = position(
                &entries,
                &Entry::Dispatch(DispatchEvent::ReplyWritten {
                    code: RequestCode::NODE_POWER,
                    ok: true,
                }),
            );
            let delivered = entries
                .iter()
                .position(Entry::is_reply_delivered)
                .unwrap_or_else(|| panic!("no delivery in {entries:#?}"));
            let released = position(&entries, &Entry::Settled(op, Settlement::Released));
            assert!(written < delivered && delivered < released, "{entries:#?}");
            assert!(
                !entries.contains(&Entry::Dispatch(DispatchEvent::ReplyDeclined(op))),
                "{entries:#?}"
            );
        },
    )
    .await;
}
