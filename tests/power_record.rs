//! Every power request recorded in the power log, through the dispatch
//! layer over in-memory streams: immediate ones (delivered, unconfirmed,
//! cancelled, refused, and written before the backend performs), graceful
//! ones with the recorder and with stand-in commands (started, exited with
//! their status, refused); and live, over QUIC, from both Manager
//! generations.
#![cfg(all(unix, feature = "test-backend"))]

mod support;

use std::{
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use roxyd::platform::recorder::journal::{Entry as Step, Recorder};
use roxyd::{
    dispatch::{DispatchConfig, Dispatcher, StreamEnd},
    platform::{GracefulCommands, GracefulOp, ImmediateOp, PowerBackend, linux::LinuxBackend},
    power_log::{
        self, Entry, Event, Op, Outcome, PowerLog, PowerRecord, Recorded, Reply, RequestForm,
    },
    reply::{Delivery, ReplySink},
    wire::{self, NodePowerRequest, RequestCode},
};
use roxyd_lab::{Lab, SERVER_NAME, manager::Generation};
use rstest::rstest;
use support::{
    backend_lifetime::BackendLifetime, held_reply::HeldUntilStopped, lab_agent::LabAgents,
};
use tempfile::TempDir;
use tokio::io::AsyncWrite;

const MANAGER: &str = "manager.roxyd.test@127.0.0.1:38390";

/// The longest a test waits for the writer or a step: far above anything
/// they take, and below the test's own limit, which cannot interrupt a
/// blocking wait for the writer.
const WAIT: Duration = Duration::from_secs(15);

/// The power entries of the log in `dir` (the `start` entry left out).
fn power_entries(dir: &Path) -> Vec<PowerRecord> {
    let log = power_log::read_log(&dir.join("power.log"))
        .unwrap()
        .unwrap();
    assert_eq!(log.skipped, 0, "{log:?}");
    log.entries
        .into_iter()
        .filter_map(|(Entry { event, .. }, _)| match event {
            Event::Power(record) => Some(record),
            _ => None,
        })
        .collect()
}

/// A power request in the wire form named by `form`: its frame.
fn request_frame(request: NodePowerRequest, form: RequestForm) -> Vec<u8> {
    let (code, body) = match form {
        RequestForm::NodePower => (RequestCode::NODE_POWER, wire::encode(&request)),
        RequestForm::FlatReboot => (RequestCode::FLAT_REBOOT, Vec::new()),
        RequestForm::FlatShutdown => (RequestCode::FLAT_SHUTDOWN, Vec::new()),
    };
    let mut frame = Vec::new();
    let payload = wire::encode_request(code, &body);
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Serves one request frame on `dispatcher`, with `send` taking the reply.
async fn serve_one<B: PowerBackend, W: ReplySink>(
    dispatcher: &Dispatcher<B>,
    frame: &[u8],
    send: &mut W,
) -> StreamEnd {
    let mut recv = frame;
    tokio::time::timeout(WAIT, dispatcher.serve_stream(&mut recv, send))
        .await
        .expect("the stream is served")
}

/// Serves one request frame, its reply read and thrown away.
async fn serve<B: PowerBackend>(dispatcher: &Dispatcher<B>, frame: &[u8]) -> StreamEnd {
    let (_manager, mut agent) = tokio::io::duplex(64 * 1024);
    serve_one(dispatcher, frame, &mut agent).await
}

fn flush(log: &PowerLog) {
    assert_eq!(log.flush(WAIT), Recorded::Written);
}

fn started(dir: &Path, config: DispatchConfig) -> (Recorder, Dispatcher<Recorder>, PowerLog) {
    let recorder = Recorder::new();
    let log = PowerLog::start(dir, MANAGER);
    let dispatcher = recorder.dispatcher(config).with_power_log(log.clone());
    (recorder, dispatcher, log)
}

#[rstest]
#[case::grouped_reboot(NodePowerRequest::Reboot, RequestForm::NodePower, Op::Reboot)]
#[case::grouped_shutdown(NodePowerRequest::Shutdown, RequestForm::NodePower, Op::PowerOff)]
#[case::flat_reboot(NodePowerRequest::Reboot, RequestForm::FlatReboot, Op::Reboot)]
#[case::flat_shutdown(NodePowerRequest::Shutdown, RequestForm::FlatShutdown, Op::PowerOff)]
#[tokio::test]
async fn an_immediate_release_is_recorded_before_the_backend_performs(
    #[case] request: NodePowerRequest,
    #[case] form: RequestForm,
    #[case] op: Op,
) {
    support::bounded(
        "an immediate release is recorded before the backend performs",
        async move {
            let dir = TempDir::new().unwrap();
            let (recorder, dispatcher, log) = started(dir.path(), DispatchConfig::default());
            // Held in `perform`: had the host gone down now, what does the log say?
            recorder.set_hold_perform(true);
            let end = serve(&dispatcher, &request_frame(request, form)).await;
            assert!(matches!(end, StreamEnd::Released(_)), "{end:?}");
            tokio::time::timeout(
                WAIT,
                recorder
                    .journal()
                    .wait_for(|steps| steps.iter().any(|s| matches!(s, Step::Perform(_)))),
            )
            .await
            .expect("perform is called");
            let entries = power_entries(dir.path());
            recorder.set_hold_perform(false);
            assert_eq!(
                entries,
                [PowerRecord {
                    op,
                    request: form,
                    manager: MANAGER.to_owned(),
                    reply: Reply::Delivered,
                    outcome: Outcome::Released,
                    exit_status: None,
                    reason: None,
                }]
            );
            drop(log);
        },
    )
    .await;
}

#[tokio::test]
async fn a_release_without_the_acknowledgement_is_recorded_unconfirmed() {
    support::bounded(
        "a release without the acknowledgement is recorded unconfirmed",
        async move {
            let dir = TempDir::new().unwrap();
            let config = DispatchConfig {
                delivery_timeout: Duration::ZERO,
                ..DispatchConfig::default()
            };
            let (recorder, dispatcher, log) = started(dir.path(), config);
            let frame = request_frame(NodePowerRequest::Reboot, RequestForm::FlatReboot);
            serve(&dispatcher, &frame).await;
            dispatcher.power().wait_idle().await;
            flush(&log);
            let entries = power_entries(dir.path());
            assert_eq!(entries.len(), 1, "{entries:?}");
            assert_eq!(entries[0].reply, Reply::Unconfirmed);
            assert_eq!(entries[0].outcome, Outcome::Released);
            drop(recorder);
        },
    )
    .await;
}

/// A send side whose every write fails, as a lost connection's does.
struct BrokenSink;

impl AsyncWrite for BrokenSink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection lost",
        )))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ReplySink for BrokenSink {
    async fn finish_and_confirm(&mut self) -> Delivery {
        Delivery::Lost("connection lost".to_owned())
    }

    async fn peer_stop(&mut self) -> Option<u64> {
        None
    }
}

