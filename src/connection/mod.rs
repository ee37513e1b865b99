//! One Manager connection: connect with mutual TLS, run the handshake, then
//! accept the Manager's request streams and serve each on a task of its own,
//! so that a stalled stream never delays a power request on another.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tracing::Instrument;

pub mod workers;

use workers::Workers;

use crate::{
    dispatch::{Dispatcher, StreamActivity, StreamEnd, streams::Streams},
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
    tracing::info!(manager = %format_args!("{server_name}@{manager}"), connection = connection.stable_id(), manager_protocol = %version, "connected to the Manager");
    Ok((connection, version))
}

/// How serving a connection ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The connection failed or the Manager closed it.
    Lost(quinn::ConnectionError),
    /// A stop was asked for; roxyd closed the connection.
    Stopped,
    /// Every stream slot was held by a stream roxyd had closed on its side,
    /// with no answer from the Manager for [`ConnectionLimits::slots_held_timeout`]:
    /// roxyd closed the connection with [`SLOTS_HELD_CODE`] so that a fresh
    /// one gives the Manager its power path back.
    SlotsHeld,
}

/// The application error code roxyd closes a connection with when the
/// Manager holds every stream slot (see [`ConnectionEnd::SlotsHeld`]).
pub const SLOTS_HELD_CODE: u32 = 1;

/// Bounds of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most request streams the Manager may have open at once (the QUIC
    /// limit roxyd advertises).
    pub max_streams: u32,
    /// How long every stream slot may be held by streams roxyd has closed
    /// on its side, with no answer from the Manager, before roxyd gives up
    /// on the connection.
    pub slots_held_timeout: Duration,
}

