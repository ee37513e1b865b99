//! A stop (SIGINT, SIGTERM) while the Manager is being served, live over QUIC
//! on loopback with the lab Manager and the recorder: a committed
//! operation's reply still reaches a 0.18 Manager, a 0.19 decline under way
//! is decided by its own rule, and a stream that only waits for a request
//! does not hold the stop up. The stop is the production signal
//! ([`roxyd::stop`]) given to the connection's serving loop; each packet
//! order is forced with explicit signals (the recorder's journal, a relay
//! that drops the agent's packets), never left to timing.
#![cfg(feature = "test-backend")]

mod support;

use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use roxyd::platform::recorder::journal::{Entry, Journal, Recorder};
use roxyd::{
    connection::{self, ConnectionEnd, ConnectionLimits},
    dispatch::{DispatchConfig, DispatchEvent},
    platform::{ImmediateOp, Settlement},
    power::immediate::DeclineRule,
    power_log::{self, PowerLog},
    stop,
    wire::{self, NodePowerRequest, NodePowerResponse, RequestCode},
};
use roxyd_lab::{Direction, Lab, UdpRelay, manager::AgentSession};
use rstest::rstest;
use support::{backend_lifetime::BackendLifetime, immediate::Immediate, lab_agent::LabAgents};
use tokio::sync::oneshot;

/// Fails the test if one step takes longer than any step here can.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not come within 30 s"))
}

struct Rig {
    _lab: Lab,
    /// Between the agent and the Manager, when the test drops packets.
    relay: Option<UdpRelay>,
    session: AgentSession,
    /// The agent's serving loop, as the daemon runs it.
    serving: tokio::task::JoinHandle<ConnectionEnd>,
    _endpoint: quinn::Endpoint,
    recorder: Recorder,
    /// Counts what could still perform an operation.
    lifetime: BackendLifetime,
    /// Asks the serving loop to stop.
    trigger: stop::StopTrigger,
    /// Resolves once the serving loop has taken the stop in.
    stop_taken: Mutex<Option<oneshot::Receiver<()>>>,
    power_log: PowerLog,
    state_dir: tempfile::TempDir,
}

impl Rig {
    /// An agent serving with `config`, its packets to the Manager going
    /// through a relay when `relayed`.
    async fn new(config: DispatchConfig, relayed: bool) -> Self {
        let lab = Lab::new().unwrap();
        let manager = lab.manager.local_addr().unwrap();
        let relay = if relayed {
            Some(UdpRelay::start(manager, 5).await.unwrap())
        } else {
            None
        };
        let addr: SocketAddr = relay.as_ref().map_or(manager, UdpRelay::addr);
        let state_dir = tempfile::tempdir().unwrap();
        let power_log = PowerLog::start(state_dir.path(), "lab");
        let recorder = Recorder::new();
        let (dispatcher, lifetime) = BackendLifetime::dispatcher(&recorder, config);
        let dispatcher = Arc::new(dispatcher.with_power_log(power_log.clone()));
        let (session, connection, endpoint) =
            lab.establish_via(addr, config.max_frame_len).await.unwrap();
        let (trigger, stop) = stop::channel();
        let (taken, stop_taken) = oneshot::channel();
        // The stop the daemon gives the loop, and a note that the loop took
        // it in: the loop acts on it in the same poll.
        let shutdown = async move {
            stop.requested_owned().await;
            let _ = taken.send(());
        };
        let limits = ConnectionLimits {
            max_streams: 16,
            slots_held_timeout: ConnectionLimits::DEFAULT_SLOTS_HELD_TIMEOUT,
        };
        let serving = tokio::spawn(connection::serve_connection_with(
            connection, dispatcher, limits, shutdown,
        ));
        Self {
            _lab: lab,
            relay,
            session,
            serving,
            _endpoint: endpoint,
            recorder,
            lifetime,
            trigger,
            stop_taken: Mutex::new(Some(stop_taken)),
            power_log,
            state_dir,
        }
    }

    fn journal(&self) -> &Journal {
        self.recorder.journal()
    }

