//! This crate's agent, in process, connected to a lab Manager over real QUIC
//! with mutual TLS. The lab crate knows nothing of the agent, so the glue
//! lives here, with the agent's tests.

use std::{error::Error, future::Future, net::SocketAddr, sync::Arc};

use roxyd::{
    config::Config,
    connection::{self, ConnectionEnd},
    dispatch::Dispatcher,
    handshake::Identity,
    platform::PowerBackend,
    tls,
};
use roxyd_lab::{Lab, SERVER_NAME, manager::AgentSession};
use tokio::task::JoinHandle;

/// Why connecting an in-process agent failed.
pub type LabAgentError = Box<dyn Error + Send + Sync>;

/// An agent connected to the lab's Manager, serving in a task.
#[derive(Debug)]
pub struct LabAgent {
    /// The agent's side of the connection.
    pub connection: quinn::Connection,
    /// The serving task; it ends with the connection.
    pub serving: JoinHandle<ConnectionEnd>,
    /// Held so that the agent's socket lives as long as the agent.
    _endpoint: quinn::Endpoint,
}

/// Connecting in-process agents to a [`Lab`].
pub trait LabAgents {
    /// The agent's client configuration for this lab.
    fn client_config(&self) -> Result<quinn::ClientConfig, LabAgentError>;

    /// Connects an in-process agent and runs the handshake, without serving:
    /// for tests that accept the Manager's streams by hand.
    fn establish(
        &self,
        max_frame_len: u32,
    ) -> impl Future<Output = Result<(AgentSession, quinn::Connection, quinn::Endpoint), LabAgentError>>;

    /// As [`Self::establish`], with the agent sending to `addr` (a relay in
    /// front of the Manager) instead of to the Manager itself.
    fn establish_via(
        &self,
        addr: SocketAddr,
        max_frame_len: u32,
    ) -> impl Future<Output = Result<(AgentSession, quinn::Connection, quinn::Endpoint), LabAgentError>>;

    /// Connects an in-process agent serving with `dispatcher`, and returns
    /// the Manager's session with it and the agent.
    fn connect<B: PowerBackend>(
        &self,
        dispatcher: Arc<Dispatcher<B>>,
    ) -> impl Future<Output = Result<(AgentSession, LabAgent), LabAgentError>>;

    /// As [`Self::connect`], with the agent sending to `addr` (a relay in
    /// front of the Manager).
    fn connect_via<B: PowerBackend>(
        &self,
        addr: SocketAddr,
        dispatcher: Arc<Dispatcher<B>>,
    ) -> impl Future<Output = Result<(AgentSession, LabAgent), LabAgentError>>;
}

impl LabAgents for Lab {
    fn client_config(&self) -> Result<quinn::ClientConfig, LabAgentError> {
        Ok(tls::client_config(
            self.pki.agent.chain(),
            self.pki.agent.key(),
            self.pki.roots()?,
            Config::default().max_concurrent_streams,
        )?)
    }

    async fn establish(
        &self,
        max_frame_len: u32,
    ) -> Result<(AgentSession, quinn::Connection, quinn::Endpoint), LabAgentError> {
        self.establish_via(self.manager.local_addr()?, max_frame_len)
            .await
    }

    async fn establish_via(
        &self,
        addr: SocketAddr,
        max_frame_len: u32,
    ) -> Result<(AgentSession, quinn::Connection, quinn::Endpoint), LabAgentError> {
        let endpoint = connection::client_endpoint(addr, self.client_config()?)?;
        let identity = Identity::default();
        let (session, connection) = tokio::join!(
            self.manager.accept(),
            connection::establish(
                &endpoint,
                addr,
                SERVER_NAME,
                &identity,
                max_frame_len,
                Config::default().handshake_timeout(),
            )
        );
        Ok((session?, connection?.0, endpoint))
    }

    async fn connect<B: PowerBackend>(
        &self,
        dispatcher: Arc<Dispatcher<B>>,
    ) -> Result<(AgentSession, LabAgent), LabAgentError> {
        self.connect_via(self.manager.local_addr()?, dispatcher)
            .await
    }

    async fn connect_via<B: PowerBackend>(
        &self,
        addr: SocketAddr,
        dispatcher: Arc<Dispatcher<B>>,
    ) -> Result<(AgentSession, LabAgent), LabAgentError> {
        let (session, connection, endpoint) = self
            .establish_via(addr, dispatcher.config().max_frame_len)
            .await?;
        let serving = tokio::spawn(connection::serve_connection(
            connection.clone(),
            dispatcher,
            Config::default().max_concurrent_streams,
            std::future::pending(),
        ));
        Ok((
            session,
            LabAgent {
                connection,
                serving,
                _endpoint: endpoint,
            },
        ))
    }
}
