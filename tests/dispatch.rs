//! The dispatch layer over in-memory streams with the recording backend:
//! every request variant on both wire forms, the reply-then-release order,
//! failed writes, refused operations and bad input.
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
    dispatch::{DispatchConfig, DispatchEvent, Dispatcher, StreamEnd},
    platform::{GracefulOp, ImmediateOp, PrepareError, Settlement, StartError},
    power_log::RequestForm,
    reply::{self, Delivery, ReplySink, WireForm},
    wire::{self, NodePowerRequest, RequestCode, reply_text},
};
use rstest::rstest;
use support::backend_lifetime::BackendLifetime;
use tokio::{
    io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf},
    sync::Notify,
    task::JoinHandle,
};

/// One request stream between a test "Manager" and a dispatcher.
struct Stream {
    recorder: Recorder,
    dispatcher: Arc<Dispatcher<Recorder>>,
    manager: DuplexStream,
    serving: JoinHandle<StreamEnd>,
}

fn dispatcher(recorder: &Recorder, config: DispatchConfig) -> Arc<Dispatcher<Recorder>> {
    Arc::new(recorder.dispatcher(config))
}

impl Stream {
    fn open(recorder: Recorder) -> Self {
        let dispatcher = dispatcher(&recorder, DispatchConfig::default());
        let (manager, agent) = tokio::io::duplex(64 * 1024);
        let serving = {
            let dispatcher = Arc::clone(&dispatcher);
            tokio::spawn(async move {
                let (mut recv, mut send): (ReadHalf<_>, WriteHalf<_>) = tokio::io::split(agent);
                dispatcher.serve_stream(&mut recv, &mut send).await
            })
        };
        Self {
            recorder,
            dispatcher,
            manager,
            serving,
        }
    }

    async fn send_payload(&mut self, payload: &[u8]) {
        wire::write_frame(&mut self.manager, payload).await.unwrap();
    }

    async fn reply(&mut self) -> Vec<u8> {
        tokio::time::timeout(
            STEP_LIMIT,
            wire::FrameReader::new(&mut self.manager).read_frame(u32::MAX),
        )
        .await
        .expect("rule broken: every request gets a reply on its stream")
        .unwrap()
        .expect("a reply frame")
        .to_vec()
    }

    async fn request(&mut self, code: u32, body: &[u8]) -> Vec<u8> {
        self.send_payload(&wire::encode_request(code, body)).await;
        self.reply().await
    }

    async fn echo_still_served(&mut self) {
        let reply = self.request(RequestCode::ECHO, &[]).await;
        assert_eq!(reply, wire::encode(&Ok::<(), String>(())));
    }

    /// Finishes the Manager's side and returns how serving ended.
    async fn finish(self) -> StreamEnd {
        drop(self.manager);
        tokio::time::timeout(STEP_LIMIT, self.serving)
            .await
            .expect("rule broken: a stream the Manager finished ends")
            .unwrap()
    }
}

/// A power request in one wire form: its code and body.
fn power_request(request: NodePowerRequest, form: WireForm) -> (u32, Vec<u8>) {
    match (form, request) {
        (WireForm::Grouped, r) => (RequestCode::NODE_POWER, wire::encode(&r)),
        (WireForm::Flat, NodePowerRequest::Reboot) => (RequestCode::FLAT_REBOOT, Vec::new()),
        (WireForm::Flat, NodePowerRequest::Shutdown) => (RequestCode::FLAT_SHUTDOWN, Vec::new()),
        (WireForm::Flat, r) => panic!("{r:?} has no flat form"),
    }
}

fn ok_unit() -> Vec<u8> {
    wire::encode(&Ok::<(), String>(()))
}

fn err(text: &str) -> Vec<u8> {
    reply::error_payload(text)
}

fn position(entries: &[Entry], wanted: &Entry) -> usize {
    entries
        .iter()
        .position(|e| e == wanted)
        .unwrap_or_else(|| panic!("{wanted:?} not in {entries:#?}"))
}

