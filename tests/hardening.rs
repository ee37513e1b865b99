//! Hostile input, faults and floods from an authenticated Manager, live over
//! QUIC on loopback with the recording backend: after each, roxyd still
//! serves a power request on the same connection, and the recorder shows no
//! power operation the contract does not call for.
#![cfg(feature = "test-backend")]

mod support;

use std::{sync::Arc, time::Duration};

use roxyd::platform::recorder::journal::{Entry, Recorder};
use roxyd::{
    cli::ManagerAddress,
    config::Config,
    connection,
    daemon::{self, Outcome, Settings},
    dispatch::{DispatchConfig, DispatchEvent, Dispatcher},
    handshake::Identity,
    platform::{GracefulOp, ImmediateOp},
    reconnect::BackoffConfig,
    reply::{self, WireForm},
    wire::{self, NodePowerRequest, NodePowerResponse, RequestCode, reply_text},
};
use roxyd_lab::{Direction, Lab, LabOptions, SERVER_NAME, UdpRelay, manager::AgentSession};
use rstest::rstest;
use support::{
    backend_lifetime::{BackendLifetime, CountedRecorder},
    lab_agent::LabAgents,
};

/// The safety net for every wait: a hang fails the test with a message
/// instead of blocking the run; nothing relies on it as a delay.
const HANG: Duration = Duration::from_secs(60);

struct Rig {
    /// Keeps the Manager alive.
    _lab: Lab,
    session: AgentSession,
    recorder: Recorder,
    dispatcher: Arc<Dispatcher<CountedRecorder>>,
    /// Counts what could still perform an operation.
    lifetime: BackendLifetime,
    serving: tokio::task::JoinHandle<connection::ConnectionEnd>,
}

fn dispatcher(recorder: &Recorder, config: DispatchConfig) -> Arc<Dispatcher<Recorder>> {
    Arc::new(recorder.dispatcher(config))
}

async fn rig_with(options: LabOptions, config: DispatchConfig) -> Rig {
    let lab = Lab::with_options(options).unwrap();
    let recorder = Recorder::new();
    let (dispatcher, lifetime) = BackendLifetime::dispatcher(&recorder, config);
    let dispatcher = Arc::new(dispatcher);
    // The lab's agent announces the limits the dispatcher reports.
    assert_eq!(dispatcher.config(), &config);
    let (session, agent) = lab.connect(Arc::clone(&dispatcher)).await.unwrap();
    Rig {
        _lab: lab,
        session,
        recorder,
        dispatcher,
        lifetime,
        serving: agent.serving,
    }
}

async fn rig() -> Rig {
    rig_with(LabOptions::default(), DispatchConfig::default()).await
}

impl Rig {
    /// A power request on a fresh stream is served correctly, and only it
    /// (with `expected` before it) is in the recorder.
    async fn still_serves_power(&self, expected: &[Entry]) {
        within(
            "the power operation to finish",
            self.dispatcher.power().wait_idle(),
        )
        .await;
        let reply = tokio::time::timeout(
            HANG,
            self.session.node_power(NodePowerRequest::GracefulShutdown),
        )
        .await
        .expect("served promptly")
        .unwrap();
        assert_eq!(reply, Ok(NodePowerResponse::Initiated));
        let mut all = expected.to_vec();
        all.push(Entry::StartGraceful(GracefulOp::PowerOff));
        assert_eq!(self.recorder.journal().power_operations(), all);
    }
}

/// What the contract says a code with any body gets, and the operation it
/// causes; `None` for a reply that is an error starting with the text.
fn oracle(code: u32, body: &[u8]) -> (Result<Vec<u8>, &'static str>, Option<Entry>) {
    match code {
        RequestCode::ECHO => (Ok(wire::encode(&Ok::<(), String>(()))), None),
        // The flat forms' body is `()`: any bytes decode, as in the reference.
        RequestCode::FLAT_REBOOT => (
            Ok(reply::initiated_payload(WireForm::Flat)),
            Some(Entry::Perform(ImmediateOp::Reboot)),
        ),
        RequestCode::FLAT_SHUTDOWN => (
            Ok(reply::initiated_payload(WireForm::Flat)),
            Some(Entry::Perform(ImmediateOp::PowerOff)),
        ),
        RequestCode::NODE_POWER => match body.first() {
            Some(0) => (
                Ok(reply::initiated_payload(WireForm::Grouped)),
                Some(Entry::Perform(ImmediateOp::Reboot)),
            ),
            _ => (Err("malformed body for request code 106"), None),
        },
        _ => (Ok(reply::error_payload(reply_text::NOT_SUPPORTED)), None),
    }
}

