//! Throughput matrix: requests per second at 1 to 256 in flight on one connection, roxyd's real binary beside bare quinn agents.
//!
//! In one run: roxyd (and any `ROXYBENCH_ALSO` builds) beside the bare
//! agent on a one-thread and on a two-worker runtime; for each of 1, 8, 32,
//! 64, 128 and 256 echo requests in flight, 20,000 requests per agent (2,000
//! per request in flight from 10 up) in twelve alternating slices, each agent
//! process's CPU time per request and the Manager's while it served that
//! agent; then 10,000 sequential round trips each and each process's peak
//! RSS, and its anonymous and file pages at the end.
//!
//! ```text
//! scripts/safe-run cargo bench --features test-backend --bench throughput
//! ```
//!
//! `ROXYBENCH_MANAGER=one` puts the Manager side on one thread instead of
//! two workers; `ROXYBENCH_QUICK=1` divides the counts by ten;
//! `ROXYBENCH_PIN=0` leaves the processes unpinned (by default the
//! Manager runs on CPU 0 and every agent on CPU 1);
//! `ROXYBENCH_LEVELS=64,256` measures only those levels;
//! `ROXYBENCH_PER_LEVEL=N` sends N requests per agent at every level.
//! Without `--bench` it does nothing.

#[allow(dead_code)]
mod common;

use std::{fmt::Write as _, process::ExitCode, time::Duration};

use common::{BenchResult, HANG, Spread, Target};
use roxyd_lab::Lab;

const NAME: &str = "throughput";
/// Requests in flight at each level of the matrix.
const IN_FLIGHT: [usize; 6] = [1, 8, 32, 64, 128, 256];
/// Each level's requests per agent are sent in this many alternating
/// slices: with the usual three agents, each starts a forward and a
/// backward round equally often (see [`slice_order`]).
const SLICES: usize = 12;

fn main() -> ExitCode {
    common::main(NAME, common::manager_runtime(), suite)
}

/// Process `pid`'s peak RSS, and what it has resident now, in KiB.
fn resident(pid: u32) -> BenchResult<(u64, common::Memory)> {
    Ok((common::peak_rss(pid)?, common::Memory::of(pid)?))
}

/// One level of the matrix: requests in flight, each agent's rate and CPU
/// time per request, and roxyd's requests not answered `Ok(())`.
struct Level {
    in_flight: usize,
    rates: Vec<f64>,
    cpu: Vec<Duration>,
    /// The Manager's CPU time per request while it served each agent.
    manager_cpu: Vec<Duration>,
    /// Datagrams the agent sent and received per request, as the Manager's
    /// side of each connection counted them.
    datagrams: Vec<(f64, f64)>,
    other: usize,
    /// Requests each agent served at this level.
    requests: usize,
}