#[tokio::test]
async fn an_immediate_request_whose_reply_cannot_be_written_is_recorded_cancelled() {
    support::bounded(
        "an immediate request whose reply cannot be written is recorded cancelled",
        async move {
            let dir = TempDir::new().unwrap();
            let recorder = Recorder::new();
            let log = PowerLog::start(dir.path(), MANAGER);
            let (dispatcher, lifetime) =
                BackendLifetime::dispatcher(&recorder, DispatchConfig::default());
            let dispatcher = dispatcher.with_power_log(log.clone());
            let frame = request_frame(NodePowerRequest::Shutdown, RequestForm::NodePower);
            let end = serve_one(&dispatcher, &frame, &mut BrokenSink).await;
            assert!(matches!(end, StreamEnd::WriteFailed(_)), "{end:?}");
            flush(&log);
            let entries = power_entries(dir.path());
            assert_eq!(entries.len(), 1, "{entries:?}");
            let entry = &entries[0];
            assert_eq!(
                (entry.op, entry.reply.clone(), entry.outcome),
                (Op::PowerOff, Reply::Cancelled, Outcome::Cancelled)
            );
            assert!(
                entry.reason.as_deref().unwrap().contains("connection lost"),
                "{entry:?}"
            );
            // Once every thread or task that could still perform has ended, nothing
            // was performed.
            drop(dispatcher);
            lifetime.wait_all_gone().await;
            assert!(
                !recorder
                    .journal()
                    .entries()
                    .iter()
                    .any(Step::is_power_operation)
            );
        },
    )
    .await;
}

