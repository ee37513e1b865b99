//! Writing replies on a request's stream and confirming their delivery.
//!
//! [`write_initiated`] is the only way to obtain a [`ReplyWritten`], the proof
//! that [`crate::power::PendingPowerOp::release`] demands. A reply is one
//! frame holding `Result<T, String>`; an error reply encodes the same for
//! every `T`.

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

/// Proof that a success reply for a power request was written on the
/// request's stream. Only [`write_initiated`] makes one.
#[derive(Debug)]
pub struct ReplyWritten {
    _private: (),
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
}

/// In-memory streams (tests, fuzzing): shutting down hands every byte to the
/// reader at once, so a completed shutdown is delivery.
impl ReplySink for tokio::io::DuplexStream {
    fn finish_and_confirm(&mut self) -> impl Future<Output = Delivery> + Send {
        shutdown_as_delivery(self)
    }
}

impl<T: AsyncWrite + Send> ReplySink for tokio::io::WriteHalf<T> {
    fn finish_and_confirm(&mut self) -> impl Future<Output = Delivery> + Send {
        shutdown_as_delivery(self)
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