    async fn until(&self, entry: Entry) {
        within(
            &format!("{entry:?}"),
            self.journal().wait_for(|e| e.contains(&entry)),
        )
        .await;
    }

    /// Stops the agent, as SIGTERM does, and returns once its serving loop
    /// has taken the stop in.
    async fn stop(&self) {
        self.trigger.trigger();
        let taken = self.stop_taken.lock().unwrap().take();
        within(
            "the serving loop taking the stop in",
            taken.expect("one stop per test"),
        )
        .await
        .unwrap();
    }

    fn relay(&self) -> &UdpRelay {
        self.relay.as_ref().expect("a relayed rig")
    }

    /// How the pending `op` was settled.
    async fn settlement(&self, op: ImmediateOp) -> Settlement {
        within(
            "the pending operation's settlement",
            self.journal().settlement(op),
        )
        .await
    }
}

/// The power log's power entries in `dir`, once everything recorded was
/// written.
fn power_log_lines(log: &PowerLog, dir: &Path) -> Vec<String> {
    let _ = log.flush(Duration::from_secs(10));
    power_log::read_log(&power_log::log_path(dir))
        .unwrap()
        .map(|read| {
            read.entries
                .into_iter()
                .map(|(_, line)| line)
                .filter(|line| line.contains(r#""kind":"power""#))
                .collect()
        })
        .unwrap_or_default()
}

/// A 0.18 Manager: the reply was written, but none of the agent's packets
/// had reached the Manager when the stop came (the relay dropped them). The
/// stop gives the reply its delivery wait on the open connection: the
/// Manager reads `Initiated`, and the operation is carried out.
#[rstest]
#[case::reboot(NodePowerRequest::Reboot, ImmediateOp::Reboot)]
#[case::shutdown(NodePowerRequest::Shutdown, ImmediateOp::PowerOff)]
#[tokio::test]
async fn a_stop_right_after_the_reply_was_written_still_delivers_it(
    #[case] request: NodePowerRequest,
    #[case] op: ImmediateOp,
) {
    support::bounded(
        "a stop right after the reply was written still delivers it",
        async move {
            let rig = Rig::new(DispatchConfig::default(), true).await;
            rig.relay().block(Direction::ToManager, true);
            let asked = rig.session.node_power(request);
            let stop_after_the_write = async {
                rig.until(Entry::Dispatch(DispatchEvent::ReplyWritten {
                    code: RequestCode::NODE_POWER,
                    ok: true,
                }))
                .await;
                rig.stop().await;
                rig.relay().block(Direction::ToManager, false);
            };
            let (reply, ()) = tokio::join!(within("the reply", asked), stop_after_the_write);
            assert_eq!(
                reply.expect("rule broken: a stop lets a written reply reach the Manager"),
                Ok(NodePowerResponse::Initiated)
            );
            assert_eq!(rig.settlement(op).await, Settlement::Released);
            rig.until(Entry::Perform(op)).await;
            assert_eq!(rig.journal().power_operations(), vec![Entry::Perform(op)]);
            let end = within("the serving loop's end", rig.serving).await.unwrap();
            assert!(matches!(end, ConnectionEnd::Stopped), "{end:?}");
        },
    )
    .await;
}

/// A 0.19 Manager's `STOP_SENDING(0)` reached the agent with its request,
/// so the reply write failed and the agent waits for the Manager's FIN.
/// Returns the Manager's send half, whose FIN is the test's to send.
async fn decline_waiting_for_fin(rig: &Rig, request: Immediate) -> quinn::SendStream {
    let (mut send, mut recv) = rig.session.open_stream().await.unwrap();
    // Queued before the request: it reaches the agent no later than it.
    recv.stop(0u32.into()).unwrap();
    wire::write_frame(&mut send, &request.frame())
        .await
        .unwrap();
    let (code, _) = request.code_and_body();
    rig.until(Entry::Dispatch(DispatchEvent::ReplyFailed { code }))
        .await;
    send
}

/// A stop during a decline's wait for the FIN: the FIN comes within the
/// wait, so the operation is carried out, as without the stop.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::grouped_shutdown(Immediate::GroupedShutdown)]
#[case::flat_reboot(Immediate::FlatReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn a_stop_during_the_fin_wait_still_carries_out_a_decline(#[case] request: Immediate) {
    support::bounded(
        "a stop during the fin wait still carries out a decline",
        async move {
            let rig = Rig::new(DispatchConfig::default(), false).await;
            let mut send = decline_waiting_for_fin(&rig, request).await;
            rig.stop().await;
            send.finish().unwrap();
            let op = request.op();
            assert_eq!(
                rig.settlement(op).await,
                Settlement::Released,
                "rule broken: a decline under way at a stop is decided by its own rule"
            );
            let entries = within(
                "the operation carried out",
                rig.journal().wait_for(|e| e.contains(&Entry::Perform(op))),
            )
            .await;
            assert!(
                entries.contains(&Entry::Dispatch(DispatchEvent::ReplyDeclined(op))),
                "{entries:#?}"
            );
            assert_eq!(rig.journal().power_operations(), vec![Entry::Perform(op)]);
            let end = within("the serving loop's end", rig.serving).await.unwrap();
            assert!(matches!(end, ConnectionEnd::Stopped), "{end:?}");
        },
    )
    .await;
}

/// A stop during a decline's wait for the FIN, and no FIN within the wait:
/// dropped because the Manager's side stayed open (the rule), not because
/// the stop closed the connection.
#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn a_stop_during_the_fin_wait_drops_a_decline_whose_fin_never_comes(
    #[case] request: Immediate,
) {
    support::bounded(
        "a stop during the fin wait drops a decline whose fin never comes",
        async move {
            let config = DispatchConfig {
                decline: DeclineRule {
                    fin_wait: Duration::from_millis(100),
                    ..DeclineRule::default()
                },
                ..DispatchConfig::default()
            };
            let rig = Rig::new(config, false).await;
            let send = decline_waiting_for_fin(&rig, request).await;
            rig.stop().await;
            let op = request.op();
            assert_eq!(rig.settlement(op).await, Settlement::Cancelled);
            let end = within("the serving loop's end", rig.serving).await.unwrap();
            assert!(matches!(end, ConnectionEnd::Stopped), "{end:?}");
            // The serving loop held the dispatcher: once every thread or task that
            // could still perform has ended, nothing was performed.
            rig.lifetime.wait_all_gone().await;
            assert_eq!(rig.recorder.journal().power_operations(), vec![]);
            drop(send);
            let lines = power_log_lines(&rig.power_log, rig.state_dir.path());
            assert!(
                lines.len() == 1 && lines[0].contains("stayed open"),
                "rule broken: a decline under way at a stop is decided by its own rule \
         (the FIN wait), not cut by the stop: {lines:#?}"
            );
        },
    )
    .await;
}

