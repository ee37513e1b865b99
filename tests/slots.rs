//! The connection's stream slots, live over QUIC on loopback with the lab
//! Manager: no timer runs on an idle connection, a held slot counts only as
//! long as quinn holds it, making room closes one batch, and a panicking
//! stream task is reported and leaves the connection serving.
#![cfg(feature = "test-backend")]

mod support;

use std::{
    future::Future,
    io::Write,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use roxyd::platform::recorder::journal::Recorder;
use roxyd::{
    config::Config,
    connection::{self, ConnectionEnd, ConnectionLimits},
    dispatch::{DispatchConfig, DispatchEvent, DispatchObserver, Dispatcher},
    handshake::Identity,
    tls,
    wire::{self, RequestCode},
};
use roxyd_lab::{Lab, SERVER_NAME, manager::AgentSession};
use rstest::rstest;
use support::HANG;
use tokio::task::JoinHandle;

/// The idle timeout the agent runs with: short, so that it closes a silent
/// stream soon.
const IDLE: Duration = Duration::from_millis(100);
/// The window over which an idle connection's future is watched.
const WINDOW: Duration = Duration::from_millis(500);
/// Most polls of an idle connection's future in [`WINDOW`]: a few stray
/// wakeups, not a tick (a 5 ms tick polls it about 100 times).
const IDLE_POLLS: usize = 5;

/// Counts the polls of the future it wraps.
struct Counted<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

/// An agent serving in process with `limits` and `observer`.
struct Agent {
    session: AgentSession,
    serving: JoinHandle<ConnectionEnd>,
    polls: Arc<AtomicUsize>,
    _lab: Lab,
    _endpoint: quinn::Endpoint,
}

async fn agent(
    limits: ConnectionLimits,
    idle: Duration,
    observer: Option<Arc<dyn DispatchObserver>>,
) -> Agent {
    let lab = Lab::new().unwrap();
    let config = DispatchConfig {
        stream_idle_timeout: idle,
        ..DispatchConfig::default()
    };
    let mut dispatcher: Dispatcher<Recorder> = Recorder::new().dispatcher(config);
    if let Some(observer) = observer {
        dispatcher = dispatcher.with_observer(observer);
    }
    let addr = lab.manager.local_addr().unwrap();
    let client = tls::client_config(
        lab.pki.agent.chain(),
        lab.pki.agent.key(),
        lab.pki.roots().unwrap(),
        limits.max_streams,
    )
    .unwrap();
    let endpoint = connection::client_endpoint(addr, client).unwrap();
    let identity = Identity::default();
    let (session, established) = tokio::join!(
        lab.manager.accept(),
        connection::establish(
            &endpoint,
            addr,
            SERVER_NAME,
            &identity,
            wire::DEFAULT_MAX_FRAME_LEN,
            Config::default().handshake_timeout(),
        )
    );
    let polls = Arc::new(AtomicUsize::new(0));
    let serving = tokio::spawn(Counted {
        inner: Box::pin(connection::serve_connection_with(
            established.unwrap().0,
            Arc::new(dispatcher),
            limits,
            std::future::pending(),
        )),
        polls: Arc::clone(&polls),
    });
    Agent {
        session: session.unwrap(),
        serving,
        polls,
        _lab: lab,
        _endpoint: endpoint,
    }
}

fn limits(max_streams: u32, slots_held_timeout: Duration) -> ConnectionLimits {
    ConnectionLimits {
        max_streams,
        slots_held_timeout,
    }
}

/// Opens a stream and writes two bytes of a frame header on it, as a
/// Manager task that died mid-request.
async fn half_written(session: &AgentSession) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = session.open_stream().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    (send, recv)
}

/// Waits for the agent's FIN on `recv`: it closed the stream on its side.
async fn closed_by_agent(recv: &mut quinn::RecvStream) {
    let end = support::within("the agent to close the stream", recv.read_to_end(1024)).await;
    assert!(end.is_ok(), "the stream ended otherwise: {end:?}");
}

async fn echo(session: &AgentSession) {
    let reply = support::within("an echo reply", session.unit_request(RequestCode::ECHO)).await;
    assert_eq!(reply.unwrap(), Ok(()));
}

/// How often the connection's future is polled over [`WINDOW`].
async fn polls_over_window(agent: &Agent) -> usize {
    let before = agent.polls.load(Ordering::Relaxed);
    tokio::time::sleep(WINDOW).await;
    agent.polls.load(Ordering::Relaxed) - before
}

