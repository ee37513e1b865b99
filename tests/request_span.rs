//! The `request{connection=… stream=…}` span of a stream's log lines is made
//! only when a line needs it: a stream that only echoes makes none (a span
//! per stream cost about 1 µs of CPU per echo, docs/performance.md), and a
//! request that logs gets it. Live over QUIC on loopback with the lab
//! Manager, with a subscriber that counts the spans made.
#![cfg(feature = "test-backend")]

mod support;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use roxyd::{dispatch::DispatchConfig, platform::recorder::journal::Recorder, wire::RequestCode};
use roxyd_lab::Lab;
use support::lab_agent::LabAgents;
use tracing_subscriber::{Layer, layer::SubscriberExt};

/// Echo requests sent, each on a stream of its own.
const ECHOES: usize = 50;
/// A request code no Manager generation uses: answered, and logged.
const UNKNOWN_CODE: u32 = 9_999;

/// Counts the `request` spans made.
#[derive(Clone, Default)]
struct RequestSpans(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> Layer<S> for RequestSpans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "request" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// One thread: the agent's stream tasks run on the thread whose default
// subscriber counts.
#[tokio::test(flavor = "current_thread")]
async fn a_stream_that_only_echoes_makes_no_request_span_and_one_that_logs_makes_one() {
    let spans = RequestSpans::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let lab = Lab::new().unwrap();
    let dispatcher = Recorder::new().dispatcher(DispatchConfig::default());

    let exchange = async {
        let (session, _agent) = lab.connect(Arc::new(dispatcher)).await.unwrap();
        for _ in 0..ECHOES {
            assert_eq!(
                session.unit_request(RequestCode::ECHO).await.unwrap(),
                Ok(())
            );
        }
        let echoed = spans.0.load(Ordering::SeqCst);
        let reply = session.request_raw(UNKNOWN_CODE, &[]).await.unwrap();
        (echoed, reply)
    };
    let (echoed, reply) = support::bounded(
        "every request is answered, and only lines about requests make a request span",
        exchange,
    )
    .await;
    assert_eq!(
        echoed, 0,
        "rule broken: a stream that only echoes logs nothing and makes no request span"
    );
    assert!(!reply.is_empty(), "the unknown request is answered");
    assert_eq!(
        spans.0.load(Ordering::SeqCst),
        1,
        "rule broken: the line about an unknown request goes to its stream's request span"
    );
}
