//! Round-trip latency: sequential echo requests to roxyd beside a bare quinn echo agent, in-process and as processes, in the same run.
//!
//! Two pairs, each measured in alternating blocks of 1,000 requests after
//! 1,000 warm-up requests each (so that a change in the machine's load falls
//! on both alike), 10,000 round trips per agent, on one connection, a new
//! stream per request as a 0.18 Manager sends them:
//!
//! - in-process: roxyd serving with a `Dispatcher` on the recorder, and the
//!   bare agent, both tasks on the bench's runtime (two workers);
//! - processes: roxyd's real binary (and any `ROXYBENCH_ALSO` builds) and
//!   the bare agent on a one-thread runtime like roxyd's, with each agent
//!   process's CPU time per request.
//!
//! ```text
//! scripts/safe-run cargo bench --features test-backend --bench latency
//! ```
//!
//! The target (issues 10 and 12): roxyd's median within 1.1 times the bare
//! agent's. `ROXYBENCH_QUICK=1` divides the counts by ten.

#[allow(dead_code)]
mod common;

use std::{process::ExitCode, sync::Arc, time::Duration};

use common::{BenchResult, HANG, LabAgents, Spread, Target};
use roxyd::{config::Config, dispatch::Dispatcher, platform::recorder::journal::Recorder};
use roxyd_lab::Lab;

const NAME: &str = "latency";
/// roxyd's median may be at most this many times the bare agent's.
const TARGET_RATIO: f64 = 1.1;

fn main() -> ExitCode {
    common::main(NAME, common::two_workers(), suite)
}

async fn suite() -> BenchResult<()> {
    let count = 10_000 / common::divisor();

    common::progress(NAME, "in-process pair");
    let lab = Lab::new()?;
    let dispatcher = Arc::new(Dispatcher::new(
        Recorder::new(),
        Config::default().dispatch(),
    ));
    let (session, _agent) = lab.connect(dispatcher).await?;
    let server = common::bare_server(&lab)?;
    let bare = common::in_process_bare(&lab, &server).await?;
    let targets = [Target(session.connection().clone()), Target(bare)];
    let in_process = common::round_trips(&targets, count).await?;

    common::progress(NAME, "processes");
    let dir = tempfile::TempDir::new()?;
    let files = lab.pki.write_to(dir.path())?;
    let roxyds = common::Roxyds::spawn(&lab, &files).await?;
    let mut names = roxyds.names.clone();
    let mut targets = roxyds.targets.clone();
    let (mut bare, bare_connection) = common::spawn_bare(&files, &server, "one").await?;
    names.push("bare, one thread".to_owned());
    targets.push(Target(bare_connection.clone()));
    let mut pids = roxyds.pids();
    pids.push(bare.id().ok_or("the bare agent exited")?);
    let before: Vec<Duration> = pids.iter().map(|pid| common::cpu_time(*pid)).collect();
    let processes = common::round_trips(&targets, count).await?;
    let requests = u32::try_from(count + count / 10)?;
    let cpu: Vec<Duration> = pids
        .iter()
        .zip(&before)
        .map(|(pid, before)| common::cpu_time(*pid).saturating_sub(*before) / requests)
        .collect();

    println!("\n## Echo round trip ({count} sequential requests per agent, alternating blocks)\n");
    println!("| agent | median | p99 | median / bare | p99 / bare | CPU per request |");
    println!("|---|---:|---:|---:|---:|---:|");
    let in_process_names = [
        "roxyd, in-process".to_owned(),
        "bare, in-process".to_owned(),
    ];
    print_pairs(&in_process_names, &in_process, None);
    print_pairs(&names, &processes, Some(&cpu));

    bare_connection.close(0u32.into(), b"done");
    tokio::time::timeout(HANG, bare.wait()).await??;
    roxyds.stop().await
}

/// Prints one row per agent, the bare agent last, with each one's ratio to
/// it and whether roxyd's median meets [`TARGET_RATIO`].
fn print_pairs(names: &[String], spreads: &[Spread], cpu: Option<&[Duration]>) {
    let Some(bare) = spreads.last() else { return };
    for (index, (name, spread)) in names.iter().zip(spreads).enumerate() {
        let median = spread.median.as_secs_f64() / bare.median.as_secs_f64();
        let verdict = if index + 1 == spreads.len() {
            ""
        } else if median <= TARGET_RATIO {
            " (met)"
        } else {
            " (NOT met)"
        };
        println!(
            "| {name} | {} | {} | {median:.2}x{verdict} | {} | {} |",
            common::micros(spread.median),
            common::micros(spread.p99),
            common::ratio(spread.p99, bare.p99),
            cpu.map_or_else(|| "-".to_owned(), |cpu| common::micros(cpu[index]))
        );
    }
}