#[rstest]
#[tokio::test]
async fn every_known_code_with_an_empty_or_garbage_body(
    #[values(
        0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 100, 101, 102, 103,
        104, 105, 106, 107, 108
    )]
    code: u32,
    #[values(&[][..], &[0xff, 0xfe, 0x00, 0x80, 0x7f, 0xfb][..])] body: &[u8],
) {
    support::bounded(
        "every known code with an empty or garbage body gets the contract's reply and operation",
        async move {
            let rig = rig().await;
            let reply = tokio::time::timeout(HANG, rig.session.request_raw(code, body))
                .await
                .unwrap()
                .unwrap();
            let (expected, operation) = oracle(code, body);
            match expected {
                Ok(bytes) => assert_eq!(reply, bytes, "code {code}"),
                Err(prefix) => {
                    let text = wire::decode::<Result<(), String>>(&reply)
                        .unwrap()
                        .unwrap_err();
                    assert!(text.starts_with(prefix), "code {code}: {text:?}");
                }
            }
            let expected: Vec<Entry> = operation.into_iter().collect();
            if let Some(operation) = expected.first() {
                rig.recorder
                    .journal()
                    .wait_for(|e| e.contains(operation))
                    .await;
            }
            rig.still_serves_power(&expected).await;
        },
    )
    .await;
}

#[tokio::test]
async fn trailing_bytes_after_a_valid_body_are_ignored_as_the_reference_does() {
    support::bounded(
        "trailing bytes after a valid body are ignored as the reference does",
        async move {
            let rig = rig().await;
            let reply = rig
                .session
                .request_raw(RequestCode::NODE_POWER, &[2, 0xde, 0xad, 0xbe, 0xef])
                .await
                .unwrap();
            assert_eq!(reply, reply::initiated_payload(WireForm::Grouped));
            rig.still_serves_power(&[Entry::StartGraceful(GracefulOp::Reboot)])
                .await;
        },
    )
    .await;
}

#[rstest]
#[case::header_cut(vec![0, 0])]
#[case::body_cut({ let mut f = 5u32.to_be_bytes().to_vec(); f.extend([106, 0, 0]); f })]
#[case::power_request_cut_before_its_variant({ let mut f = 5u32.to_be_bytes().to_vec(); f.extend([106, 0, 0, 0]); f })]
#[tokio::test]
async fn a_frame_cut_short_and_finished_ends_only_its_stream(#[case] bytes: Vec<u8>) {
    support::bounded(
        "a frame cut short and finished ends only its stream",
        async move {
            let rig = rig().await;
            let (mut send, mut recv) = rig.session.open_stream().await.unwrap();
            send.write_all(&bytes).await.unwrap();
            send.finish().unwrap();
            // No reply: the stream ends.
            let end =
                tokio::time::timeout(HANG, wire::FrameReader::new(&mut recv).read_frame(1024))
                    .await
                    .unwrap();
            assert!(matches!(end, Ok(None)), "{end:?}");
            rig.still_serves_power(&[]).await;
        },
    )
    .await;
}

#[rstest]
#[case::just_over(wire::DEFAULT_MAX_FRAME_LEN + 1)]
#[case::four_gib(u32::MAX)]
#[tokio::test]
async fn an_oversized_frame_is_refused_before_allocating(#[case] claimed: u32) {
    support::bounded(
        "an oversized frame is refused before allocating",
        async move {
            let rig = rig().await;
            let (mut send, mut recv) = rig.session.open_stream().await.unwrap();
            send.write_all(&claimed.to_be_bytes()).await.unwrap();
            let reply =
                tokio::time::timeout(HANG, wire::FrameReader::new(&mut recv).read_frame(1024))
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
            let text = wire::decode::<Result<(), String>>(&reply)
                .unwrap()
                .unwrap_err();
            assert_eq!(
                text,
                format!(
                    "frame of {claimed} bytes exceeds the limit of {} bytes",
                    wire::DEFAULT_MAX_FRAME_LEN
                )
            );
            rig.still_serves_power(&[]).await;
        },
    )
    .await;
}

