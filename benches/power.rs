//! The power-path benchmark suite: what roxyd adds between a Manager's power
//! request and its reply, over real QUIC with mutual TLS on loopback, with
//! the recording backend.
//!
//! Run it as root only inside a PID namespace:
//!
//! ```text
//! scripts/safe-run cargo bench --features test-backend --bench power
//! ```
//!
//! It measures (see `docs/performance.md` for the method):
//!
//! 1. the `GracefulReboot` round trip, sequential on one connection, for
//!    roxyd and for a bare quinn echo with the same frames and the same TLS
//!    set-up (the floor), in-process and as separate processes;
//! 2. the immediate `Reboot` timeline from the recorder's journal;
//! 3. process start of the real binary to handshake complete;
//! 4. the real binary's resident memory and idle CPU time;
//! 5. throughput with 1, 8 and 64 concurrent streams.
//!
//! Rules this file must not break: every roxyd process it starts is the
//! `test-backend` build (the recorder); its startup line is checked for the
//! recorder before it is sent any power request, and the run aborts
//! otherwise. The in-process agents use `Recorder` by type.
//!
//! Environment: `ROXYD_BENCH_IDLE_SECS` (default 60) is the idle window of
//! (4); `ROXYD_BENCH_QUICK=1` divides every count by ten, for trying changes;
//! `ROXYD_BENCH_RUST_LOG` becomes the real binary's `RUST_LOG` (default
//! `info,roxyd::platform::recorder=warn`: the recorder's line per call is a
//! cost of the test backend alone; any filter must keep the startup line). Without `--bench` (as `cargo test` and nextest run it)
//! it does nothing.

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

use roxyd::dispatch::journal::{Entry, Recorder};
use roxyd::{
    config::Config,
    connection,
    dispatch::{DispatchEvent, Dispatcher},
    platform::ImmediateOp,
    reply::{self, Delivery, WireForm},
    tls,
    wire::{self, NodePowerRequest, NodePowerResponse, RequestCode},
};
use roxyd_lab::{
    Lab, SERVER_NAME,
    manager::{AgentSession, ManagerError, server_config},
    pki::PkiFiles,
};

/// The agent's tests' glue for connecting an in-process agent to the lab.
#[path = "../tests/support/lab_agent.rs"]
#[allow(dead_code)]
mod lab_agent;
use lab_agent::LabAgents;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
    task::JoinSet,
};

type BenchError = Box<dyn std::error::Error + Send + Sync>;
type BenchResult<T> = Result<T, BenchError>;

/// The `GracefulReboot` request frame as the Manager sends it: length 5,
/// code 106 little-endian, variant 2.
const REQUEST_FRAME: [u8; 9] = [0, 0, 0, 5, 106, 0, 0, 0, 2];
/// The reply frame `Ok(Initiated)`: length 2, `Ok`, `Initiated`.
const REPLY_FRAME: [u8; 6] = [0, 0, 0, 2, 0, 0];
/// The startup line of a roxyd built with the recorder.
const RECORDER_BACKEND: &str = r#"backend="recorder""#;
/// Part of what roxyd logs when it closes waiting streams to make room for
/// new ones.
const EVICTION_WARNING: &str = "closing those that waited longest";
/// Turns a hang into an error: a safety net, not a time the suite relies on.
const HANG: Duration = Duration::from_secs(60);
/// Quiet time after a connection before its idle footprint is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Linux reports `/proc/PID/stat` times in `USER_HZ`, 100 per second.
const USER_HZ: u64 = 100;
/// Tells a child started from this binary to act as the floor's agent, at
/// the Manager address this variable holds.
const ECHO_AGENT_ENV: &str = "ROXYD_BENCH_ECHO_AGENT";

/// The real binary's log filter: roxyd's own lines, without the recorder's.
const DEFAULT_RUST_LOG: &str = "info,roxyd::platform::recorder=warn";
const ECHO_CERT_ENV: &str = "ROXYD_BENCH_ECHO_CERT";
const ECHO_KEY_ENV: &str = "ROXYD_BENCH_ECHO_KEY";
const ECHO_CA_ENV: &str = "ROXYD_BENCH_ECHO_CA";
/// The PID namespace of the host; running as root in it could reboot it.
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

/// How much of everything to do.
#[derive(Clone, Copy, Debug)]
struct Counts {
    round_trips: usize,
    blocks: usize,
    warm_up: usize,
    timeline_runs: usize,
    connect_starts: usize,
    throughput_requests: usize,
    idle: Duration,
}

impl Counts {
    fn from_env() -> BenchResult<Self> {
        let idle_secs = match std::env::var("ROXYD_BENCH_IDLE_SECS") {
            Ok(text) => text
                .parse()
                .map_err(|e| format!("ROXYD_BENCH_IDLE_SECS={text}: {e}"))?,
            Err(_) => 60,
        };
        let quick = std::env::var("ROXYD_BENCH_QUICK").is_ok_and(|v| v == "1");
        let divisor = if quick { 10 } else { 1 };
        Ok(Self {
            round_trips: 10_000 / divisor,
            blocks: 10,
            warm_up: 1_000 / divisor,
            timeline_runs: 1_000 / divisor,
            connect_starts: 50 / divisor,
            throughput_requests: 20_000 / divisor,
            idle: Duration::from_secs(idle_secs),
        })
    }
}

