//! Writing replies on a request's stream, confirming their delivery, and
//! recognising a Manager that declined them.
//!
//! [`crate::power::PendingPowerOp::release`] demands a [`ReleaseProof`], and
//! there are exactly two ways to obtain one: [`write_initiated`] makes a
//! [`ReplyWritten`] (review-protocol 0.18 Managers read the reply), and
//! [`recognise_decline`] makes a [`ReplyDeclined`] (0.19 Managers send an
//! immediate request fire-and-forget and decline any reply). A reply is one
//! frame holding `Result<T, String>`; an error reply encodes the same for
//! every `T`.

use std::{
    future::Future,
    io,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::Instant,
};

use crate::wire::{self, NodePowerResponse};

/// The wire form a power request came in, which decides its success reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireForm {
    /// Code 106: success is `Ok(NodePowerResponse::Initiated)`.
    Grouped,
    /// Codes 4 and 21: success is `Ok(())`.
    Flat,
}

/// Proof that a success reply for a power request was written on the
/// request's stream. Only [`write_initiated`] makes one.
#[derive(Debug)]
pub struct ReplyWritten {
    _private: (),
}

/// Proof that the Manager declined the success reply of an immediate power
/// request, as a review-protocol 0.19 Manager does: it stopped roxyd's send
/// side with `STOP_SENDING` code 0 promptly, and finished its own send side
/// right after the request. Only [`recognise_decline`] makes one.
#[derive(Debug)]
pub struct ReplyDeclined {
    _private: (),
}

/// What entitles a pending immediate operation to run: either the Manager
/// was given the reply, or it declined it. Nothing else converts into this.
#[derive(Debug)]
pub enum ReleaseProof {
    /// The success reply was written on the request's stream.
    Written(ReplyWritten),
    /// The Manager declined the reply (fire-and-forget).
    Declined(ReplyDeclined),
}

impl From<ReplyWritten> for ReleaseProof {
    fn from(proof: ReplyWritten) -> Self {
        Self::Written(proof)
    }
}

impl From<ReplyDeclined> for ReleaseProof {
    fn from(proof: ReplyDeclined) -> Self {
        Self::Declined(proof)
    }
}

/// How far a written reply is known to have got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The peer acknowledged every byte of the stream.
    Acknowledged,
    /// The peer stopped the stream with this code; it may not have read the
    /// reply.
    Stopped(u64),
    /// The connection failed before the acknowledgement came.
    Lost(String),
    /// No acknowledgement within the configured time.
    TimedOut,
}

/// The send half of a request stream.
pub trait ReplySink: AsyncWrite + Unpin + Send {
    /// Ends the send side and resolves once the peer has acknowledged every
    /// byte written, or stopped the stream, or the connection failed.
    /// The caller bounds the wait.
    fn finish_and_confirm(&mut self) -> impl Future<Output = Delivery> + Send;

    /// Resolves with the code of the peer's `STOP_SENDING` once the peer has
    /// stopped this stream, or with `None` once the stream or the connection
    /// ended some other way. May never resolve: the caller bounds the wait.
    fn peer_stop(&mut self) -> impl Future<Output = Option<u64>> + Send;
}

impl ReplySink for quinn::SendStream {
    /// `finish()`, then [`quinn::SendStream::stopped`], which yields `None`
    /// once the peer acknowledged all stream data.
    fn finish_and_confirm(&mut self) -> impl Future<Output = Delivery> + Send {
        let finished = self.finish();
        let stopped = self.stopped();
        async move {
            if let Err(e) = finished {
                return Delivery::Lost(e.to_string());
            }
            match stopped.await {
                Ok(None) => Delivery::Acknowledged,
                Ok(Some(code)) => Delivery::Stopped(code.into_inner()),
                Err(e) => Delivery::Lost(e.to_string()),
            }
        }
    }

    /// [`quinn::SendStream::stopped`]; an acknowledged or lost stream is
    /// `None`.
    fn peer_stop(&mut self) -> impl Future<Output = Option<u64>> + Send {
        let stopped = self.stopped();
        async move { stopped.await.ok().flatten().map(quinn::VarInt::into_inner) }
    }
}

/// In-memory streams (tests, fuzzing): shutting down hands every byte to the
/// reader at once, so a completed shutdown is delivery.
/// Such a stream cannot be stopped by its reader, so `peer_stop` never
/// resolves.
impl ReplySink for tokio::io::DuplexStream {
    fn finish_and_confirm(&mut self) -> impl Future<Output = Delivery> + Send {
        shutdown_as_delivery(self)
    }

    fn peer_stop(&mut self) -> impl Future<Output = Option<u64>> + Send {
        std::future::pending()
    }
}

impl<T: AsyncWrite + Send> ReplySink for tokio::io::WriteHalf<T> {
    fn finish_and_confirm(&mut self) -> impl Future<Output = Delivery> + Send {
        shutdown_as_delivery(self)
    }

    fn peer_stop(&mut self) -> impl Future<Output = Option<u64>> + Send {
        std::future::pending()
    }
}

async fn shutdown_as_delivery<W: AsyncWrite + Unpin + ?Sized>(sink: &mut W) -> Delivery {
    match sink.shutdown().await {
        Ok(()) => Delivery::Acknowledged,
        Err(e) => Delivery::Lost(e.to_string()),
    }
}

