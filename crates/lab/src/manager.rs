//! The Manager side of the protocol, built in this repository: a QUIC server
//! with mutual TLS that accepts agents, runs the handshake and sends requests,
//! one request per stream as the real Manager does.
//!
//! Live tests, the demo, benchmarks and `roxyctl` use it. It follows the
//! reference Manager's behaviour where an agent can tell, and nothing more.

use std::{net::SocketAddr, sync::Arc};

use quinn::{RecvStream, SendStream};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;

use roxyd_proto::{
    tls::{self, TlsError},
    wire::{self, AgentInfo, HandshakeReply, NodePowerRequest, NodePowerResponse, RequestCode},
};

/// The Manager generations in the field; they differ only in how they send
/// the immediate power requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Generation {
    /// review-protocol 0.18: reads the reply to every request.
    #[default]
    V0_18,
    /// review-protocol 0.19: sends `NodePower` `Reboot` and `Shutdown`
    /// fire-and-forget (finishes its side, declines the reply, reads
    /// nothing); everything else as 0.18.
    V0_19,
}

impl Generation {
    /// Whether this generation sends `request` fire-and-forget.
    #[must_use]
    pub fn fires_and_forgets(self, request: NodePowerRequest) -> bool {
        self == Self::V0_19
            && matches!(
                request,
                NodePowerRequest::Reboot | NodePowerRequest::Shutdown
            )
    }
}

/// Largest reply the Manager side reads.
const MAX_REPLY_LEN: u32 = 1024 * 1024;

/// Which agent protocol versions the Manager accepts, as the reference
/// decides: `Err(requirement)` when the agent's version does not meet it,
/// `Err(highest)` when it is newer than the highest the Manager speaks,
/// otherwise `Ok(highest)`.
#[derive(Clone, Debug)]
pub struct VersionPolicy {
    /// The requirement on the agent's protocol version.
    pub requirement: semver::VersionReq,
    /// The highest protocol version this Manager speaks.
    pub highest: semver::Version,
}

impl Default for VersionPolicy {
    /// Accepts any version up to 0.47.0.
    fn default() -> Self {
        Self {
            requirement: semver::VersionReq::STAR,
            highest: semver::Version::new(0, 47, 0),
        }
    }
}

impl VersionPolicy {
    /// The reply to an agent announcing `protocol_version`.
    ///
    /// # Errors
    ///
    /// The refusal text, when the version is not accepted.
    pub fn answer(&self, protocol_version: &str) -> HandshakeReply {
        let Ok(version) = semver::Version::parse(protocol_version) else {
            return Err(self.requirement.to_string());
        };
        if !self.requirement.matches(&version) {
            Err(self.requirement.to_string())
        } else if version > self.highest {
            Err(self.highest.to_string())
        } else {
            Ok(self.highest.to_string())
        }
    }
}

/// A Manager-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The endpoint is closed.
    #[error("the Manager endpoint is closed")]
    Closed,
    /// The connection or a stream failed.
    #[error("{0}")]
    Transport(String),
    /// The agent sent something that does not decode.
    #[error("malformed message from the agent: {0}")]
    Malformed(String),
    /// The handshake refused the agent's version.
    #[error("agent protocol version refused: {0}")]
    Refused(String),
}

fn transport(e: impl std::fmt::Display) -> ManagerError {
    ManagerError::Transport(e.to_string())
}

/// The Manager's QUIC server configuration: TLS 1.3, its own certificate,
/// and client certificates required and checked against `client_roots`.
///
/// # Errors
///
/// When rustls refuses the certificate, key or roots.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: RootCertStore,
) -> Result<quinn::ServerConfig, TlsError> {
    let config = |e: &dyn std::fmt::Display| TlsError::Config(e.to_string());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_roots),
        tls::provider(),
    )
    .build()
    .map_err(|e| config(&e))?;
    let tls = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| config(&e))?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| config(&e))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// A listening Manager.
#[derive(Debug)]
pub struct Manager {
    endpoint: quinn::Endpoint,
    policy: VersionPolicy,
}

impl Manager {
    /// Listens on `addr` (port 0 picks a free one).
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> std::io::Result<Self> {
        Ok(Self {
            endpoint: quinn::Endpoint::server(config, addr)?,
            policy: VersionPolicy::default(),
        })
    }