fn main() -> ExitCode {
    if let Ok(manager) = std::env::var(ECHO_AGENT_ENV) {
        // The floor's agent runs on a runtime like roxyd's: one thread.
        return block_on(
            tokio::runtime::Builder::new_current_thread(),
            echo_agent_process(manager),
        );
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // Test discovery (nextest): this binary holds no tests.
        return ExitCode::SUCCESS;
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("power: a benchmark suite; run it with `cargo bench --features test-backend`");
        return ExitCode::SUCCESS;
    }
    // The Manager side and the in-process agents share two workers.
    let mut suite_runtime = tokio::runtime::Builder::new_multi_thread();
    suite_runtime.worker_threads(2);
    block_on(suite_runtime, suite())
}

/// Runs `work` as a task on a runtime from `builder`: a task, not the
/// blocked-on future, so that with workers its wake-ups stay on the threads
/// that drive the QUIC connections instead of crossing to the main thread.
fn block_on(
    mut builder: tokio::runtime::Builder,
    work: impl Future<Output = BenchResult<()>> + Send + 'static,
) -> ExitCode {
    let runtime = builder.enable_all().build();
    let run = |runtime: tokio::runtime::Runtime| {
        runtime.block_on(async { tokio::spawn(work).await.map_err(BenchError::from)? })
    };
    match runtime.map_err(BenchError::from).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("power: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn suite() -> BenchResult<()> {
    refuse_host_pid_namespace()?;
    check_frames()?;
    let counts = Counts::from_env()?;
    let started = Instant::now();
    let mut report = Report::default();

    progress("1, 5: in-process round trip and throughput (roxyd and floor)");
    in_process(&counts, &mut report).await?;
    progress("2: immediate path timeline");
    report.timeline = Some(immediate_timeline(&counts).await?);
    progress("3: connect, real binary");
    report.connect = Some(connect_times(&counts).await?);
    progress("1, 4, 5: real binary and floor process");
    separate_processes(&counts, &mut report).await?;

    print!("{}", report.render(&counts, started.elapsed()));
    Ok(())
}

fn progress(what: &str) {
    eprintln!("power: {what} ...");
}

/// Refuses to run as root in the host's PID namespace, where a stray
/// `reboot(2)` would reboot the machine.
fn refuse_host_pid_namespace() -> BenchResult<()> {
    let namespace = std::fs::read_link("/proc/self/ns/pid")?;
    if nix::unistd::Uid::effective().is_root() && namespace.as_os_str() == INITIAL_PID_NAMESPACE {
        return Err("running as root in the host PID namespace; run through \
                    scripts/safe-run (a fresh PID namespace)"
            .into());
    }
    Ok(())
}

/// Pins the floor's frames to the bytes roxyd's own wire code produces, so
/// that the floor moves exactly what roxyd moves.
fn check_frames() -> BenchResult<()> {
    let frame = |payload: &[u8]| {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        [&len.to_be_bytes()[..], payload].concat()
    };
    let request = wire::encode_request(
        RequestCode::NODE_POWER,
        &wire::encode(&NodePowerRequest::GracefulReboot),
    );
    let reply = reply::initiated_payload(WireForm::Grouped);
    if frame(&request) != REQUEST_FRAME || frame(&reply) != REPLY_FRAME {
        return Err("the floor's frames differ from roxyd's wire encoding".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The two kinds of agent under test.

/// The Manager's handle on an agent under test.
#[derive(Clone, Debug)]
enum Target {
    /// roxyd, through the test Manager's `AgentSession::node_power`.
    Roxyd(AgentSession),
    /// The floor: the bare echo, through a minimal request on a new stream.
    Echo(quinn::Connection),
}

/// How one request ended, short of a failed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// `Ok(Initiated)`.
    Initiated,
    /// An error reply: `Err("fail")` while another power operation holds
    /// roxyd's one-at-a-time latch.
    Refused,
    /// The agent ended the stream without a reply; the connection lives.
    Lost,
}

/// Requests that did not end in `Ok(Initiated)`.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    refused: usize,
    lost: usize,
}

impl Tally {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Initiated => {}
            Outcome::Refused => self.refused += 1,
            Outcome::Lost => self.lost += 1,
        }
    }

    fn add(&mut self, other: Self) {
        self.refused += other.refused;
        self.lost += other.lost;
    }

    fn is_clean(self) -> bool {
        self.refused == 0 && self.lost == 0
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.refused, self.lost)
    }
}

