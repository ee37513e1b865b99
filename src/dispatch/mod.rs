//! The dispatch layer, shared by every platform: serves one request stream
//! from the Manager.
//!
//! It reads frames, decodes requests and routes them: echo and the requests
//! roxyd does not serve are answered here, power requests go to
//! [`crate::power`], whose `immediate::serve` orders "write the reply,
//! then release" for every platform. Rules a reader must not break:
//! - An immediate power operation is released only after its success reply
//!   was written, or after the write failed because the Manager declined
//!   the reply, as a review-protocol 0.19 Manager does. On any other failure
//!   (lost connection, reset, a stop with an error code, a stop after the
//!   reply was held up, a timeout) the pending operation is dropped and
//!   nothing happens.
//! - After a successful write, the send side is finished and the peer's
//!   acknowledgement awaited for at most
//!   [`DispatchConfig::delivery_timeout`], so that the reply has left the
//!   host before it goes down. The release follows whatever that wait gives:
//!   the Manager may already have been told `Initiated`.
//! - No input ends the connection: a bad frame or body gets an error reply
//!   and the stream keeps serving; only an oversized or truncated frame (the
//!   stream is out of step then) ends the stream.

use std::{pin::pin, sync::Arc, task::Poll, time::Duration};

use tokio::io::{AsyncRead, AsyncWriteExt};
use tracing::Instrument;

use crate::connection::streams::{self, CloseReason, StreamActivity};

use crate::{
    logging::RequestSpan,
    platform::{GracefulOp, ImmediateOp, PowerBackend, PowerOp},
    power::{
        PowerHandler,
        immediate::{self, DeclineRule, Step},
    },
    power_log::{Asked, PowerLog, RequestForm},
    reply::{self, Delivery, ReplySink, WireForm},
    wire::{self, FrameError, NodePowerRequest, Request, RequestCode, reply_text},
};

/// Limits of the dispatch layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchConfig {
    /// Largest request payload accepted, checked before allocating.
    pub max_frame_len: u32,
    /// How long a stream may stay silent between requests before roxyd ends it.
    pub stream_idle_timeout: Duration,
    /// How long writing one reply may take; an immediate operation whose reply
    /// is not written in time is cancelled.
    pub reply_timeout: Duration,
    /// How long to wait for the Manager to acknowledge an immediate
    /// operation's reply before releasing it anyway; zero does not wait.
    pub delivery_timeout: Duration,
    /// When a failed reply write means the Manager declined the reply.
    pub decline: DeclineRule,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_frame_len: wire::DEFAULT_MAX_FRAME_LEN,
            stream_idle_timeout: Duration::from_secs(60),
            reply_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(2),
            decline: DeclineRule::default(),
        }
    }
}

/// A step of the dispatch layer, reported to a [`DispatchObserver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DispatchEvent {
    /// A request frame arrived with this code.
    RequestReceived {
        /// The request code.
        code: u32,
    },
    /// An immediate operation was prepared; it is pending.
    Prepared(ImmediateOp),
    /// A graceful command was started.
    GracefulStarted(GracefulOp),
    /// A reply was written on the request's stream.
    ReplyWritten {
        /// The request code.
        code: u32,
        /// Whether it was a success reply.
        ok: bool,
    },
    /// A reply could not be written.
    ReplyFailed {
        /// The request code.
        code: u32,
    },
    /// The Manager declined an immediate operation's reply (fire-and-forget):
    /// the operation is carried out.
    ReplyDeclined(ImmediateOp),
    /// The wait for the Manager's acknowledgement of the reply ended.
    DeliveryConfirmed(Delivery),
    /// A pending immediate operation was handed to its thread.
    Released(ImmediateOp),
    /// A pending immediate operation was dropped: nothing happens.
    Cancelled(ImmediateOp),
}

/// Sees every [`DispatchEvent`], in order; for tests, the demo's timeline and
/// benchmarks. It runs inline on the serving task: keep it cheap.
pub trait DispatchObserver: Send + Sync {
    /// Called once per event.
    fn on_event(&self, event: &DispatchEvent);
}

/// The observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NoObserver;

impl DispatchObserver for NoObserver {
    fn on_event(&self, _event: &DispatchEvent) {}
}