#[tokio::test]
async fn thousands_of_half_written_streams_leave_room_for_a_power_request() {
    support::bounded_for(
        support::FLOOD_LIMIT,
        "thousands of half written streams leave room for a power request",
        async move {
            let rig = rig().await;
            // Each stream gets half a frame header and is never finished; like the
            // reference Manager, the flood waits on each stream for its reply and
            // lets the stream go when roxyd ends it.
            let mut waiting = tokio::task::JoinSet::new();
            for _ in 0..2_000 {
                let (mut send, mut recv) = tokio::time::timeout(HANG, rig.session.open_stream())
                    .await
                    .expect("roxyd makes room for another stream")
                    .unwrap();
                send.write_all(&[0, 0]).await.unwrap();
                waiting.spawn(async move {
                    let reply = wire::FrameReader::new(&mut recv).read_frame(1024).await;
                    drop(send);
                    reply.is_ok_and(|frame| frame.is_some())
                });
            }
            rig.still_serves_power(&[]).await;
            // roxyd ended streams to make room, and answered none of them.
            let mut ended = 0;
            while let Some(answered) = waiting.try_join_next() {
                assert!(!answered.unwrap(), "a half-written request got a reply");
                ended += 1;
            }
            assert!(ended >= 2_000 - 64, "only {ended} streams were ended");
        },
    )
    .await;
}

#[tokio::test]
async fn a_manager_that_never_reads_replies_holds_only_its_own_stream() {
    support::bounded(
        "a manager that never reads replies holds only its own stream",
        async move {
            // Each of the Manager's streams gives roxyd 64 bytes of credit for
            // replies; the Manager never reads them.
            let config = DispatchConfig {
                reply_timeout: Duration::from_millis(200),
                ..DispatchConfig::default()
            };
            let options = LabOptions {
                stream_receive_window: Some(64),
                ..LabOptions::default()
            };
            let rig = rig_with(options, config).await;
            let (mut send, _recv) = rig.session.open_stream().await.unwrap();
            let mut requests = Vec::new();
            // More than roxyd's receive window holds.
            for _ in 0..40_000 {
                wire::write_frame(&mut requests, &wire::encode_request(RequestCode::ECHO, &[]))
                    .await
                    .unwrap();
            }
            // Another stream is served meanwhile.
            assert_eq!(
                rig.session.unit_request(RequestCode::ECHO).await.unwrap(),
                Ok(())
            );
            // roxyd reads until its replies exhaust the credit, then stops reading,
            // so the Manager cannot push more than roxyd's receive window; when the
            // stalled reply write gives up (the reply timeout), roxyd ends the stream
            // and the rest of the push fails.
            let pushed = tokio::time::timeout(HANG, send.write_all(&requests))
                .await
                .expect("roxyd ends the stream");
            assert!(pushed.is_err(), "roxyd accepted requests it cannot answer");
            rig.still_serves_power(&[]).await;
        },
    )
    .await;
}

#[rstest]
#[case::grouped_reboot(RequestCode::NODE_POWER, vec![0], ImmediateOp::Reboot)]
#[case::flat_shutdown(RequestCode::FLAT_SHUTDOWN, vec![], ImmediateOp::PowerOff)]
#[tokio::test]
async fn the_connection_dropping_while_an_operation_is_pending_cancels_it(
    #[case] code: u32,
    #[case] body: Vec<u8>,
    #[case] op: ImmediateOp,
) {
    support::bounded(
        "the connection dropping while an operation is pending cancels it",
        async move {
            // Four bytes of credit: the reply (5 or 6 bytes) cannot be written in
            // full, so the operation stays pending until the connection drops.
            let rig = rig_with(
                LabOptions {
                    stream_receive_window: Some(4),
                    ..LabOptions::default()
                },
                DispatchConfig::default(),
            )
            .await;
            let (mut send, _recv) = rig.session.open_stream().await.unwrap();
            wire::write_frame(&mut send, &wire::encode_request(code, &body))
                .await
                .unwrap();
            let journal = rig.recorder.journal();
            journal
                .wait_for(|e| e.contains(&Entry::Dispatch(DispatchEvent::Prepared(op))))
                .await;
            rig.session.connection().close(0u32.into(), b"manager died");
            let entries = journal
                .wait_for(|e| e.contains(&Entry::Dispatch(DispatchEvent::Cancelled(op))))
                .await;
            assert!(
                !entries.iter().any(Entry::is_power_operation),
                "{entries:#?}"
            );
            within(
                "the power operation to finish",
                rig.dispatcher.power().wait_idle(),
            )
            .await;
            // Once the connection's serving has ended and every thread or task that
            // could still perform is gone, nothing was performed.
            within("the serving's end", rig.serving).await.unwrap();
            drop(rig.dispatcher);
            rig.lifetime.wait_all_gone().await;
            assert_eq!(journal.power_operations(), vec![]);
        },
    )
    .await;
}

