//! Live tests: a real QUIC connection with mutual TLS on loopback between the
//! Manager built in this repository and an in-process agent serving with the
//! recording backend.
#![cfg(feature = "test-backend")]

mod support;

use std::sync::Arc;

use roxyd::platform::recorder::journal::{Entry, Recorder};
use roxyd::{
    dispatch::{DispatchConfig, DispatchEvent, Dispatcher, StreamEnd},
    platform::{GracefulOp, ImmediateOp, Settlement},
    wire::{self, NodePowerRequest, NodePowerResponse, RequestCode, reply_text},
};
use roxyd_lab::{Lab, manager::AgentSession};
use rstest::rstest;
use support::{
    backend_lifetime::BackendLifetime,
    lab_agent::{LabAgent, LabAgents},
    within,
};

struct Rig {
    _lab: Lab,
    session: AgentSession,
    agent: LabAgent,
    recorder: Recorder,
    dispatcher: Arc<Dispatcher<Recorder>>,
}

fn dispatcher(recorder: &Recorder) -> Arc<Dispatcher<Recorder>> {
    Arc::new(recorder.dispatcher(DispatchConfig::default()))
}

async fn rig() -> Rig {
    let lab = Lab::new().unwrap();
    let recorder = Recorder::new();
    let dispatcher = dispatcher(&recorder);
    let (session, agent) = lab.connect(Arc::clone(&dispatcher)).await.unwrap();
    Rig {
        _lab: lab,
        session,
        agent,
        recorder,
        dispatcher,
    }
}

/// One request of the power family in one wire form.
#[derive(Clone, Copy, Debug)]
enum Power {
    Grouped(NodePowerRequest),
    FlatReboot,
    FlatShutdown,
}

impl Power {
    fn code(self) -> u32 {
        match self {
            Self::Grouped(_) => RequestCode::NODE_POWER,
            Self::FlatReboot => RequestCode::FLAT_REBOOT,
            Self::FlatShutdown => RequestCode::FLAT_SHUTDOWN,
        }
    }

    fn body(self) -> Vec<u8> {
        match self {
            Self::Grouped(request) => wire::encode(&request),
            Self::FlatReboot | Self::FlatShutdown => Vec::new(),
        }
    }

    /// Sends it and checks the success reply in its form.
    async fn send_expecting_initiated(self, session: &AgentSession) {
        match self {
            Self::Grouped(request) => assert_eq!(
                session.node_power(request).await.unwrap(),
                Ok(NodePowerResponse::Initiated)
            ),
            Self::FlatReboot | Self::FlatShutdown => {
                assert_eq!(session.unit_request(self.code()).await.unwrap(), Ok(()));
            }
        }
    }

    fn operation(self) -> Entry {
        match self {
            Self::Grouped(NodePowerRequest::Reboot) | Self::FlatReboot => {
                Entry::Perform(ImmediateOp::Reboot)
            }
            Self::Grouped(NodePowerRequest::Shutdown) | Self::FlatShutdown => {
                Entry::Perform(ImmediateOp::PowerOff)
            }
            Self::Grouped(NodePowerRequest::GracefulReboot) => {
                Entry::StartGraceful(GracefulOp::Reboot)
            }
            Self::Grouped(NodePowerRequest::GracefulShutdown) => {
                Entry::StartGraceful(GracefulOp::PowerOff)
            }
        }
    }
}

fn position(entries: &[Entry], wanted: &Entry) -> usize {
    entries
        .iter()
        .position(|e| e == wanted)
        .unwrap_or_else(|| panic!("{wanted:?} not in {entries:#?}"))
}

