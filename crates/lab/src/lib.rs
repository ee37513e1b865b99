//! The Manager side of roxyd's protocol, for tests, benchmarks, the demo and
//! operators' labs; nothing here ships on a node.
//!
//! [`manager`] is a QUIC server that speaks to agents as the Manager does
//! (both generations), [`pki`] makes throwaway certificates, [`UdpRelay`]
//! shapes traffic on loopback, and [`Lab`] puts a Manager on loopback with
//! fresh certificates. It depends on the shared wire crate, never on the
//! agent: the agent's tests connect their own agent to a [`Lab`].

pub mod manager;
pub mod pki;
mod relay;

pub use relay::{Direction, UdpRelay};

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use roxyd_proto::tls::TlsError;

use crate::{
    manager::{Manager, ManagerError, server_config},
    pki::{PemPair, PkiError, ThrowawayPki},
};

/// The server name the lab's Manager certificate is issued for.
pub const SERVER_NAME: &str = "manager.roxyd.test";

/// Makes the certificate the lab's Manager presents from the lab's own.
pub type PresentedCert = fn(&ThrowawayPki) -> Result<PemPair, PkiError>;

/// How to set up a lab's Manager.
#[derive(Clone, Copy, Debug)]
pub struct LabOptions {
    /// Where the Manager listens.
    pub addr: SocketAddr,
    /// The certificate it presents.
    pub present: PresentedCert,
    /// The flow-control credit it grants each stream, in bytes; a few bytes
    /// let a test hold an agent's reply write up.
    pub stream_receive_window: Option<u32>,
}

impl Default for LabOptions {
    /// `127.0.0.1`, any port, the good certificate, default flow control.
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            present: |pki| Ok(pki.manager.clone()),
            stream_receive_window: None,
        }
    }
}

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
    options: LabOptions,
}

impl Lab {
    /// A Manager listening on `127.0.0.1`, port chosen by the system.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub fn new() -> Result<Self, LabError> {
        Self::with_options(LabOptions::default())
    }

    /// A Manager on `127.0.0.1` that presents the certificate `present`
    /// makes from the lab's certificates (one that expired, say) instead of
    /// its good one.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub fn presenting(present: PresentedCert) -> Result<Self, LabError> {
        Self::with_options(LabOptions {
            present,
            ..LabOptions::default()
        })
    }

    /// A Manager set up as `options` say.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub fn with_options(options: LabOptions) -> Result<Self, LabError> {
        let pki = ThrowawayPki::generate(SERVER_NAME)?;
        let manager = Self::start_manager(&pki, &options, options.addr)?;
        Ok(Self {
            pki,
            manager,
            options,
        })
    }

    fn start_manager(
        pki: &ThrowawayPki,
        options: &LabOptions,
        addr: SocketAddr,
    ) -> Result<Manager, LabError> {
        let presented = (options.present)(pki)?;
        let mut config = server_config(presented.chain(), presented.key(), pki.roots()?)?;
        if let Some(window) = options.stream_receive_window {
            let mut transport = quinn::TransportConfig::default();
            transport.stream_receive_window(window.into());
            config.transport_config(Arc::new(transport));
        }
        Ok(Manager::bind(addr, config)?)
    }

    /// Stops the Manager and starts a new one on the same address with the
    /// same certificates, as a Manager restart does. Drop every session with
    /// the old one first: a live connection keeps its socket.
    ///
    /// # Errors
    ///
    /// See [`LabError`].
    pub async fn restart_manager(&mut self) -> Result<(), LabError> {
        let addr = self.manager.local_addr()?;
        self.manager.close();
        self.manager.endpoint().wait_idle().await;
        // Release the old socket before binding its address again.
        let placeholder = Self::start_manager(
            &self.pki,
            &self.options,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        )?;
        drop(std::mem::replace(&mut self.manager, placeholder));
        // The old endpoint's driver lets go of the socket on its next turn.
        let mut tries = 0;
        self.manager = loop {
            match Self::start_manager(&self.pki, &self.options, addr) {
                Err(LabError::Io(e))
                    if e.kind() == std::io::ErrorKind::AddrInUse && tries < 5000 =>
                {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                started => break started?,
            }
        };
        Ok(())
    }
}

/// A stuck Manager task: opens request streams on `connection` as fast as
/// the agent grants them, writes two bytes of a frame header on each, then
/// holds them without reading, writing or answering the agent's
/// `STOP_SENDING`. Returns how many streams it opened once the connection
/// ends; until then it keeps every stream it opened.
pub async fn hold_stream_slots(connection: quinn::Connection) -> usize {
    let mut held = Vec::new();
    while let Ok((mut send, recv)) = connection.open_bi().await {
        if send.write_all(&[0, 0]).await.is_err() {
            break;
        }
        held.push((send, recv));
    }
    held.len()
}
