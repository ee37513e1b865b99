//! Length-prefixed frames: a 4-byte big-endian payload length, then the payload.

use std::{
    io,
    ops::Deref,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Default largest payload roxyd accepts: far above any request it serves,
/// far below what would hurt an appliance if a peer claimed it.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 64 * 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header claims more than the reader's limit; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length the header claimed.
        len: u32,
        /// The reader's limit.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The transport failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The payload length a frame header announces, refused past `max_len`
/// before anything is allocated for it.
fn payload_len(header: [u8; 4], max_len: u32) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header);
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    Ok(len as usize)
}

/// The error of a read that was to fill the rest of a frame: the stream's
/// end there is a truncated frame.
fn inside_frame(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// Bytes a [`FrameReader`] reads ahead, held inline: a small frame's header
/// and payload arrive in one read and are served without an allocation.
/// Every request of roxyd's families fits (the largest, a grouped power
/// request, is a 9-byte frame); kept small because it is part of every
/// stream task, whose size decides how costly the task's allocation is
/// (glibc serves a chunk of 1 KiB or more on a slower path).
pub const READ_AHEAD: usize = 16;

/// Reads frames from `R`, reading ahead into a small inline buffer; it
/// reads as `R` does too (buffered bytes first), for whatever follows a
/// frame. A frame of up to `READ_AHEAD - 4` payload bytes is returned inline;
/// a larger one in a buffer of its exact size, allocated only after its
/// length was checked.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: [u8; READ_AHEAD],
    start: usize,
    end: usize,
}

/// A frame's payload, inline when small; read it as a `[u8]`. Its parts
/// are private: an inline length past the inline bytes would panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload(Repr);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Repr {
    /// Up to `READ_AHEAD - 4` bytes: the first `len` of `bytes`.
    Inline {
        bytes: [u8; READ_AHEAD - 4],
        len: u8,
    },
    /// A larger payload.
    Heap(Vec<u8>),
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { bytes, len } => &bytes[..usize::from(*len)],
            Repr::Heap(bytes) => bytes,
        }
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `inner`'s frames.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: [0; READ_AHEAD],
            start: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads more of `inner` into the buffer, after what it holds; 0 at the
    /// end of the stream. A dropped call loses nothing: the compaction before
    /// the read moves the buffered bytes to the front and keeps them all, and
    /// `end` moves past new bytes only once a read completed.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = self.inner.read(&mut self.buf[self.end..]).await?;
        self.end += read;
        Ok(read)
    }

    /// Reads one frame's payload.
    ///
    /// Returns `Ok(None)` when the stream ends cleanly at a frame boundary,
    /// the normal end of a request stream. The length is checked against
    /// `max_len` before any buffer is allocated.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] past the limit, [`FrameError::Truncated`]
    /// when the stream ends mid-frame, [`FrameError::Io`] when the transport
    /// fails.
    pub async fn read_frame(&mut self, max_len: u32) -> Result<Option<Payload>, FrameError> {
        while self.buffered() < 4 {
            if self.fill().await? == 0 {
                return if self.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
        let mut header = [0_u8; 4];
        header.copy_from_slice(&self.buf[self.start..self.start + 4]);
        let len = payload_len(header, max_len)?;
        if 4 + len <= READ_AHEAD {
            while self.buffered() < 4 + len {
                if self.fill().await? == 0 {
                    return Err(FrameError::Truncated);
                }
            }
            let from = self.start + 4;
            let mut bytes = [0_u8; READ_AHEAD - 4];
            bytes[..len].copy_from_slice(&self.buf[from..from + len]);
            self.start = from + len;
            #[allow(clippy::cast_possible_truncation, reason = "len <= READ_AHEAD - 4")]
            return Ok(Some(Payload(Repr::Inline {
                bytes,
                len: len as u8,
            })));
        }
        self.start += 4;
        let mut payload = vec![0_u8; len];
        let have = self.buffered().min(len);
        payload[..have].copy_from_slice(&self.buf[self.start..self.start + have]);
        self.start += have;
        self.inner
            .read_exact(&mut payload[have..])
            .await
            .map_err(inside_frame)?;
        Ok(Some(Payload(Repr::Heap(payload))))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buffered() > 0 {
            let n = this.buffered().min(out.remaining());
            out.put_slice(&this.buf[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

/// Writes `payload` as one frame, header and payload in a single write call
/// so that a small reply leaves in one packet.
///
/// # Errors
///
/// When the payload is longer than `u32::MAX` bytes or the transport fails.
pub async fn write_frame<W>(writer: &mut W, payload: &[u8]) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let len = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too long"))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    writer.write_all(&frame).await?;
    writer.flush().await
}
