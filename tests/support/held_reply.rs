//! A reply sink for tests that force a fire-and-forget Manager's packets to
//! arrive before the reply is written, without any seam in the power path.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use roxyd::reply::{Delivery, ReplySink};
use tokio::io::AsyncWrite;

/// A stream's send half whose first write waits until the Manager's
/// `STOP_SENDING` (or the end of the stream or connection) has reached the
/// agent: it forces a fire-and-forget Manager's packets to arrive before the
/// reply is written. The dispatch layer bounds the wait with its reply
/// timeout, as it bounds any write.
pub struct HeldUntilStopped {
    send: quinn::SendStream,
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl HeldUntilStopped {
    pub fn new(send: quinn::SendStream) -> Self {
        let stopped = send.stopped();
        Self {
            send,
            stop: Some(Box::pin(async move {
                let _ = stopped.await;
            })),
        }
    }
}

impl AsyncWrite for HeldUntilStopped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(stop) = self.stop.as_mut() {
            if stop.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.stop = None;
        }
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

impl ReplySink for HeldUntilStopped {
    fn finish_and_confirm(&mut self) -> impl Future<Output = Delivery> + Send {
        self.send.finish_and_confirm()
    }

    fn peer_stop(&mut self) -> impl Future<Output = Option<u64>> + Send {
        self.send.peer_stop()
    }
}
