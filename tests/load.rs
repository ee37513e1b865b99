//! Serving many streams at once, live over QUIC on loopback with the lab
//! Manager: far more streams than the agent lets the Manager open at once,
//! each carrying one echo request, and every one is answered exactly once
//! and then ended cleanly. A stream lost, or served twice, by the
//! connection's stream tasks fails this in every run: every stream is
//! checked, not a sample.
#![cfg(feature = "test-backend")]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use roxyd::{
    config::Config,
    dispatch::{DispatchConfig, DispatchEvent, DispatchObserver},
    platform::recorder::journal::Recorder,
    wire::{self, RequestCode},
};
use roxyd_lab::{Lab, manager::AgentSession};
use support::lab_agent::LabAgents;
use tokio::task::JoinSet;

/// Streams the Manager opens at once: many times the agent's stream limit
/// (`max_concurrent_streams`, 64 by default), so the Manager keeps waiting
/// for stream credit, and every stream task the agent runs is in use.
const STREAMS: usize = 3_000;
/// The limit on serving them all: a few seconds' work on a loaded 2-core
/// machine, well short of nextest's slow-timeout.
const LIMIT: Duration = Duration::from_secs(25);
/// Most bytes a stream's reply may take: an echo reply is a few bytes.
const REPLY_BYTES: usize = 1024;

/// Counts the echo requests the agent dispatched.
#[derive(Default)]
struct Echoes(AtomicUsize);

impl DispatchObserver for Echoes {
    fn on_event(&self, event: &DispatchEvent) {
        if *event
            == (DispatchEvent::RequestReceived {
                code: RequestCode::ECHO,
            })
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// How one stream ended, as the Manager saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// One echo reply, `Ok(())`, then the agent's FIN.
    OneReplyThenEnd,
    /// The agent's FIN after this many reply frames (not one).
    Replies(usize),
    /// The stream failed (reset, stopped, connection lost): the error.
    Failed(String),
    /// The bytes before the FIN were not whole frames, or a reply was not
    /// `Ok(())`.
    Garbled(String),
}

/// Sends one echo request on a stream of its own and reads to the agent's
/// end of the stream.
async fn one_echo(session: AgentSession) -> Outcome {
    let (mut send, mut recv) = match session.open_stream().await {
        Ok(stream) => stream,
        Err(e) => return Outcome::Failed(format!("open: {e}")),
    };
    // The frame and the FIN in one go: the agent never waits on a
    // half-sent request, so it has no stream to close to make room.
    if let Err(e) =
        wire::write_frame(&mut send, &wire::encode_request(RequestCode::ECHO, &[])).await
    {
        return Outcome::Failed(format!("write: {e}"));
    }
    if let Err(e) = send.finish() {
        return Outcome::Failed(format!("finish: {e}"));
    }
    let bytes = match recv.read_to_end(REPLY_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => return Outcome::Failed(format!("read: {e}")),
    };
    let mut rest = bytes.as_slice();
    let mut frames = wire::FrameReader::new(&mut rest);
    let mut replies = 0;
    loop {
        match frames.read_frame(wire::DEFAULT_MAX_FRAME_LEN).await {
            Ok(None) => break,
            Ok(Some(payload)) => match wire::decode::<Result<(), String>>(&payload) {
                Ok(Ok(())) => replies += 1,
                other => return Outcome::Garbled(format!("{other:?}")),
            },
            Err(e) => return Outcome::Garbled(e.to_string()),
        }
    }
    if replies == 1 {
        Outcome::OneReplyThenEnd
    } else {
        Outcome::Replies(replies)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_of_many_at_once_is_answered_exactly_once_then_ended() {
    support::bounded_for(
        support::FLOOD_LIMIT,
        "every stream of many at once is answered exactly once then ended",
        async move {
            let lab = Lab::new().unwrap();
            let echoes = Arc::new(Echoes::default());
            let dispatcher = Recorder::new()
                .dispatcher(DispatchConfig::default())
                .with_observer(Arc::clone(&echoes) as Arc<dyn DispatchObserver>);
            let (session, agent) = lab.connect(Arc::new(dispatcher)).await.unwrap();
            let limit = usize::try_from(Config::default().max_concurrent_streams).unwrap();
            assert!(STREAMS >= 20 * limit, "too few streams to wait for credit");

            let mut streams = JoinSet::new();
            for _ in 0..STREAMS {
                streams.spawn(one_echo(session.clone()));
            }
            let outcomes = tokio::time::timeout(LIMIT, streams.join_all())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "rule broken: every stream is answered and ended; {STREAMS} streams \
                 were not all ended within {LIMIT:?} ({} echo requests dispatched)",
                        echoes.0.load(Ordering::SeqCst)
                    )
                });

            let mut wrong: Vec<(usize, Outcome)> = outcomes
                .into_iter()
                .enumerate()
                .filter(|(_, outcome)| *outcome != Outcome::OneReplyThenEnd)
                .collect();
            let count = wrong.len();
            wrong.sort_by(|a, b| a.1.cmp(&b.1));
            wrong.dedup_by(|a, b| a.1 == b.1);
            assert!(
                wrong.is_empty(),
                "rule broken: every stream gets exactly one reply, then the agent's end of \
         stream; {count} of {STREAMS} did not, for instance: {wrong:?}"
            );
            assert_eq!(
                echoes.0.load(Ordering::SeqCst),
                STREAMS,
                "rule broken: every request is dispatched exactly once"
            );
            assert!(
                !agent.serving.is_finished(),
                "the connection ended under load"
            );
        },
    )
    .await;
}
