//! Arbitrary bytes through the frame reader roxyd ships (`FrameReader`, the
//! read-ahead reader of every request stream and the handshake) and the
//! payload decoders.
//!
//! The input is read as a sequence of frames with a small limit, as a request
//! stream would be, arriving in reads of varying sizes. Each payload is split with `Request::parse` and its body
//! decoded with `decode_prefix::<NodePowerRequest>`, as the dispatch layer
//! does for code 106. Besides "no panic", the reader's own promises are
//! checked (each payload is the next frame of the input, never above the
//! limit; `TooLarge` only for a header above it; a clean end only at the end
//! of the input; no read waits on a slice), and
//! the body decoder is checked against the varint rule of `docs/wire.md`.
//!
//! Every payload is also decoded as the two handshake messages
//! (`AgentInfo`, `HandshakeReply`): this target found that they once
//! allocated whatever a string length claimed (`fuzz/README.md`, "Found and
//! fixed"; `tests/wire_limits.rs`).
#![no_main]

use std::{
    pin::{Pin, pin},
    task::{Context, Poll, Waker},
};

use libfuzzer_sys::fuzz_target;
use roxyd::wire::{
    self, AgentInfo, FrameError, FrameReader, HandshakeReply, NodePowerRequest, REQUEST_CODE_LEN,
    Request,
};
use tokio::io::{AsyncRead, ReadBuf};

/// Small, so that inputs cross it often.
const LIMIT: u32 = 64;

/// Runs a future that cannot wait (it only reads a slice) to completion.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("reading a frame from a slice waited"),
    }
}

/// The input's bytes in reads of 1 to 7 bytes, the sizes taken from the
/// input itself, so that frames cross read boundaries anywhere.
struct Trickle<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let at = self.at;
        let size = self.bytes.get(at).map_or(1, |b| usize::from(b % 7) + 1);
        let n = size.min(out.remaining()).min(self.bytes.len() - at);
        out.put_slice(&self.bytes[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(Trickle { bytes: data, at: 0 });
    // Where the next frame starts in `data`.
    let mut next = 0;
    loop {
        match now(reader.read_frame(LIMIT)) {
            Ok(None) => {
                assert_eq!(next, data.len(), "clean end with bytes left");
                break;
            }
            Ok(Some(payload)) => {
                assert!(payload.len() <= LIMIT as usize, "payload above the limit");
                let header: [u8; 4] = data[next..next + 4].try_into().unwrap();
                assert_eq!(u32::from_be_bytes(header) as usize, payload.len());
                assert_eq!(&data[next + 4..next + 4 + payload.len()], &*payload);
                next += 4 + payload.len();
                decode_payload(&payload);
            }
            Err(FrameError::TooLarge { len, max }) => {
                assert!(len > max && max == LIMIT);
                let header: [u8; 4] = data[next..next + 4].try_into().unwrap();
                assert_eq!(u32::from_be_bytes(header), len);
                break;
            }
            Err(FrameError::Truncated) => {
                assert!(next < data.len(), "truncated at the end of the input");
                break;
            }
            Err(FrameError::Io(e)) => panic!("reading a slice failed: {e}"),
        }
    }
});

/// Splits and decodes one payload as the dispatch layer would, and decodes
/// it whole as each handshake message.
fn decode_payload(payload: &[u8]) {
    let _ = wire::decode::<AgentInfo>(payload);
    let _ = wire::decode::<HandshakeReply>(payload);
    match Request::parse(payload) {
        Ok(request) => {
            assert!(payload.len() >= REQUEST_CODE_LEN);
            assert_eq!(request.body, &payload[REQUEST_CODE_LEN..]);
            assert_eq!(
                request.code.code().to_le_bytes(),
                payload[..REQUEST_CODE_LEN]
            );
            // Whatever the code, the body decodes as a power request exactly
            // when it starts with a varint from 0 to 3.
            let decoded = wire::decode_prefix::<NodePowerRequest>(request.body).ok();
            let expected = leading_varint_u32(request.body)
                .and_then(|index| NodePowerRequest::ALL.get(index as usize).copied());
            assert_eq!(decoded, expected, "body {:?}", request.body);
        }
        Err(e) => assert_eq!(e.0, payload.len()),
    }
}

/// The `u32` varint bincode 2 reads: a byte up to 250 is the value; 251 and
/// 252 announce a little-endian `u16` and `u32` (non-canonical forms
/// accepted); 253 to 255 are no `u32`.
fn leading_varint_u32(body: &[u8]) -> Option<u32> {
    match *body.first()? {
        byte @ 0..=250 => Some(u32::from(byte)),
        251 => Some(u32::from(u16::from_le_bytes(
            body.get(1..3)?.try_into().ok()?,
        ))),
        252 => Some(u32::from_le_bytes(body.get(1..5)?.try_into().ok()?)),
        _ => None,
    }
}