impl Target {
    /// Sends one `GracefulReboot` request on a new stream and waits for the
    /// reply.
    async fn request(&self) -> BenchResult<Outcome> {
        match self {
            Self::Roxyd(session) => {
                match session.node_power(NodePowerRequest::GracefulReboot).await {
                    Ok(Ok(NodePowerResponse::Initiated)) => Ok(Outcome::Initiated),
                    Ok(Err(_)) => Ok(Outcome::Refused),
                    Err(ManagerError::Transport(_))
                        if session.connection().close_reason().is_none() =>
                    {
                        Ok(Outcome::Lost)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Self::Echo(connection) => {
                let (mut send, mut recv) = connection.open_bi().await?;
                send.write_all(&REQUEST_FRAME).await?;
                send.finish()?;
                let mut reply = [0_u8; REPLY_FRAME.len()];
                recv.read_exact(&mut reply).await?;
                if reply != REPLY_FRAME {
                    return Err("the echo replied with other bytes".into());
                }
                Ok(Outcome::Initiated)
            }
        }
    }
}

/// The floor's agent side: answers every stream's request frame with the
/// reply frame, one task per stream, and nothing else.
async fn serve_echo(connection: quinn::Connection) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        tokio::spawn(async move {
            let mut request = [0_u8; REQUEST_FRAME.len()];
            if recv.read_exact(&mut request).await.is_ok() {
                let _ = send.write_all(&REPLY_FRAME).await;
                let _ = send.finish();
            }
        });
    }
}

/// The floor's server: a bare quinn endpoint with the Manager's TLS set-up.
fn echo_server(lab: &Lab) -> BenchResult<quinn::Endpoint> {
    let pki = &lab.pki;
    let config = server_config(pki.manager.chain(), pki.manager.key(), pki.roots()?)?;
    Ok(quinn::Endpoint::server(
        config,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )?)
}

async fn accept_echo(server: &quinn::Endpoint) -> BenchResult<quinn::Connection> {
    let incoming = tokio::time::timeout(HANG, server.accept())
        .await?
        .ok_or("the floor's endpoint closed")?;
    Ok(incoming.await?)
}

/// Connects an in-process echo agent with roxyd's client set-up.
async fn in_process_echo(lab: &Lab, server: &quinn::Endpoint) -> BenchResult<quinn::Connection> {
    let addr = server.local_addr()?;
    let endpoint = connection::client_endpoint(addr, lab.client_config()?)?;
    let connecting = endpoint.connect(addr, SERVER_NAME)?;
    let (agent_side, manager_side) = tokio::join!(connecting, accept_echo(server));
    let agent_side = agent_side?;
    tokio::spawn(async move {
        serve_echo(agent_side).await;
        drop(endpoint);
    });
    manager_side
}

/// The floor's agent as a process of its own: this binary, started with
/// [`ECHO_AGENT_ENV`], with a runtime like roxyd's (one thread).
async fn echo_agent_process(manager: String) -> BenchResult<()> {
    let manager: SocketAddr = manager.parse()?;
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let client = tls::client_config(
        tls::load_certs(Path::new(&var(ECHO_CERT_ENV)?))?,
        tls::load_private_key(Path::new(&var(ECHO_KEY_ENV)?))?,
        tls::load_roots(&[var(ECHO_CA_ENV)?])?,
        Config::default().max_concurrent_streams,
    )?;
    let endpoint = connection::client_endpoint(manager, client)?;
    let connection = endpoint.connect(manager, SERVER_NAME)?.await?;
    serve_echo(connection).await;
    Ok(())
}

fn spawn_echo_process(files: &PkiFiles, server: &quinn::Endpoint) -> BenchResult<Child> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env(ECHO_AGENT_ENV, server.local_addr()?.to_string())
        .env(ECHO_CERT_ENV, &files.agent_cert)
        .env(ECHO_KEY_ENV, &files.agent_key)
        .env(ECHO_CA_ENV, &files.ca_cert)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    Ok(command.spawn()?)
}

// ---------------------------------------------------------------------------
// Measuring.

/// Median, 99th percentile and worst of a set of durations.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: Duration,
    p99: Duration,
    worst: Duration,
}

impl Spread {
    /// Nearest-rank percentiles; `samples` must not be empty.
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let rank = |per_cent: usize| {
            let index = (samples.len() * per_cent).div_ceil(100).max(1) - 1;
            samples[index]
        };
        Self {
            median: rank(50),
            p99: rank(99),
            worst: samples[samples.len() - 1],
        }
    }
}

/// Round trips of two targets, measured in alternating blocks so that a
/// change in the machine's load falls on both alike.
#[derive(Debug)]
struct Paired {
    roxyd: Spread,
    floor: Spread,
    /// roxyd's requests that were not answered `Ok(Initiated)`; their times
    /// are left out.
    tally: Tally,
}

