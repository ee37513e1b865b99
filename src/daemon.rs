//! The daemon's life: connect, handshake, serve, and reconnect with backoff,
//! until a stop is asked for.
//!
//! Policy, chosen for a fleet of appliances:
//! - A connection that fails or ends (Manager unreachable or restarting, its
//!   certificate not verified, expired or for another name) is logged in one
//!   line and retried with jittered exponential backoff: a Manager upgrade or
//!   certificate rotation must not strand the fleet.
//! - A Manager that refuses roxyd's protocol version ends roxyd: retrying
//!   cannot help until roxyd or its configuration changes.
//! - On a stop, the streams at work get a bounded time to finish on the open
//!   connection ([`connection::stop_delivery_bound`]), so that a written
//!   reply still reaches the Manager; then the connection is closed, and an
//!   operation released before the stop is waited for (on a real system it
//!   does not return). A stop while connecting, waiting for the
//!   handshake or waiting to reconnect ends roxyd at once: no Manager is
//!   being served, so there is nothing to wait for.

use std::{sync::Arc, time::Duration};

use tracing::Instrument;

use crate::{
    cli::{ManagerAddress, exit_status},
    config::Config,
    connection::{self, ConnectionEnd, SessionError},
    dispatch::Dispatcher,
    handshake::{HandshakeError, Identity},
    platform::PowerBackend,
    reconnect::{Backoff, BackoffConfig},
    stop::Stop,
};

/// What the daemon needs besides its dispatcher and endpoint.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The Manager.
    pub manager: ManagerAddress,
    /// What roxyd announces in the handshake.
    pub(crate) identity: Identity,
    /// Largest frame accepted, also in the handshake.
    pub(crate) max_frame_len: u32,
    /// Most request streams the Manager may have open at once.
    pub(crate) max_streams: u32,
    /// How long every stream slot may be held by streams roxyd closed, with
    /// no answer from the Manager, before roxyd reconnects.
    pub(crate) slots_held_timeout: Duration,
    /// How long connecting and the handshake may take together.
    pub handshake_timeout: Duration,
    /// Reconnect bounds.
    pub backoff: BackoffConfig,
    /// Connect once, report and return, instead of serving.
    pub check: bool,
}

impl Settings {
    /// The settings `config` gives for the Manager at `manager`.
    #[must_use]
    pub fn from_config(config: &Config, manager: ManagerAddress, check: bool) -> Self {
        Self {
            manager,
            identity: config.identity(),
            max_frame_len: config.max_frame_len,
            max_streams: config.max_concurrent_streams,
            slots_held_timeout: config.slots_held_timeout(),
            handshake_timeout: config.handshake_timeout(),
            backoff: config.backoff(),
            check,
        }
    }
}

/// How the daemon ended well.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A stop was asked for.
    Stopped,
    /// `--check`: the Manager accepted roxyd.
    Checked {
        /// The highest protocol version the Manager speaks.
        manager_protocol: String,
    },
}

/// How the daemon ended badly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The Manager refused roxyd's protocol version.
    #[error(transparent)]
    VersionRefused(HandshakeError),
    /// `--check`: the connection or handshake failed.
    #[error("{0}")]
    CheckFailed(String),
}

impl DaemonError {
    /// The process exit status for this error.
    #[must_use]
    pub fn exit_status(&self) -> u8 {
        match self {
            Self::CheckFailed(_) => exit_status::CHECK_FAILED,
            Self::VersionRefused(_) => exit_status::VERSION_REFUSED,
        }
    }
}

/// How long closing the endpoint may take before roxyd exits anyway, when a
/// Manager was being served and should learn that roxyd is going.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long the endpoint gets to send its close when no Manager was being
/// served (a stop while connecting or waiting for the handshake, or a
/// `--check`): enough to send one packet, far below the 100 ms a stop
/// may take.
const UNSERVED_CLOSE_GRACE: Duration = Duration::from_millis(10);

