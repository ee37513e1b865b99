//! roxyd's QUIC transport settings as the Manager sees them, live over
//! loopback with the recording backend.
#![cfg(feature = "test-backend")]

mod support;

use std::{sync::Arc, time::Duration};

use roxyd::platform::recorder::journal::Recorder;
use roxyd::{dispatch::DispatchConfig, wire::RequestCode};
use roxyd_lab::Lab;
use support::lab_agent::LabAgents;

/// The safety net for every wait: a hang fails the test with a message.
const HANG: Duration = Duration::from_secs(60);

/// A stream's slot returns to the Manager only once the Manager has
/// acknowledged roxyd's end of the stream; roxyd asks for prompt
/// acknowledgements (QUIC ACK frequency extension) so that a Manager keeping
/// every slot busy does not wait its 25 ms ACK delay per round (issue 12).
#[tokio::test]
async fn roxyd_asks_the_manager_for_prompt_acknowledgements() {
    support::bounded(
        "roxyd asks the Manager for prompt acknowledgements",
        async move {
            let lab = Lab::new().unwrap();
            let dispatcher = Arc::new(Recorder::new().dispatcher(DispatchConfig::default()));
            let (session, _agent) = lab.connect(dispatcher).await.unwrap();
            // Each echo is a full round trip: roxyd has sent packets since, and any
            // ACK_FREQUENCY frame it sends goes out with its first 1-RTT packets.
            tokio::time::timeout(HANG, async {
                while session.connection().stats().frame_rx.ack_frequency == 0 {
                    let echo = session.unit_request(RequestCode::ECHO).await.unwrap();
                    assert_eq!(echo, Ok(()));
                }
            })
            .await
            .expect("roxyd never sent an ACK_FREQUENCY frame");
        },
    )
    .await;
}