/// Why serving a stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The Manager finished its side at a frame boundary.
    Finished,
    /// An immediate operation was released after its reply; the stream is
    /// finished.
    Released(ImmediateOp),
    /// A frame claimed more than the limit; an error reply was attempted.
    FrameTooLarge,
    /// The stream ended inside a frame, or reading failed.
    ReadFailed(String),
    /// No request arrived within the idle timeout.
    IdleTimeout,
    /// The connection layer closed the waiting stream to make room for
    /// others (see [`crate::connection::serve_connection_with`]).
    ClosedToMakeRoom,
    /// roxyd is stopping: the stream waited for a request, or was about to,
    /// and serves none.
    Stopping,
    /// A reply could not be written (any pending operation was cancelled).
    WriteFailed(String),
}

/// Serves request streams with one power handler.
pub struct Dispatcher<B> {
    power: PowerHandler<B>,
    config: DispatchConfig,
    observer: Arc<dyn DispatchObserver>,
}

impl<B: PowerBackend> Dispatcher<B> {
    /// A dispatcher for `backend` with the given limits and no observer.
    pub fn new(backend: B, config: DispatchConfig) -> Self {
        Self {
            power: PowerHandler::new(backend),
            config,
            observer: Arc::new(NoObserver),
        }
    }

    /// Reports every step to `observer`: the recorder's journal and tests
    /// (the daemon observes nothing).
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn DispatchObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Records every power request in `log`.
    #[must_use]
    pub fn with_power_log(mut self, log: PowerLog) -> Self {
        self.power = self.power.with_power_log(log);
        self
    }

    /// The power handler.
    #[must_use]
    pub fn power(&self) -> &PowerHandler<B> {
        &self.power
    }

    /// The limits.
    #[must_use]
    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    fn emit(&self, event: &DispatchEvent) {
        self.observer.on_event(event);
    }

    /// Serves requests from `recv`, answering each on `send`, until the
    /// Manager finishes the stream, an immediate operation is released, the
    /// stream stays silent for [`DispatchConfig::stream_idle_timeout`], or
    /// it fails. The stream is served on its own, as tests and the fuzz
    /// targets serve it; the daemon's connections serve theirs together.
    #[cfg(any(test, feature = "test-backend"))]
    pub async fn serve_stream<R, W>(&self, recv: &mut R, send: &mut W) -> StreamEnd
    where
        R: AsyncRead + Unpin + Send + ?Sized,
        W: ReplySink + ?Sized,
    {
        let activity = StreamActivity::default();
        let span = RequestSpan::current();
        tokio::select! {
            end = self.serve_stream_reporting(recv, send, &activity, &span) => end,
            () = streams::close_when_idle(&activity, self.config.stream_idle_timeout) => {
                unreachable!("close_when_idle never returns")
            }
        }
    }

    /// Serves a stream as `serve_stream` does, but it is closed when idle, or
    /// to make room, only by whoever holds `activity`, which this keeps up to
    /// date (the connection layer holds every stream's, see
    /// [`streams::Streams`]). Every line about a request goes to `span`; an
    /// echo logs none.
    pub(crate) async fn serve_stream_reporting<R, W>(
        &self,
        recv: &mut R,
        send: &mut W,
        activity: &StreamActivity,
        span: &RequestSpan,
    ) -> StreamEnd
    where
        R: AsyncRead + Unpin + Send + ?Sized,
        W: ReplySink + ?Sized,
    {
        // One read from the transport brings a small frame's header and
        // payload together, instead of one read for each.
        let mut recv = wire::FrameReader::new(recv);
        let recv = &mut recv;
        loop {
            let read = recv.read_frame(self.config.max_frame_len);
            let payload = match streams::wait(read, activity).await {
                Err(CloseReason::Idle) => return StreamEnd::IdleTimeout,
                Err(CloseReason::MakeRoom) => return StreamEnd::ClosedToMakeRoom,
                Err(CloseReason::Stopping) => return StreamEnd::Stopping,
                Ok(Ok(Some(payload))) => payload,
                Ok(Ok(None)) => return StreamEnd::Finished,
                Ok(Err(e @ FrameError::TooLarge { .. })) => {
                    return Box::pin(self.refuse_oversized(&e, send))
                        .instrument(span.get().clone())
                        .await;
                }
                Ok(Err(e)) => return StreamEnd::ReadFailed(e.to_string()),
            };
            if let Some(end) = self.serve_frame(&payload, recv, send, span).await {
                return end;
            }
        }
    }

