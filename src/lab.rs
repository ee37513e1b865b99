//! An in-process lab on loopback: throwaway certificates, a [`Manager`], and
//! agents connected to it over real QUIC with mutual TLS. Live tests, the
//! demo and the benchmarks all start here.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use tokio::task::JoinHandle;

use crate::{
    agent::{self, ConnectionEnd, SessionError},
    config::Config,
    dispatch::Dispatcher,
    handshake::Identity,
    manager::{AgentSession, Manager, ManagerError, server_config},
    pki::{PemPair, PkiError, ThrowawayPki},
    platform::PowerBackend,
    tls::{self, TlsError},
};

/// The server name the lab's Manager certificate is issued for.
pub const SERVER_NAME: &str = "manager.roxyd.test";

/// A lab set-up failure.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Certificates could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// TLS refused them.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A socket could not be bound.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The agent could not connect.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The Manager side failed.
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

/// A Manager on loopback with fresh certificates.
#[derive(Debug)]
pub struct Lab {
    /// The certificates.
    pub pki: ThrowawayPki,
    /// The Manager.
    pub manager: Manager,
}

/// An agent connected to the lab's Manager, serving in a task.
#[derive(Debug)]
pub struct LabAgent {
    /// The agent's side of the connection.
    pub connection: quinn::Connection,
    /// The serving task; it ends with the connection.
    pub serving: JoinHandle<ConnectionEnd>,
    endpoint: quinn::Endpoint,
}

impl LabAgent {
    /// The agent's QUIC endpoint.
    #[must_use]
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }
}

impl Lab {
    /// A Manager listening on `127.0.0.1`, port chosen by the system.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub fn new() -> Result<Self, LabError> {
        Self::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// A Manager listening on `addr`.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub fn bind(addr: SocketAddr) -> Result<Self, LabError> {
        Self::bind_presenting(addr, |pki| Ok(pki.manager.clone()))
    }

    /// A Manager on `127.0.0.1` that presents the certificate `choose`
    /// makes from the lab's certificates (one that expired, say) instead of
    /// its good one.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub fn presenting(
        choose: impl FnOnce(&ThrowawayPki) -> Result<PemPair, PkiError>,
    ) -> Result<Self, LabError> {
        Self::bind_presenting(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), choose)
    }

    fn bind_presenting(
        addr: SocketAddr,
        choose: impl FnOnce(&ThrowawayPki) -> Result<PemPair, PkiError>,
    ) -> Result<Self, LabError> {
        let pki = ThrowawayPki::generate(SERVER_NAME)?;
        let presented = choose(&pki)?;
        let config = server_config(presented.chain(), presented.key(), pki.roots()?)?;
        let manager = Manager::bind(addr, config)?;
        Ok(Self { pki, manager })
    }

    /// The agent's client configuration for this lab.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub fn client_config(&self) -> Result<quinn::ClientConfig, LabError> {
        Ok(tls::client_config(
            self.pki.agent.chain(),
            self.pki.agent.key(),
            self.pki.roots()?,
            Config::default().max_concurrent_streams,
        )?)
    }

    /// Connects an in-process agent and runs the handshake, without serving:
    /// for tests that accept the Manager's streams by hand.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub async fn establish(
        &self,
        max_frame_len: u32,
    ) -> Result<(AgentSession, quinn::Connection, quinn::Endpoint), LabError> {
        let addr = self.manager.local_addr()?;
        let endpoint = agent::client_endpoint(addr, self.client_config()?)?;
        let identity = Identity::default();
        let (session, connection) = tokio::join!(
            self.manager.accept(),
            agent::establish(&endpoint, addr, SERVER_NAME, &identity, max_frame_len)
        );
        Ok((session?, connection?.0, endpoint))
    }

    /// Connects an in-process agent serving with `dispatcher`, and returns
    /// the Manager's session with it and the agent.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub async fn connect<B: PowerBackend>(
        &self,
        dispatcher: Arc<Dispatcher<B>>,
    ) -> Result<(AgentSession, LabAgent), LabError> {
        let (session, connection, endpoint) =
            self.establish(dispatcher.config().max_frame_len).await?;
        let serving = tokio::spawn(agent::serve_connection(
            connection.clone(),
            dispatcher,
            std::future::pending(),
        ));
        Ok((
            session,
            LabAgent {
                connection,
                serving,
                endpoint,
            },
        ))
    }
}