/// Whether a Manager was being served when the daemon's loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// A connection was being served: it gets [`CLOSE_GRACE`].
    Served,
    /// None was: [`UNSERVED_CLOSE_GRACE`].
    Unserved,
}

/// Runs until `stop` resolves, or the Manager refuses roxyd's version,
/// or, with [`Settings::check`], after one attempt.
///
/// # Errors
///
/// See [`DaemonError`].
pub async fn run<B: PowerBackend>(
    settings: &Settings,
    endpoint: &quinn::Endpoint,
    dispatcher: Arc<Dispatcher<B>>,
    mut stop: Stop,
) -> Result<Outcome, DaemonError> {
    let (result, peer) = serve_until_stopped(settings, endpoint, &dispatcher, &mut stop).await;
    // An operation released before the stop is carried out before roxyd exits.
    dispatcher.power().wait_performed().await;
    endpoint.close(0u32.into(), b"roxyd stopping");
    let grace = match peer {
        Peer::Served => CLOSE_GRACE,
        Peer::Unserved => UNSERVED_CLOSE_GRACE,
    };
    let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
    if matches!(result, Ok(Outcome::Stopped)) {
        tracing::info!("stopped");
    }
    result
}

async fn serve_until_stopped<B: PowerBackend>(
    settings: &Settings,
    endpoint: &quinn::Endpoint,
    dispatcher: &Arc<Dispatcher<B>>,
    stop: &mut Stop,
) -> (Result<Outcome, DaemonError>, Peer) {
    let manager = &settings.manager;
    let mut backoff = Backoff::new(settings.backoff);
    loop {
        tracing::info!(%manager, "connecting to the Manager");
        let attempt = tokio::select! {
            attempt = connection::establish(
                endpoint,
                manager.addr,
                &manager.server_name,
                &settings.identity,
                settings.max_frame_len,
                settings.handshake_timeout,
            ) => attempt,
            () = stop.requested() => return (Ok(Outcome::Stopped), Peer::Unserved),
        };
        match attempt {
            Ok((connection, manager_protocol)) => {
                if settings.check {
                    connection.close(0u32.into(), b"roxyd check done");
                    return (Ok(Outcome::Checked { manager_protocol }), Peer::Unserved);
                }
                backoff.reset();
                let limits = connection::ConnectionLimits {
                    max_streams: settings.max_streams,
                    slots_held_timeout: settings.slots_held_timeout,
                };
                let span = tracing::info_span!("connection", connection = connection.stable_id());
                let end = connection::serve_connection_with(
                    connection,
                    Arc::clone(dispatcher),
                    limits,
                    stop.clone().requested_owned(),
                )
                .instrument(span)
                .await;
                crate::logging::summarise_repeats();
                match end {
                    ConnectionEnd::Stopped => return (Ok(Outcome::Stopped), Peer::Served),
                    // A clean close (code 0) is the Manager's choice, not a fault.
                    ConnectionEnd::Lost(quinn::ConnectionError::ApplicationClosed(close))
                        if close.error_code.into_inner() == 0 =>
                    {
                        tracing::info!(%manager, reason = %close, "the Manager closed the connection");
                    }
                    ConnectionEnd::Lost(e) => {
                        tracing::warn!(%manager, reason = %e, "connection to the Manager ended");
                    }
                    // Logged where it was decided, in one line.
                    ConnectionEnd::SlotsHeld => {}
                }
            }
            Err(SessionError::Handshake(refused @ HandshakeError::VersionRefused { .. })) => {
                tracing::error!(%manager, "{refused}");
                return (Err(DaemonError::VersionRefused(refused)), Peer::Unserved);
            }
            Err(e) if settings.check => {
                return (Err(DaemonError::CheckFailed(e.to_string())), Peer::Unserved);
            }
            Err(e) => tracing::error!(%manager, "{e}"),
        }
        let delay = backoff.next_delay();
        tracing::info!(delay_ms = delay.as_millis(), "reconnecting after a delay");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.requested() => return (Ok(Outcome::Stopped), Peer::Unserved),
        }
    }
}
