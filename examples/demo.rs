//! The embedded default: one command shows roxyd's main job end to end.
//!
//! It makes throwaway certificates, starts a loopback Manager, runs the
//! daemon's own code (`roxyd::daemon::run`, as the `roxyd` binary does) with
//! the recording backend, sends every power request on both wire forms plus
//! echo, as both Manager generations send them (review-protocol 0.18 reads
//! the reply; 0.19 sends immediate requests fire-and-forget), and prints a
//! timeline per request. It exits non-zero if anything deviates from the
//! power contract.
//!
//! Run: `cargo run --example demo --features test-backend`

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use roxyd::platform::recorder::journal::{Entry, Journal, Recorder};
use roxyd::{
    cli::ManagerAddress,
    config::Config,
    connection,
    daemon::{self, Settings},
    dispatch::{DispatchEvent, Dispatcher},
    platform::{GracefulOp, ImmediateOp, Settlement},
    power_log::{self, PowerLog},
    reply::Delivery,
    stop, tls,
    wire::{NodePowerRequest, RequestCode, reply_text},
};
use roxyd_lab::{
    Lab, SERVER_NAME,
    manager::{AgentSession, Generation},
};

/// One step of the demo: what is sent and what the contract says happens.
struct Step {
    label: &'static str,
    send: Send,
    expect_reply: &'static str,
    expect_operation: Option<Entry>,
}

#[derive(Clone, Copy)]
enum Send {
    Grouped(NodePowerRequest),
    Unit(u32),
    /// As a review-protocol 0.19 Manager sends an immediate request.
    FireAndForget(NodePowerRequest),
}

/// What a 0.19 Manager "receives" for a request it sent fire-and-forget.
const NO_REPLY_READ: &str = "nothing: sent fire-and-forget, no reply read";

fn steps() -> Vec<Step> {
    let grouped = |label, request, op| Step {
        label,
        send: Send::Grouped(request),
        expect_reply: "Ok(Initiated)",
        expect_operation: Some(op),
    };
    let flat = |label, code, op| Step {
        label,
        send: Send::Unit(code),
        expect_reply: "Ok(())",
        expect_operation: Some(op),
    };
    let fire_and_forget = |label, request, op| Step {
        label,
        send: Send::FireAndForget(request),
        expect_reply: NO_REPLY_READ,
        expect_operation: Some(op),
    };
    vec![
        Step {
            label: "echo (code 17)",
            send: Send::Unit(RequestCode::ECHO),
            expect_reply: "Ok(())",
            expect_operation: None,
        },
        grouped(
            "NodePower Reboot (code 106) from a 0.18 Manager: immediate reboot",
            NodePowerRequest::Reboot,
            Entry::Perform(ImmediateOp::Reboot),
        ),
        fire_and_forget(
            "NodePower Reboot (code 106) from a 0.19 Manager (fire-and-forget): immediate reboot",
            NodePowerRequest::Reboot,
            Entry::Perform(ImmediateOp::Reboot),
        ),
        grouped(
            "NodePower Shutdown (code 106) from a 0.18 Manager: immediate power-off",
            NodePowerRequest::Shutdown,
            Entry::Perform(ImmediateOp::PowerOff),
        ),
        fire_and_forget(
            "NodePower Shutdown (code 106) from a 0.19 Manager (fire-and-forget): immediate power-off",
            NodePowerRequest::Shutdown,
            Entry::Perform(ImmediateOp::PowerOff),
        ),
        grouped(
            "NodePower GracefulReboot (code 106)",
            NodePowerRequest::GracefulReboot,
            Entry::StartGraceful(GracefulOp::Reboot),
        ),
        grouped(
            "NodePower GracefulShutdown (code 106)",
            NodePowerRequest::GracefulShutdown,
            Entry::StartGraceful(GracefulOp::PowerOff),
        ),
        flat(
            "flat reboot (code 4)",
            RequestCode::FLAT_REBOOT,
            Entry::Perform(ImmediateOp::Reboot),
        ),
        flat(
            "flat shutdown (code 21)",
            RequestCode::FLAT_SHUTDOWN,
            Entry::Perform(ImmediateOp::PowerOff),
        ),
    ]
}

async fn send(session: &AgentSession, send: Send) -> Result<String, String> {
    match send {
        Send::Grouped(request) => session.node_power(request).await.map(|r| format!("{r:?}")),
        Send::Unit(code) => session.unit_request(code).await.map(|r| format!("{r:?}")),
        Send::FireAndForget(request) => session
            .node_power_as(Generation::V0_19, request)
            .await
            .map(|r| r.map_or_else(|| NO_REPLY_READ.to_owned(), |r| format!("{r:?}"))),
    }
    .map_err(|e| e.to_string())
}

