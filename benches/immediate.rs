//! Immediate power timeline: from the Manager's send to roxyd's release of a `Reboot`, for a 0.18 and a 0.19 Manager.
//!
//! An in-process agent on the recorder, whose journal is also the dispatch
//! observer, gets 1,000 immediate `Reboot` requests (after 50 warm-up) from
//! each Manager generation through `AgentSession::node_power_as`: a 0.18
//! Manager reads the reply, so roxyd waits for the reply's delivery before it
//! releases; a 0.19 Manager sends fire-and-forget and declines the reply, so
//! no wait is needed. Between requests the bench waits until the power latch
//! is free again. The marks are the Manager's own send time and the
//! journal's timestamps; the release mark is the pending operation's
//! `Settled(op, Released)`, the moment it is handed to the thread that calls
//! `perform` (on a real backend, `reboot(2)`).
//!
//! ```text
//! scripts/safe-run cargo bench --features test-backend --bench immediate
//! ```
//!
//! `ROXYBENCH_QUICK=1` divides the counts by ten.

#[allow(dead_code)]
mod common;

use std::{process::ExitCode, sync::Arc, time::Instant};

use common::{BenchError, BenchResult, HANG, LabAgents, Spread};
use roxyd::platform::recorder::journal::{Entry, Recorder};
use roxyd::{
    config::Config,
    dispatch::DispatchEvent,
    platform::{ImmediateOp, Settlement},
    reply::Delivery,
    wire::{NodePowerRequest, NodePowerResponse, RequestCode},
};
use roxyd_lab::{Lab, manager::Generation};

const NAME: &str = "immediate";

/// The spans reported, each from one mark to a later one.
const SPANS: [&str; 6] = [
    "Manager sent -> request received",
    "request received -> prepared",
    "prepared -> reply written or declined",
    "reply written or declined -> released",
    "released -> performed (thread started)",
    "Manager sent -> released (the headline)",
];

fn main() -> ExitCode {
    common::main(NAME, common::two_workers(), suite)
}

async fn suite() -> BenchResult<()> {
    let runs = 1_000 / common::divisor();
    println!(
        "\n## Immediate Reboot timeline ({runs} runs per generation, in-process, recorder journal)\n"
    );
    for generation in [Generation::V0_18, Generation::V0_19] {
        common::progress(NAME, &format!("{generation:?}"));
        let timeline = timeline(generation, runs).await?;
        println!("{generation:?} Manager:\n");
        println!("| span | median | p99 | worst |");
        println!("|---|---:|---:|---:|");
        for (span, spread) in SPANS.iter().zip(&timeline.spans) {
            println!(
                "| {span} | {} | {} | {} |",
                common::micros(spread.median),
                common::micros(spread.p99),
                common::micros(spread.worst)
            );
        }
        let [acknowledged, stopped, declined, other] = timeline.waits;
        println!(
            "\nwait before release ended: {acknowledged} acknowledged, {stopped} stopped by the \
             Manager after the reply, {declined} declined (fire-and-forget), {other} other\n"
        );
    }
    Ok(())
}

struct Timeline {
    spans: Vec<Spread>,
    /// How the wait before the release ended: acknowledged, stopped, declined,
    /// other.
    waits: [usize; 4],
}

async fn timeline(generation: Generation, runs: usize) -> BenchResult<Timeline> {
    let lab = Lab::new()?;
    let recorder = Recorder::new();
    let journal = recorder.journal().clone();
    let dispatcher = Arc::new(recorder.dispatcher(Config::default().dispatch()));
    let (session, _agent) = lab.connect(Arc::clone(&dispatcher)).await?;
    let warm_up = runs / 20;
    let mut samples = vec![Vec::new(); SPANS.len()];
    let mut waits = [0; 4];
    let mut before = 0;
    for run in 0..warm_up + runs {
        let sent = Instant::now();
        let reply = session
            .node_power_as(generation, NodePowerRequest::Reboot)
            .await?;
        let expected = match generation {
            Generation::V0_18 => Some(Ok(NodePowerResponse::Initiated)),
            Generation::V0_19 => None,
        };
        if reply != expected {
            return Err(format!("immediate reboot answered {reply:?}").into());
        }
        // A 0.19 Manager's send returns once its frame was acknowledged,
        // maybe before roxyd read it: wait for this run's `perform`, then
        // for the latch to be free for the next run.
        let performed = |entries: &[Entry]| {
            entries
                .iter()
                .filter(|e| matches!(e, Entry::Perform(_)))
                .count()
                > run
        };
        tokio::time::timeout(HANG, journal.wait_for(performed)).await?;
        tokio::time::timeout(HANG, dispatcher.power().wait_idle()).await?;
        let entries = journal.timed_entries();
        let this = &entries[before..];
        before = entries.len();
        if run < warm_up {
            continue;
        }
        let at = |wanted: &dyn Fn(&Entry) -> bool| {
            this.iter()
                .find(|(_, e)| wanted(e))
                .map(|(at, _)| *at)
                .ok_or_else(|| BenchError::from(format!("a mark is missing: {this:?}")))
        };
        let received = at(&|e| {
            *e == Entry::Dispatch(DispatchEvent::RequestReceived {
                code: RequestCode::NODE_POWER,
            })
        })?;
        let prepared = at(&|e| matches!(e, Entry::Dispatch(DispatchEvent::Prepared(_))))?;
        let answered = at(&|e| {
            matches!(
                e,
                Entry::Dispatch(
                    DispatchEvent::ReplyWritten { ok: true, .. } | DispatchEvent::ReplyDeclined(_)
                )
            )
        })?;
        let released = at(&|e| *e == Entry::Settled(ImmediateOp::Reboot, Settlement::Released))?;
        let performed = at(&|e| *e == Entry::Perform(ImmediateOp::Reboot))?;
        let marks = [
            (sent, received),
            (received, prepared),
            (prepared, answered),
            (answered, released),
            (released, performed),
            (sent, released),
        ];
        for ((from, to), samples) in marks.into_iter().zip(&mut samples) {
            samples.push(to.saturating_duration_since(from));
        }
        waits[wait_kind(this)] += 1;
    }
    Ok(Timeline {
        spans: samples.iter_mut().map(|s| Spread::of(s)).collect(),
        waits,
    })
}

/// Index into [`Timeline::waits`] for one run's entries.
fn wait_kind(entries: &[(Instant, Entry)]) -> usize {
    let kind = entries.iter().find_map(|(_, e)| match e {
        Entry::Dispatch(DispatchEvent::DeliveryConfirmed(Delivery::Acknowledged)) => Some(0),
        Entry::Dispatch(DispatchEvent::DeliveryConfirmed(Delivery::Stopped(_))) => Some(1),
        Entry::Dispatch(DispatchEvent::ReplyDeclined(_)) => Some(2),
        _ => None,
    });
    kind.unwrap_or(3)
}