#[rstest]
#[case::grouped_reboot(NodePowerRequest::Reboot, WireForm::Grouped, ImmediateOp::Reboot)]
#[case::grouped_shutdown(NodePowerRequest::Shutdown, WireForm::Grouped, ImmediateOp::PowerOff)]
#[case::flat_reboot(NodePowerRequest::Reboot, WireForm::Flat, ImmediateOp::Reboot)]
#[case::flat_shutdown(NodePowerRequest::Shutdown, WireForm::Flat, ImmediateOp::PowerOff)]
#[tokio::test]
async fn immediate_reply_is_written_before_release(
    #[case] request: NodePowerRequest,
    #[case] form: WireForm,
    #[case] op: ImmediateOp,
) {
    support::bounded("an immediate request's reply is written before the operation is released", async move {
    let recorder = Recorder::new();
    // The sink itself fails the test if the operation was released before
    // the reply reached it, and holds the acknowledgement until told.
    let (mut sink, gate) = ScriptedSink::new(&recorder, Write::Accept);
    let (code, body) = power_request(request, form);
    let serving = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let end = serve_one_request(&recorder, code, &body, &mut sink).await;
            (end, sink)
        })
    };
    // Either the wait for the acknowledgement begins, or (wrongly) the
    // operation is released without it: whichever comes first decides.
    let journal = recorder.journal().clone();
    tokio::select! {
        () = gate.confirming.notified() => {}
        entries = journal.wait_for(|e| e.iter().any(|e| matches!(e, Entry::Settled(..)))) => {
            panic!("settled without waiting for the acknowledgement: {entries:#?}");
        }
    }
    // The reply is written and the wait for its acknowledgement is under way:
    // nothing may have been released yet.
    assert_eq!(
        settled(&recorder),
        vec![],
        "released before the acknowledgement"
    );
    gate.acknowledge.notify_one();
    let (end, sink) = within(serving).await.unwrap();
    assert_eq!(end, StreamEnd::Released(op));
    assert_eq!(sink.written, framed(&reply::initiated_payload(form)));
    assert_eq!(
        settled(&recorder),
        vec![Entry::Settled(op, Settlement::Released)]
    );
    assert_performed_once(&recorder, op).await;
    })
    .await;
}

#[rstest]
#[case::graceful_reboot(NodePowerRequest::GracefulReboot, GracefulOp::Reboot)]
#[case::graceful_shutdown(NodePowerRequest::GracefulShutdown, GracefulOp::PowerOff)]
#[tokio::test]
async fn graceful_command_is_started_then_answered(
    #[case] request: NodePowerRequest,
    #[case] op: GracefulOp,
) {
    support::bounded("a graceful command is started, then answered", async move {
        let mut stream = Stream::open(Recorder::new());
        let reply = stream
            .request(RequestCode::NODE_POWER, &wire::encode(&request))
            .await;
        assert_eq!(reply, reply::initiated_payload(WireForm::Grouped));
        let entries = stream.recorder.journal().entries();
        let started = position(&entries, &Entry::StartGraceful(op));
        let written = position(
            &entries,
            &Entry::Dispatch(DispatchEvent::ReplyWritten {
                code: RequestCode::NODE_POWER,
                ok: true,
            }),
        );
        assert!(started < written);
        // A graceful reply leaves the stream serving.
        stream.dispatcher.power().wait_idle().await;
        stream.echo_still_served().await;
        assert_eq!(
            stream.recorder.journal().power_operations(),
            vec![Entry::StartGraceful(op)]
        );
        assert_eq!(stream.finish().await, StreamEnd::Finished);
    })
    .await;
}

/// What a [`ScriptedSink`]'s write does.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// Accepts every byte.
    Accept,
    /// Fails at once: the Manager had stopped the stream with this code.
    StoppedBefore(u64),
    /// Holds the write up for this long, then fails it: the Manager stopped
    /// the stream with this code while the reply waited for credit.
    StoppedAfter(Duration, u64),
    /// Fails at once: the connection is gone.
    Lost,
    /// Never accepts a byte, never reports a stop: no credit, ever.
    Stalled,
}

/// Signals between a test and its [`ScriptedSink`].
#[derive(Default)]
struct Gate {
    /// The sink started waiting for the acknowledgement of a written reply.
    confirming: Notify,
    /// The test lets the acknowledgement come.
    acknowledge: Notify,
}