fn describe(entry: &Entry) -> Option<String> {
    Some(match entry {
        Entry::Dispatch(DispatchEvent::RequestReceived { code }) => {
            format!("roxyd received request code {code}")
        }
        Entry::Dispatch(DispatchEvent::Prepared(op)) => format!("roxyd prepared the {op}"),
        Entry::Dispatch(DispatchEvent::GracefulStarted(op)) => {
            format!("roxyd started the {op} command")
        }
        Entry::Dispatch(DispatchEvent::ReplyWritten { ok, .. }) => {
            format!(
                "roxyd wrote the {} reply",
                if *ok { "success" } else { "error" }
            )
        }
        Entry::Dispatch(DispatchEvent::DeliveryConfirmed(Delivery::Acknowledged)) => {
            "roxyd: the Manager acknowledged the reply".into()
        }
        Entry::Dispatch(DispatchEvent::DeliveryConfirmed(Delivery::Stopped(code))) => {
            format!("roxyd: the Manager closed the stream after the reply (code {code})")
        }
        Entry::Dispatch(DispatchEvent::DeliveryConfirmed(d)) => {
            format!("roxyd: reply delivery not confirmed: {d:?}")
        }
        // The pending operation's own mark, noted at the moment it happened.
        Entry::Settled(op, Settlement::Released) => format!("roxyd released the {op}"),
        Entry::Settled(op, Settlement::Cancelled) => format!("roxyd cancelled the {op}"),
        Entry::Dispatch(DispatchEvent::ReplyFailed { .. }) => {
            "roxyd could not write the reply".into()
        }
        Entry::Dispatch(DispatchEvent::ReplyDeclined(_)) => {
            "roxyd: the Manager declined the reply (STOP_SENDING 0 and FIN)".into()
        }
        Entry::Perform(op) => format!("backend: perform {op} (recorded, nothing done)"),
        Entry::StartGraceful(op) => format!("backend: start {op} command (recorded, nothing done)"),
        Entry::Prepare(_)
        | Entry::Dispatch(DispatchEvent::Released(_) | DispatchEvent::Cancelled(_)) => return None,
    })
}