async fn round_trips(roxyd: &Target, floor: &Target, counts: &Counts) -> BenchResult<Paired> {
    for _ in 0..counts.warm_up {
        roxyd.request().await?;
        floor.request().await?;
    }
    let block = counts.round_trips / counts.blocks;
    let mut samples = [Vec::new(), Vec::new()];
    let mut tally = Tally::default();
    for _ in 0..counts.blocks {
        for (target, samples) in [roxyd, floor].into_iter().zip(&mut samples) {
            for _ in 0..block {
                let sent = Instant::now();
                let outcome = target.request().await?;
                let elapsed = sent.elapsed();
                tally.count(outcome);
                if outcome == Outcome::Initiated {
                    samples.push(elapsed);
                }
            }
        }
    }
    if samples.iter().any(Vec::is_empty) {
        return Err(format!("no request answered Ok(Initiated): {tally:?}").into());
    }
    let [mut roxyd, mut floor] = samples;
    Ok(Paired {
        roxyd: Spread::of(&mut roxyd),
        floor: Spread::of(&mut floor),
        tally,
    })
}

/// Requests per second with `concurrency` tasks, each sending sequentially,
/// until `total` requests have ended; also those not answered
/// `Ok(Initiated)`.
async fn throughput(
    target: &Target,
    concurrency: usize,
    total: usize,
) -> BenchResult<(f64, Tally)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let target = target.clone();
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                tally.count(target.request().await?);
            }
            Ok::<_, BenchError>(tally)
        });
    }
    let mut tally = Tally::default();
    while let Some(task) = tasks.join_next().await {
        tally.add(task??);
    }
    Ok((per_second(total, started.elapsed()), tally))
}

#[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Throughput of roxyd and the floor at one concurrency.
#[derive(Clone, Copy, Debug)]
struct Rate {
    roxyd: f64,
    floor: f64,
    /// roxyd's requests not answered `Ok(Initiated)`.
    tally: Tally,
}

/// A [`Rate`] for each of [`CONCURRENCY`].
#[derive(Debug, Default)]
struct Rates {
    rows: Vec<Rate>,
}

const CONCURRENCY: [usize; 3] = [1, 8, 64];

async fn rates(roxyd: &Target, floor: &Target, counts: &Counts) -> BenchResult<Rates> {
    let mut rates = Rates::default();
    for concurrency in CONCURRENCY {
        // Two alternating halves each, so that load changes fall on both.
        let half = counts.throughput_requests / 2;
        let (mut roxyd_time, mut floor_time, mut tally) = (0.0, 0.0, Tally::default());
        for _ in 0..2 {
            let (rate, not_initiated) = throughput(roxyd, concurrency, half).await?;
            roxyd_time += 1.0 / rate;
            tally.add(not_initiated);
            floor_time += 1.0 / throughput(floor, concurrency, half).await?.0;
        }
        rates.rows.push(Rate {
            roxyd: 2.0 / roxyd_time,
            floor: 2.0 / floor_time,
            tally,
        });
    }
    Ok(rates)
}

// ---------------------------------------------------------------------------
// Section 1 and 5, in-process.

async fn in_process(counts: &Counts, report: &mut Report) -> BenchResult<()> {
    let lab = Lab::new()?;
    let dispatcher = Arc::new(Dispatcher::new(
        Recorder::new(),
        Config::default().dispatch(),
    ));
    let (session, _agent) = lab.connect(dispatcher).await?;
    let server = echo_server(&lab)?;
    let echo = in_process_echo(&lab, &server).await?;
    let (roxyd, floor) = (Target::Roxyd(session), Target::Echo(echo));
    report.in_process = Some(round_trips(&roxyd, &floor, counts).await?);
    report.in_process_rates = Some(rates(&roxyd, &floor, counts).await?);
    Ok(())
}

// ---------------------------------------------------------------------------
// Section 2: the immediate path timeline.

/// The steps of the immediate path, in order.
const STEPS: [&str; 7] = [
    "Manager sent -> request received",
    "request received -> prepared",
    "prepared -> reply written",
    "reply written -> reply acknowledged",
    "reply acknowledged -> released (Perform)",
    "request received -> released (roxyd total)",
    "Manager sent -> Manager has the reply",
];

#[derive(Debug)]
struct Timeline {
    steps: Vec<Spread>,
    /// How each wait for the acknowledgement ended: acknowledged, stopped by
    /// the Manager, other (lost or timed out).
    deliveries: [usize; 3],
}