impl ConnectionLimits {
    /// The default bound of [`Self::slots_held_timeout`].
    pub const DEFAULT_SLOTS_HELD_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Serves every request stream the Manager opens on `connection`, each on a
/// task of its own (a task that is done with its stream serves the next, see
/// [`workers`]), until the connection ends or `shutdown` resolves.
///
/// The Manager may have at most `max_streams` open (the QUIC limit roxyd
/// advertises). When all but an eighth of them are in use, the streams that
/// have waited longest for a frame (half-written ones, say) are closed, so
/// that a fresh stream, and the power request on it, always finds room. A
/// stream doing work is never closed.
///
/// A stream that roxyd closed on its side (to make room, or idle) still
/// holds its slot until the Manager ends its half; it counts towards the
/// limit until then. When every slot is held that way for
/// [`ConnectionLimits::slots_held_timeout`], the Manager can open no stream,
/// not even for a power request: roxyd closes the connection
/// ([`ConnectionEnd::SlotsHeld`]) and the daemon reconnects.
///
/// On the way out the connection is closed, idle stream tasks end, and
/// every stream still being served is awaited: they end promptly, since
/// their reads and writes now fail. A pending operation whose reply was not
/// yet written is thereby cancelled; one whose reply was written is released
/// (the Manager may already have been told).
pub async fn serve_connection<B: PowerBackend>(
    connection: quinn::Connection,
    dispatcher: Arc<Dispatcher<B>>,
    max_streams: u32,
    shutdown: impl Future<Output = ()>,
) -> ConnectionEnd {
    let limits = ConnectionLimits {
        max_streams,
        slots_held_timeout: ConnectionLimits::DEFAULT_SLOTS_HELD_TIMEOUT,
    };
    serve_connection_with(connection, dispatcher, limits, shutdown).await
}

/// As [`serve_connection`], with every bound given.
pub async fn serve_connection_with<B: PowerBackend>(
    connection: quinn::Connection,
    dispatcher: Arc<Dispatcher<B>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> ConnectionEnd {
    let limit = usize::try_from(limits.max_streams).unwrap_or(usize::MAX);
    let mut streams = Streams::new(limit);
    let counts = Arc::new(SlotCounts::default());
    // Should this future be dropped before its end, every stream task ends
    // promptly too: their reads and writes fail on the closed connection.
    let _close_on_drop = CloseOnDrop(&connection);
    // Idle stream tasks end with this future, closed or dropped.
    let workers = Workers::default();
    let idle = dispatcher.config().stream_idle_timeout;
    let idle_check = tokio::time::sleep(idle);
    let mut full = tokio::time::interval(SHORT_RECHECK);
    full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set while every slot is held by a stream roxyd has closed.
    let mut all_held_since: Option<Instant> = None;
    tokio::pin!(shutdown, idle_check);
    let end = loop {
        let held = counts.held();
        let all_held = held >= limit;
        match (all_held, all_held_since) {
            (true, None) => all_held_since = Some(Instant::now()),
            (false, Some(_)) => all_held_since = None,
            _ => {}
        }
        let give_up_at = all_held_since.map(|since| since + limits.slots_held_timeout);
        // Streams closed on roxyd's side are counted by their tasks, which
        // wake nothing here: this tick looks again while any may be.
        let watch_slots = crowded(counts.open(), limit) || held > 0;
        tokio::select! {
            // The Manager's streams first: no other branch is polled while
            // one is waiting, and accepting stops once the streams the
            // Manager may open are, so the others are never starved.
            biased;
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let job = StreamJob {
                        span: tracing::info_span!("request", connection = connection.stable_id(), stream = send.id().index()),
                        send,
                        recv,
                        open: OpenStream::new(&counts),
                    };
                    if let Err(job) = workers.hand_off(job) {
                        // A stream task keeps its activity for every stream
                        // it serves: the connection tracks it once.
                        let activity = streams.track();
                        let dispatcher = Arc::clone(&dispatcher);
                        tokio::spawn(workers.worker(job, async move |job| {
                            let span = job.span.clone();
                            serve_stream(&dispatcher, &activity, job).instrument(span).await;
                        }));
                    }
                }
                Err(e) => break ConnectionEnd::Lost(e),
            },
            // Looked for on this tick only, not on each new stream: no
            // clock read per stream while the Manager keeps the limit busy.
            _ = full.tick(), if watch_slots => {
                if crowded(counts.open(), limit) {
                    make_room(&streams, limit);
                }
            }
            () = &mut idle_check => {
                let next = streams.close_idle(Instant::now(), idle);
                idle_check.as_mut().reset(next);
            }
            () = sleep_until_some(give_up_at) => {
                tracing::warn!(
                    streams = limit,
                    waited_secs = limits.slots_held_timeout.as_secs(),
                    "every request stream slot is held by a stream roxyd closed, \
                     with no answer from the Manager; closing the connection to start afresh"
                );
                connection.close(SLOTS_HELD_CODE.into(), SLOTS_HELD_REASON);
                break ConnectionEnd::SlotsHeld;
            }
            () = &mut shutdown => {
                connection.close(0u32.into(), b"roxyd stopping");
                break ConnectionEnd::Stopped;
            }
        }
    };
    // Every stream ends promptly now that the connection is closed; idle
    // stream tasks end at once.
    workers.close();
    counts.all_ended().await;
    end
}

/// One accepted request stream, for a stream task.
struct StreamJob {
    /// Ties every line about this stream's requests together.
    span: tracing::Span,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    open: OpenStream,
}

/// Serves one request stream, marking its waits on `activity`; a stream
/// closed on roxyd's side then holds its slot, counted in `open`, until the
/// Manager ends its half.
async fn serve_stream<B: PowerBackend>(
    dispatcher: &Dispatcher<B>,
    activity: &StreamActivity,
    job: StreamJob,
) {
    let StreamJob {
        mut send,
        mut recv,
        open,
        ..
    } = job;
    let closed_here = {
        let end = dispatcher
            .serve_stream_reporting(&mut recv, &mut send, activity)
            .await;
        tracing::debug!(stream = %send.id(), ?end, "request stream ended");
        matches!(end, StreamEnd::ClosedToMakeRoom | StreamEnd::IdleTimeout)
    };
    if closed_here {
        let _ = send.finish();
        // Boxed: rare, and the task's future stays smaller without it.
        Box::pin(open.hold_until_answered(&mut recv)).await;
    }
}