/// A reply sink playing the Manager's side of one scenario. Every write
/// first checks, from inside the write, that no operation was released yet:
/// a release ahead of its reply fails the test on every run.
struct ScriptedSink {
    recorder: Recorder,
    write: Write,
    written: Vec<u8>,
    held: Option<Pin<Box<tokio::time::Sleep>>>,
    gate: Arc<Gate>,
}

impl ScriptedSink {
    fn new(recorder: &Recorder, write: Write) -> (Self, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let sink = Self {
            recorder: recorder.clone(),
            write,
            written: Vec::new(),
            held: None,
            gate: Arc::clone(&gate),
        };
        (sink, gate)
    }

    fn stop_code(&self) -> Option<u64> {
        match self.write {
            Write::StoppedBefore(code) | Write::StoppedAfter(_, code) => Some(code),
            Write::Accept | Write::Lost | Write::Stalled => None,
        }
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "stopped by peer")
}

impl AsyncWrite for ScriptedSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let released = settled(&self.recorder)
            .into_iter()
            .find(|e| matches!(e, Entry::Settled(_, Settlement::Released)));
        assert_eq!(released, None, "released before its reply was written");
        match self.write {
            Write::Accept => {
                self.written.extend_from_slice(bytes);
                Poll::Ready(Ok(bytes.len()))
            }
            Write::StoppedBefore(_) => Poll::Ready(Err(stopped())),
            Write::Lost => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection lost",
            ))),
            Write::StoppedAfter(after, _) => {
                let held = self
                    .held
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                held.as_mut().poll(cx).map(|()| Err(stopped()))
            }
            Write::Stalled => Poll::Pending,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ReplySink for ScriptedSink {
    async fn finish_and_confirm(&mut self) -> Delivery {
        self.gate.confirming.notify_one();
        self.gate.acknowledge.notified().await;
        Delivery::Acknowledged
    }

    async fn peer_stop(&mut self) -> Option<u64> {
        match self.write {
            Write::Stalled | Write::Accept => std::future::pending().await,
            _ => self.stop_code(),
        }
    }
}

/// Waits for `op`'s perform, then checks it was the only power operation.
async fn assert_performed_once(recorder: &Recorder, op: ImmediateOp) {
    within(
        recorder
            .journal()
            .wait_for(|e| e.contains(&Entry::Perform(op))),
    )
    .await;
    assert_eq!(
        recorder.journal().power_operations(),
        vec![Entry::Perform(op)]
    );
}

/// The marks the pending operation left at the moment it was released or
/// cancelled.
fn settled(recorder: &Recorder) -> Vec<Entry> {
    recorder
        .journal()
        .entries()
        .into_iter()
        .filter(|e| matches!(e, Entry::Settled(..)))
        .collect()
}

/// `payload` as a frame on the wire.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// The longest any one step here may take: longer than every bound of the
/// power path (the reply-write bound is 10 s), shorter than nextest's limit.
const STEP_LIMIT: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test if it takes longer than any step here
/// reasonably can.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP_LIMIT, future)
        .await
        .expect("a step of this test outlived every bound of the power path")
}

/// The Manager's side of the stream after its request.
#[derive(Clone, Copy, Debug)]
enum After {
    /// It finished its side (FIN) right after the request.
    Finished,
    /// It keeps its side open.
    Open,
    /// It sends more bytes.
    MoreData,
    /// Its side fails: a reset stream.
    Reset,
}

/// A receive half holding one request frame, then `after`.
struct ScriptedRecv {
    frame: Vec<u8>,
    read: usize,
    after: After,
}

impl AsyncRead for ScriptedRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read < self.frame.len() {
            let n = buf.remaining().min(self.frame.len() - self.read);
            let start = self.read;
            buf.put_slice(&self.frame[start..start + n]);
            self.read += n;
            return Poll::Ready(Ok(()));
        }
        match self.after {
            After::Finished => Poll::Ready(Ok(())),
            After::Open => Poll::Pending,
            After::MoreData => {
                buf.put_slice(&[0]);
                Poll::Ready(Ok(()))
            }
            After::Reset => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset by peer",
            ))),
        }
    }
}