#[tokio::test]
async fn with_packet_loss_every_reply_arrives_before_its_release() {
    support::bounded(
        "with packet loss every reply arrives before its release",
        async move {
            let lab = Lab::new().unwrap();
            let relay = UdpRelay::start(lab.manager.local_addr().unwrap(), 7)
                .await
                .unwrap();
            let recorder = Recorder::new();
            // Wait as long as it takes: the test asserts delivery, not speed.
            let config = DispatchConfig {
                delivery_timeout: HANG,
                ..DispatchConfig::default()
            };
            let dispatcher = dispatcher(&recorder, config);
            let endpoint =
                connection::client_endpoint(relay.addr(), lab.client_config().unwrap()).unwrap();
            // A fifth of all packets are lost, both ways, from the handshake on.
            relay.set_loss(Direction::ToManager, 200);
            relay.set_loss(Direction::ToAgent, 200);
            let identity = Identity::default();
            let (session, connection) = tokio::join!(
                lab.manager.accept(),
                connection::establish(
                    &endpoint,
                    relay.addr(),
                    SERVER_NAME,
                    &identity,
                    wire::DEFAULT_MAX_FRAME_LEN,
                    HANG,
                )
            );
            let (session, (connection, _)) = (session.unwrap(), connection.unwrap());
            tokio::spawn(connection::serve_connection(
                connection,
                Arc::clone(&dispatcher),
                64,
                std::future::pending(),
            ));
            let requests = [
                (
                    NodePowerRequest::Reboot,
                    Entry::Perform(ImmediateOp::Reboot),
                ),
                (
                    NodePowerRequest::Shutdown,
                    Entry::Perform(ImmediateOp::PowerOff),
                ),
                (
                    NodePowerRequest::GracefulReboot,
                    Entry::StartGraceful(GracefulOp::Reboot),
                ),
            ];
            for (request, operation) in requests.clone() {
                let before = recorder.journal().entries().len();
                let reply = tokio::time::timeout(HANG, session.node_power(request))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(reply, Ok(NodePowerResponse::Initiated));
                let entries = recorder
                    .journal()
                    .wait_for(|e| e[before..].contains(&operation))
                    .await
                    .split_off(before);
                if let Entry::Perform(_) = operation {
                    let delivered = entries
                        .iter()
                        .position(Entry::is_reply_delivered)
                        .unwrap_or_else(|| panic!("not delivered: {entries:#?}"));
                    let performed = entries.iter().position(|e| *e == operation).unwrap();
                    assert!(delivered < performed, "{entries:#?}");
                }
                within(
                    "the power operation to finish",
                    dispatcher.power().wait_idle(),
                )
                .await;
            }
            let (_, dropped_to_manager) = relay.counts(Direction::ToManager);
            let (_, dropped_to_agent) = relay.counts(Direction::ToAgent);
            assert!(
                dropped_to_manager + dropped_to_agent > 0,
                "the relay lost nothing"
            );
            let expected: Vec<Entry> = requests.iter().map(|(_, op)| op.clone()).collect();
            assert_eq!(recorder.journal().power_operations(), expected);
        },
    )
    .await;
}