async fn suite() -> BenchResult<()> {
    let divisor = common::divisor();
    let fixed_count = std::env::var("ROXYBENCH_PER_LEVEL")
        .ok()
        .map(|v| v.parse::<usize>())
        .transpose()?;
    let sequential = 10_000 / divisor;

    let lab = Lab::new()?;
    let dir = tempfile::TempDir::new()?;
    let files = lab.pki.write_to(dir.path())?;
    let roxyds = common::Roxyds::spawn(&lab, &files).await?;
    let mut names = roxyds.names.clone();
    let mut targets = roxyds.targets.clone();
    let roxyd_count = roxyds.processes.len();
    let server = common::bare_server(&lab)?;
    let (mut one, one_connection) = common::spawn_bare(&files, &server, "one").await?;
    let (mut multi, multi_connection) = common::spawn_bare(&files, &server, "multi").await?;
    names.extend([
        "bare, one thread".to_owned(),
        "bare, multi-thread".to_owned(),
    ]);
    targets.extend([
        Target(one_connection.clone()),
        Target(multi_connection.clone()),
    ]);
    let mut pids = roxyds.pids();
    pids.extend([&one, &multi].map(|child| child.id().unwrap_or(0)));
    // The Manager on one core, every agent on the other.
    for pid in &pids {
        common::pin(*pid, 1);
    }
    common::pin(std::process::id(), 0);

    common::progress(NAME, "sequential round trips");
    let spreads = common::round_trips(&targets, sequential).await?;
    let mut levels = Vec::new();
    for in_flight in in_flight_levels()? {
        let per_level = fixed_count.unwrap_or_else(|| requests_at(in_flight) / divisor);
        common::progress(NAME, &format!("{in_flight} in flight"));
        // Untimed: every agent's first round at this level (its streams
        // and tasks growing to the new level) is not in any slice.
        for target in &targets {
            common::throughput(target, in_flight, in_flight * 20).await?;
        }
        // Alternating slices, so that the swings of a shared 2-core machine
        // (where the scheduler puts each process) fall on every agent alike.
        let mut time = vec![0.0; targets.len()];
        let mut cpu = vec![Duration::ZERO; targets.len()];
        let mut manager_cpu = vec![Duration::ZERO; targets.len()];
        let mut datagrams = vec![(0_u64, 0_u64); targets.len()];
        let mut other = 0;
        for slice in 0..SLICES {
            for index in slice_order(slice, targets.len()) {
                let target = &targets[index];
                // So that what the agent before left behind (its streams'
                // ends, the two-worker agent's threads parking) is done
                // before the clock starts.
                tokio::time::sleep(SETTLE).await;
                let before = common::cpu_time(pids[index]);
                let manager_before = common::cpu_time(std::process::id());
                let counted = target.0.stats();
                let (rate, not_ok) =
                    common::throughput(target, in_flight, per_level / SLICES).await?;
                cpu[index] += common::cpu_time(pids[index]).saturating_sub(before);
                manager_cpu[index] +=
                    common::cpu_time(std::process::id()).saturating_sub(manager_before);
                let now = target.0.stats();
                datagrams[index].0 += now.udp_rx.datagrams - counted.udp_rx.datagrams;
                datagrams[index].1 += now.udp_tx.datagrams - counted.udp_tx.datagrams;
                time[index] += 1.0 / rate;
                if index < roxyd_count {
                    other += not_ok;
                }
            }
        }
        let per_request = u32::try_from(per_level)?;
        levels.push(Level {
            in_flight,
            #[allow(clippy::cast_precision_loss, reason = "a small count")]
            rates: time.iter().map(|t| SLICES as f64 / t).collect(),
            cpu: cpu.iter().map(|c| *c / per_request).collect(),
            manager_cpu: manager_cpu.iter().map(|c| *c / per_request).collect(),
            #[allow(clippy::cast_precision_loss, reason = "small counts")]
            datagrams: datagrams
                .iter()
                .map(|(sent, received)| {
                    let per = per_level as f64;
                    (*sent as f64 / per, *received as f64 / per)
                })
                .collect(),
            other,
            requests: per_level,
        });
    }
    let peaks: Vec<_> = pids.iter().map(|pid| resident(*pid)).collect();
    let report = Report {
        names: &names,
        roxyd_count,
        sequential,
    };
    print!("{}", report.render(&levels, &spreads, &peaks)?);

    for connection in [&one_connection, &multi_connection] {
        connection.close(0u32.into(), b"done");
    }
    for child in [&mut one, &mut multi] {
        tokio::time::timeout(HANG, child.wait()).await??;
    }
    roxyds.stop().await
}

/// Each duration in microseconds, one decimal.
fn micros_each(durations: &[Duration]) -> Vec<String> {
    durations
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64() * 1e6))
        .collect()
}

/// The pause before each slice.
const SETTLE: Duration = Duration::from_millis(20);

/// The order of the agents in slice `slice`: forwards, then backwards, and
/// starting one agent later every two slices, so that no agent always
/// comes first, last or after the same one. In a fixed order the first
/// agent measured 3-5% below identical builds in other places.
fn slice_order(slice: usize, agents: usize) -> Vec<usize> {
    let start = slice / 2;
    let order = (0..agents).map(|i| (i + start) % agents);
    if slice % 2 == 0 {
        order.collect()
    } else {
        order.rev().collect()
    }
}