async fn serve_one_request<W: ReplySink>(
    recorder: &Recorder,
    code: u32,
    body: &[u8],
    sink: &mut W,
) -> StreamEnd {
    serve_scripted(recorder, code, body, After::Finished, sink).await
}

/// Serves one request, then waits until nothing holds the backend any more:
/// every thread or task that could still perform an operation has ended.
async fn serve_scripted<W: ReplySink>(
    recorder: &Recorder,
    code: u32,
    body: &[u8],
    after: After,
    sink: &mut W,
) -> StreamEnd {
    let (dispatcher, lifetime) = BackendLifetime::dispatcher(recorder, DispatchConfig::default());
    let mut recv = ScriptedRecv {
        frame: framed(&wire::encode_request(code, body)),
        read: 0,
        after,
    };
    // Longer than the reply-write bound (10 s) plus the decline check's
    // wait for the FIN (1 s), each on paused time where the test pauses it.
    let end = tokio::time::timeout(STEP_LIMIT, dispatcher.serve_stream(&mut recv, sink))
        .await
        .expect("rule broken: serving a request ends within the reply-write and decline bounds");
    drop(dispatcher);
    lifetime.wait_all_gone().await;
    end
}

/// Checks that `op` was dropped: the pending operation itself says so, and
/// no power operation ran. The serving ended before this is called, and no
/// thread or task that could still perform it is left.
fn assert_dropped(recorder: &Recorder, op: ImmediateOp) {
    assert_eq!(
        settled(recorder),
        vec![Entry::Settled(op, Settlement::Cancelled)]
    );
    let entries = recorder.journal().entries();
    assert!(
        entries.contains(&Entry::Dispatch(DispatchEvent::Cancelled(op))),
        "{entries:#?}"
    );
    assert_eq!(
        recorder.journal().power_operations(),
        vec![],
        "rule broken: a cancelled operation is never performed"
    );
}

#[rstest]
#[case::grouped_reboot(NodePowerRequest::Reboot, WireForm::Grouped, ImmediateOp::Reboot)]
#[case::grouped_shutdown(NodePowerRequest::Shutdown, WireForm::Grouped, ImmediateOp::PowerOff)]
#[case::flat_reboot(NodePowerRequest::Reboot, WireForm::Flat, ImmediateOp::Reboot)]
#[case::flat_shutdown(NodePowerRequest::Shutdown, WireForm::Flat, ImmediateOp::PowerOff)]
#[tokio::test]
async fn failed_reply_write_cancels(
    #[case] request: NodePowerRequest,
    #[case] form: WireForm,
    #[case] op: ImmediateOp,
) {
    support::bounded("a failed reply write cancels the operation", async move {
        let recorder = Recorder::new();
        let (mut sink, _) = ScriptedSink::new(&recorder, Write::Lost);
        let (code, body) = power_request(request, form);
        let end = serve_one_request(&recorder, code, &body, &mut sink).await;
        assert!(matches!(end, StreamEnd::WriteFailed(_)), "{end:?}");
        assert_dropped(&recorder, op);
    })
    .await;
}

#[rstest]
#[case::grouped_reboot(NodePowerRequest::Reboot, WireForm::Grouped, ImmediateOp::Reboot)]
#[case::flat_shutdown(NodePowerRequest::Shutdown, WireForm::Flat, ImmediateOp::PowerOff)]
#[tokio::test(start_paused = true)]
async fn reply_write_that_never_completes_cancels(
    #[case] request: NodePowerRequest,
    #[case] form: WireForm,
    #[case] op: ImmediateOp,
) {
    support::bounded(
        "a reply write that never completes cancels the operation at the reply-write bound",
        async move {
            let recorder = Recorder::new();
            let (mut sink, _) = ScriptedSink::new(&recorder, Write::Stalled);
            let (code, body) = power_request(request, form);
            // With time paused, the reply timeout fires as soon as nothing else can run.
            let end = serve_one_request(&recorder, code, &body, &mut sink).await;
            assert!(matches!(end, StreamEnd::WriteFailed(_)), "{end:?}");
            assert_dropped(&recorder, op);
        },
    )
    .await;
}