#[tokio::test]
async fn refused_immediate_requests_are_recorded_with_the_error_sent_and_why() {
    support::bounded(
        "refused immediate requests are recorded with the error sent and why",
        async move {
            let dir = TempDir::new().unwrap();
            let (recorder, dispatcher, log) = started(dir.path(), DispatchConfig::default());
            recorder.set_refuse_prepare(true);
            let frame = request_frame(NodePowerRequest::Reboot, RequestForm::NodePower);
            serve(&dispatcher, &frame).await;
            recorder.set_refuse_prepare(false);
            // Busy: one operation is pending.
            let pending = dispatcher
                .power()
                .prepare(ImmediateOp::Reboot, RequestForm::NodePower)
                .unwrap();
            serve(&dispatcher, &frame).await;
            drop(pending);
            flush(&log);
            let refusals: Vec<(Reply, Outcome, Option<String>)> = power_entries(dir.path())
                .into_iter()
                .map(|e| (e.reply, e.outcome, e.reason))
                .collect();
            let invalid = || Reply::Error("invalid command".to_owned());
            assert_eq!(
                refusals,
                [
                    (
                        invalid(),
                        Outcome::Refused,
                        Some("refused by the recording backend".to_owned())
                    ),
                    (
                        invalid(),
                        Outcome::Refused,
                        Some("another power operation is in progress".to_owned())
                    ),
                ]
            );
        },
    )
    .await;
}

#[rstest]
#[case::graceful_reboot(NodePowerRequest::GracefulReboot, Op::GracefulReboot)]
#[case::graceful_shutdown(NodePowerRequest::GracefulShutdown, Op::GracefulPowerOff)]
#[tokio::test]
async fn a_graceful_request_on_the_recorder_is_recorded_started_or_refused(
    #[case] request: NodePowerRequest,
    #[case] op: Op,
) {
    support::bounded(
        "a graceful request on the recorder is recorded started or refused",
        async move {
            let dir = TempDir::new().unwrap();
            let (recorder, dispatcher, log) = started(dir.path(), DispatchConfig::default());
            let frame = request_frame(request, RequestForm::NodePower);
            serve(&dispatcher, &frame).await;
            recorder.set_fail_start(true);
            serve(&dispatcher, &frame).await;
            flush(&log);
            let entries: Vec<(Op, Reply, Outcome, Option<String>)> = power_entries(dir.path())
                .into_iter()
                .map(|e| (e.op, e.reply, e.outcome, e.reason))
                .collect();
            assert_eq!(
                entries,
                [
                    (op, Reply::Initiated, Outcome::CommandStarted, None),
                    (
                        op,
                        Reply::Error("fail".to_owned()),
                        Outcome::Refused,
                        Some("refused by the recording backend".to_owned())
                    ),
                ]
            );
        },
    )
    .await;
}

/// Links the stand-in command that exits `status` (0 or 1) into `dir` as
/// `name`.
fn stand_in(dir: &Path, name: &str, succeeds: bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(if succeeds {
            "fake-command-ok"
        } else {
            "fake-command-fail"
        });
    std::os::unix::fs::symlink(script, dir.join(name)).unwrap();
}

#[rstest]
#[case::exits_0(true, Some(0))]
#[case::exits_1(false, Some(1))]
#[tokio::test]
async fn a_graceful_command_is_recorded_when_started_and_when_it_exits(
    #[case] succeeds: bool,
    #[case] status: Option<i32>,
) {
    support::bounded(
        "a graceful command is recorded when started and when it exits",
        async move {
            let dir = TempDir::new().unwrap();
            let commands = TempDir::new().unwrap();
            stand_in(commands.path(), "reboot", succeeds);
            let backend = LinuxBackend::with_commands(
                GracefulCommands::new(LinuxBackend::REBOOT, LinuxBackend::POWER_OFF)
                    .with_search_dirs(vec![commands.path().to_owned()]),
            );
            let log = PowerLog::start(dir.path(), MANAGER);
            let dispatcher =
                Dispatcher::new(backend, DispatchConfig::default()).with_power_log(log.clone());
            let run = dispatcher
                .power()
                .start_graceful(GracefulOp::Reboot, RequestForm::NodePower)
                .unwrap();
            // The exit is recorded before `finished` resolves.
            tokio::time::timeout(WAIT, run.finished())
                .await
                .expect("the command exits");
            flush(&log);
            let entries = power_entries(dir.path());
            let seen: Vec<(Reply, Outcome, Option<i32>)> = entries
                .into_iter()
                .map(|e| (e.reply, e.outcome, e.exit_status))
                .collect();
            assert_eq!(
                seen,
                [
                    (Reply::Initiated, Outcome::CommandStarted, None),
                    (Reply::Initiated, Outcome::CommandExited, status),
                ]
            );
        },
    )
    .await;
}