#[rstest]
#[case::grouped_reboot(Power::Grouped(NodePowerRequest::Reboot))]
#[case::grouped_shutdown(Power::Grouped(NodePowerRequest::Shutdown))]
#[case::grouped_graceful_reboot(Power::Grouped(NodePowerRequest::GracefulReboot))]
#[case::grouped_graceful_shutdown(Power::Grouped(NodePowerRequest::GracefulShutdown))]
#[case::flat_reboot(Power::FlatReboot)]
#[case::flat_shutdown(Power::FlatShutdown)]
#[tokio::test]
async fn power_request_over_quic(#[case] power: Power) {
    support::bounded(
        "a power request over QUIC is answered, then carried out",
        async move {
            let rig = rig().await;
            power.send_expecting_initiated(&rig.session).await;
            let operation = power.operation();
            let journal = rig.recorder.journal();
            let entries = journal.wait_for(|e| e.contains(&operation)).await;
            let written = position(
                &entries,
                &Entry::Dispatch(DispatchEvent::ReplyWritten {
                    code: power.code(),
                    ok: true,
                }),
            );
            if let Entry::Perform(_) = operation {
                // Immediate: reply written, delivered, then performed. The Manager
                // drops its stream once it read the reply, as the reference does, so
                // delivery ends with its acknowledgement or its STOP_SENDING, in
                // whichever order the packets cross.
                let delivered = entries
                    .iter()
                    .position(Entry::is_reply_delivered)
                    .unwrap_or_else(|| panic!("no delivery in {entries:#?}"));
                let performed = position(&entries, &operation);
                assert!(written < delivered && delivered < performed, "{entries:#?}");
            } else {
                // Graceful: started, then answered.
                assert!(position(&entries, &operation) < written, "{entries:#?}");
            }
            assert_eq!(journal.power_operations(), vec![operation]);
        },
    )
    .await;
}

#[tokio::test]
async fn every_request_on_one_connection() {
    support::bounded(
        "every request on one connection is answered and carried out",
        async move {
            let rig = rig().await;
            let all = [
                Power::Grouped(NodePowerRequest::Reboot),
                Power::Grouped(NodePowerRequest::Shutdown),
                Power::Grouped(NodePowerRequest::GracefulReboot),
                Power::Grouped(NodePowerRequest::GracefulShutdown),
                Power::FlatReboot,
                Power::FlatShutdown,
            ];
            for (done, power) in all.into_iter().enumerate() {
                assert_eq!(
                    rig.session.unit_request(RequestCode::ECHO).await.unwrap(),
                    Ok(())
                );
                power.send_expecting_initiated(&rig.session).await;
                let operation = power.operation();
                rig.recorder
                    .journal()
                    .wait_for(|e| e.iter().filter(|e| e.is_power_operation()).count() > done)
                    .await;
                // The recorder returns from every operation; wait until the agent
                // accepts the next one.
                rig.dispatcher.power().wait_idle().await;
                assert_eq!(
                    rig.recorder.journal().power_operations().last(),
                    Some(&operation)
                );
            }
            let expected: Vec<Entry> = all.iter().map(|p| p.operation()).collect();
            assert_eq!(rig.recorder.journal().power_operations(), expected);
        },
    )
    .await;
}