/// Closes the connection when dropped.
struct CloseOnDrop<'a>(&'a quinn::Connection);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close(0u32.into(), b"roxyd stopping");
    }
}

/// The reason roxyd gives the Manager with [`SLOTS_HELD_CODE`].
const SLOTS_HELD_REASON: &[u8] =
    b"every stream slot held by a stream roxyd closed, with no answer from the Manager";

/// Most bytes roxyd reads and drops from a stream it has closed while it
/// waits for the Manager to end its half; past that it stops reading.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Resolves at `at`, or never when `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How many streams are being served (accepted and not yet done with), and
/// how many stream slots are held by streams roxyd has closed on its side
/// and the Manager has not yet ended.
#[derive(Debug, Default)]
struct SlotCounts {
    open: AtomicUsize,
    held: AtomicUsize,
    /// Fired whenever `open` drops to zero.
    none_open: Notify,
}

impl SlotCounts {
    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once no stream is being served.
    async fn all_ended(&self) {
        // A zero reached before the wait leaves a permit: nothing is missed.
        while self.open() > 0 {
            self.none_open.notified().await;
        }
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// A stream being served, counted in [`SlotCounts::open`] until it is
/// dropped with its job: served, dropped unserved when the stream tasks
/// are closed, or by a panic or an abort of its task.
struct OpenStream(Arc<SlotCounts>);

impl OpenStream {
    fn new(counts: &Arc<SlotCounts>) -> Self {
        counts.open.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counts))
    }

    /// Counts the stream as holding a slot until the Manager ends its half
    /// (FIN or `RESET_STREAM`) or the connection ends. What the Manager still
    /// sends is read and dropped, up to [`DRAIN_LIMIT`]: reading, unlike
    /// QUIC's `STOP_SENDING`, lets roxyd see the Manager's end. A Manager that
    /// sends more is stopped, and its stream stays counted as held for the
    /// rest of the connection.
    async fn hold_until_answered(&self, recv: &mut quinn::RecvStream) {
        let held = &self.0.held;
        held.fetch_add(1, Ordering::Relaxed);
        let mut drained = 0;
        // Ends on the Manager's FIN, its reset, or the connection's end.
        while let Ok(Some(chunk)) = recv.read_chunk(DRAIN_LIMIT, false).await {
            drained += chunk.bytes.len();
            if drained > DRAIN_LIMIT {
                let _ = recv.stop(0u32.into());
                return;
            }
        }
        held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_open.notify_one();
        }
    }
}

/// How long a stream must have waited for the Manager's bytes before it may
/// be closed to make room: a request split across packets is not taken for
/// an idle stream.
const CLOSABLE_AFTER: Duration = Duration::from_millis(50);

/// How often to look for streams to close while streams run short (and to
/// count held slots while any may be): a tenth of [`CLOSABLE_AFTER`], so that
/// a stream is closed soon after it may be, and a flood of stalled streams
/// is cleared at about the rate the Manager can open them.
const SHORT_RECHECK: Duration = Duration::from_millis(5);

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
/// at least [`CLOSABLE_AFTER`]), up to [`room_to_make`] of them. Only a
/// stream parked at a read can go; a stream at work is never interrupted. A
/// closed stream stops its receive side and finishes its send side: a
/// Manager waiting for a reply sees the stream end and drops it, and the
/// slot returns to it.
fn make_room(streams: &Streams, limit: usize) {
    let (closing, longest) =
        streams.close_longest_waiting(Instant::now(), CLOSABLE_AFTER, room_to_make(limit));
    if closing > 0 {
        crate::warn_repeated!(
            crate::logging::STREAM_PRESSURE,
            closing,
            longest_wait_ms = longest.as_millis(),
            "request streams run short; closing those that waited longest"
        );
    }
}
