//! Length-prefixed frames: a 4-byte big-endian payload length, then the payload.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Reads one frame's payload.
///
/// Returns `Ok(None)` when the stream ends cleanly at a frame boundary, the
/// normal end of a request stream. The length is checked against `max_len`
/// before any buffer is allocated.
///
/// # Errors
///
/// [`FrameError::TooLarge`] past the limit, [`FrameError::Truncated`] when the
/// stream ends mid-frame, [`FrameError::Io`] when the transport fails.
pub async fn read_frame<R>(reader: &mut R, max_len: u32) -> Result<Option<Vec<u8>>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut header = [0_u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(header);
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let mut payload = vec![0_u8; len as usize];
    match reader.read_exact(&mut payload).await {
        Ok(_) => Ok(Some(payload)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
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
