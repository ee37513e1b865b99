//! One Manager connection: connect with mutual TLS, run the handshake, then
//! accept the Manager's request streams and serve each on a task of its own,
//! so that a stalled stream never delays a power request on another.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::{self, JoinSet};

use crate::{
    dispatch::{Dispatcher, StreamActivity},
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
    /// No QUIC connection within the time allowed: nothing answered at the
    /// Manager's address (nothing listening, a firewall, a wrong port).
    #[error("no answer from the Manager at {manager} within {}", seconds(*.timeout))]
    NoAnswer {
        /// The address tried.
        manager: SocketAddr,
        /// How long roxyd waited (`handshake_timeout_secs`).
        timeout: Duration,
    },
    /// The connection was made but the Manager sent no handshake reply in
    /// the time allowed.
    #[error(
        "the Manager at {manager} accepted the connection but did not answer the handshake within {}",
        seconds(*.timeout)
    )]
    HandshakeUnanswered {
        /// The address tried.
        manager: SocketAddr,
        /// How long roxyd waited (`handshake_timeout_secs`).
        timeout: Duration,
    },
}

/// `d` as an operator reads it: whole seconds as `N s`, else milliseconds.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
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
/// `server_name`, and runs the handshake, all within `timeout`: a Manager
/// that never answers the handshake must not hold roxyd forever. Returns the
/// connection and the highest protocol version the Manager speaks.
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
    timeout: Duration,
) -> Result<(quinn::Connection, String), SessionError> {
    // Which phase the time ran out in, for a message that says what happened.
    let mut connected = false;
    let attempt = async {
        let connection = endpoint
            .connect(manager, server_name)
            .map_err(|e| SessionError::Connect(e.to_string()))?
            .await
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        connected = true;
        let info = identity.agent_info(manager);
        let version = handshake::handshake(&connection, &info, max_frame_len).await?;
        Ok::<_, SessionError>((connection, version))
    };
    let (connection, version) = tokio::time::timeout(timeout, attempt).await.map_err(|_| {
        if connected {
            SessionError::HandshakeUnanswered { manager, timeout }
        } else {
            SessionError::NoAnswer { manager, timeout }
        }
    })??;
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
/// The Manager may have at most `max_streams` open (the QUIC limit roxyd
/// advertises). When all but an eighth of them are in use, the streams that
/// have waited longest for a frame (half-written ones, say) are closed, so
/// that a fresh stream, and the power request on it, always finds room. A
/// stream doing work is never closed.
///
/// On the way out the connection is closed and every stream task is awaited:
/// they end promptly, since their reads and writes now fail. A pending
/// operation whose reply was not yet written is thereby cancelled; one whose
/// reply was written is released (the Manager may already have been told).
pub async fn serve_connection<B: PowerBackend>(
    connection: quinn::Connection,
    dispatcher: Arc<Dispatcher<B>>,
    max_streams: u32,
    shutdown: impl Future<Output = ()>,
) -> ConnectionEnd {
    let mut streams = JoinSet::new();
    let mut live: HashMap<task::Id, Arc<StreamActivity>> = HashMap::new();
    let limit = usize::try_from(max_streams).unwrap_or(usize::MAX);
    let mut full = tokio::time::interval(FULL_RECHECK);
    full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let end = loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((mut send, mut recv)) => {
                    let dispatcher = Arc::clone(&dispatcher);
                    let activity = Arc::new(StreamActivity::default());
                    let reporting = Arc::clone(&activity);
                    let task = streams.spawn(async move {
                        let id = send.id();
                        let end = dispatcher
                            .serve_stream_reporting(&mut recv, &mut send, &reporting)
                            .await;
                        tracing::debug!(stream = %id, ?end, "request stream ended");
                    });
                    live.insert(task.id(), activity);
                    if crowded(live.len(), limit) {
                        close_longest_waiting(&mut live, limit);
                    }
                }
                Err(e) => break ConnectionEnd::Lost(e),
            },
            // Streams that were all at work when the last one came may wait
            // now: look again while streams run short.
            _ = full.tick(), if crowded(live.len(), limit) => {
                close_longest_waiting(&mut live, limit);
            }
            // Reap finished stream tasks so that a long connection does not
            // accumulate them.
            Some(joined) = streams.join_next_with_id(), if !streams.is_empty() => {
                let id = match joined {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                live.remove(&id);
            }
            () = &mut shutdown => {
                connection.close(0u32.into(), b"roxyd stopping");
                break ConnectionEnd::Stopped;
            }
        }
    };
    while streams.join_next().await.is_some() {}
    end
}

/// How long a stream must have waited for the Manager's bytes before it may
/// be closed to make room: a request split across packets is not taken for
/// an idle stream.
const CLOSABLE_AFTER: Duration = Duration::from_millis(50);

/// How often to look for streams to close while streams run short.
const FULL_RECHECK: Duration = CLOSABLE_AFTER;

/// How many streams to close at once when streams run short: quinn
/// announces new stream credit to the peer only once more than an eighth of
/// the limit has been freed, so closing fewer would leave the Manager stuck.
fn room_to_make(limit: usize) -> usize {
    limit / 8 + 1
}

/// Whether streams run short: up to an eighth of the limit may be free but
/// not yet announced to the Manager, so roxyd acts before its count of open
/// streams reaches the limit, or the Manager could be stuck below it.
fn crowded(live: usize, limit: usize) -> bool {
    live >= limit.saturating_sub(room_to_make(limit))
}

/// Closes the streams that have waited longest for the Manager's bytes (and
/// at least [`CLOSABLE_AFTER`]), up to [`room_to_make`] of them. Each is asked
/// through its [`StreamActivity`], so only a stream parked at a read can go;
/// a stream at work is never interrupted. A closed stream stops its receive
/// side and finishes its send side: a Manager waiting for a reply sees the
/// stream end and drops it, and the slot returns to it.
fn close_longest_waiting(live: &mut HashMap<task::Id, Arc<StreamActivity>>, limit: usize) {
    let mut waiting: Vec<(Instant, task::Id)> = live
        .iter()
        .filter_map(|(id, activity)| Some((activity.waiting_since()?, *id)))
        .filter(|(since, _)| since.elapsed() >= CLOSABLE_AFTER)
        .collect();
    waiting.sort_unstable_by_key(|(since, _)| *since);
    waiting.truncate(room_to_make(limit));
    if let Some((oldest, _)) = waiting.first() {
        tracing::warn!(
            closing = waiting.len(),
            longest_wait_ms = oldest.elapsed().as_millis(),
            "request streams run short; closing those that waited longest"
        );
    }
    // Forgotten here at once, so that they are not chosen again; their tasks
    // end on their own and are reaped as usual.
    for (_, id) in waiting {
        if let Some(activity) = live.remove(&id) {
            activity.close();
        }
    }
}
