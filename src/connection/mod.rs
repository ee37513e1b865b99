//! One Manager connection: connect with mutual TLS, run the handshake, then
//! accept the Manager's request streams and serve each on a task of its own,
//! so that a stalled stream never delays a power request on another.
//!
//! Rules a reader must not break:
//! - Every stream task is owned by the connection's [`JoinSet`]: the
//!   connection sees each one end (a panic included) and nothing outlives
//!   the connection.
//! - Nothing here runs on a timer while the connection is idle. The idle
//!   sweep is armed only while streams are served; the make-room check only
//!   while streams run short; the stuck-Manager bound only while every slot
//!   is held. Each is re-armed by the events that can change its answer
//!   (a stream accepted, a stream task or a held stream ended).
//! - A stop accepts no further stream and closes the connection only once
//!   the streams at work have ended or [`stop_delivery_bound`] has passed:
//!   closing discards whatever quinn has not yet sent, a written reply too.
//! - A slot counts as held exactly while quinn holds it for a stream roxyd
//!   closed: the stream's task reads (and drops) what the Manager still
//!   sends until the Manager's FIN or reset, or the connection's end.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{task::JoinSet, time::Instant};

pub mod streams;

use streams::{StreamActivity, Streams};

use crate::{
    dispatch::{DispatchConfig, Dispatcher, StreamEnd},
    handshake::{self, HandshakeError, Identity},
    logging::RequestSpan,
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

/// As [`serve_connection_with`], with the default bound for held slots
/// ([`ConnectionLimits::DEFAULT_SLOTS_HELD_TIMEOUT`]): for tests.
#[cfg(any(test, feature = "test-backend"))]
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

/// Serves every request stream the Manager opens on `connection`, each on a
/// task of its own, until the connection ends or `shutdown` resolves.
///
/// The Manager may have at most `limits.max_streams` open (the QUIC limit roxyd
/// advertises). When all but an eighth of them are in use, the streams that
/// have waited longest for a frame (half-written ones, say) are closed, so
/// that a fresh stream, and the power request on it, always finds room. A
/// stream doing work is never closed.
///
/// A stream that roxyd closed on its side (to make room, or idle) still
/// holds its slot until the Manager ends its half; it counts towards the
/// limit until then. When every slot is held that way for
/// `limits.slots_held_timeout`, the Manager can open no stream,
/// not even for a power request: roxyd closes the connection
/// ([`ConnectionEnd::SlotsHeld`]) and the daemon reconnects.
///
/// A stream task that panics is logged at ERROR with its stream id and
/// counted; the connection goes on serving.
///
/// When `shutdown` resolves, no further stream is accepted, the streams
/// waiting for a request end at once, and the streams at work (an immediate
/// operation's reply being written, delivered or declined) get
/// [`stop_delivery_bound`] to finish on the still open connection, so that a
/// written reply can reach the Manager and a decline is decided by its own
/// rule.
///
/// On the way out the connection is closed and the stream tasks are given
/// `STREAMS_END_BOUND` to end (their reads and writes fail on the closed
/// connection); any still running then is aborted. A pending operation
/// whose reply was not yet written is thereby cancelled; one whose reply was
/// written is released (the Manager may already have been told).
pub async fn serve_connection_with<B: PowerBackend>(
    connection: quinn::Connection,
    dispatcher: Arc<Dispatcher<B>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> ConnectionEnd {
    let limit = usize::try_from(limits.max_streams).unwrap_or(usize::MAX);
    let idle = dispatcher.config().stream_idle_timeout;
    // Should this future be dropped before its end, the stream tasks are
    // aborted with the sets that own them, and the connection closed.
    let _close_on_drop = CloseOnDrop(&connection);
    let mut slots = Slots::new(limit);
    let idle_check = tokio::time::sleep(idle);
    let room_check = tokio::time::sleep(Duration::ZERO);
    let mut room_armed = false;
    // Set by the events that can make room needed: a stream accepted, a
    // stream task or a held stream ended.
    let mut recheck_room = false;
    // Set while every slot is held by a stream roxyd has closed.
    let mut all_held_since: Option<Instant> = None;
    tokio::pin!(shutdown, idle_check, room_check);
    let end = loop {
        match (slots.all_held(), all_held_since) {
            (true, None) => all_held_since = Some(Instant::now()),
            (false, Some(_)) => all_held_since = None,
            _ => {}
        }
        let give_up_at = all_held_since.map(|since| since + limits.slots_held_timeout);
        if std::mem::take(&mut recheck_room) && !room_armed && slots.room_may_be_needed() {
            room_check.as_mut().reset(Instant::now() + CLOSABLE_AFTER);
            room_armed = true;
        }
        tokio::select! {
            // The Manager's streams first: no other branch is polled while
            // one is waiting, and accepting stops once the streams the
            // Manager may open are, so the others are never starved.
            biased;
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    if slots.serving.is_empty() {
                        // A stream that starts waiting now is due no sooner.
                        idle_check.as_mut().reset(Instant::now() + idle);
                    }
                    let span = RequestSpan::new(connection.stable_id(), send.id().index());
                    slots.serve(&dispatcher, send, recv, span);
                    recheck_room = true;
                }
                Err(e) => break ConnectionEnd::Lost(e),
            },
            Some(served) = slots.serving.join_next(), if !slots.serving.is_empty() => {
                slots.served(served);
                recheck_room = true;
            }
            Some(ended) = slots.held.join_next(), if !slots.held.is_empty() => {
                if ended.unwrap_or(false) {
                    slots.held_for_room -= 1;
                    if slots.held_for_room == 0 {
                        // The Manager answered the batch: no need to wait
                        // out the time it had for that.
                        room_armed = false;
                    }
                }
                recheck_room = true;
            }
            () = &mut room_check, if room_armed => {
                room_armed = false;
                if let Some(next) = slots.make_room() {
                    room_check.as_mut().reset(next);
                    room_armed = true;
                }
            }
            () = &mut idle_check, if !slots.serving.is_empty() => {
                let next = slots.streams.close_idle(Instant::now(), idle);
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
            () = &mut shutdown => break ConnectionEnd::Stopped,
        }
    };
    if matches!(end, ConnectionEnd::Stopped) {
        slots
            .finish_work(stop_delivery_bound(dispatcher.config()))
            .await;
    }
    connection.close(0u32.into(), b"roxyd stopping");
    slots.end().await;
    end
}

/// How long a stop gives the streams at work to finish before the connection
/// closes: the longer of the wait for a reply's delivery
/// ([`DispatchConfig::delivery_timeout`], 2 s by default) and a decline's
/// wait for the Manager's FIN ([`DeclineRule::fin_wait`](crate::power::immediate::DeclineRule::fin_wait), 1 s), so that a
/// committed operation's reply has the chance it has without a stop.
#[must_use]
pub fn stop_delivery_bound(config: &DispatchConfig) -> Duration {
    config.delivery_timeout.max(config.decline.fin_wait)
}

/// How long the stream tasks of a closed connection may take to end before
/// they are aborted. Their reads and writes fail at once on a closed
/// connection; the bound covers a task busy elsewhere (a backend call).
pub(crate) const STREAMS_END_BOUND: Duration = Duration::from_secs(1);

/// The stream tasks of one connection and what the slot accounting needs to
/// know of them. Owned by the connection's loop alone: every count changes
/// on an event the loop sees.
struct Slots {
    /// The QUIC stream limit roxyd advertises.
    limit: usize,
    /// Tasks serving a stream; each ends with the stream, or hands it to
    /// `held` when roxyd closed it.
    serving: JoinSet<Served>,
    /// Streams roxyd closed whose slot quinn holds until the Manager ends
    /// its half; each yields whether it was closed to make room.
    held: JoinSet<bool>,
    /// How many of `held` were closed to make room.
    held_for_room: usize,
    /// Every serving task's waits, for the idle sweep and making room.
    streams: Streams,
    /// When the last batch was closed to make room.
    last_batch: Option<Instant>,
    /// Stream tasks that panicked on this connection.
    panics: u64,
}

impl Slots {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            serving: JoinSet::new(),
            held: JoinSet::new(),
            held_for_room: 0,
            streams: Streams::new(limit),
            last_batch: None,
            panics: 0,
        }
    }

    /// Starts a task for an accepted stream, its lines in `span`.
    fn serve<B: PowerBackend>(
        &mut self,
        dispatcher: &Arc<Dispatcher<B>>,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        span: RequestSpan,
    ) {
        let activity = self.streams.track();
        self.serving.spawn(serve_stream(
            Arc::clone(dispatcher),
            activity,
            span,
            send,
            recv,
        ));
    }

    /// Takes in a serving task's end.
    fn served(&mut self, served: Result<Served, tokio::task::JoinError>) {
        match served {
            Ok(Served::Done) | Err(_) => {}
            Ok(Served::Closed { recv, for_room }) => {
                self.held_for_room += usize::from(for_room);
                self.held.spawn(hold_until_answered(recv, for_room));
            }
            Ok(Served::Panicked(stream)) => {
                self.panics += 1;
                tracing::error!(
                    %stream,
                    panics = self.panics,
                    "a request stream's task panicked; the stream is dropped, \
                     the connection goes on serving"
                );
            }
        }
    }

    /// Whether every slot is held by a stream roxyd closed.
    fn all_held(&self) -> bool {
        self.held.len() >= self.limit
    }

    /// Whether the make-room check has anything to do: streams run short,
    /// and some are served (only a served stream can be closed).
    fn room_may_be_needed(&self) -> bool {
        !self.serving.is_empty() && crowded(self.serving.len() + self.held.len(), self.limit)
    }

    /// Closes the streams that have waited longest for the Manager's bytes
    /// (each at least [`CLOSABLE_AFTER`]), as many as quinn needs freed to
    /// announce new stream credit ([`room_to_make`]), once: the next batch
    /// goes only if streams still run short after the Manager had
    /// [`ANSWER_WITHIN`] to end the streams of this one. Only a stream parked
    /// at a read can go; a stream at work is never interrupted. A closed
    /// stream finishes its send side and reads what the Manager still sends
    /// until the Manager ends its half: a Manager waiting for a reply sees
    /// the stream end and drops it, and the slot returns to it.
    ///
    /// Returns when to look again, or `None` when nothing is left to do
    /// until an event (a stream accepted or ended) re-arms the check.
    fn make_room(&mut self) -> Option<Instant> {
        if self.serving.is_empty() || !crowded(self.serving.len() + self.held.len(), self.limit) {
            return None;
        }
        let now = Instant::now();
        let unanswered = self.held_for_room + self.streams.closing_to_make_room();
        if unanswered > 0 {
            let answer_by = self.last_batch.map(|at| at + ANSWER_WITHIN);
            if let Some(at) = answer_by.filter(|at| *at > now) {
                return Some(at);
            }
        }
        // Streams of an earlier batch the Manager left unanswered free no
        // slot: a whole batch is needed.
        let needed = room_to_make(self.limit);
        let (closed, longest) = self
            .streams
            .close_longest_waiting(now, CLOSABLE_AFTER, needed);
        if closed > 0 {
            self.last_batch = Some(now);
            crate::warn_repeated!(
                crate::logging::STREAM_PRESSURE,
                closing = closed,
                longest_wait_ms = longest.as_millis(),
                "request streams run short; closing those that waited longest"
            );
        }
        if closed >= needed {
            return Some(now + ANSWER_WITHIN);
        }
        // The next stream to become closable; while every stream works,
        // look again after CLOSABLE_AFTER (work ends within its own bounds).
        Some(
            self.streams
                .earliest_waiting()
                .map_or(now + CLOSABLE_AFTER, |since| since + CLOSABLE_AFTER)
                .max(now + CLOSABLE_AFTER / 8),
        )
    }

    /// On a stop: ends the streams waiting for a request, and gives those
    /// at work until `bound` to finish. The connection stays open meanwhile,
    /// so that their replies can still reach the Manager.
    async fn finish_work(&mut self, bound: Duration) {
        self.streams.stop();
        let finished = async {
            while let Some(served) = self.serving.join_next().await {
                self.served(served);
            }
        };
        if tokio::time::timeout(bound, finished).await.is_err() {
            tracing::warn!(
                serving = self.serving.len(),
                bound_ms = bound.as_millis(),
                "request streams still at work when the stop's bound passed; closing the connection"
            );
        }
    }

    /// Ends every stream task of a closed connection, within
    /// [`STREAMS_END_BOUND`]; aborts those still running then.
    async fn end(mut self) {
        let all_ended = async {
            while self.serving.join_next().await.is_some() {}
            while self.held.join_next().await.is_some() {}
        };
        if tokio::time::timeout(STREAMS_END_BOUND, all_ended)
            .await
            .is_err()
        {
            tracing::warn!(
                serving = self.serving.len(),
                "request streams still running after the connection closed; aborting them"
            );
        }
        self.serving.shutdown().await;
        self.held.shutdown().await;
    }
}

