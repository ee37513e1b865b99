//! The throughput matrix: roxyd's real binary beside a bare quinn agent on a
//! one-thread and on a multi-thread runtime, with 1 to 256 requests in
//! flight on one connection, plus the sequential round trip and peak memory
//! of each, all in the same run.
//!
//! Run it as root only inside a PID namespace:
//!
//! ```text
//! cargo bench --features test-backend --bench throughput
//! ```
//!
//! (on the development machine through its PID-namespace wrapper). Every
//! roxyd it starts is the `test-backend` build; its startup line is checked
//! for the recorder before any power request, and the run aborts otherwise.
//!
//! The bare agent answers each stream's 9-byte request frame with the 6-byte
//! reply frame and finishes, nothing else; it uses roxyd's own TLS and
//! transport set-up (`tls::client_config`, `connection::client_endpoint`), so only
//! roxyd's logic and runtime differ. Environment: `ROXYD_BENCH_QUICK=1`
//! divides every count by ten. Without `--bench` it does nothing.

use std::{
    ffi::OsString,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use roxyd::{
    config::Config,
    connection, tls,
    wire::{self, RequestCode},
};
use roxyd_lab::{Lab, SERVER_NAME, manager::server_config, pki::PkiFiles};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    task::JoinSet,
};

type BenchError = Box<dyn std::error::Error + Send + Sync>;
type BenchResult<T> = Result<T, BenchError>;

/// The echo request frame (code 17, empty body) as the Manager sends it.
/// Echo, as in issue 12: what is measured is the connection and dispatch,
/// not the test backend's bookkeeping of power operations.
const REQUEST_FRAME: [u8; 8] = [0, 0, 0, 4, 17, 0, 0, 0];
/// The reply frame `Ok(())`.
const REPLY_FRAME: [u8; 5] = [0, 0, 0, 1, 0];
/// The startup line of a roxyd built with the recorder.
const RECORDER_BACKEND: &str = r#"backend="recorder""#;
/// Turns a hang into an error: a safety net, not a time the suite relies on.
const HANG: Duration = Duration::from_secs(120);
/// Tells a child started from this binary to act as the bare agent, with
/// the runtime flavour this variable names, at the Manager address in
/// [`ECHO_MANAGER_ENV`].
const ECHO_FLAVOUR_ENV: &str = "ROXYD_BENCH_ECHO_FLAVOUR";
const ECHO_MANAGER_ENV: &str = "ROXYD_BENCH_ECHO_MANAGER";
const ECHO_CERT_ENV: &str = "ROXYD_BENCH_ECHO_CERT";
const ECHO_KEY_ENV: &str = "ROXYD_BENCH_ECHO_KEY";
const ECHO_CA_ENV: &str = "ROXYD_BENCH_ECHO_CA";
/// The PID namespace of the host; running as root in it could reboot it.
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";
/// Requests in flight at each level of the matrix.
const IN_FLIGHT: [usize; 6] = [1, 8, 32, 64, 128, 256];