/// A review-protocol 0.19 Manager declines the reply: `STOP_SENDING` code 0
/// and its FIN. The operation is carried out, on both wire forms.
#[rstest]
#[case::grouped_reboot(NodePowerRequest::Reboot, WireForm::Grouped, ImmediateOp::Reboot)]
#[case::grouped_shutdown(NodePowerRequest::Shutdown, WireForm::Grouped, ImmediateOp::PowerOff)]
#[case::flat_reboot(NodePowerRequest::Reboot, WireForm::Flat, ImmediateOp::Reboot)]
#[case::flat_shutdown(NodePowerRequest::Shutdown, WireForm::Flat, ImmediateOp::PowerOff)]
#[tokio::test]
async fn declined_reply_releases(
    #[case] request: NodePowerRequest,
    #[case] form: WireForm,
    #[case] op: ImmediateOp,
    #[values(
        Write::StoppedBefore(0),
        Write::StoppedAfter(Duration::from_millis(10), 0)
    )]
    write: Write,
) {
    support::bounded(
        "a declined reply (STOP_SENDING(0) and FIN) releases the operation",
        async move {
            let recorder = Recorder::new();
            let (mut sink, _) = ScriptedSink::new(&recorder, write);
            let (code, body) = power_request(request, form);
            let end = serve_scripted(&recorder, code, &body, After::Finished, &mut sink).await;
            assert_eq!(end, StreamEnd::Released(op));
            assert_eq!(
                settled(&recorder),
                vec![Entry::Settled(op, Settlement::Released)]
            );
            let entries = recorder.journal().entries();
            let declined = position(&entries, &Entry::Dispatch(DispatchEvent::ReplyDeclined(op)));
            assert!(position(&entries, &Entry::Settled(op, Settlement::Released)) > declined);
            assert_performed_once(&recorder, op).await;
        },
    )
    .await;
}

/// Every failed write that is not a decline drops the operation.
#[rstest]
#[case::stop_with_an_error_code(Write::StoppedBefore(7), After::Finished)]
#[case::stop_while_the_manager_side_stays_open(Write::StoppedBefore(0), After::Open)]
#[case::stop_after_the_reply_was_held_up(
    Write::StoppedAfter(Duration::from_secs(2), 0),
    After::Finished
)]
#[case::stop_then_more_data(Write::StoppedBefore(0), After::MoreData)]
#[case::stop_and_reset(Write::StoppedBefore(0), After::Reset)]
#[case::connection_lost(Write::Lost, After::Finished)]
#[tokio::test(start_paused = true)]
async fn failed_write_that_is_not_a_decline_drops(
    #[case] write: Write,
    #[case] after: After,
    #[values(
        (NodePowerRequest::Reboot, WireForm::Grouped, ImmediateOp::Reboot),
        (NodePowerRequest::Shutdown, WireForm::Flat, ImmediateOp::PowerOff)
    )]
    power: (NodePowerRequest, WireForm, ImmediateOp),
) {
    support::bounded(
        "a failed write that is not a decline drops the operation",
        async move {
            let (request, form, op) = power;
            let recorder = Recorder::new();
            let (mut sink, _) = ScriptedSink::new(&recorder, write);
            let (code, body) = power_request(request, form);
            let end = serve_scripted(&recorder, code, &body, after, &mut sink).await;
            assert!(matches!(end, StreamEnd::WriteFailed(_)), "{end:?}");
            assert_dropped(&recorder, op);
        },
    )
    .await;
}

#[rstest]
#[case::grouped_reboot(NodePowerRequest::Reboot, WireForm::Grouped)]
#[case::grouped_shutdown(NodePowerRequest::Shutdown, WireForm::Grouped)]
#[case::flat_reboot(NodePowerRequest::Reboot, WireForm::Flat)]
#[case::flat_shutdown(NodePowerRequest::Shutdown, WireForm::Flat)]
#[tokio::test]
async fn refused_preparation_is_invalid_command(
    #[case] request: NodePowerRequest,
    #[case] form: WireForm,
) {
    support::bounded(
        "a refused preparation is answered `invalid command`",
        async move {
            let recorder = Recorder::new();
            recorder.set_refuse_prepare(true);
            let mut stream = Stream::open(recorder);
            let (code, body) = power_request(request, form);
            assert_eq!(
                stream.request(code, &body).await,
                err(reply_text::INVALID_COMMAND)
            );
            stream.echo_still_served().await;
            assert_eq!(stream.recorder.journal().power_operations(), vec![]);
            assert_eq!(stream.finish().await, StreamEnd::Finished);
        },
    )
    .await;
}