/// How a stream task ended.
enum Served {
    /// Done with the stream.
    Done,
    /// roxyd closed the stream on its side: idle, or (`for_room`) to make
    /// room. Its slot is held until the Manager ends its half of `recv`.
    Closed {
        recv: quinn::RecvStream,
        for_room: bool,
    },
    /// Serving it panicked.
    Panicked(quinn::StreamId),
}

/// Serves one request stream, marking its waits on `activity`.
async fn serve_stream<B: PowerBackend>(
    dispatcher: Arc<Dispatcher<B>>,
    activity: Arc<StreamActivity>,
    span: RequestSpan,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Served {
    let stream = send.id();
    let end = {
        let serving = dispatcher.serve_stream_reporting(&mut recv, &mut send, &activity, &span);
        // Boxed, so that the task is less than half the size: tokio copies
        // a task's future as it spawns it and its stage as it ends, and
        // those copies cost more than the allocation (about 560 fewer
        // instructions per stream; docs/performance.md).
        CatchPanic(Box::pin(serving)).await
    };
    let Ok(end) = end else {
        return Served::Panicked(stream);
    };
    tracing::debug!(%stream, ?end, "request stream ended");
    let for_room = match end {
        StreamEnd::ClosedToMakeRoom => true,
        StreamEnd::IdleTimeout => false,
        _ => return Served::Done,
    };
    let _ = send.finish();
    Served::Closed { recv, for_room }
}

/// Reads and drops what the Manager still sends on a stream roxyd closed,
/// until the Manager's FIN or reset or the connection's end: quinn frees the
/// slot then, and so does roxyd's count. Reading, not `STOP_SENDING`, is
/// what lets roxyd see that end: a stopped stream's slot would stay held in
/// quinn with nothing for roxyd to wait on. Returns `for_room`.
async fn hold_until_answered(mut recv: quinn::RecvStream, for_room: bool) -> bool {
    while let Ok(Some(_)) = recv.read_chunk(usize::MAX, false).await {}
    for_room
}

/// `Ok` with the future's output, or `Err` when polling it panicked: a
/// panicking stream is reported with its id and the task ends normally.
struct CatchPanic<F>(F);

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
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

/// Resolves at `at`, or never when `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long a stream must have waited for the Manager's bytes before it may
/// be closed to make room: a request split across packets is not taken for
/// an idle stream.
const CLOSABLE_AFTER: Duration = Duration::from_millis(50);

/// How long the Manager has to end the streams of a batch closed to make
/// room (a Manager that is not stuck does within a round trip) before the
/// next batch is closed, should streams still run short.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// How many streams must be freed for quinn to announce new stream credit
/// to the Manager: it does so once more than an eighth of the limit has
/// been freed since its last announcement, so closing fewer would leave the
/// Manager stuck.
fn room_to_make(limit: usize) -> usize {
    limit / 8 + 1
}

/// Whether streams run short: up to an eighth of the limit may be free but
/// not yet announced to the Manager, so roxyd acts before its count of open
/// streams reaches the limit, or the Manager could be stuck below it.
fn crowded(open: usize, limit: usize) -> bool {
    open >= limit.saturating_sub(room_to_make(limit))
}
