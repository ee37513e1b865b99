//! The Manager wire format of the review-protocol 0.18 series, byte for byte.
//!
//! Rules a reader must not break: every message is a frame (4-byte big-endian
//! length, then the payload); a frame is refused before allocation when it
//! claims more than the reader's limit; payloads are bincode 2 in serde mode
//! with `config::standard()`; a request payload starts with its code as a
//! 4-byte little-endian `u32`. `tests/wire_vectors.rs` pins all of this to
//! bytes produced by the reference implementation.

mod codec;
mod frame;
mod message;
pub mod reply_text;

pub use codec::{DECODE_LIMIT, DecodeError, decode, decode_prefix, encode};
pub use frame::{DEFAULT_MAX_FRAME_LEN, FrameError, FrameReader, Payload, READ_AHEAD, write_frame};
pub use message::{
    AgentInfo, HandshakeReply, NodePowerRequest, NodePowerResponse, REQUEST_CODE_LEN, Request,
    RequestCode, RequestFrameError, Status, encode_request,
};