#[rstest]
#[case::graceful_reboot(NodePowerRequest::GracefulReboot)]
#[case::graceful_shutdown(NodePowerRequest::GracefulShutdown)]
#[tokio::test]
async fn failed_start_is_fail(#[case] request: NodePowerRequest) {
    support::bounded(
        "a graceful command that fails to start is answered `fail`",
        async move {
            let recorder = Recorder::new();
            recorder.set_fail_start(true);
            let mut stream = Stream::open(recorder);
            let reply = stream
                .request(RequestCode::NODE_POWER, &wire::encode(&request))
                .await;
            assert_eq!(reply, err(reply_text::FAIL));
            stream.echo_still_served().await;
            assert_eq!(stream.recorder.journal().power_operations(), vec![]);
        },
    )
    .await;
}

/// What a bad request gets.
enum Expect {
    Exactly(Vec<u8>),
    ErrorStartingWith(&'static str),
}

#[rstest]
#[case::unknown_9999(wire::encode_request(9999, &[]), Expect::Exactly(err("unknown request code: 9999")))]
#[case::unknown_3(wire::encode_request(3, &[]), Expect::Exactly(err("unknown request code: 3")))]
#[case::unknown_11(wire::encode_request(11, &[]), Expect::Exactly(err("unknown request code: 11")))]
#[case::unknown_max(wire::encode_request(u32::MAX, &[]), Expect::Exactly(err("unknown request code: 4294967295")))]
#[case::not_supported_0(wire::encode_request(0, &[]), Expect::Exactly(err("not supported")))]
#[case::not_supported_20(wire::encode_request(20, &[1, 2, 3]), Expect::Exactly(err("not supported")))]
#[case::not_supported_22_delete_customer_data(wire::encode_request(22, &[]), Expect::Exactly(err("not supported")))]
#[case::unknown_23(wire::encode_request(23, &[]), Expect::Exactly(err("unknown request code: 23")))]
#[case::not_supported_108(wire::encode_request(108, &[]), Expect::Exactly(err("not supported")))]
#[case::node_power_empty_body(wire::encode_request(106, &[]), Expect::ErrorStartingWith("malformed body for request code 106"))]
#[case::node_power_out_of_range(wire::encode_request(106, &[4]), Expect::ErrorStartingWith("malformed body for request code 106"))]
#[case::node_power_huge_variant(wire::encode_request(106, &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), Expect::ErrorStartingWith("malformed body for request code 106"))]
#[case::empty_frame(
    Vec::new(),
    Expect::ErrorStartingWith("request frame of 0 bytes is too short")
)]
#[case::short_frame(vec![106, 0, 0], Expect::ErrorStartingWith("request frame of 3 bytes is too short"))]
#[tokio::test]
async fn bad_request_gets_a_reply_and_the_stream_keeps_serving(
    #[case] payload: Vec<u8>,
    #[case] expect: Expect,
) {
    support::bounded(
        "bad request gets a reply and the stream keeps serving",
        async move {
            let mut stream = Stream::open(Recorder::new());
            stream.send_payload(&payload).await;
            let reply = stream.reply().await;
            match expect {
                Expect::Exactly(bytes) => assert_eq!(reply, bytes),
                Expect::ErrorStartingWith(prefix) => {
                    let text = wire::decode::<Result<(), String>>(&reply)
                        .unwrap()
                        .unwrap_err();
                    assert!(text.starts_with(prefix), "{text:?}");
                }
            }
            stream.echo_still_served().await;
            // And a power request on the same stream is still served correctly.
            let graceful = wire::encode(&NodePowerRequest::GracefulReboot);
            let reply = stream.request(RequestCode::NODE_POWER, &graceful).await;
            assert_eq!(reply, reply::initiated_payload(WireForm::Grouped));
            assert_eq!(
                stream.recorder.journal().power_operations(),
                vec![Entry::StartGraceful(GracefulOp::Reboot)]
            );
        },
    )
    .await;
}

