//! Footprint: roxyd's real binary from process start to handshake, its memory idle and after load beside a bare quinn agent's, its threads and idle CPU.
//!
//! 1. Connect: 50 starts of the real binary against one lab Manager, from
//!    just before `spawn` to the startup log line and to `Manager::accept`
//!    returning (TLS handshake done, `AgentInfo` read, answer acknowledged);
//!    each roxyd is stopped with SIGTERM and waited for.
//! 2. Memory (`/proc/PID/status`, `/proc/PID/smaps_rollup`) of roxyd and of
//!    the bare agent on a one-thread runtime: connected and idle for 1 s,
//!    after 10,000 sequential echo requests, after 20,000 more at 64 in
//!    flight; and the peak (`VmHWM`).
//! 3. roxyd's CPU time over an idle window with nothing sent but QUIC
//!    keep-alives.
//!
//! ```text
//! scripts/safe-run cargo bench --features test-backend --bench footprint
//! ```
//!
//! `ROXYBENCH_IDLE_SECS=N` sets the idle window (default 60);
//! `ROXYBENCH_QUICK=1` divides the counts by ten.

#[allow(dead_code)]
mod common;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use common::{BenchResult, HANG, RoxydProcess, Spread, Target};
use roxyd_lab::{Lab, pki::PkiFiles};

const NAME: &str = "footprint";
/// Quiet time after a connection before its idle footprint is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Part of what roxyd logs when it closes waiting streams to make room.
const EVICTION_WARNING: &str = "closing those that waited longest";

fn main() -> ExitCode {
    common::main(NAME, common::two_workers(), suite)
}

async fn suite() -> BenchResult<()> {
    let divisor = common::divisor();
    let idle_secs = match std::env::var("ROXYBENCH_IDLE_SECS") {
        Ok(text) => text
            .parse()
            .map_err(|e| format!("ROXYBENCH_IDLE_SECS={text}: {e}"))?,
        Err(_) => 60,
    };
    let lab = Lab::new()?;
    let dir = tempfile::TempDir::new()?;
    let files = lab.pki.write_to(dir.path())?;
    let manager = lab.manager.local_addr()?;
    // Built before any start is timed.
    common::this_roxyd();

    connect_times(&lab, &files, 50 / divisor).await?;

    common::progress(NAME, "memory");
    let roxyd = RoxydProcess::spawn(&common::this_roxyd(), &files, manager).await?;
    let roxyd_target = Target(common::accept_roxyd(&lab).await?.connection().clone());
    let server = common::bare_server(&lab)?;
    let (mut bare, bare_connection) = common::spawn_bare(&files, &server, "one").await?;
    let bare_pid = bare.id().ok_or("the bare agent exited")?;
    let targets = [roxyd_target, Target(bare_connection.clone())];
    let pids = [roxyd.pid, bare_pid];
    tokio::time::sleep(SETTLE).await;
    let idle = pids.map(common::Memory::of);
    let sequential = 10_000 / divisor;
    common::round_trips(&targets, sequential).await?;
    let after_sequential = pids.map(common::Memory::of);
    for target in &targets {
        common::throughput(target, 64, 20_000 / divisor).await?;
    }
    let after_all = pids.map(common::Memory::of);
    let peaks = pids.map(common::peak_rss);

    common::progress(NAME, &format!("idle window of {idle_secs} s"));
    let before = common::cpu_time(roxyd.pid);
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle_cpu = common::cpu_time(roxyd.pid).saturating_sub(before);

    println!("\n## Memory (real binary beside the bare agent on one thread)\n");
    println!("| agent, when | VmRSS | RssAnon | RssFile | Pss | private | threads |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let total = sequential + sequential / 10 + 20_000 / divisor;
    let moments = [
        ("connected, idle".to_owned(), idle),
        (format!("after {sequential} sequential"), after_sequential),
        (format!("after {total} requests"), after_all),
    ];
    for (index, agent) in ["roxyd", "bare"].into_iter().enumerate() {
        for (when, memories) in &moments {
            let m = memories[index].as_ref().map_err(ToString::to_string)?;
            println!(
                "| {agent}, {when} | {} | {} | {} | {} | {} | {} |",
                common::mib(m.rss),
                common::mib(m.anon),
                common::mib(m.file),
                common::mib(m.pss),
                common::mib(m.private),
                m.threads
            );
        }
    }
    let [roxyd_peak, bare_peak] = peaks;
    let (roxyd_peak, bare_peak) = (roxyd_peak?, bare_peak?);
    #[allow(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
    let peak_ratio = roxyd_peak as f64 / bare_peak as f64;
    println!(
        "\npeak RSS (VmHWM): roxyd {}, bare {}, ratio {peak_ratio:.2}x",
        common::mib(roxyd_peak),
        common::mib(bare_peak)
    );
    println!(
        "roxyd on-CPU time over {idle_secs} s idle: {} ({:.3}% of one core)",
        common::millis(idle_cpu),
        idle_cpu.as_secs_f64() / Duration::from_secs(idle_secs).as_secs_f64().max(1.0) * 100.0
    );
    bare_connection.close(0u32.into(), b"done");
    tokio::time::timeout(HANG, bare.wait()).await??;
    let evictions = roxyd.stop().await?.matches(EVICTION_WARNING).count();
    if evictions > 0 {
        println!("roxyd logged {evictions} stream-eviction warnings ({EVICTION_WARNING:?})");
    }
    Ok(())
}

/// Section 1: `starts` starts of the real binary, each to the startup line
/// and to the handshake, then stopped.
async fn connect_times(lab: &Lab, files: &PkiFiles, starts: usize) -> BenchResult<()> {
    let manager = lab.manager.local_addr()?;
    common::progress(NAME, &format!("connect, {starts} starts"));
    let (mut to_line, mut to_handshake) = (Vec::new(), Vec::new());
    for _ in 0..starts {
        let started = Instant::now();
        let mut roxyd = RoxydProcess::start(&common::this_roxyd(), files, manager)?;
        // Both at once: each mark is taken the moment it happens.
        let (session, logged) = tokio::join!(
            async { (common::accept_roxyd(lab).await, Instant::now()) },
            // Checked for every start, though nothing is sent here.
            roxyd.confirm_recorder()
        );
        let (session, connected) = (session.0?, session.1);
        let logged = logged?;
        to_line.push(logged - started);
        to_handshake.push(connected - started);
        roxyd.stop().await?;
        drop(session);
    }
    println!("\n## Connect (real binary, {starts} starts)\n");
    println!("| | median | p99 | worst |");
    println!("|---|---:|---:|---:|");
    for (label, samples) in [
        ("process start -> startup log line", &mut to_line),
        ("process start -> handshake complete", &mut to_handshake),
    ] {
        let s = Spread::of(samples);
        println!(
            "| {label} | {} | {} | {} |",
            common::millis(s.median),
            common::millis(s.p99),
            common::millis(s.worst)
        );
    }

    Ok(())
}