/// The daemon's own reconnect loop, in process: the same agent (one
/// endpoint, dispatcher and recorder) finds the restarted Manager by itself
/// and serves it.
#[tokio::test]
async fn a_restarted_manager_is_reconnected_to() {
    support::bounded("a restarted manager is reconnected to", async move {
        let mut lab = Lab::new().unwrap();
        let recorder = Recorder::new();
        let dispatcher = dispatcher(&recorder, DispatchConfig::default());
        let addr = lab.manager.local_addr().unwrap();
        let endpoint = connection::client_endpoint(addr, lab.client_config().unwrap()).unwrap();
        let manager = ManagerAddress {
            server_name: SERVER_NAME.into(),
            addr,
        };
        let mut settings = Settings::from_config(&Config::default(), manager, false);
        settings.backoff = BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(40),
        };
        // An attempt that lands while no Manager listens gives up soon.
        settings.handshake_timeout = Duration::from_secs(2);
        let (trigger, stop) = roxyd::stop::channel();
        let daemon =
            tokio::spawn(async move { daemon::run(&settings, &endpoint, dispatcher, stop).await });

        let first = within("the first connection", lab.manager.accept())
            .await
            .unwrap();
        assert_eq!(first.unit_request(RequestCode::ECHO).await.unwrap(), Ok(()));
        drop(first);
        lab.restart_manager().await.unwrap();
        let second = within("the reconnection", lab.manager.accept())
            .await
            .unwrap();
        assert_eq!(
            within(
                "the reply",
                second.node_power(NodePowerRequest::GracefulReboot)
            )
            .await
            .unwrap(),
            Ok(NodePowerResponse::Initiated)
        );
        assert_eq!(
            recorder.journal().power_operations(),
            vec![Entry::StartGraceful(GracefulOp::Reboot)]
        );
        trigger.trigger();
        let outcome = within("the daemon's stop", daemon).await.unwrap();
        assert_eq!(outcome.unwrap(), Outcome::Stopped);
    })
    .await;
}

/// `future`'s output, or a failure naming `what` after [`HANG`].
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not come within {HANG:?}"))
}

/// A journal wait whose condition never holds fails with a message, instead
/// of hanging the run until nextest kills it.
#[tokio::test]
#[should_panic(expected = "the journal did not reach the awaited state within 10ms")]
async fn a_journal_wait_that_never_holds_fails_with_a_message() {
    support::bounded(
        "a journal wait that never holds fails with a message",
        async move {
            let recorder = Recorder::new();
            recorder
                .journal()
                .wait_for_within(Duration::from_millis(10), |_| false)
                .await;
        },
    )
    .await;
}

/// The connection's own sweep ends a silent stream (no timer of the
/// stream's own): the stream is finished by roxyd without a reply, and the
/// connection goes on serving.
#[tokio::test]
async fn a_silent_stream_is_ended_by_the_connection_after_the_idle_timeout() {
    support::bounded(
        "a silent stream is ended by the connection after the idle timeout",
        async move {
            let config = DispatchConfig {
                stream_idle_timeout: Duration::from_millis(200),
                ..DispatchConfig::default()
            };
            let rig = rig_with(LabOptions::default(), config).await;
            let (mut send, mut recv) = rig.session.open_stream().await.unwrap();
            // Half a frame header, so that roxyd sees the stream; then silence.
            send.write_all(&[0, 0]).await.unwrap();
            // Fifty times the idle timeout: a bound, not a delay.
            let ended = tokio::time::timeout(
                Duration::from_secs(10),
                wire::FrameReader::new(&mut recv).read_frame(1024),
            )
            .await
            .expect("roxyd ends a silent stream after its idle timeout");
            assert!(
                matches!(ended, Ok(None)),
                "roxyd finished the stream without a reply: {ended:?}"
            );
            rig.still_serves_power(&[]).await;
        },
    )
    .await;
}

/// Dropping the connection's future (its task aborted) ends every stream
/// task with it, a silent one included, whose idle timeout would otherwise
/// have had nobody to enforce it; the Manager sees the connection closed.
#[tokio::test]
async fn stream_tasks_do_not_outlive_the_connections_future() {
    support::bounded(
        "stream tasks do not outlive the connections future",
        async move {
            let rig = rig().await;
            let (mut send, _recv) = rig.session.open_stream().await.unwrap();
            send.write_all(&[0, 0]).await.unwrap();
            // roxyd has the stream once its task holds the dispatcher.
            within("roxyd to take the stream", async {
                while Arc::strong_count(&rig.dispatcher) < 3 {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            rig.serving.abort();
            let closed = within(
                "the Manager to see the connection closed",
                rig.session.connection().closed(),
            )
            .await;
            assert!(
                matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
                "{closed:?}"
            );
            within("every stream task to end", async {
                while Arc::strong_count(&rig.dispatcher) > 1 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
        },
    )
    .await;
}