/// The success reply payload of a power request in `form`.
#[must_use]
pub fn initiated_payload(form: WireForm) -> Vec<u8> {
    match form {
        WireForm::Grouped => wire::encode(&Ok::<_, String>(NodePowerResponse::Initiated)),
        WireForm::Flat => wire::encode(&Ok::<(), String>(())),
    }
}

/// The payload of an error reply.
#[must_use]
pub fn error_payload(text: &str) -> Vec<u8> {
    wire::encode(&Err::<(), &str>(text))
}

/// Writes the success reply of a power request and returns the proof.
///
/// # Errors
///
/// When the transport fails; no proof is made then.
pub async fn write_initiated<W: ReplySink + ?Sized>(
    sink: &mut W,
    form: WireForm,
) -> io::Result<ReplyWritten> {
    wire::write_frame(sink, &initiated_payload(form)).await?;
    Ok(ReplyWritten { _private: () })
}

/// Writes `Ok(())`.
///
/// # Errors
///
/// When the transport fails.
pub async fn write_unit<W: ReplySink + ?Sized>(sink: &mut W) -> io::Result<()> {
    wire::write_frame(sink, &wire::encode(&Ok::<(), String>(()))).await
}

/// Writes `Err(text)`.
///
/// # Errors
///
/// When the transport fails.
pub async fn write_error<W: ReplySink + ?Sized>(sink: &mut W, text: &str) -> io::Result<()> {
    wire::write_frame(sink, &error_payload(text)).await
}

/// When a failed reply write counts as declined by the Manager (see
/// [`recognise_decline`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclineRule {
    /// The longest a reply may have been pending when the Manager's
    /// `STOP_SENDING` ends it. A 0.19 Manager's arrives within one round trip
    /// of its request; a 0.18 Manager that stops a reply held up longer than
    /// this has given up waiting, which is not a decline.
    pub window: Duration,
    /// How long to wait for the Manager's FIN after its `STOP_SENDING`: on a
    /// lossy path the FIN may come a retransmission later.
    pub fin_wait: Duration,
}

impl Default for DeclineRule {
    /// 500 ms and 1 s.
    fn default() -> Self {
        Self {
            window: Duration::from_millis(500),
            fin_wait: Duration::from_secs(1),
        }
    }
}

/// Why a failed reply write was not a decline: the pending operation is
/// dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotDeclined {
    /// The Manager had not stopped the stream: the connection was lost, the
    /// stream ended otherwise, or the write timed out.
    #[error("the Manager did not stop the stream ({0})")]
    NotStopped(String),
    /// The Manager stopped the stream with an error code.
    #[error("the Manager stopped the stream with error code {0}")]
    StopCode(u64),
    /// The `STOP_SENDING` came after the reply had been pending too long: a
    /// Manager that gave up waiting.
    #[error("the Manager stopped the stream after the reply was held up for {0:?}")]
    GaveUp(Duration),
    /// The Manager's send side did not finish within the wait.
    #[error("the Manager's side of the stream stayed open")]
    SendSideOpen,
    /// The Manager sent more data after its request instead of finishing.
    #[error("the Manager sent more data instead of finishing its side")]
    MoreData,
    /// Reading the Manager's side failed (it reset the stream, say).
    #[error("reading the Manager's side failed: {0}")]
    ReadFailed(String),
}

/// Decides, after the success reply of an immediate request could not be
/// written, whether the Manager declined it, and makes the proof if so.
///
/// The Manager declined the reply when all of these hold, whatever order
/// their packets came in:
/// - it stopped roxyd's send side with `STOP_SENDING` code 0 (already known
///   when the write failed: this does not wait for it);
/// - no later than `rule.window` after `pending_since`, the moment the
///   reply was ready to be written;
/// - its own send side ends cleanly (FIN) right after the request, within
///   `rule.fin_wait`.
///
/// `recv` must be positioned right after the request frame. `pending_since`
/// is a Tokio instant, so that tests on paused time see the same rule.
///
/// # Errors
///
/// Which condition failed; the caller drops the operation.
pub async fn recognise_decline<R, W>(
    recv: &mut R,
    send: &mut W,
    pending_since: Instant,
    write_error: &io::Error,
    rule: DeclineRule,
) -> Result<ReplyDeclined, NotDeclined>
where
    R: AsyncRead + Unpin + ?Sized,
    W: ReplySink + ?Sized,
{
    let Some(code) = ready_now(send.peer_stop()).flatten() else {
        return Err(NotDeclined::NotStopped(write_error.to_string()));
    };
    if code != 0 {
        return Err(NotDeclined::StopCode(code));
    }
    let held = pending_since.elapsed();
    if held > rule.window {
        return Err(NotDeclined::GaveUp(held));
    }
    let mut probe = [0_u8; 1];
    match tokio::time::timeout(rule.fin_wait, recv.read(&mut probe)).await {
        Ok(Ok(0)) => Ok(ReplyDeclined { _private: () }),
        Ok(Ok(_)) => Err(NotDeclined::MoreData),
        Ok(Err(e)) => Err(NotDeclined::ReadFailed(e.to_string())),
        Err(_) => Err(NotDeclined::SendSideOpen),
    }
}

/// Polls `future` once: its output if it is ready now, without waiting.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