#[rstest]
#[case::no_stream(64, false)]
#[case::a_held_stream(64, true)]
#[case::one_stream_slot(1, false)]
#[tokio::test]
async fn an_idle_connection_runs_no_timer(#[case] max_streams: u32, #[case] held: bool) {
    support::bounded("an idle connection runs no timer", async move {
        let agent = agent(limits(max_streams, HANG), IDLE, None).await;
        echo(&agent.session).await;
        let _held = if held {
            let (send, mut recv) = half_written(&agent.session).await;
            closed_by_agent(&mut recv).await;
            Some((send, recv))
        } else {
            None
        };
        let polls = polls_over_window(&agent).await;
        assert!(
            polls <= IDLE_POLLS,
            "the idle connection's future was polled {polls} times in {WINDOW:?}"
        );
        assert!(!agent.serving.is_finished());
        echo(&agent.session).await;
    })
    .await;
}

#[rstest]
#[case::finished(false)]
#[case::reset(true)]
#[tokio::test]
async fn a_held_stream_the_manager_ends_after_much_data_frees_its_slot(#[case] reset: bool) {
    support::bounded(
        "a held stream the manager ends after much data frees its slot",
        async move {
            let slots_held = Duration::from_millis(300);
            let agent = agent(limits(1, slots_held), IDLE, None).await;
            let (mut send, mut recv) = half_written(&agent.session).await;
            closed_by_agent(&mut recv).await;
            // Far more than the agent would once read of a stream it closed.
            send.write_all(&vec![0; 256 * 1024]).await.unwrap();
            if reset {
                send.reset(7u32.into()).unwrap();
            } else {
                send.finish().unwrap();
            }
            drop(recv);
            let ended = Instant::now();
            // Past the slots-held bound, the one slot is the Manager's again: a
            // count that kept the stream as held would have closed the connection.
            while ended.elapsed() < slots_held * 3 {
                echo(&agent.session).await;
            }
            assert!(!agent.serving.is_finished(), "the connection ended");
        },
    )
    .await;
}

#[tokio::test]
async fn making_room_closes_one_batch_then_gives_the_manager_time_to_answer() {
    support::bounded(
        "making room closes one batch then gives the manager time to answer",
        async move {
            // Four slots: one stream freed is enough for quinn to announce credit.
            let agent = agent(limits(4, HANG), HANG, None).await;
            let mut sends = Vec::new();
            let mut recvs = Vec::new();
            for _ in 0..4 {
                let (send, recv) = half_written(&agent.session).await;
                sends.push(send);
                recvs.push(recv);
            }
            let closed = Arc::new(AtomicUsize::new(0));
            let (first_tx, first) = tokio::sync::oneshot::channel();
            let first_tx = Arc::new(Mutex::new(Some(first_tx)));
            let mut watchers = Vec::new();
            for mut recv in recvs {
                let (closed, first_tx) = (Arc::clone(&closed), Arc::clone(&first_tx));
                // Each watcher reads until the agent's FIN.
                watchers.push(tokio::spawn(async move {
                    if recv.read_to_end(1024).await.is_ok() {
                        closed.fetch_add(1, Ordering::SeqCst);
                        if let Some(tx) = first_tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                }));
            }
            support::within("a stream closed to make room", first)
                .await
                .unwrap();
            tokio::time::sleep(WINDOW).await;
            assert_eq!(
                closed.load(Ordering::SeqCst),
                1,
                "closed more than one batch before the Manager could answer"
            );
            for watcher in watchers {
                watcher.abort();
            }
        },
    )
    .await;
}

/// Panics on the request code it is made with.
struct PanicOn(u32);

impl DispatchObserver for PanicOn {
    fn on_event(&self, event: &DispatchEvent) {
        assert!(
            *event != (DispatchEvent::RequestReceived { code: self.0 }),
            "deliberate panic for request code {}",
            self.0
        );
    }
}

/// Log lines written by the test's subscriber.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_stream_task_is_logged_with_its_stream_and_the_connection_goes_on() {
    support::bounded(
        "a panicking stream task is logged with its stream and the connection goes on",
        async move {
            const CODE: u32 = 999;
            let lines = Lines::default();
            let writer = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            let _guard = tracing::subscriber::set_default(subscriber);
            let agent = agent(limits(64, HANG), IDLE, Some(Arc::new(PanicOn(CODE)))).await;
            for round in 1..=2 {
                let (mut send, mut recv) = agent.session.open_stream().await.unwrap();
                let stream = send.id().to_string();
                wire::write_frame(&mut send, &wire::encode_request(CODE, &[]))
                    .await
                    .unwrap();
                let end =
                    support::within("the panicked stream to end", recv.read_to_end(1024)).await;
                assert!(
                    !matches!(end, Ok(ref bytes) if !bytes.is_empty()),
                    "{end:?}"
                );
                echo(&agent.session).await;
                let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
                let line = log
                    .lines()
                    .find(|line| line.contains("ERROR") && line.contains(&stream))
                    .unwrap_or_else(|| panic!("no ERROR line names {stream}:\n{log}"));
                assert!(line.contains(&format!("panics={round}")), "{line}");
            }
            assert!(!agent.serving.is_finished());
        },
    )
    .await;
}
