//! One Manager connection: connect with mutual TLS, run the handshake, then
//! accept the Manager's request streams and serve each on a task of its own,
//! so that a stalled stream never delays a power request on another.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use tokio::task::JoinSet;

use crate::{
    dispatch::Dispatcher,
    handshake::{self, HandshakeError, Identity},
    platform::PowerBackend,
};

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The local QUIC endpoint could not be created.
    #[error("cannot open a UDP socket: {0}")]
    Endpoint(std::io::Error),
    /// The QUIC or TLS connection failed (unreachable Manager, certificate
    /// not verified, ...).
    #[error("cannot connect to the Manager: {0}")]
    Connect(String),
    /// The handshake failed or was refused.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// A QUIC client endpoint bound, as the reference does, to the unspecified
/// address of the Manager's family.
///
/// # Errors
///
/// When the socket cannot be bound.
pub fn client_endpoint(
    manager: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Endpoint, SessionError> {
    let bind = match manager {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(SessionError::Endpoint)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Connects to the Manager at `manager`, whose certificate must be valid for
/// `server_name`, and runs the handshake. Returns the connection and the
/// highest protocol version the Manager speaks.
///
/// # Errors
///
/// See [`SessionError`].
pub async fn establish(
    endpoint: &quinn::Endpoint,
    manager: SocketAddr,
    server_name: &str,
    identity: &Identity,
    max_frame_len: u32,
) -> Result<(quinn::Connection, String), SessionError> {
    let connection = endpoint
        .connect(manager, server_name)
        .map_err(|e| SessionError::Connect(e.to_string()))?
        .await
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let info = identity.agent_info(manager);
    let version = handshake::handshake(&connection, &info, max_frame_len).await?;
    tracing::info!(%manager, manager_protocol = %version, "connected to the Manager");
    Ok((connection, version))
}

/// How serving a connection ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The connection failed or the Manager closed it.
    Lost(quinn::ConnectionError),
    /// A stop was asked for; roxyd closed the connection.
    Stopped,
}

/// Serves every request stream the Manager opens on `connection`, each on a
/// task of its own, until the connection ends or `shutdown` resolves.
///
/// On the way out the connection is closed and every stream task is awaited:
/// they end promptly, since their reads and writes now fail. A pending
/// operation whose reply was not yet written is thereby cancelled; one whose
/// reply was written is released (the Manager may already have been told).
pub async fn serve_connection<B: PowerBackend>(
    connection: quinn::Connection,
    dispatcher: Arc<Dispatcher<B>>,
    shutdown: impl Future<Output = ()>,
) -> ConnectionEnd {
    let mut streams = JoinSet::new();
    tokio::pin!(shutdown);
    let end = loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((mut send, mut recv)) => {
                    let dispatcher = Arc::clone(&dispatcher);
                    streams.spawn(async move {
                        let id = send.id();
                        let end = dispatcher.serve_stream(&mut recv, &mut send).await;
                        tracing::debug!(stream = %id, ?end, "request stream ended");
                    });
                }
                Err(e) => break ConnectionEnd::Lost(e),
            },
            // Reap finished stream tasks so that a long connection does not
            // accumulate them.
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            () = &mut shutdown => {
                connection.close(0u32.into(), b"roxyd stopping");
                break ConnectionEnd::Stopped;
            }
        }
    };
    while streams.join_next().await.is_some() {}
    end
}