#[tokio::test]
async fn trailing_bytes_after_a_valid_body_are_ignored_as_the_reference_does() {
    support::bounded(
        "trailing bytes after a valid body are ignored as the reference does",
        async move {
            let mut stream = Stream::open(Recorder::new());
            let reply = stream
                .request(RequestCode::NODE_POWER, &[3, 0xde, 0xad])
                .await;
            assert_eq!(reply, reply::initiated_payload(WireForm::Grouped));
            assert_eq!(
                stream.recorder.journal().power_operations(),
                vec![Entry::StartGraceful(GracefulOp::PowerOff)]
            );
        },
    )
    .await;
}

#[tokio::test]
async fn echo_answers_ok() {
    support::bounded("an echo request is answered Ok", async move {
        let mut stream = Stream::open(Recorder::new());
        assert_eq!(stream.request(RequestCode::ECHO, &[]).await, ok_unit());
        assert_eq!(stream.finish().await, StreamEnd::Finished);
    })
    .await;
}

#[tokio::test]
async fn oversized_frame_is_refused_before_allocating_and_ends_the_stream() {
    support::bounded(
        "oversized frame is refused before allocating and ends the stream",
        async move {
            let mut stream = Stream::open(Recorder::new());
            // Only the header: a 4 GiB claim, no body follows.
            tokio::io::AsyncWriteExt::write_all(&mut stream.manager, &u32::MAX.to_be_bytes())
                .await
                .unwrap();
            let text = wire::decode::<Result<(), String>>(&stream.reply().await)
                .unwrap()
                .unwrap_err();
            assert_eq!(
                text,
                "frame of 4294967295 bytes exceeds the limit of 65536 bytes"
            );
            assert_eq!(stream.finish().await, StreamEnd::FrameTooLarge);
        },
    )
    .await;
}

#[tokio::test]
async fn frame_cut_short_ends_the_stream_without_any_operation() {
    support::bounded(
        "frame cut short ends the stream without any operation",
        async move {
            let mut stream = Stream::open(Recorder::new());
            let frame = {
                let mut out = Vec::new();
                let payload = wire::encode_request(RequestCode::NODE_POWER, &[0]);
                wire::write_frame(&mut out, &payload).await.unwrap();
                out
            };
            tokio::io::AsyncWriteExt::write_all(&mut stream.manager, &frame[..frame.len() - 1])
                .await
                .unwrap();
            let recorder = stream.recorder.clone();
            let end = stream.finish().await;
            assert!(matches!(end, StreamEnd::ReadFailed(_)), "{end:?}");
            assert_eq!(recorder.journal().power_operations(), vec![]);
        },
    )
    .await;
}

#[tokio::test]
async fn a_second_power_request_is_refused_while_one_is_under_way() {
    support::bounded(
        "a second power request is refused while one is under way",
        async move {
            let recorder = Recorder::new();
            let dispatcher = dispatcher(&recorder, DispatchConfig::default());
            let power = dispatcher.power();

            let pending = power
                .prepare(ImmediateOp::Reboot, RequestForm::NodePower)
                .unwrap();
            assert!(power.is_busy());
            assert!(matches!(
                power.prepare(ImmediateOp::PowerOff, RequestForm::NodePower),
                Err(PrepareError::InProgress)
            ));
            assert!(matches!(
                power.start_graceful(GracefulOp::Reboot, RequestForm::NodePower),
                Err(StartError::InProgress)
            ));
            // Cancelling frees the latch.
            drop(pending);
            assert!(!power.is_busy());
            let again = power
                .prepare(ImmediateOp::PowerOff, RequestForm::NodePower)
                .unwrap();
            drop(again);
            assert_eq!(recorder.journal().power_operations(), vec![]);
        },
    )
    .await;
}

