//! The immediate ordering: write the success reply, then confirm its
//! delivery or recognise that the Manager declined it, then release; or
//! drop. `serve` is the only place that orders these steps, for every
//! platform.
//!
//! Rules a reader must not break:
//! - A pending operation is released only with a `ReleaseProof`:
//!   `write_initiated` makes a `ReplyWritten` (review-protocol 0.18
//!   Managers read the reply), `recognise_decline` a `ReplyDeclined`
//!   (0.19 Managers send an immediate request fire-and-forget and decline any
//!   reply). Every other failed write drops the operation.
//! - After a written reply the send side is finished and the Manager's
//!   acknowledgement awaited for at most `Limits::delivery_timeout`, so that
//!   the reply has left the host before it goes down; the release follows
//!   whatever that wait gives, since the Manager may already have been told.
//! - Every wait is bounded: the reply write by `Limits::reply_timeout`, the
//!   decline check by [`DeclineRule`].

use std::{
    future::Future,
    io,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    time::Instant,
};

use super::pending::{PendingPowerOp, ReplyDeclined, ReplyWritten};
use crate::{
    platform::PowerBackend,
    reply::{self, Delivery, ReplySink, WireForm},
};

/// The bounds of the immediate ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// How long writing the reply may take; a reply not written in time
    /// drops the operation.
    pub(crate) reply_timeout: Duration,
    /// How long to wait for the Manager to acknowledge the written reply
    /// before releasing anyway; zero does not wait.
    pub(crate) delivery_timeout: Duration,
    /// When a failed reply write means the Manager declined the reply.
    pub(crate) decline: DeclineRule,
}

/// A step of the immediate ordering, reported as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The operation is pending; its reply is about to be written.
    Prepared,
    /// The success reply was written.
    ReplyWritten,
    /// The wait for the Manager's acknowledgement ended.
    DeliveryConfirmed(Delivery),
    /// The reply could not be written.
    ReplyFailed,
    /// The Manager declined the reply (fire-and-forget).
    ReplyDeclined,
    /// The operation was released.
    Released,
    /// The operation was dropped: nothing happens.
    Cancelled,
}

/// Where [`serve`] reports its steps.
pub(crate) trait Steps {
    /// Called once per step, in order.
    fn step(&self, step: Step);
}

/// How [`serve`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The operation was released after its reply was written or declined.
    Released,
    /// The reply could not be written, and it was not a decline: the
    /// operation was dropped. Says why.
    Dropped(String),
}

/// Writes the success reply of `pending` on `send` (in `form`), then
/// releases it after the delivery wait, or after the Manager declined the
/// reply; otherwise drops it. `recv` must be positioned right after the
/// request frame.
pub(crate) async fn serve<B, R, W>(
    pending: PendingPowerOp<B>,
    form: WireForm,
    recv: &mut R,
    send: &mut W,
    limits: &Limits,
    steps: &impl Steps,
) -> Outcome
where
    B: PowerBackend,
    R: AsyncRead + Unpin + Send + ?Sized,
    W: ReplySink + ?Sized,
{
    let op = pending.op();
    // The reply is pending from here: a Manager's STOP_SENDING long after
    // this is a Manager that gave up, not one that declined.
    let pending_since = Instant::now();
    steps.step(Step::Prepared);
    tracing::info!(%op, "prepared; writing the reply");
    let written = tokio::time::timeout(limits.reply_timeout, write_initiated(send, form))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "reply write timed out",
            ))
        });
    let error = match written {
        Ok(written) => {
            steps.step(Step::ReplyWritten);
            tracing::info!(%op, "reply written; awaiting its delivery");
            let delivery = confirm_delivery(send, limits.delivery_timeout).await;
            tracing::info!(%op, ?delivery, "reply delivery settled");
            let written = written.confirmed(&delivery);
            steps.step(Step::DeliveryConfirmed(delivery));
            pending.release(written);
            steps.step(Step::Released);
            return Outcome::Released;
        }
        Err(error) => error,
    };
    steps.step(Step::ReplyFailed);
    match recognise_decline(recv, send, pending_since, &error, limits.decline).await {
        Ok(declined) => {
            tracing::info!(%op, "Manager declined the reply (fire-and-forget); carrying out");
            steps.step(Step::ReplyDeclined);
            pending.release(declined);
            steps.step(Step::Released);
            Outcome::Released
        }
        Err(reason) => {
            tracing::warn!(%op, error = %error, %reason, "reply not written; cancelling");
            drop(pending);
            steps.step(Step::Cancelled);
            Outcome::Dropped(format!("{error}; {reason}"))
        }
    }
}

/// Finishes the stream and waits, at most `timeout`, for the Manager to
/// acknowledge the reply. A zero timeout releases at once, as roxyd did
/// before it waited; it is there to measure what the wait buys.
async fn confirm_delivery<W: ReplySink + ?Sized>(send: &mut W, timeout: Duration) -> Delivery {
    if timeout.is_zero() {
        return Delivery::TimedOut;
    }
    tokio::time::timeout(timeout, send.finish_and_confirm())
        .await
        .unwrap_or(Delivery::TimedOut)
}

/// Writes the success reply of an immediate request and returns the proof
/// that lets its operation be released.
///
/// # Errors
///
/// When the transport fails; no proof is made then.
pub(crate) async fn write_initiated<W: ReplySink + ?Sized>(
    sink: &mut W,
    form: WireForm,
) -> io::Result<ReplyWritten> {
    reply::write_initiated(sink, form).await?;
    Ok(ReplyWritten::new())
}

/// When a failed reply write counts as declined by the Manager (see
/// `recognise_decline`).
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
pub(crate) enum NotDeclined {
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
pub(crate) async fn recognise_decline<R, W>(
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
        Ok(Ok(0)) => Ok(ReplyDeclined::new()),
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