/// Requests per agent at `in_flight`: 20,000, and 2,000 per request in
/// flight from 10 up, so that every slice is many rounds of the window, not
/// its ramp-up and drain (at 256 in flight a 2,000-request slice was under
/// eight rounds), and a level lasts long enough to average out the swings
/// of a shared machine.
fn requests_at(in_flight: usize) -> usize {
    (in_flight * 2_000).max(20_000)
}

/// The in-flight levels: `ROXYBENCH_LEVELS` (`64,256`), else [`IN_FLIGHT`].
fn in_flight_levels() -> BenchResult<Vec<usize>> {
    match std::env::var("ROXYBENCH_LEVELS") {
        Ok(list) => Ok(list.split(',').map(str::parse).collect::<Result<_, _>>()?),
        Err(_) => Ok(IN_FLIGHT.to_vec()),
    }
}

struct Report<'a> {
    names: &'a [String],
    /// The first this many agents are roxyd builds, the last two bare.
    roxyd_count: usize,
    sequential: usize,
}

impl Report<'_> {
    fn render(
        &self,
        levels: &[Level],
        spreads: &[Spread],
        peaks: &[BenchResult<(u64, common::Memory)>],
    ) -> BenchResult<String> {
        let mut out = String::new();
        let manager = if std::env::var("ROXYBENCH_MANAGER").is_ok_and(|v| v == "one") {
            "one thread"
        } else {
            "two workers"
        };
        writeln!(
            out,
            "\n## Throughput (echo requests per second, one connection, Manager on {manager})\n"
        )?;
        let roxyds = &self.names[..self.roxyd_count];
        writeln!(
            out,
            "| in flight | requests each | {} | {} / better bare | agent CPU per request ({}) | Manager CPU per request | agent datagrams sent / received per request | roxyd not Ok |",
            self.names.join(" | "),
            roxyds.join(" , "),
            self.names.join(" / "),
        )?;
        writeln!(
            out,
            "|---:|---:|{}---:|---:|---:|---:|---:|",
            "---:|".repeat(self.names.len())
        )?;
        for level in levels {
            let rates: Vec<String> = level.rates.iter().map(|r| format!("{r:.0}/s")).collect();
            let bare = level.rates[self.roxyd_count..]
                .iter()
                .copied()
                .fold(0.0_f64, f64::max);
            let ratios: Vec<String> = level.rates[..self.roxyd_count]
                .iter()
                .map(|r| format!("{:.2}x", r / bare))
                .collect();
            let cpu = micros_each(&level.cpu);
            let manager_cpu = micros_each(&level.manager_cpu);
            let datagrams: Vec<String> = level
                .datagrams
                .iter()
                .map(|(sent, received)| format!("{sent:.2}/{received:.2}"))
                .collect();
            writeln!(
                out,
                "| {} | {} | {} | {} | {} us | {} us | {} | {} |",
                level.in_flight,
                level.requests,
                rates.join(" | "),
                ratios.join(" , "),
                cpu.join(" / "),
                manager_cpu.join(" / "),
                datagrams.join(" , "),
                level.other
            )?;
        }
        writeln!(
            out,
            "\n## Sequential round trip ({} each, alternating blocks)\n",
            self.sequential
        )?;
        writeln!(
            out,
            "| | median | p99 | peak RSS (VmHWM) | at the end: RssAnon | RssFile |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
        for ((name, spread), resident) in self.names.iter().zip(spreads).zip(peaks) {
            let peak = match resident {
                Ok((peak, now)) => format!(
                    "{} | {} | {}",
                    common::mib(*peak),
                    common::mib(now.anon),
                    common::mib(now.file)
                ),
                Err(e) => format!("({e}) | | "),
            };
            writeln!(
                out,
                "| {name} | {} | {} | {peak} |",
                common::micros(spread.median),
                common::micros(spread.p99)
            )?;
        }
        Ok(out)
    }
}
