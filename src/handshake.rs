//! The agent's side of the once-per-connection handshake.
//!
//! roxyd opens the first bidirectional stream, sends [`AgentInfo`] in one
//! frame, and reads the Manager's [`HandshakeReply`] on the same stream. An
//! `Err` reply means the Manager refuses roxyd's protocol version; roxyd then
//! does not serve.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::wire::{self, AgentInfo, HandshakeReply, Status};

/// The application name the replaced agent announced.
pub(crate) const DEFAULT_APP_NAME: &str = "roxy";

/// The Manager protocol release the replaced agent required.
pub(crate) const DEFAULT_PROTOCOL_VERSION: &str = "0.47.0";

/// What roxyd announces about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Application name.
    pub app_name: String,
    /// The agent's version: roxyd's own.
    pub version: String,
    /// The Manager protocol release required, a semver string.
    pub protocol_version: String,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            app_name: DEFAULT_APP_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: DEFAULT_PROTOCOL_VERSION.to_owned(),
        }
    }
}

impl Identity {
    /// The handshake message for a Manager at `manager`: the address field is
    /// the unspecified address of the Manager's family, port 0, which the
    /// Manager overwrites.
    #[must_use]
    pub fn agent_info(&self, manager: SocketAddr) -> AgentInfo {
        let unspecified = match manager {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        AgentInfo {
            app_name: self.app_name.clone(),
            version: self.version.clone(),
            protocol_version: self.protocol_version.clone(),
            addr: SocketAddr::new(unspecified, 0),
            status: Status::Ready,
        }
    }
}

/// Why the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The Manager refused roxyd's protocol version. Its `Err` text is,
    /// depending on the Manager, either the version it requires or the
    /// highest it speaks; the reply does not say which.
    #[error(
        "the Manager refused protocol version {offered} (roxyd's protocol_version) and answered \"{answer}\", the version it requires or the highest it speaks"
    )]
    VersionRefused {
        /// The `protocol_version` roxyd announced.
        offered: String,
        /// The Manager's `Err` text.
        answer: String,
    },
    /// The stream could not be opened, written or read.
    #[error("handshake failed: {0}")]
    Transport(String),
    /// The Manager's reply is not a handshake reply.
    #[error("malformed handshake reply: {0}")]
    Malformed(String),
}

/// Sends `info` on `send` and reads the Manager's answer from `recv`.
///
/// Returns the highest protocol version the Manager speaks.
///
/// # Errors
///
/// See [`HandshakeError`].
pub async fn exchange<W, R>(
    send: &mut W,
    recv: &mut R,
    info: &AgentInfo,
    max_frame_len: u32,
) -> Result<String, HandshakeError>
where
    W: AsyncWrite + Unpin + ?Sized,
    R: AsyncRead + Unpin + ?Sized,
{
    let transport = |e: &dyn std::fmt::Display| HandshakeError::Transport(e.to_string());
    wire::write_frame(send, &wire::encode(info))
        .await
        .map_err(|e| transport(&e))?;
    let payload = wire::FrameReader::new(recv)
        .read_frame(max_frame_len)
        .await
        .map_err(|e| transport(&e))?
        .ok_or_else(|| HandshakeError::Transport("Manager closed the stream".to_owned()))?;
    let reply: HandshakeReply =
        wire::decode(&payload).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    let _ = send.shutdown().await;
    reply.map_err(|answer| HandshakeError::VersionRefused {
        offered: info.protocol_version.clone(),
        answer,
    })
}

/// Runs the handshake on a new stream of `connection`.
///
/// # Errors
///
/// See [`HandshakeError`].
pub(crate) async fn handshake(
    connection: &quinn::Connection,
    info: &AgentInfo,
    max_frame_len: u32,
) -> Result<String, HandshakeError> {
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| HandshakeError::Transport(e.to_string()))?;
    exchange(&mut send, &mut recv, info, max_frame_len).await
}