/// A stream that only waits for its next request (it was answered an echo)
/// does not hold the stop up for the stop's bound: the serving loop ends at
/// once, well within the bound (10 s here).
#[tokio::test]
async fn a_stop_while_a_stream_waits_for_a_request_ends_promptly() {
    support::bounded(
        "a stop while a stream waits for a request ends promptly",
        async move {
            let config = DispatchConfig {
                delivery_timeout: Duration::from_secs(10),
                ..DispatchConfig::default()
            };
            let bound = connection::stop_delivery_bound(&config);
            let rig = Rig::new(config, false).await;
            let (mut send, mut recv) = rig.session.open_stream().await.unwrap();
            wire::write_frame(&mut send, &wire::encode_request(RequestCode::ECHO, &[]))
                .await
                .unwrap();
            within(
                "the echo reply",
                wire::FrameReader::new(&mut recv).read_frame(1024),
            )
            .await
            .unwrap()
            .expect("an echo reply");
            rig.stop().await;
            let end = tokio::time::timeout(bound / 2, rig.serving)
                .await
                .expect(
                    "rule broken: a stream waiting for a request ends at once on a stop, \
             it does not hold the stop up for the stop's bound",
                )
                .unwrap();
            assert!(matches!(end, ConnectionEnd::Stopped), "{end:?}");
            drop((send, recv));
        },
    )
    .await;
}