    /// Answers one request frame; `Some` ends the stream. `recv` is
    /// positioned right after the frame.
    async fn serve_frame<R, W>(
        &self,
        payload: &[u8],
        recv: &mut R,
        send: &mut W,
        span: &RequestSpan,
    ) -> Option<StreamEnd>
    where
        R: AsyncRead + Unpin + Send + ?Sized,
        W: ReplySink + ?Sized,
    {
        let request = match Request::parse(payload) {
            Ok(request) => request,
            Err(e) => {
                span.get().in_scope(|| {
                    crate::warn_repeated!(crate::logging::BAD_REQUEST, error = %e, "malformed request");
                });
                return self.answer_error(u32::MAX, send, &e.to_string()).await;
            }
        };
        let code = request.code.code();
        self.emit(&DispatchEvent::RequestReceived { code });
        match request.code {
            RequestCode::Echo => {
                let written = self.write_bounded(reply::write_unit(send)).await;
                self.after_write(code, true, written)
            }
            RequestCode::NodePower => match wire::decode_prefix::<NodePowerRequest>(request.body) {
                Ok(power) => {
                    Box::pin(self.serve_power(code, power, WireForm::Grouped, recv, send))
                        .instrument(span.get().clone())
                        .await
                }
                Err(e) => {
                    let text = format!("malformed body for request code {code}: {e}");
                    span.get().in_scope(|| {
                        crate::warn_repeated!(crate::logging::BAD_REQUEST, code, error = %e, "malformed request");
                    });
                    self.answer_error(code, send, &text).await
                }
            },
            // The flat forms' body is `()`, which any bytes decode as.
            RequestCode::FlatReboot => {
                let request = NodePowerRequest::Reboot;
                Box::pin(self.serve_power(code, request, WireForm::Flat, recv, send))
                    .instrument(span.get().clone())
                    .await
            }
            RequestCode::FlatShutdown => {
                let request = NodePowerRequest::Shutdown;
                Box::pin(self.serve_power(code, request, WireForm::Flat, recv, send))
                    .instrument(span.get().clone())
                    .await
            }
            RequestCode::NotSupported(_) => {
                span.get().in_scope(|| {
                    crate::warn_repeated!(
                        crate::logging::BAD_REQUEST,
                        code,
                        "request not supported"
                    );
                });
                self.answer_error(code, send, reply_text::NOT_SUPPORTED)
                    .await
            }
            RequestCode::Unknown(_) => {
                span.get().in_scope(|| {
                    crate::warn_repeated!(
                        crate::logging::BAD_REQUEST,
                        code,
                        "unknown request code"
                    );
                });
                let text = reply_text::unknown_request_code(code);
                self.answer_error(code, send, &text).await
            }
        }
    }

    async fn serve_power<R, W>(
        &self,
        code: u32,
        request: NodePowerRequest,
        form: WireForm,
        recv: &mut R,
        send: &mut W,
    ) -> Option<StreamEnd>
    where
        R: AsyncRead + Unpin + Send + ?Sized,
        W: ReplySink + ?Sized,
    {
        let shape = RequestForm::of(request, form);
        match PowerOp::from(request) {
            PowerOp::Graceful(op) => match self.power.start_graceful(op, shape) {
                // The command's end is logged by its reaper, not reported.
                Ok(_run) => {
                    self.emit(&DispatchEvent::GracefulStarted(op));
                    // A graceful operation has nothing to release.
                    let written = self.write_bounded(reply::write_initiated(send, form)).await;
                    self.after_write(code, true, written)
                }
                Err(e) => {
                    crate::warn_repeated!(crate::logging::REFUSED_REQUEST, %op, error = %e, "graceful power operation not started");
                    let asked = Asked::new(request, shape);
                    let reason = e.to_string();
                    self.power
                        .power_log()
                        .refused(asked, reply_text::FAIL, &reason);
                    self.answer_error(code, send, reply_text::FAIL).await
                }
            },
            PowerOp::Immediate(op) => {
                let asked = Asked::new(request, shape);
                self.serve_immediate(code, op, asked, form, recv, send)
                    .await
            }
        }
    }

