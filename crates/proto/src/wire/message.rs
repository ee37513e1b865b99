//! The messages roxyd exchanges with the Manager and the request code table.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Bytes of the request code at the start of every request payload.
pub const REQUEST_CODE_LEN: usize = 4;

/// The agent's side of the handshake: the first frame on the first stream.
///
/// Field order is the wire order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's application name (`roxy` for the agent roxyd replaces).
    pub app_name: String,
    /// The agent's own version.
    pub version: String,
    /// The Manager protocol release the agent requires, as a semver string.
    pub protocol_version: String,
    /// A placeholder the Manager overwrites with the address it sees.
    pub addr: SocketAddr,
    /// The agent's state.
    pub status: Status,
}

/// The agent state announced in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Ready to serve requests; what roxyd sends.
    Ready,
    /// Connected but idle.
    Idle,
}

/// The Manager's answer to [`AgentInfo`]: `Ok(highest protocol version it
/// speaks)` or `Err(text)` when the agent's protocol version is refused.
pub type HandshakeReply = Result<String, String>;

/// The grouped power request (code 106). Variant order is the wire order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodePowerRequest {
    /// Immediate reboot.
    Reboot,
    /// Immediate power-off.
    Shutdown,
    /// Reboot through the system's orderly shutdown.
    GracefulReboot,
    /// Power-off through the system's orderly shutdown.
    GracefulShutdown,
}

impl NodePowerRequest {
    /// Every variant, in wire order.
    pub const ALL: [Self; 4] = [
        Self::Reboot,
        Self::Shutdown,
        Self::GracefulReboot,
        Self::GracefulShutdown,
    ];
}

/// The grouped power request's success value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodePowerResponse {
    /// Accepted; the node may vanish soon.
    Initiated,
}

/// A request code as the reference agent classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestCode {
    /// 4: legacy flat reboot, empty body, reply `Result<(), String>`.
    FlatReboot,
    /// 17: the Manager's ping, reply `Ok(())`.
    Echo,
    /// 21: legacy flat shutdown, empty body, reply `Result<(), String>`.
    FlatShutdown,
    /// 106: the grouped power request, body [`NodePowerRequest`].
    NodePower,
    /// A code the protocol knows but roxyd does not implement, among them
    /// 22 (`DeleteCustomerData`, newer than review-protocol 0.19.0): the
    /// protocol's default handler answers it `not supported` too.
    NotSupported(u32),
    /// A code the reference does not know.
    Unknown(u32),
}

impl RequestCode {
    /// The code of the flat reboot request.
    pub const FLAT_REBOOT: u32 = 4;
    /// The code of the echo request.
    pub const ECHO: u32 = 17;
    /// The code of the flat shutdown request.
    pub const FLAT_SHUTDOWN: u32 = 21;
    /// The code of the grouped power request.
    pub const NODE_POWER: u32 = 106;

    /// The numeric code.
    #[must_use]
    pub const fn code(self) -> u32 {
        match self {
            Self::FlatReboot => Self::FLAT_REBOOT,
            Self::Echo => Self::ECHO,
            Self::FlatShutdown => Self::FLAT_SHUTDOWN,
            Self::NodePower => Self::NODE_POWER,
            Self::NotSupported(code) | Self::Unknown(code) => code,
        }
    }
}

impl From<u32> for RequestCode {
    fn from(code: u32) -> Self {
        match code {
            Self::FLAT_REBOOT => Self::FlatReboot,
            Self::ECHO => Self::Echo,
            Self::FLAT_SHUTDOWN => Self::FlatShutdown,
            Self::NODE_POWER => Self::NodePower,
            0..=2 | 5..=10 | 12..=16 | 18..=20 | 22 | 100..=105 | 107 | 108 => {
                Self::NotSupported(code)
            }
            _ => Self::Unknown(code),
        }
    }
}

/// A request payload split into its code and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The request code.
    pub code: RequestCode,
    /// The bincode body after the code.
    pub body: &'a [u8],
}

/// A request payload too short to hold a request code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("request frame of {0} bytes is too short for a request code")]
pub struct RequestFrameError(pub usize);

impl<'a> Request<'a> {
    /// Splits a request payload.
    ///
    /// # Errors
    ///
    /// When the payload is shorter than [`REQUEST_CODE_LEN`].
    pub fn parse(payload: &'a [u8]) -> Result<Self, RequestFrameError> {
        let Some((code, body)) = payload.split_first_chunk::<REQUEST_CODE_LEN>() else {
            return Err(RequestFrameError(payload.len()));
        };
        Ok(Self {
            code: RequestCode::from(u32::from_le_bytes(*code)),
            body,
        })
    }
}

/// Builds a request payload: the code, then `body` already encoded.
#[must_use]
pub fn encode_request(code: u32, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(REQUEST_CODE_LEN + body.len());
    payload.extend_from_slice(&code.to_le_bytes());
    payload.extend_from_slice(body);
    payload
}