/// Checks one step's journal slice against the contract.
fn check(step: &Step, reply: &str, entries: &[Entry]) -> Vec<String> {
    let mut problems = Vec::new();
    if reply != step.expect_reply {
        problems.push(format!("reply {reply}, expected {}", step.expect_reply));
    }
    let operations: Vec<&Entry> = entries.iter().filter(|e| e.is_power_operation()).collect();
    let expected: Vec<&Entry> = step.expect_operation.iter().collect();
    if operations != expected {
        problems.push(format!("operations {operations:?}, expected {expected:?}"));
    }
    let at = |wanted: &dyn Fn(&Entry) -> bool| entries.iter().position(wanted);
    let written = at(&|e| {
        matches!(
            e,
            Entry::Dispatch(DispatchEvent::ReplyWritten { ok: true, .. })
        )
    });
    match step.expect_operation {
        Some(Entry::Perform(_)) => {
            let performed = at(&|e| matches!(e, Entry::Perform(_)));
            // The wait for the Manager's acknowledgement ends with an
            // acknowledgement, or with the Manager stopping the stream after
            // it read the reply (the reference Manager drops its streams).
            let delivered =
                at(&|e| matches!(e, Entry::Dispatch(DispatchEvent::DeliveryConfirmed(_))));
            // A 0.19 Manager declines the reply; if its STOP_SENDING came
            // only after the write, the reply was written all the same.
            let declined = at(&|e| matches!(e, Entry::Dispatch(DispatchEvent::ReplyDeclined(_))));
            let after_reply = written.is_some() && written < delivered && delivered < performed;
            let after_decline = declined.is_some() && declined < performed;
            if !(after_reply || (matches!(step.send, Send::FireAndForget(_)) && after_decline)) {
                problems.push(
                    "not: reply written and delivered (or declined by a 0.19 Manager), then performed"
                        .into(),
                );
            }
        }
        Some(Entry::StartGraceful(_))
            if at(&|e| matches!(e, Entry::StartGraceful(_))) > written =>
        {
            problems.push("graceful command not started before the reply".into());
        }
        _ => {}
    }
    problems
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let lab = Lab::new()?;
    let dir = tempfile::TempDir::new()?;
    let files = lab.pki.write_to(dir.path())?;
    let addr = lab.manager.local_addr()?;
    println!(
        "roxyd demo: loopback Manager on {addr}, throwaway certificates in {}",
        dir.path().display()
    );

    // roxyd's side, set up as the binary does: files, config defaults, daemon::run.
    let config = Config::default();
    let client = tls::client_config(
        tls::load_certs(&files.agent_cert)?,
        tls::load_private_key(&files.agent_key)?,
        tls::load_roots(&[&files.ca_cert])?,
        config.max_concurrent_streams,
    )?;
    let recorder = Recorder::new();
    let journal = recorder.journal().clone();
    let manager = ManagerAddress {
        server_name: SERVER_NAME.to_owned(),
        addr,
    };
    // The power log, in a state directory of this run's own.
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir)?;
    let power_log = PowerLog::start(&state_dir, &manager.to_string());
    let dispatcher = Arc::new(
        recorder
            .dispatcher(config.dispatch())
            .with_power_log(power_log.clone()),
    );
    let settings = Settings::from_config(&config, manager, false);
    let (stop, stopped) = stop::channel();
    let endpoint = connection::client_endpoint(addr, client)?;
    let roxyd = {
        let dispatcher = Arc::clone(&dispatcher);
        tokio::spawn(async move { daemon::run(&settings, &endpoint, dispatcher, stopped).await })
    };
    let session = lab.manager.accept().await?;
    println!(
        "roxyd connected: {} {} (protocol {}), recording backend\n",
        session.agent().app_name,
        session.agent().version,
        session.agent().protocol_version
    );

    let mut all_ok = run_steps(&session, &dispatcher, &journal).await;

    // One refusal, to show the error path: a backend that cannot prepare.
    dispatcher.power().backend().set_refuse_prepare(true);
    let refused = send(&session, Send::Grouped(NodePowerRequest::Reboot)).await;
    let expected = format!("Err({:?})", reply_text::INVALID_COMMAND);
    println!(
        "NodePower Reboot on a node that cannot reboot\n  Manager received {}",
        refused.clone().unwrap_or_default()
    );
    if refused.as_deref() == Ok(expected.as_str()) {
        println!("  ok: refused, nothing done\n");
    } else {
        all_ok = false;
        println!("  DEVIATION: expected {expected}");
    }

    stop.trigger();
    roxyd.await??;
    let _ = power_log.flush(Duration::from_secs(5));
    let path = power_log::log_path(&state_dir);
    println!("What roxyd recorded in its power log ({}):", path.display());
    for (entry, _) in power_log::read_log(&path)?.unwrap_or_default().entries {
        println!("  {}", entry.human());
    }
    println!();
    let operations = journal.power_operations().len();
    println!(
        "{} in {:.1} s: {operations} recorded power operations, nothing acted on",
        if all_ok {
            "all steps as the contract says"
        } else {
            "DEVIATIONS found"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(all_ok)
}

/// Sends every step, prints its timeline, and checks it; `true` when every
/// step went as the contract says.
async fn run_steps(
    session: &AgentSession,
    dispatcher: &Dispatcher<Recorder>,
    journal: &Journal,
) -> bool {
    let mut all_ok = true;
    for step in steps() {
        let before = journal.timed_entries().len();
        let sent_at = Instant::now();
        let reply = send(session, step.send)
            .await
            .unwrap_or_else(|e| format!("error: {e}"));
        let received_at = Instant::now();
        if let Some(operation) = &step.expect_operation {
            let wait = journal.wait_for(|e| e[before..].contains(operation));
            if tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .is_err()
            {
                println!("  (the backend call did not come)");
            }
        }
        dispatcher.power().wait_idle().await;
        let timed = journal.timed_entries().split_off(before);
        let mut lines: Vec<(Instant, String)> = timed
            .iter()
            .filter_map(|(at, e)| describe(e).map(|d| (*at, d)))
            .collect();
        lines.push((sent_at, "Manager sent the request".into()));
        lines.push((received_at, format!("Manager received {reply}")));
        lines.sort_by_key(|(at, _)| *at);
        println!("{}", step.label);
        for (at, line) in lines {
            let ms = at.saturating_duration_since(sent_at).as_secs_f64() * 1000.0;
            println!("  +{ms:7.3} ms  {line}");
        }
        let entries: Vec<Entry> = timed.into_iter().map(|(_, e)| e).collect();
        let problems = check(&step, &reply, &entries);
        if problems.is_empty() {
            println!("  ok: as the contract says\n");
        } else {
            all_ok = false;
            for problem in problems {
                println!("  DEVIATION: {problem}");
            }
            println!();
        }
    }

    all_ok
}