async fn immediate_timeline(counts: &Counts) -> BenchResult<Timeline> {
    let lab = Lab::new()?;
    let recorder = Recorder::new();
    let journal = recorder.journal().clone();
    let dispatcher = Arc::new(recorder.dispatcher(Config::default().dispatch()));
    let (session, _agent) = lab.connect(Arc::clone(&dispatcher)).await?;
    let warm_up = counts.timeline_runs / 20;
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut deliveries = [0; 3];
    let mut before = 0;
    for run in 0..warm_up + counts.timeline_runs {
        let sent = Instant::now();
        let reply = session.node_power(NodePowerRequest::Reboot).await?;
        let received = Instant::now();
        if reply != Ok(NodePowerResponse::Initiated) {
            return Err(format!("immediate reboot answered {reply:?}").into());
        }
        // The latch is freed only after `perform` returned: the recorder's
        // Perform entry is in the journal once this resolves.
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
                .ok_or_else(|| BenchError::from(format!("a step is missing: {this:?}")))
        };
        let request = at(&|e| {
            matches!(
                e,
                Entry::Dispatch(DispatchEvent::RequestReceived { code: 106 })
            )
        })?;
        let prepared = at(&|e| matches!(e, Entry::Dispatch(DispatchEvent::Prepared(_))))?;
        let written = at(&|e| {
            matches!(
                e,
                Entry::Dispatch(DispatchEvent::ReplyWritten { ok: true, .. })
            )
        })?;
        let confirmed = at(&|e| matches!(e, Entry::Dispatch(DispatchEvent::DeliveryConfirmed(_))))?;
        let performed = at(&|e| matches!(e, Entry::Perform(ImmediateOp::Reboot)))?;
        let marks = [
            (sent, request),
            (request, prepared),
            (prepared, written),
            (written, confirmed),
            (confirmed, performed),
            (request, performed),
            (sent, received),
        ];
        for ((from, to), samples) in marks.into_iter().zip(&mut samples) {
            samples.push(to.saturating_duration_since(from));
        }
        deliveries[delivery_kind(this)] += 1;
    }
    Ok(Timeline {
        steps: samples.iter_mut().map(|s| Spread::of(s)).collect(),
        deliveries,
    })
}

fn delivery_kind(entries: &[(Instant, Entry)]) -> usize {
    let delivery = entries.iter().find_map(|(_, e)| match e {
        Entry::Dispatch(DispatchEvent::DeliveryConfirmed(d)) => Some(d),
        _ => None,
    });
    match delivery {
        Some(Delivery::Acknowledged) => 0,
        Some(Delivery::Stopped(_)) => 1,
        _ => 2,
    }
}

// ---------------------------------------------------------------------------
// The real binary.

/// A running `roxyd`, the `test-backend` build, whose output lines are read
/// with the time each arrived.
struct RoxydProcess {
    child: Child,
    pid: u32,
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
    seen: Vec<String>,
}

impl RoxydProcess {
    /// Starts roxyd against `manager`; every `ROXYD_` variable and
    /// `RUST_LOG` of this process's environment are cleared, so it runs with
    /// its defaults, except for `RUST_LOG` (see [`DEFAULT_RUST_LOG`]).
    fn spawn(files: &PkiFiles, manager: SocketAddr) -> BenchResult<Self> {
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
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ROXYD_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        // The recorder logs every call it notes, a cost of the test backend
        // alone (a real backend starts a command once per host life): leave
        // it out unless asked.
        let filter =
            std::env::var("ROXYD_BENCH_RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.to_owned());
        command.env("RUST_LOG", filter);
        let mut child = command.spawn()?;
        let pid = child.id().ok_or("roxyd exited at once")?;
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            child,
            pid,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for the first line containing `needle`; returns when it arrived.
    async fn wait_for_line(&mut self, needle: &str) -> BenchResult<(Instant, String)> {
        let found = tokio::time::timeout(HANG, async {
            while let Some((at, line)) = self.lines.recv().await {
                if line.contains(needle) {
                    return Some((at, line));
                }
                self.seen.push(line);
            }
            None
        })
        .await;
        match found {
            Ok(Some(found)) => Ok(found),
            _ => Err(format!(
                "roxyd never printed {needle:?}; it printed:\n{}",
                self.seen.join("\n")
            )
            .into()),
        }
    }

    /// Checks the startup line names the recording backend, and returns when
    /// it arrived. Any other build is killed and the run aborted: it would
    /// carry power requests out.
    async fn confirm_recorder(&mut self) -> BenchResult<Instant> {
        let (at, line) = self.wait_for_line("roxyd starting").await?;
        if !line.contains(RECORDER_BACKEND) {
            let _ = self.child.start_kill();
            return Err(format!(
                "ABORTED: {} is not the recording build; its startup line: {line}",
                env!("CARGO_BIN_EXE_roxyd")
            )
            .into());
        }
        Ok(at)
    }

    /// How many of the lines printed so far, and not yet waited for,
    /// contain `needle`.
    fn count_lines(&mut self, needle: &str) -> usize {
        let mut count = 0;
        while let Ok((_, line)) = self.lines.try_recv() {
            count += usize::from(line.contains(needle));
        }
        count
    }

    /// Stops roxyd with SIGTERM and waits for it to exit.
    async fn stop(mut self) -> BenchResult<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = tokio::time::timeout(HANG, self.child.wait()).await??;
        if !status.success() {
            return Err(format!("roxyd exited with {status} after SIGTERM").into());
        }
        Ok(())
    }
}

async fn accept_roxyd(lab: &Lab) -> BenchResult<AgentSession> {
    Ok(tokio::time::timeout(HANG, lab.manager.accept()).await??)
}

// ---------------------------------------------------------------------------
// Section 3: connect.

#[derive(Debug)]
struct ConnectTimes {
    to_log_line: Spread,
    to_handshake: Spread,
    fastest: Duration,
}

async fn connect_times(counts: &Counts) -> BenchResult<ConnectTimes> {
    let lab = Lab::new()?;
    let dir = tempfile::TempDir::new()?;
    let files = lab.pki.write_to(dir.path())?;
    let addr = lab.manager.local_addr()?;
    let (mut to_log_line, mut to_handshake) = (Vec::new(), Vec::new());
    for _ in 0..counts.connect_starts {
        let started = Instant::now();
        let mut roxyd = RoxydProcess::spawn(&files, addr)?;
        let session = accept_roxyd(&lab).await?;
        let connected = Instant::now();
        // Checked for every start, though no power request is sent here.
        let logged = roxyd.confirm_recorder().await?;
        to_log_line.push(logged - started);
        to_handshake.push(connected - started);
        roxyd.stop().await?;
        drop(session);
    }
    let fastest = to_handshake.iter().min().copied().unwrap_or_default();
    Ok(ConnectTimes {
        to_log_line: Spread::of(&mut to_log_line),
        to_handshake: Spread::of(&mut to_handshake),
        fastest,
    })
}

// ---------------------------------------------------------------------------
// Sections 1, 4 and 5 with the real binary, against a floor process.

/// Memory of a process in KiB, from `/proc/PID/status` and
/// `/proc/PID/smaps_rollup`.
#[derive(Clone, Copy, Debug)]
struct Memory {
    /// Resident: `RssAnon` + `RssFile` + `RssShmem`.
    rss: u64,
    /// Resident anonymous memory: heap, stacks; roxyd's own.
    anon: u64,
    /// Resident pages of mapped files: the binary and libraries, mostly
    /// clean pages shared with the page cache.
    file: u64,
    /// Proportional set size: shared pages divided among their users.
    pss: u64,
    /// Pages no other process maps (`Private_Clean` + `Private_Dirty`).
    private: u64,
    threads: u64,
}

impl Memory {
    fn of(pid: u32) -> BenchResult<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        Ok(Self {
            rss: proc_field(&status, "VmRSS:")?,
            anon: proc_field(&status, "RssAnon:")?,
            file: proc_field(&status, "RssFile:")?,
            pss: proc_field(&rollup, "Pss:")?,
            private: proc_field(&rollup, "Private_Clean:")?
                + proc_field(&rollup, "Private_Dirty:")?,
            threads: proc_field(&status, "Threads:")?,
        })
    }
}