#[rstest]
#[case::grouped_reboot(Power::Grouped(NodePowerRequest::Reboot), ImmediateOp::Reboot)]
#[case::grouped_shutdown(Power::Grouped(NodePowerRequest::Shutdown), ImmediateOp::PowerOff)]
#[case::flat_reboot(Power::FlatReboot, ImmediateOp::Reboot)]
#[case::flat_shutdown(Power::FlatShutdown, ImmediateOp::PowerOff)]
#[tokio::test]
async fn manager_stopping_the_stream_before_the_reply_cancels(
    #[case] power: Power,
    #[case] op: ImmediateOp,
) {
    support::bounded(
        "a Manager stopping the stream before the reply cancels the operation",
        async move {
            let lab = Lab::new().unwrap();
            let recorder = Recorder::new();
            let dispatcher = dispatcher(&recorder);
            let (session, connection, _endpoint) =
                lab.establish(wire::DEFAULT_MAX_FRAME_LEN).await.unwrap();

            // The Manager sends the request, then stops reading the stream.
            let (mut send, mut recv) = session.open_stream().await.unwrap();
            wire::write_frame(
                &mut send,
                &wire::encode_request(power.code(), &power.body()),
            )
            .await
            .unwrap();
            recv.stop(7u32.into()).unwrap();

            // The agent accepts the stream and, as an explicit signal, waits until
            // the Manager's STOP_SENDING has arrived, then serves it.
            let (mut agent_send, mut agent_recv) = connection.accept_bi().await.unwrap();
            assert_eq!(agent_send.stopped().await.unwrap(), Some(7u32.into()));
            let end = dispatcher
                .serve_stream(&mut agent_recv, &mut agent_send)
                .await;
            assert!(matches!(end, StreamEnd::WriteFailed(_)), "{end:?}");
            let entries = recorder.journal().entries();
            assert!(entries.contains(&Entry::Prepare(op)), "{entries:#?}");
            assert!(
                entries.contains(&Entry::Dispatch(DispatchEvent::Cancelled(op))),
                "{entries:#?}"
            );
            assert_eq!(recorder.journal().power_operations(), vec![]);

            // The connection keeps serving.
            tokio::spawn(roxyd::connection::serve_connection(
                connection,
                Arc::clone(&dispatcher),
                64,
                std::future::pending(),
            ));
            assert_eq!(
                session.unit_request(RequestCode::ECHO).await.unwrap(),
                Ok(())
            );
            Power::Grouped(NodePowerRequest::GracefulReboot)
                .send_expecting_initiated(&session)
                .await;
            assert_eq!(
                recorder.journal().power_operations(),
                vec![Entry::StartGraceful(GracefulOp::Reboot)]
            );
        },
    )
    .await;
}

#[rstest]
#[case::grouped_reboot(Power::Grouped(NodePowerRequest::Reboot))]
#[case::flat_shutdown(Power::FlatShutdown)]
#[tokio::test]
async fn connection_lost_before_the_reply_does_nothing(#[case] power: Power) {
    support::bounded(
        "a connection lost before the reply cancels the operation and nothing is performed",
        async move {
            let lab = Lab::new().unwrap();
            let recorder = Recorder::new();
            let (dispatcher, lifetime) =
                BackendLifetime::dispatcher(&recorder, DispatchConfig::default());
            let (session, connection, _endpoint) =
                lab.establish(wire::DEFAULT_MAX_FRAME_LEN).await.unwrap();
            let (mut send, _recv) = session.open_stream().await.unwrap();
            wire::write_frame(
                &mut send,
                &wire::encode_request(power.code(), &power.body()),
            )
            .await
            .unwrap();
            let (mut agent_send, mut agent_recv) = connection.accept_bi().await.unwrap();
            session.connection().close(0u32.into(), b"manager gone");
            connection.closed().await;
            let end = within(
                "serving a stream of a lost connection to its end",
                dispatcher.serve_stream(&mut agent_recv, &mut agent_send),
            )
            .await;
            let op = match power.operation() {
                Entry::Perform(op) => op,
                other => panic!("{other:?} is not immediate"),
            };
            match end {
                // The request was read and prepared: its pending operation must have
                // been dropped, and says so.
                StreamEnd::WriteFailed(_) => {
                    recorder
                        .journal()
                        .wait_for(|e| e.contains(&Entry::Settled(op, Settlement::Cancelled)))
                        .await;
                }
                // The request was never read: nothing was prepared.
                StreamEnd::ReadFailed(_) => {}
                other => panic!("{other:?}"),
            }
            drop(dispatcher);
            lifetime.wait_all_gone().await;
            assert_eq!(
                recorder.journal().power_operations(),
                vec![],
                "rule broken: an operation whose reply was not written is never performed"
            );
        },
    )
    .await;
}