    /// Uses `policy` for handshakes from now on.
    #[must_use]
    pub fn with_policy(mut self, policy: VersionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The address agents connect to.
    ///
    /// # Errors
    ///
    /// When the socket has no address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The QUIC endpoint, for tests that need to shape traffic.
    #[must_use]
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Waits for the next agent and runs the handshake with it.
    ///
    /// # Errors
    ///
    /// When the endpoint closes, the connection or handshake fails, or the
    /// agent's version is refused (the refusal is sent first).
    pub async fn accept(&self) -> Result<AgentSession, ManagerError> {
        let connection = self.accept_connection().await?;
        let (mut send, mut recv) = connection.accept_bi().await.map_err(transport)?;
        let payload = wire::FrameReader::new(&mut recv)
            .read_frame(MAX_REPLY_LEN)
            .await
            .map_err(transport)?
            .ok_or_else(|| transport("agent closed the handshake stream"))?;
        let agent: AgentInfo =
            wire::decode(&payload).map_err(|e| ManagerError::Malformed(e.to_string()))?;
        let answer = self.policy.answer(&agent.protocol_version);
        wire::write_frame(&mut send, &wire::encode(&answer))
            .await
            .map_err(transport)?;
        let _ = send.finish();
        // Return only once the agent has the answer, so that a caller that
        // closes the connection at once does not destroy it in flight.
        let _ = send.stopped().await;
        match answer {
            Ok(_) => Ok(AgentSession { connection, agent }),
            Err(text) => Err(ManagerError::Refused(text)),
        }
    }

    /// Accepts the next agent's connection and runs no handshake: for tests
    /// of an agent facing a Manager that never answers.
    ///
    /// # Errors
    ///
    /// When the endpoint closes or the connection fails.
    pub async fn accept_connection(&self) -> Result<quinn::Connection, ManagerError> {
        let incoming = self.endpoint.accept().await.ok_or(ManagerError::Closed)?;
        incoming.await.map_err(transport)
    }

    /// Closes the endpoint and every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"manager closing");
    }
}

/// A connected agent that passed the handshake.
#[derive(Debug, Clone)]
pub struct AgentSession {
    connection: quinn::Connection,
    agent: AgentInfo,
}

impl AgentSession {
    /// What the agent announced.
    #[must_use]
    pub fn agent(&self) -> &AgentInfo {
        &self.agent
    }

    /// The QUIC connection.
    #[must_use]
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Opens a request stream, for tests that drive it by hand.
    ///
    /// # Errors
    ///
    /// When the connection is gone.
    pub async fn open_stream(&self) -> Result<(SendStream, RecvStream), ManagerError> {
        self.connection.open_bi().await.map_err(transport)
    }

    /// Sends one request on a new stream and returns the reply payload.
    ///
    /// # Errors
    ///
    /// When the stream fails or the agent closes it without a reply.
    pub async fn request_raw(&self, code: u32, body: &[u8]) -> Result<Vec<u8>, ManagerError> {
        let (mut send, mut recv) = self.open_stream().await?;
        wire::write_frame(&mut send, &wire::encode_request(code, body))
            .await
            .map_err(transport)?;
        let _ = send.shutdown().await;
        wire::FrameReader::new(&mut recv)
            .read_frame(MAX_REPLY_LEN)
            .await
            .map_err(transport)?
            .map(|reply| reply.to_vec())
            .ok_or_else(|| transport("agent closed the stream without a reply"))
    }

    /// Sends one request as a review-protocol 0.19 Manager sends an
    /// immediate power request: writes the frame, finishes its send side and
    /// drops its receive side at once without reading (quinn then sends
    /// `STOP_SENDING` with code 0). Returns once the agent acknowledged the
    /// request, or the stream or connection ended, so that a caller that
    /// closes the connection next does not discard the request in flight;
    /// the wait changes nothing on the wire.
    ///
    /// # Errors
    ///
    /// When the stream fails.
    pub async fn fire_and_forget(&self, code: u32, body: &[u8]) -> Result<(), ManagerError> {
        let (mut send, recv) = self.open_stream().await?;
        wire::write_frame(&mut send, &wire::encode_request(code, body))
            .await
            .map_err(transport)?;
        send.finish().map_err(transport)?;
        drop(recv);
        let _ = send.stopped().await;
        Ok(())
    }

    /// Sends the grouped power request as a Manager of `generation` does:
    /// `None` when it was sent fire-and-forget, with no reply to read.
    ///
    /// # Errors
    ///
    /// See [`Self::node_power`] and [`Self::fire_and_forget`].
    pub async fn node_power_as(
        &self,
        generation: Generation,
        request: NodePowerRequest,
    ) -> Result<Option<Result<NodePowerResponse, String>>, ManagerError> {
        if generation.fires_and_forgets(request) {
            self.fire_and_forget(RequestCode::NODE_POWER, &wire::encode(&request))
                .await?;
            return Ok(None);
        }
        self.node_power(request).await.map(Some)
    }

    /// Sends the grouped power request.
    ///
    /// # Errors
    ///
    /// See [`Self::request_raw`]; also when the reply does not decode.
    pub async fn node_power(
        &self,
        request: NodePowerRequest,
    ) -> Result<Result<NodePowerResponse, String>, ManagerError> {
        let reply = self
            .request_raw(RequestCode::NODE_POWER, &wire::encode(&request))
            .await?;
        wire::decode(&reply).map_err(|e| ManagerError::Malformed(e.to_string()))
    }

    /// Sends a request whose reply is `Result<(), String>`: flat reboot (4),
    /// flat shutdown (21), echo (17), or any other code.
    ///
    /// # Errors
    ///
    /// See [`Self::request_raw`]; also when the reply does not decode.
    pub async fn unit_request(&self, code: u32) -> Result<Result<(), String>, ManagerError> {
        let reply = self.request_raw(code, &[]).await?;
        wire::decode(&reply).map_err(|e| ManagerError::Malformed(e.to_string()))
    }
}