/// The number after `name` on its line of a `/proc` file.
fn proc_field(text: &str, name: &str) -> BenchResult<u64> {
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("no {name} in a /proc file"))?;
    Ok(value.parse()?)
}

/// utime + stime of a process, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> BenchResult<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which ends at the last ')': the first
    // is field 3 (state); utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').ok_or("bad /proc/PID/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> BenchResult<u64> {
        Ok(fields.get(index).ok_or("short /proc/PID/stat")?.parse()?)
    };
    let ticks = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Time on CPU of every thread of a process, in nanoseconds, from
/// `/proc/PID/task/*/schedstat`: finer than [`cpu_time`]'s 10 ms ticks.
/// `None` when the kernel does not keep it.
fn cpu_time_fine(pid: u32) -> Option<Duration> {
    let mut total = 0_u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

#[derive(Debug)]
struct Footprint {
    idle: Memory,
    after_round_trips: Memory,
    after_all: Memory,
    requests_total: usize,
    idle_cpu: Duration,
    idle_cpu_fine: Option<Duration>,
    idle_window: Duration,
}

async fn separate_processes(counts: &Counts, report: &mut Report) -> BenchResult<()> {
    let lab = Lab::new()?;
    let dir = tempfile::TempDir::new()?;
    let files = lab.pki.write_to(dir.path())?;
    let mut roxyd = RoxydProcess::spawn(&files, lab.manager.local_addr()?)?;
    let session = accept_roxyd(&lab).await?;
    // Before any power request: the recorder, or abort.
    roxyd.confirm_recorder().await?;
    tokio::time::sleep(SETTLE).await;
    let idle = Memory::of(roxyd.pid)?;

    progress(&format!("4: idle window of {} s", counts.idle.as_secs()));
    let (cpu_before, fine_before) = (cpu_time(roxyd.pid)?, cpu_time_fine(roxyd.pid));
    tokio::time::sleep(counts.idle).await;
    let idle_cpu = cpu_time(roxyd.pid)?.saturating_sub(cpu_before);
    let idle_cpu_fine = cpu_time_fine(roxyd.pid)
        .zip(fine_before)
        .map(|(after, before)| after.saturating_sub(before));

    let server = echo_server(&lab)?;
    let mut echo_child = spawn_echo_process(&files, &server)?;
    let echo = accept_echo(&server).await?;
    let (target, floor) = (Target::Roxyd(session), Target::Echo(echo.clone()));
    progress("1: round trip, real binary and floor process");
    let echo_pid = echo_child.id().ok_or("the floor process exited")?;
    let cpu_before = [cpu_time_fine(roxyd.pid), cpu_time_fine(echo_pid)];
    report.processes = Some(round_trips(&target, &floor, counts).await?);
    let cpu_after = [cpu_time_fine(roxyd.pid), cpu_time_fine(echo_pid)];
    let after_round_trips = Memory::of(roxyd.pid)?;
    if let [Some(roxyd_cpu), Some(echo_cpu)] = [0, 1].map(|i| {
        let spent = cpu_after[i]?.checked_sub(cpu_before[i]?)?;
        spent.checked_div(u32::try_from(counts.warm_up + counts.round_trips).ok()?)
    }) {
        report.cpu_per_request = Some((roxyd_cpu, echo_cpu));
    }
    progress("5: throughput, real binary and floor process");
    report.process_rates = Some(rates(&target, &floor, counts).await?);
    let after_all = Memory::of(roxyd.pid)?;
    report.evictions = Some(roxyd.count_lines(EVICTION_WARNING));
    report.footprint = Some(Footprint {
        idle,
        after_round_trips,
        after_all,
        requests_total: counts.warm_up
            + counts.round_trips
            + CONCURRENCY.len() * counts.throughput_requests,
        idle_cpu,
        idle_cpu_fine,
        idle_window: counts.idle,
    });

    echo.close(0u32.into(), b"done");
    tokio::time::timeout(HANG, echo_child.wait()).await??;
    roxyd.stop().await
}

// ---------------------------------------------------------------------------
// The report.

#[derive(Debug, Default)]
struct Report {
    in_process: Option<Paired>,
    processes: Option<Paired>,
    timeline: Option<Timeline>,
    connect: Option<ConnectTimes>,
    footprint: Option<Footprint>,
    in_process_rates: Option<Rates>,
    process_rates: Option<Rates>,
    /// How often the real binary logged [`EVICTION_WARNING`].
    evictions: Option<usize>,
    /// CPU time per request of the agent processes in the round trips of
    /// (1), every thread: roxyd, floor.
    cpu_per_request: Option<(Duration, Duration)>,
}

fn micros(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

#[allow(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

const WIDTH: usize = 46;

fn row(out: &mut String, label: &str, cells: &[String]) {
    let _ = write!(out, "  {label:<WIDTH$}");
    for cell in cells {
        let _ = write!(out, "{cell:>12}");
    }
    out.push('\n');
}

fn spread_row(out: &mut String, label: &str, s: &Spread) {
    row(
        out,
        label,
        &[micros(s.median), micros(s.p99), micros(s.worst)],
    );
}

impl Report {
    fn render(&self, counts: &Counts, elapsed: Duration) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nroxyd power benchmarks: {} CPUs, loopback, QUIC + mutual TLS (TLS 1.3), recording backend",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
        );
        self.render_round_trips(&mut out, counts);
        self.render_timeline(&mut out, counts);
        self.render_connect(&mut out, counts);
        self.render_footprint(&mut out);
        self.render_rates(&mut out, counts);
        let _ = writeln!(out, "\nsuite ran in {:.0} s", elapsed.as_secs_f64());
        out
    }

    fn render_round_trips(&self, out: &mut String, counts: &Counts) {
        let _ = writeln!(
            out,
            "\n1. Power round trip: GracefulReboot, {} sequential requests on one connection \
             (request frame 9 B, reply frame 6 B)",
            counts.round_trips
        );
        row(out, "", &["median".into(), "p99".into(), "worst".into()]);
        let pairs = [
            ("in-process agent", &self.in_process, None),
            (
                "agent in its own process",
                &self.processes,
                self.cpu_per_request,
            ),
        ];
        for (setting, paired, cpu) in pairs {
            let Some(p) = paired else { continue };
            let _ = writeln!(out, "  {setting}:");
            spread_row(out, "  roxyd", &p.roxyd);
            spread_row(out, "  floor (bare quinn echo)", &p.floor);
            let ratios = [
                ratio(p.roxyd.median, p.floor.median),
                ratio(p.roxyd.p99, p.floor.p99),
                ratio(p.roxyd.worst, p.floor.worst),
            ];
            row(out, "  ratio roxyd / floor", &ratios);
            if let Some((roxyd, floor)) = cpu {
                let _ = writeln!(
                    out,
                    "    CPU time per request in the agent process (all threads): roxyd {}, \
                     floor {}, ratio {}",
                    micros(roxyd),
                    micros(floor),
                    ratio(roxyd, floor)
                );
            }
            if !p.tally.is_clean() {
                let _ = writeln!(
                    out,
                    "    roxyd: {} refused, {} closed without a reply (left out)",
                    p.tally.refused, p.tally.lost
                );
            }
        }
    }

    fn render_timeline(&self, out: &mut String, counts: &Counts) {
        let Some(t) = &self.timeline else { return };
        let _ = writeln!(
            out,
            "\n2. Immediate path timeline: immediate Reboot, {} runs, in-process agent, recorder journal",
            counts.timeline_runs
        );
        row(out, "", &["median".into(), "p99".into(), "worst".into()]);
        for (step, spread) in STEPS.iter().zip(&t.steps) {
            spread_row(out, step, spread);
        }
        let [acknowledged, stopped, other] = t.deliveries;
        let _ = writeln!(
            out,
            "  delivery wait ended: {acknowledged} acknowledged, {stopped} stopped by the Manager, \
             {other} other"
        );
    }

    fn render_connect(&self, out: &mut String, counts: &Counts) {
        let Some(c) = &self.connect else { return };
        let _ = writeln!(
            out,
            "\n3. Connect: real binary (test-backend build), {} starts",
            counts.connect_starts
        );
        row(out, "", &["median".into(), "p99".into(), "worst".into()]);
        let spreads = [
            ("process start -> startup log line", &c.to_log_line),
            ("process start -> handshake complete", &c.to_handshake),
        ];
        for (label, s) in spreads {
            row(
                out,
                label,
                &[millis(s.median), millis(s.p99), millis(s.worst)],
            );
        }
        let _ = writeln!(out, "  fastest start to handshake: {}", millis(c.fastest));
    }

    fn render_footprint(&self, out: &mut String) {
        let Some(f) = &self.footprint else { return };
        let _ = writeln!(out, "\n4. Footprint: real binary (test-backend build)");
        row(
            out,
            "",
            &[
                "VmRSS".into(),
                "RssAnon".into(),
                "RssFile".into(),
                "Pss".into(),
                "private".into(),
                "threads".into(),
            ],
        );
        let memories = [
            ("connected, idle".to_owned(), f.idle),
            (
                "after the round trips of (1)".to_owned(),
                f.after_round_trips,
            ),
            (
                format!("after (5) too ({} requests)", f.requests_total),
                f.after_all,
            ),
        ];
        for (label, m) in memories {
            let cells = [
                mib(m.rss),
                mib(m.anon),
                mib(m.file),
                mib(m.pss),
                mib(m.private),
                m.threads.to_string(),
            ];
            row(out, &label, &cells);
        }
        let growth = |after: u64| format!("{:+} KiB", i128::from(after) - i128::from(f.idle.rss));
        let _ = writeln!(
            out,
            "  VmRSS growth: {} after (1), {} after (5)",
            growth(f.after_round_trips.rss),
            growth(f.after_all.rss)
        );
        let anon_growth = f.after_all.anon.saturating_sub(f.idle.anon) * 1024;
        let _ = writeln!(
            out,
            "  RssAnon growth per request: {} B; the recorder's journal keeps {} B per started \
             graceful command (test-backend only)",
            anon_growth / u64::try_from(f.requests_total.max(1)).unwrap_or(1),
            std::mem::size_of::<(Instant, Entry)>()
        );
        let share = f.idle_cpu.as_secs_f64() / f.idle_window.as_secs_f64() * 100.0;
        let _ = write!(
            out,
            "  CPU time (utime+stime) over {} s idle: {} ({share:.3}% of one core)",
            f.idle_window.as_secs(),
            millis(f.idle_cpu)
        );
        match f.idle_cpu_fine {
            Some(fine) => {
                let _ = writeln!(out, "; on-CPU time from schedstat: {}", millis(fine));
            }
            None => out.push('\n'),
        }
    }

    fn render_rates(&self, out: &mut String, counts: &Counts) {
        let _ = writeln!(
            out,
            "\n5. Throughput: GracefulReboot requests per second, one connection, {} requests each",
            counts.throughput_requests
        );
        let header: Vec<String> = CONCURRENCY
            .iter()
            .map(|c| format!("{c} stream{}", if *c == 1 { "" } else { "s" }))
            .collect();
        row(out, "", &header);
        let settings = [
            ("in-process agent", &self.in_process_rates),
            ("agent in its own process", &self.process_rates),
        ];
        for (setting, rates) in settings {
            let Some(rates) = rates else { continue };
            let _ = writeln!(out, "  {setting}:");
            let cells =
                |f: &dyn Fn(&Rate) -> String| -> Vec<String> { rates.rows.iter().map(f).collect() };
            row(out, "  roxyd", &cells(&|r| format!("{:.0}/s", r.roxyd)));
            row(
                out,
                "  floor (bare quinn echo)",
                &cells(&|r| format!("{:.0}/s", r.floor)),
            );
            row(
                out,
                "  ratio floor / roxyd",
                &cells(&|r| format!("{:.2}x", r.floor / r.roxyd)),
            );
            if !rates.rows.iter().all(|r| r.tally.is_clean()) {
                row(
                    out,
                    "  roxyd refused / closed without reply",
                    &cells(&|r| r.tally.to_string()),
                );
            }
        }
        if let Some(evictions) = self.evictions.filter(|n| *n > 0) {
            let _ = writeln!(
                out,
                "  the real binary logged {evictions} stream-eviction warnings ({EVICTION_WARNING:?})"
            );
        }
    }
}