/// A state directory that hangs (its log a FIFO nobody reads): the release
/// still reaches the backend, after at most the power log's bound.
#[tokio::test]
async fn a_hung_state_directory_does_not_stop_the_release() {
    support::bounded(
        "a hung state directory does not stop the release",
        async move {
            let dir = TempDir::new().unwrap();
            nix::unistd::mkfifo(
                &dir.path().join("power.log"),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .unwrap();
            let (recorder, dispatcher, _log) = started(dir.path(), DispatchConfig::default());
            let frame = request_frame(NodePowerRequest::Reboot, RequestForm::FlatReboot);
            serve(&dispatcher, &frame).await;
            tokio::time::timeout(
                WAIT,
                recorder
                    .journal()
                    .wait_for(|steps| steps.iter().any(|s| matches!(s, Step::Perform(_)))),
            )
            .await
            .expect("perform is called despite the hung state directory");
        },
    )
    .await;
}

/// Both Manager generations over real QUIC on loopback: a 0.18 Manager
/// acknowledges the reply (`delivered`), a 0.19 Manager declines it
/// (`declined`, its stop forced to arrive before the write).
#[rstest]
#[case::v0_18_reboot(
    Generation::V0_18,
    NodePowerRequest::Reboot,
    Op::Reboot,
    Reply::Delivered
)]
#[case::v0_18_shutdown(
    Generation::V0_18,
    NodePowerRequest::Shutdown,
    Op::PowerOff,
    Reply::Delivered
)]
#[case::v0_19_reboot(
    Generation::V0_19,
    NodePowerRequest::Reboot,
    Op::Reboot,
    Reply::Declined
)]
#[case::v0_19_shutdown(
    Generation::V0_19,
    NodePowerRequest::Shutdown,
    Op::PowerOff,
    Reply::Declined
)]
#[tokio::test]
async fn a_live_immediate_request_is_recorded_with_what_the_manager_made_of_the_reply(
    #[case] generation: Generation,
    #[case] request: NodePowerRequest,
    #[case] op: Op,
    #[case] reply: Reply,
) {
    support::bounded(
        "a live immediate request is recorded with what the manager made of the reply",
        async move {
            let dir = TempDir::new().unwrap();
            let lab = Lab::new().unwrap();
            let manager = format!("{SERVER_NAME}@{}", lab.manager.local_addr().unwrap());
            let log = PowerLog::start(dir.path(), &manager);
            let recorder = Recorder::new();
            let config = DispatchConfig::default();
            let dispatcher =
                Arc::new(Dispatcher::new(recorder.clone(), config).with_power_log(log.clone()));
            let (session, connection, _endpoint) =
                lab.establish(config.max_frame_len).await.unwrap();
            // The 0.19 Manager's stop is forced to arrive before the reply is
            // written, by the send half the request is served with.
            let _serving = tokio::spawn(async move {
                if let Ok((send, mut recv)) = connection.accept_bi().await {
                    if generation == Generation::V0_19 {
                        let mut send = HeldUntilStopped::new(send);
                        dispatcher.serve_stream(&mut recv, &mut send).await;
                    } else {
                        let mut send = send;
                        dispatcher.serve_stream(&mut recv, &mut send).await;
                    }
                }
            });
            tokio::time::timeout(WAIT, session.node_power_as(generation, request))
                .await
                .expect("the request is sent")
                .unwrap();
            tokio::time::timeout(
                WAIT,
                recorder
                    .journal()
                    .wait_for(|steps| steps.iter().any(|s| matches!(s, Step::Perform(_)))),
            )
            .await
            .expect("perform is called");
            flush(&log);
            assert_eq!(
                power_entries(dir.path()),
                [PowerRecord {
                    op,
                    request: RequestForm::NodePower,
                    manager,
                    reply,
                    outcome: Outcome::Released,
                    exit_status: None,
                    reason: None,
                }]
            );
        },
    )
    .await;
}