#[tokio::test]
async fn a_power_request_during_a_running_operation_gets_its_error_reply() {
    support::bounded(
        "a power request during a running operation gets its error reply",
        async move {
            let recorder = Recorder::new();
            // The first operation does not return, like a real reboot(2).
            recorder.set_hold_perform(true);
            let mut first = Stream::open(recorder.clone());
            let (code, body) = power_request(NodePowerRequest::Reboot, WireForm::Grouped);
            assert_eq!(
                first.request(code, &body).await,
                reply::initiated_payload(WireForm::Grouped)
            );
            recorder
                .journal()
                .wait_for(|e| e.contains(&Entry::Perform(ImmediateOp::Reboot)))
                .await;

            // A second stream on the same dispatcher.
            let dispatcher = Arc::clone(&first.dispatcher);
            let (mut manager, agent) = tokio::io::duplex(4096);
            let serving = tokio::spawn(async move {
                let (mut recv, mut send) = tokio::io::split(agent);
                dispatcher.serve_stream(&mut recv, &mut send).await
            });
            for (code, body, expected) in [
                (
                    RequestCode::FLAT_SHUTDOWN,
                    Vec::new(),
                    reply_text::INVALID_COMMAND,
                ),
                (
                    RequestCode::NODE_POWER,
                    wire::encode(&NodePowerRequest::Reboot),
                    reply_text::INVALID_COMMAND,
                ),
                (
                    RequestCode::NODE_POWER,
                    wire::encode(&NodePowerRequest::GracefulShutdown),
                    reply_text::FAIL,
                ),
            ] {
                wire::write_frame(&mut manager, &wire::encode_request(code, &body))
                    .await
                    .unwrap();
                let reply = wire::FrameReader::new(&mut manager)
                    .read_frame(u32::MAX)
                    .await
                    .unwrap()
                    .unwrap()
                    .to_vec();
                assert_eq!(reply, err(expected));
            }
            drop(manager);
            assert_eq!(serving.await.unwrap(), StreamEnd::Finished);
            recorder.set_hold_perform(false);
            first.dispatcher.power().wait_idle().await;
            assert_eq!(
                recorder.journal().power_operations(),
                vec![Entry::Perform(ImmediateOp::Reboot)]
            );
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_is_ended_after_the_idle_timeout() {
    support::bounded(
        "a silent stream is ended after the idle timeout",
        async move {
            let recorder = Recorder::new();
            let config = DispatchConfig {
                stream_idle_timeout: Duration::from_secs(5),
                ..DispatchConfig::default()
            };
            let dispatcher = dispatcher(&recorder, config);
            let (_manager, agent) = tokio::io::duplex(4096);
            let (mut recv, mut send) = tokio::io::split(agent);
            assert_eq!(
                dispatcher.serve_stream(&mut recv, &mut send).await,
                StreamEnd::IdleTimeout
            );
        },
    )
    .await;
}

/// The daemon waits for a released operation before it exits: on a real
/// system `reboot(2)` never returns, so roxyd can never exit between telling
/// the Manager `Initiated` and reaching the syscall.
#[tokio::test]
async fn a_released_operation_is_awaited_until_it_was_performed() {
    support::bounded(
        "a released operation is awaited until it was performed",
        async move {
            let recorder = Recorder::new();
            recorder.set_hold_perform(true);
            let dispatcher = dispatcher(&recorder, DispatchConfig::default());
            let (mut sink, gate) = ScriptedSink::new(&recorder, Write::Accept);
            gate.acknowledge.notify_one();
            let (code, body) = power_request(NodePowerRequest::Reboot, WireForm::Grouped);
            let mut recv = ScriptedRecv {
                frame: framed(&wire::encode_request(code, &body)),
                read: 0,
                after: After::Finished,
            };
            let end = dispatcher.serve_stream(&mut recv, &mut sink).await;
            assert_eq!(end, StreamEnd::Released(ImmediateOp::Reboot));
            // The perform has begun (recorded) and is held, like a reboot(2) that
            // has not returned: the wait must not be over.
            within(
                recorder
                    .journal()
                    .wait_for(|e| e.contains(&Entry::Perform(ImmediateOp::Reboot))),
            )
            .await;
            let mut waiting = std::pin::pin!(dispatcher.power().wait_performed());
            let polled = waiting
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()));
            assert!(
                polled.is_pending(),
                "the wait ended while the operation was still being performed"
            );
            recorder.set_hold_perform(false);
            within(waiting).await;
        },
    )
    .await;
}
