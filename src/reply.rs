//! Replies on a request's stream: their payloads, the send half they are
//! written to ([`ReplySink`]), and how far a written reply is known to have
//! got ([`Delivery`]).
//!
//! A reply is one frame holding `Result<T, String>`; an error reply encodes
//! the same for every `T`. The success reply of a power request is written
//! by `crate::power::immediate::write_initiated`, the only maker of the
//! proof a release needs.

use std::{future::Future, io};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::wire::{self, NodePowerResponse};

/// The wire form a power request came in, which decides its success reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireForm {
    /// Code 106: success is `Ok(NodePowerResponse::Initiated)`.
    Grouped,
    /// Codes 4 and 21: success is `Ok(())`.
    Flat,
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

/// Writes the success reply of a power request in `form`. For an immediate
/// one, [`crate::power::immediate::write_initiated`] calls this and makes the
/// proof its release needs; a graceful one needs none.
///
/// # Errors
///
/// When the transport fails.
pub(crate) async fn write_initiated<W: ReplySink + ?Sized>(
    sink: &mut W,
    form: WireForm,
) -> io::Result<()> {
    wire::write_frame(sink, &initiated_payload(form)).await
}

/// Writes `Ok(())`.
///
/// # Errors
///
/// When the transport fails.
pub async fn write_unit<W: ReplySink + ?Sized>(sink: &mut W) -> io::Result<()> {
    sink.write_all(&UNIT_FRAME).await?;
    sink.flush().await
}

/// `Ok(())` as bincode encodes it: the variant index 0. The most frequent
/// reply, written without encoding it each time (checked against the
/// reference's bytes by the tests).
pub const UNIT_PAYLOAD: &[u8] = &[0];

/// [`UNIT_PAYLOAD`] as a frame: its length, 1, then the payload. A
/// constant, so that a stream task holds no buffer while it writes it.
pub const UNIT_FRAME: [u8; 5] = [0, 0, 0, 1, 0];

/// Writes `Err(text)`.
///
/// # Errors
///
/// When the transport fails.
pub(crate) async fn write_error<W: ReplySink + ?Sized>(sink: &mut W, text: &str) -> io::Result<()> {
    wire::write_frame(sink, &error_payload(text)).await
}
