//! bincode 2 (serde mode, `config::standard()`) encoding of frame payloads.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Serialize, de::DeserializeOwned};

/// The most a decode may allocate, in bytes. bincode allocates a string or
/// sequence at the length its prefix claims before reading it; the limit is
/// checked first, so a few bytes claiming exabytes are refused instead of
/// aborting the process. Far above any message roxyd decodes.
pub const DECODE_LIMIT: usize = 1024 * 1024;

/// `config::standard()` with [`DECODE_LIMIT`]: the same bytes, bounded.
fn decoding() -> Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT>> {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// A payload that does not decode as the expected type.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(#[from] bincode::error::DecodeError);

/// Encodes `value` as a frame payload.
///
/// Only types whose serialization cannot fail (the protocol's own types) are
/// passed here, so an encoding error is a programming error that is reported
/// as an empty payload in release builds rather than a panic.
#[must_use]
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match bincode::serde::encode_to_vec(value, bincode::config::standard()) {
        Ok(bytes) => bytes,
        Err(e) => {
            debug_assert!(false, "protocol type failed to encode: {e}");
            tracing::error!(error = %e, "protocol type failed to encode");
            Vec::new()
        }
    }
}

/// Decodes a whole payload; trailing bytes are an error.
///
/// Used where the reference decodes a complete message (handshake, replies).
///
/// # Errors
///
/// When the bytes are not a valid `T`, or bytes are left over.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, decoding())?;
    if used == bytes.len() {
        Ok(value)
    } else {
        Err(DecodeError(bincode::error::DecodeError::OtherString(
            format!("{} trailing bytes", bytes.len() - used),
        )))
    }
}

/// Decodes a value from the start of `bytes` and ignores what follows, as the
/// reference does for request bodies.
///
/// # Errors
///
/// When the bytes do not start with a valid `T`.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, _) = bincode::serde::decode_from_slice(bytes, decoding())?;
    Ok(value)
}
