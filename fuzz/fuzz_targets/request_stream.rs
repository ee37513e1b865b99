//! Arbitrary bytes as a whole request stream through
//! `Dispatcher::serve_stream`, with the recording backend and the production
//! limits (`DispatchConfig::default()`).
//!
//! The input is what the Manager sent before finishing its side; the replies
//! are read as they come, in memory, on a current-thread runtime. Besides "no
//! panic, no hang", a small model of the contract checks that every power
//! operation carried out was asked for by a well-formed frame (code 4 or 21
//! with any body, or code 106 whose body starts with variant 0 to 3), in the
//! order asked, and that an immediate operation is the last thing to run.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use roxyd::platform::recorder::journal::{Entry, Recorder};
use roxyd::{
    dispatch::{
        DispatchConfig, Dispatcher, StreamEnd,
    },
    platform::{GracefulOp, ImmediateOp},
    wire::NodePowerRequest,
};
use tokio::{io::AsyncReadExt, runtime::Runtime};

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
});

fuzz_target!(|data: &[u8]| {
    let config = DispatchConfig::default();
    let (end, operations) = RUNTIME.block_on(async {
        let recorder = Recorder::new();
        let dispatcher = Dispatcher::new(recorder.clone(), config);
        let (mut agent, mut manager) = tokio::io::duplex(64 * 1024);
        let mut recv = data;
        let dispatcher = &dispatcher;
        let serving = async move {
            let end = dispatcher.serve_stream(&mut recv, &mut agent).await;
            drop(agent);
            end
        };
        let reading = async move {
            let mut replies = Vec::new();
            manager
                .read_to_end(&mut replies)
                .await
                .expect("reading the replies");
        };
        let (end, ()) = tokio::join!(serving, reading);
        // A released operation runs on its own thread; the latch is freed
        // once the recorder has noted it.
        dispatcher.power().wait_idle().await;
        (end, recorder.journal().power_operations())
    });
    check(data, config.max_frame_len, &end, &operations);
});

/// The power requests in the frames of `bytes`, up to the first frame that
/// cannot be read (cut short, or above `max_len`).
fn requested(bytes: &[u8], max_len: u32) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((header, after)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*header);
        if len > max_len {
            break;
        }
        let Some(payload) = after.get(..len as usize) else {
            break;
        };
        out.extend(power_request_in(payload).map(entry_for));
        rest = &after[len as usize..];
    }
    out
}

/// Code 4 or 21 with any body, or code 106 whose body starts with a bincode
/// varint (non-canonical forms included) from 0 to 3.
fn power_request_in(payload: &[u8]) -> Option<NodePowerRequest> {
    let (code, body) = payload.split_first_chunk::<4>()?;
    match u32::from_le_bytes(*code) {
        4 => Some(NodePowerRequest::Reboot),
        21 => Some(NodePowerRequest::Shutdown),
        106 => {
            let index = match *body.first()? {
                byte @ 0..=250 => u32::from(byte),
                251 => u32::from(u16::from_le_bytes(body.get(1..3)?.try_into().ok()?)),
                252 => u32::from_le_bytes(body.get(1..5)?.try_into().ok()?),
                _ => return None,
            };
            NodePowerRequest::ALL.get(index as usize).copied()
        }
        _ => None,
    }
}

fn entry_for(request: NodePowerRequest) -> Entry {
    match request {
        NodePowerRequest::Reboot => Entry::Perform(ImmediateOp::Reboot),
        NodePowerRequest::Shutdown => Entry::Perform(ImmediateOp::PowerOff),
        NodePowerRequest::GracefulReboot => Entry::StartGraceful(GracefulOp::Reboot),
        NodePowerRequest::GracefulShutdown => Entry::StartGraceful(GracefulOp::PowerOff),
    }
}

/// Which requests run depends on when the graceful reaper task frees the
/// latch after a graceful start, so the check is the sound part: the first
/// request finds the latch free and runs; what runs is a subsequence of what
/// was asked; an immediate operation ends the stream and runs last.
fn check(data: &[u8], max_len: u32, end: &StreamEnd, operations: &[Entry]) {
    let requested = requested(data, max_len);
    if let Some(first) = requested.first() {
        assert_eq!(
            operations.first(),
            Some(first),
            "the first power request did not run; end {end:?}"
        );
    }
    let mut wanted = requested.iter();
    for (i, op) in operations.iter().enumerate() {
        assert!(
            wanted.any(|w| w == op),
            "{op:?} ran without being asked (in this order): asked {requested:?}, ran {operations:?}"
        );
        if let Entry::Perform(performed) = op {
            assert_eq!(i + 1, operations.len(), "operations after {op:?}");
            assert_eq!(end, &StreamEnd::Released(*performed));
        }
    }
    if let StreamEnd::Released(op) = end {
        assert_eq!(operations.last(), Some(&Entry::Perform(*op)));
    }
    assert!(
        !matches!(end, StreamEnd::IdleTimeout | StreamEnd::WriteFailed(_)),
        "unexpected end {end:?}"
    );
}