fn main() -> ExitCode {
    if let Ok(flavour) = std::env::var(ECHO_FLAVOUR_ENV) {
        let builder = if flavour == "multi" {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        return block_on(builder, echo_agent_process());
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // Test discovery (nextest): this binary holds no tests.
        return ExitCode::SUCCESS;
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("throughput: a benchmark; run it with `cargo bench --features test-backend`");
        return ExitCode::SUCCESS;
    }
    block_on(manager_runtime(), suite())
}

/// The Manager side's runtime: two workers, as in the power suite, or one
/// thread with `ROXYD_BENCH_MANAGER=one`.
fn manager_runtime() -> tokio::runtime::Builder {
    if std::env::var("ROXYD_BENCH_MANAGER").is_ok_and(|v| v == "one") {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    builder
}

/// Runs `work` as a task on a runtime from `builder`.
fn block_on(
    mut builder: tokio::runtime::Builder,
    work: impl Future<Output = BenchResult<()>> + Send + 'static,
) -> ExitCode {
    let run = |runtime: tokio::runtime::Runtime| {
        runtime.block_on(async { tokio::spawn(work).await.map_err(BenchError::from)? })
    };
    match builder
        .enable_all()
        .build()
        .map_err(BenchError::from)
        .and_then(run)
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses to run as root in the host's PID namespace, where a stray
/// `reboot(2)` would reboot the machine.
fn refuse_host_pid_namespace() -> BenchResult<()> {
    let namespace = std::fs::read_link("/proc/self/ns/pid")?;
    if nix::unistd::Uid::effective().is_root() && namespace.as_os_str() == INITIAL_PID_NAMESPACE {
        return Err("running as root in the host PID namespace; run it in a fresh one".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The agents.

/// The bare agent: answers every stream's request frame with the reply
/// frame, one task per stream.
async fn echo_agent_process() -> BenchResult<()> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let manager: SocketAddr = var(ECHO_MANAGER_ENV)?.parse()?;
    let client = tls::client_config(
        tls::load_certs(Path::new(&var(ECHO_CERT_ENV)?))?,
        tls::load_private_key(Path::new(&var(ECHO_KEY_ENV)?))?,
        tls::load_roots(&[var(ECHO_CA_ENV)?])?,
        Config::default().max_concurrent_streams,
    )?;
    let endpoint = connection::client_endpoint(manager, client)?;
    let connection = endpoint.connect(manager, SERVER_NAME)?.await?;
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        // As an agent must: answer every request frame until the Manager
        // ends the stream.
        tokio::spawn(async move {
            let mut request = [0_u8; REQUEST_FRAME.len()];
            while recv.read_exact(&mut request).await.is_ok() {
                if send.write_all(&REPLY_FRAME).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
    }
    Ok(())
}

/// The Manager's handle on an agent under test.
#[derive(Clone, Debug)]
struct Target(quinn::Connection);

impl Target {
    /// One echo request as a 0.18 Manager sends it: a new stream, the
    /// request frame, the reply frame read, then both halves dropped (a FIN
    /// and, unless the agent's FIN has arrived, a `STOP_SENDING` after the
    /// reply). `false` when the reply was not `Ok(())`.
    async fn request(&self) -> BenchResult<bool> {
        let (mut send, mut recv) = self.0.open_bi().await?;
        send.write_all(&REQUEST_FRAME).await?;
        let mut reply = [0_u8; REPLY_FRAME.len()];
        recv.read_exact(&mut reply).await?;
        Ok(reply == REPLY_FRAME)
    }
}

fn spawn_bare(files: &PkiFiles, server: &quinn::Endpoint, flavour: &str) -> BenchResult<Child> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env(ECHO_FLAVOUR_ENV, flavour)
        .env(ECHO_MANAGER_ENV, server.local_addr()?.to_string())
        .env(ECHO_CERT_ENV, &files.agent_cert)
        .env(ECHO_KEY_ENV, &files.agent_key)
        .env(ECHO_CA_ENV, &files.ca_cert)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    Ok(command.spawn()?)
}

async fn accept_bare(server: &quinn::Endpoint) -> BenchResult<quinn::Connection> {
    let incoming = tokio::time::timeout(HANG, server.accept())
        .await?
        .ok_or("the bare agent's endpoint closed")?;
    Ok(incoming.await?)
}

/// Starts the real binary (the recorder chosen explicitly, default
/// configuration, `info` logging without the recorder's line per call) and
/// checks its startup line names the recorder before anything else happens.
async fn spawn_roxyd(files: &PkiFiles, manager: SocketAddr) -> BenchResult<Child> {
    let args: [OsString; 9] = [
        "--backend".into(),
        "recorder".into(),
        "--cert".into(),
        files.agent_cert.clone().into(),
        "--key".into(),
        files.agent_key.clone().into(),
        "--ca-certs".into(),
        files.ca_cert.clone().into(),
        format!("{SERVER_NAME}@{manager}").into(),
    ];
    let mut command = Command::new(env!("CARGO_BIN_EXE_roxyd"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ROXYD_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info,roxyd::platform::recorder=warn");
    let mut child = command.spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let startup = tokio::time::timeout(HANG, async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("roxyd starting") {
                return Ok::<_, std::io::Error>(Some(line));
            }
        }
        Ok(None)
    })
    .await??
    .ok_or("roxyd ended before its startup line")?;
    if !startup.contains(RECORDER_BACKEND) {
        let _ = child.start_kill();
        return Err(format!("ABORTED: not the recording build: {startup}").into());
    }
    // Keep reading its log so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(child)
}

// ---------------------------------------------------------------------------
// Measuring.

#[derive(Clone, Copy, Debug)]
struct Spread {
    median: Duration,
    p99: Duration,
}

impl Spread {
    /// Nearest-rank percentiles; `samples` must not be empty.
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let rank = |per_cent: usize| samples[(samples.len() * per_cent).div_ceil(100).max(1) - 1];
        Self {
            median: rank(50),
            p99: rank(99),
        }
    }
}

/// Sequential round trips of every target, in alternating blocks so that a
/// change in the machine's load falls on all alike.
async fn round_trips(targets: &[Target], count: usize) -> BenchResult<Vec<Spread>> {
    const BLOCKS: usize = 10;
    for target in targets {
        for _ in 0..count / 10 {
            target.request().await?;
        }
    }
    let mut samples = vec![Vec::new(); targets.len()];
    for _ in 0..BLOCKS {
        for (target, samples) in targets.iter().zip(&mut samples) {
            for _ in 0..count / BLOCKS {
                let sent = Instant::now();
                if target.request().await? {
                    samples.push(sent.elapsed());
                }
            }
        }
    }
    samples
        .iter_mut()
        .map(|samples| {
            if samples.is_empty() {
                return Err("no request answered Ok(())".into());
            }
            Ok(Spread::of(samples))
        })
        .collect()
}

/// Requests per second with `in_flight` tasks, each sending sequentially,
/// until `total` requests have ended, and how many were not answered
/// `Ok(())`.
async fn throughput(target: &Target, in_flight: usize, total: usize) -> BenchResult<(f64, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..in_flight {
        let (target, next) = (target.clone(), Arc::clone(&next));
        tasks.spawn(async move {
            let mut other = 0;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                other += usize::from(!target.request().await?);
            }
            Ok::<_, BenchError>(other)
        });
    }
    let mut other = 0;
    while let Some(task) = tokio::time::timeout(HANG, tasks.join_next()).await? {
        other += task??;
    }
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    Ok((total as f64 / started.elapsed().as_secs_f64(), other))
}

/// Time on CPU of every thread of a process, from
/// `/proc/PID/task/*/schedstat`; zero when the kernel does not keep it.
fn cpu_time(pid: u32) -> Duration {
    let read = || -> Option<u64> {
        let mut total = 0_u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(total)
    };
    Duration::from_nanos(read().unwrap_or(0))
}

/// Peak resident set (`VmHWM`) of a process, in KiB.
fn peak_rss(pid: u32) -> BenchResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("no VmHWM")?;
    Ok(value.parse()?)
}

// ---------------------------------------------------------------------------
// The suite.

/// One level of the matrix: requests in flight, each agent's rate and CPU
/// time per request, and roxyd's requests not answered `Ok(())`.
type Level = (usize, [f64; 3], [Duration; 3], usize);

fn render(
    per_level: usize,
    sequential: usize,
    rates: &[Level],
    spreads: &[Spread],
    peaks: &[BenchResult<u64>; 3],
) -> BenchResult<String> {
    let mut out = String::new();
    writeln!(
        out,
        "\n## Throughput (echo requests per second, one connection, {per_level} requests per level)\n"
    )?;
    writeln!(
        out,
        "| in flight | {} | {} | {} | roxyd / better bare | agent CPU per request (same order) | roxyd not Ok |",
        NAMES[0], NAMES[1], NAMES[2]
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|")?;
    for (in_flight, [roxyd_rate, one_rate, multi_rate], cpu, other) in rates {
        let cpu = cpu.map(|c| format!("{:.1}", c.as_secs_f64() * 1e6));
        writeln!(
            out,
            "| {in_flight} | {roxyd_rate:.0}/s | {one_rate:.0}/s | {multi_rate:.0}/s | {:.2}x | {} / {} / {} us | {other} |",
            roxyd_rate / one_rate.max(*multi_rate),
            cpu[0],
            cpu[1],
            cpu[2]
        )?;
    }
    writeln!(
        out,
        "\n## Sequential round trip ({sequential} each, alternating blocks)\n"
    )?;
    writeln!(out, "| | median | p99 | peak RSS (VmHWM) |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    for ((name, spread), peak) in NAMES.iter().zip(spreads).zip(peaks) {
        let peak = match peak {
            Ok(kib) => format!("{:.2} MiB", f64::from(u32::try_from(*kib)?) / 1024.0),
            Err(e) => format!("({e})"),
        };
        writeln!(
            out,
            "| {name} | {:.1} us | {:.1} us | {peak} |",
            spread.median.as_secs_f64() * 1e6,
            spread.p99.as_secs_f64() * 1e6
        )?;
    }
    Ok(out)
}

const NAMES: [&str; 3] = ["roxyd", "bare, one thread", "bare, multi-thread"];

/// Pins the frames to the bytes roxyd's own wire code produces.
fn check_frames() -> BenchResult<()> {
    let frame = |payload: &[u8]| {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        [&len.to_be_bytes()[..], payload].concat()
    };
    let request = wire::encode_request(RequestCode::ECHO, &[]);
    let reply = wire::encode(&Ok::<(), String>(()));
    if frame(&request) != REQUEST_FRAME || frame(&reply) != REPLY_FRAME {
        return Err("the bench's frames differ from roxyd's wire encoding".into());
    }
    Ok(())
}

async fn suite() -> BenchResult<()> {
    refuse_host_pid_namespace()?;
    check_frames()?;
    let quick = std::env::var("ROXYD_BENCH_QUICK").is_ok_and(|v| v == "1");
    let divisor = if quick { 10 } else { 1 };
    let per_level = 20_000 / divisor;
    let sequential = 10_000 / divisor;

    let lab = Lab::new()?;
    let dir = tempfile::TempDir::new()?;
    let files = lab.pki.write_to(dir.path())?;
    let mut roxyd = spawn_roxyd(&files, lab.manager.local_addr()?).await?;
    let session = tokio::time::timeout(HANG, lab.manager.accept()).await??;
    let pki = &lab.pki;
    let server = quinn::Endpoint::server(
        server_config(pki.manager.chain(), pki.manager.key(), pki.roots()?)?,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )?;
    let mut one = spawn_bare(&files, &server, "one")?;
    let one_connection = accept_bare(&server).await?;
    let mut multi = spawn_bare(&files, &server, "multi")?;
    let multi_connection = accept_bare(&server).await?;
    let targets = [
        Target(session.connection().clone()),
        Target(one_connection.clone()),
        Target(multi_connection.clone()),
    ];
    let pids = [&roxyd, &one, &multi].map(|child| child.id().unwrap_or(0));

    eprintln!("throughput: sequential round trips ...");
    let spreads = round_trips(&targets, sequential).await?;
    let mut rates = Vec::new();
    for in_flight in IN_FLIGHT {
        eprintln!("throughput: {in_flight} in flight ...");
        // Two alternating halves per agent.
        let mut time = [0.0; 3];
        let mut cpu = [Duration::ZERO; 3];
        let mut other = 0;
        for _ in 0..2 {
            for (index, target) in targets.iter().enumerate() {
                let before = cpu_time(pids[index]);
                let (rate, not_initiated) = throughput(target, in_flight, per_level / 2).await?;
                cpu[index] += cpu_time(pids[index]).saturating_sub(before);
                time[index] += 1.0 / rate;
                if index == 0 {
                    other += not_initiated;
                }
            }
        }
        let per_request = u32::try_from(per_level)?;
        rates.push((
            in_flight,
            time.map(|t| 2.0 / t),
            cpu.map(|c| c / per_request),
            other,
        ));
    }
    let peaks = pids.map(peak_rss);

    print!(
        "{}",
        render(per_level, sequential, &rates, &spreads, &peaks)?
    );

    for connection in [&one_connection, &multi_connection] {
        connection.close(0u32.into(), b"done");
    }
    for child in [&mut one, &mut multi] {
        tokio::time::timeout(HANG, child.wait()).await??;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pids[0])?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    tokio::time::timeout(HANG, roxyd.wait()).await??;
    Ok(())
}