/// A raw frame payload and the error text its reply must start with.
#[rstest]
#[case::unknown(wire::encode_request(9999, &[]), "unknown request code: 9999")]
#[case::unknown_3(wire::encode_request(3, &[]), "unknown request code: 3")]
#[case::not_supported(wire::encode_request(100, &[0xff; 16]), "not supported")]
#[case::malformed_body(wire::encode_request(106, &[]), "malformed body for request code 106")]
#[case::out_of_range_variant(wire::encode_request(106, &[9]), "malformed body for request code 106")]
#[case::empty_frame(Vec::new(), "request frame of 0 bytes is too short")]
#[case::short_frame(vec![4, 0], "request frame of 2 bytes is too short")]
#[tokio::test]
async fn bad_input_gets_an_error_reply_and_the_connection_keeps_serving(
    #[case] payload: Vec<u8>,
    #[case] prefix: &str,
) {
    support::bounded(
        "bad input gets an error reply and the connection keeps serving",
        async move {
            let rig = rig().await;
            let (mut send, mut recv) = rig.session.open_stream().await.unwrap();
            wire::write_frame(&mut send, &payload).await.unwrap();
            let reply = wire::FrameReader::new(&mut recv)
                .read_frame(u32::MAX)
                .await
                .unwrap()
                .unwrap()
                .to_vec();
            let text = wire::decode::<Result<(), String>>(&reply)
                .unwrap()
                .unwrap_err();
            assert!(text.starts_with(prefix), "{text:?}");
            // The same stream still serves...
            wire::write_frame(&mut send, &wire::encode_request(RequestCode::ECHO, &[]))
                .await
                .unwrap();
            let reply = wire::FrameReader::new(&mut recv)
                .read_frame(u32::MAX)
                .await
                .unwrap()
                .unwrap()
                .to_vec();
            assert_eq!(reply, wire::encode(&Ok::<(), String>(())));
            send.finish().unwrap();
            // ...and so does the connection, with a power request.
            Power::Grouped(NodePowerRequest::GracefulShutdown)
                .send_expecting_initiated(&rig.session)
                .await;
            assert_eq!(
                rig.recorder.journal().power_operations(),
                vec![Entry::StartGraceful(GracefulOp::PowerOff)]
            );
        },
    )
    .await;
}

#[tokio::test]
async fn oversized_frame_ends_only_its_stream() {
    support::bounded("an oversized frame ends only its own stream", async move {
        let rig = rig().await;
        let (mut send, mut recv) = rig.session.open_stream().await.unwrap();
        send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let reply = wire::FrameReader::new(&mut recv)
            .read_frame(u32::MAX)
            .await
            .unwrap()
            .unwrap()
            .to_vec();
        let text = wire::decode::<Result<(), String>>(&reply)
            .unwrap()
            .unwrap_err();
        assert!(text.contains("exceeds the limit"), "{text:?}");
        assert_eq!(
            wire::FrameReader::new(&mut recv)
                .read_frame(u32::MAX)
                .await
                .unwrap(),
            None
        );
        Power::Grouped(NodePowerRequest::Reboot)
            .send_expecting_initiated(&rig.session)
            .await;
        rig.recorder
            .journal()
            .wait_for(|e| e.contains(&Entry::Perform(ImmediateOp::Reboot)))
            .await;
        assert_eq!(
            rig.recorder.journal().power_operations(),
            vec![Entry::Perform(ImmediateOp::Reboot)]
        );
    })
    .await;
}

#[tokio::test]
async fn refused_immediate_operation_is_invalid_command_over_quic() {
    support::bounded(
        "a refused immediate operation is answered `invalid command` over QUIC",
        async move {
            let rig = rig().await;
            rig.recorder.set_refuse_prepare(true);
            assert_eq!(
                rig.session
                    .node_power(NodePowerRequest::Reboot)
                    .await
                    .unwrap(),
                Err(reply_text::INVALID_COMMAND.to_owned())
            );
            assert_eq!(
                rig.session
                    .unit_request(RequestCode::FLAT_SHUTDOWN)
                    .await
                    .unwrap(),
                Err(reply_text::INVALID_COMMAND.to_owned())
            );
            rig.recorder.set_fail_start(true);
            assert_eq!(
                rig.session
                    .node_power(NodePowerRequest::GracefulReboot)
                    .await
                    .unwrap(),
                Err(reply_text::FAIL.to_owned())
            );
            assert_eq!(rig.recorder.journal().power_operations(), vec![]);
            assert!(!rig.agent.serving.is_finished());
        },
    )
    .await;
}