    /// Prepares `op`, then hands it to [`immediate::serve`], which orders
    /// write, confirm or decline, release.
    async fn serve_immediate<R, W>(
        &self,
        code: u32,
        op: ImmediateOp,
        asked: Asked,
        form: WireForm,
        recv: &mut R,
        send: &mut W,
    ) -> Option<StreamEnd>
    where
        R: AsyncRead + Unpin + Send + ?Sized,
        W: ReplySink + ?Sized,
    {
        let pending = match self.power.prepare(op, asked.request) {
            Ok(pending) => pending,
            Err(e) => {
                crate::warn_repeated!(crate::logging::REFUSED_REQUEST, %op, error = %e, "immediate power operation refused");
                let reason = e.to_string();
                self.power
                    .power_log()
                    .refused(asked, reply_text::INVALID_COMMAND, &reason);
                return self
                    .answer_error(code, send, reply_text::INVALID_COMMAND)
                    .await;
            }
        };
        let limits = immediate::Limits {
            reply_timeout: self.config.reply_timeout,
            delivery_timeout: self.config.delivery_timeout,
            decline: self.config.decline,
        };
        let steps = Reported {
            observer: &*self.observer,
            code,
            op,
        };
        Some(
            match immediate::serve(pending, form, recv, send, &limits, &steps).await {
                immediate::Outcome::Released => StreamEnd::Released(op),
                immediate::Outcome::Dropped(why) => {
                    self.power.power_log().cancelled(asked, &why);
                    StreamEnd::WriteFailed(why)
                }
            },
        )
    }

    /// Answers a frame over the limit, then ends the stream, which is out of
    /// step now.
    async fn refuse_oversized<W: ReplySink + ?Sized>(
        &self,
        e: &FrameError,
        send: &mut W,
    ) -> StreamEnd {
        crate::warn_repeated!(crate::logging::OVERSIZED_FRAME, error = %e, "refusing oversized frame; ending the stream");
        if self
            .write_bounded(reply::write_error(send, &e.to_string()))
            .await
            .is_ok()
        {
            let _ = send.shutdown().await;
        }
        StreamEnd::FrameTooLarge
    }

    async fn answer_error<W: ReplySink + ?Sized>(
        &self,
        code: u32,
        send: &mut W,
        text: &str,
    ) -> Option<StreamEnd> {
        // Boxed, as error replies are rare: every stream task's future stays
        // small (see `write_bounded`).
        let written = Box::pin(self.write_bounded(reply::write_error(send, text))).await;
        self.after_write(code, false, written)
    }

    fn after_write(&self, code: u32, ok: bool, written: std::io::Result<()>) -> Option<StreamEnd> {
        match written {
            Ok(()) => {
                self.emit(&DispatchEvent::ReplyWritten { code, ok });
                None
            }
            Err(e) => {
                self.emit(&DispatchEvent::ReplyFailed { code });
                Some(StreamEnd::WriteFailed(e.to_string()))
            }
        }
    }

    /// Runs a reply write, failing it when it takes longer than
    /// [`DispatchConfig::reply_timeout`] (a Manager that grants no credit).
    /// A write that completes at once, as nearly all do, sets no timer.
    async fn write_bounded<T>(
        &self,
        write: impl Future<Output = std::io::Result<T>>,
    ) -> std::io::Result<T> {
        let mut write = pin!(write);
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        if let Poll::Ready(written) = first {
            return written;
        }
        // Boxed: the timer is rare, and would otherwise make every stream
        // task's future larger.
        Box::pin(tokio::time::timeout(self.config.reply_timeout, write))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "reply write timed out",
                ))
            })
    }
}

/// The immediate ordering's steps, reported as [`DispatchEvent`]s.
struct Reported<'a> {
    observer: &'a dyn DispatchObserver,
    code: u32,
    op: ImmediateOp,
}

impl immediate::Steps for Reported<'_> {
    fn step(&self, step: Step) {
        let (code, op) = (self.code, self.op);
        self.observer.on_event(&match step {
            Step::Prepared => DispatchEvent::Prepared(op),
            Step::ReplyWritten => DispatchEvent::ReplyWritten { code, ok: true },
            Step::DeliveryConfirmed(delivery) => DispatchEvent::DeliveryConfirmed(delivery),
            Step::ReplyFailed => DispatchEvent::ReplyFailed { code },
            Step::ReplyDeclined => DispatchEvent::ReplyDeclined(op),
            Step::Released => DispatchEvent::Released(op),
            Step::Cancelled => DispatchEvent::Cancelled(op),
        });
    }
}
