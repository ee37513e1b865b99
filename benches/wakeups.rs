//! Wakeups: how often an idle, connected roxyd is woken, with and without a
//! stream the Manager left half-written, beside the bare quinn agent.
//!
//! Every build under test (this tree's, then those of `ROXYBENCH_ALSO`)
//! runs as the real binary with the recorder and
//! `ROXYD_STREAM_IDLE_TIMEOUT_SECS=1`, connected to the lab Manager on
//! loopback. For each, the context switches (voluntary and involuntary) of
//! all its threads, from `/proc/PID/task/*/status`, are counted over an idle
//! window:
//!
//! 1. connected, nothing sent but QUIC keep-alives;
//! 2. with a held stream: the Manager opens a stream, writes two bytes of a
//!    frame header and nothing more; once roxyd has closed it for idleness
//!    (its FIN seen by the Manager), the Manager neither finishes nor resets
//!    it (a Manager task that died mid-request).
//!
//! The bare agent (one thread) is measured alike, with the same held stream
//! (it never closes it).
//!
//! ```text
//! scripts/safe-run cargo bench --features test-backend --bench wakeups
//! ```
//!
//! `ROXYBENCH_IDLE_SECS=N` sets each window (default 10).

#[allow(dead_code)]
mod common;

use std::{process::ExitCode, time::Duration};

use common::{BenchResult, HANG, RoxydProcess};

const NAME: &str = "wakeups";
/// Quiet time before a window, so that the start of a connection or the
/// close of a stream is not counted.
const SETTLE: Duration = Duration::from_secs(2);
/// The idle timeout roxyd runs with, so that it closes the held stream soon.
const IDLE_TIMEOUT: (&str, &str) = ("ROXYD_STREAM_IDLE_TIMEOUT_SECS", "1");

fn main() -> ExitCode {
    common::main(NAME, common::two_workers(), suite)
}

async fn suite() -> BenchResult<()> {
    let window = match std::env::var("ROXYBENCH_IDLE_SECS") {
        Ok(text) => Duration::from_secs(
            text.parse()
                .map_err(|e| format!("ROXYBENCH_IDLE_SECS={text}: {e}"))?,
        ),
        Err(_) => Duration::from_secs(10),
    };
    let lab = roxyd_lab::Lab::new()?;
    let dir = tempfile::TempDir::new()?;
    let files = lab.pki.write_to(dir.path())?;
    let manager = lab.manager.local_addr()?;
    let mut builds = vec![("roxyd".to_owned(), common::this_roxyd())];
    builds.extend(common::also_binaries()?);

    let mut rows = Vec::new();
    for (name, binary) in builds {
        common::progress(NAME, &name);
        let mut roxyd = RoxydProcess::start_with(&binary, &files, manager, &[IDLE_TIMEOUT])?;
        roxyd.confirm_recorder().await?;
        let session = common::accept_roxyd(&lab).await?;
        let connection = session.connection().clone();
        let idle = rate(roxyd.pid, window).await;
        let _held = hold_one(&connection, true).await?;
        let held = rate(roxyd.pid, window).await;
        rows.push((name, idle, held));
        roxyd.stop().await?;
    }

    common::progress(NAME, "bare agent");
    let server = common::bare_server(&lab)?;
    let (mut bare, connection) = common::spawn_bare(&files, &server, "one").await?;
    let pid = bare.id().ok_or("the bare agent exited")?;
    let idle = rate(pid, window).await;
    let held_stream = hold_one(&connection, false).await?;
    let held = rate(pid, window).await;
    rows.push(("bare agent".to_owned(), idle, held));
    drop(held_stream);
    connection.close(0u32.into(), b"done");
    tokio::time::timeout(HANG, bare.wait()).await??;

    println!(
        "\n## Wakeups of an idle connected agent ({} s windows)\n",
        window.as_secs()
    );
    println!("| agent | idle, wakeups/s | with a held stream, wakeups/s |");
    println!("|---|---:|---:|");
    for (name, idle, held) in rows {
        println!("| {name} | {idle:.1} | {held:.1} |");
    }
    Ok(())
}

/// Opens a stream, writes two bytes of a frame header and keeps both halves;
/// with `closed_by_agent`, returns once the agent has finished its side (its
/// idle close).
async fn hold_one(
    connection: &quinn::Connection,
    closed_by_agent: bool,
) -> BenchResult<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(&[0, 0]).await?;
    if closed_by_agent {
        // The agent's FIN: it closed the stream for idleness.
        let end = tokio::time::timeout(HANG, recv.read_to_end(1024)).await?;
        if end.is_err() {
            return Err(format!("the held stream ended otherwise: {end:?}").into());
        }
    }
    Ok((send, recv))
}

/// Context switches per second of every thread of `pid` over `window`,
/// after [`SETTLE`].
async fn rate(pid: u32, window: Duration) -> f64 {
    tokio::time::sleep(SETTLE).await;
    let before = switches(pid);
    tokio::time::sleep(window).await;
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let count = switches(pid).saturating_sub(before) as f64;
    count / window.as_secs_f64()
}

/// Voluntary and involuntary context switches of every thread of `pid`.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .map(|status| {
            ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
                .iter()
                .filter_map(|name| common::proc_field(&status, name).ok())
                .sum::<u64>()
        })
        .sum()
}
