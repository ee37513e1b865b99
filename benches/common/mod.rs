//! What every benchmark shares: the safety checks, the agents under test
//! (roxyd's real binary, in-process roxyd, the bare quinn agent), the
//! Manager's echo request, and the measures (percentiles, CPU time, memory).
//!
//! Rules no benchmark may break: every roxyd process is the `test-backend`
//! build started with `--backend recorder`, and its startup line is checked
//! for the recorder before it is sent anything ([`RoxydProcess::spawn`]);
//! in-process agents use the recorder by type; nothing runs as root in the
//! host's PID namespace ([`refuse_host_pid_namespace`]).

use std::{
    ffi::OsString,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
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
    process::{Child, Command},
    task::JoinSet,
};

#[path = "../../tests/support/mod.rs"]
mod support;
pub use support::lab_agent::LabAgents;

pub type BenchError = Box<dyn std::error::Error + Send + Sync>;
pub type BenchResult<T> = Result<T, BenchError>;

/// The echo request frame (code 17, empty body) as the Manager sends it:
/// what is measured is the connection and dispatch, not the test backend's
/// bookkeeping of power operations.
pub const REQUEST_FRAME: [u8; 8] = [0, 0, 0, 4, 17, 0, 0, 0];
/// The reply frame `Ok(())`.
pub const REPLY_FRAME: [u8; 5] = [0, 0, 0, 1, 0];
/// The startup line of a roxyd built with, and running, the recorder.
const RECORDER_BACKEND: &str = r#"backend="recorder""#;
/// Turns a hang into an error: a safety net, not a time anything relies on.
pub const HANG: Duration = Duration::from_secs(120);
/// The PID namespace of the host; running as root in it could reboot it.
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";
/// The real binary's log filter: roxyd's own lines, without the recorder's
/// line per call (a cost of the test backend alone).
const DEFAULT_RUST_LOG: &str = "info,roxyd::platform::recorder=warn";

/// Tells a child started from a bench binary to act as the bare agent, on
/// the runtime flavour it names (`one` or `multi`).
const BARE_FLAVOUR_ENV: &str = "ROXYBENCH_BARE_FLAVOUR";
const BARE_MANAGER_ENV: &str = "ROXYBENCH_BARE_MANAGER";
const BARE_CERT_ENV: &str = "ROXYBENCH_BARE_CERT";
const BARE_KEY_ENV: &str = "ROXYBENCH_BARE_KEY";
const BARE_CA_ENV: &str = "ROXYBENCH_BARE_CA";

/// The entry point of every bench binary: the bare agent when started as
/// one, nothing under test discovery or without `--bench`, else `suite` on
/// a runtime from `manager` (the Manager side and any in-process agents).
pub fn main<F>(
    name: &'static str,
    manager: tokio::runtime::Builder,
    suite: impl FnOnce() -> F,
) -> ExitCode
where
    F: Future<Output = BenchResult<()>> + Send + 'static,
{
    if let Ok(flavour) = std::env::var(BARE_FLAVOUR_ENV) {
        let builder = if flavour == "multi" {
            two_workers()
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        return block_on(name, builder, bare_agent_process());
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // Test discovery (nextest): this binary holds no tests.
        return ExitCode::SUCCESS;
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("{name}: a benchmark; run it with `cargo bench --features test-backend`");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = refuse_host_pid_namespace().and_then(|()| check_frames()) {
        eprintln!("{name}: {e}");
        return ExitCode::FAILURE;
    }
    block_on(name, manager, suite())
}

/// A runtime builder with two workers, one per core of the bench machine.
pub fn two_workers() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    builder
}

/// The Manager side's runtime: two workers, or one thread with
/// `ROXYBENCH_MANAGER=one`.
pub fn manager_runtime() -> tokio::runtime::Builder {
    if std::env::var("ROXYBENCH_MANAGER").is_ok_and(|v| v == "one") {
        return tokio::runtime::Builder::new_current_thread();
    }
    two_workers()
}

/// Runs `work` as a task on a runtime from `builder`: a task, not the
/// blocked-on future, so that with workers its wake-ups stay on the threads
/// that drive the QUIC connections.
fn block_on(
    name: &str,
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
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
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

/// Every count divided by this: 10 with `ROXYBENCH_QUICK=1`, for trying a
/// change, else 1.
pub fn divisor() -> usize {
    if std::env::var("ROXYBENCH_QUICK").is_ok_and(|v| v == "1") {
        10
    } else {
        1
    }
}

pub fn progress(name: &str, what: &str) {
    eprintln!("{name}: {what} ...");
}

// ---------------------------------------------------------------------------
// The agents under test.

/// The Manager's handle on an agent under test.
#[derive(Clone, Debug)]
pub struct Target(pub quinn::Connection);

impl Target {
    /// One echo request as a 0.18 Manager sends it: a new stream, the
    /// request frame, the reply frame read, then both halves dropped (a FIN
    /// and, unless the agent's FIN has arrived, a `STOP_SENDING` after the
    /// reply). `false` when the reply was not `Ok(())`.
    pub async fn request(&self) -> BenchResult<bool> {
        let (mut send, mut recv) = self.0.open_bi().await?;
        send.write_all(&REQUEST_FRAME).await?;
        let mut reply = [0_u8; REPLY_FRAME.len()];
        recv.read_exact(&mut reply).await?;
        Ok(reply == REPLY_FRAME)
    }
}

/// The bare agent: answers every request frame of every stream with the
/// reply frame, one task per stream, until the Manager ends the stream, as
/// an agent must; nothing else.
async fn serve_bare(connection: quinn::Connection) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
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
}

/// The bare agent as a process of its own, with roxyd's TLS and transport
/// set-up (`tls::client_config`, `connection::client_endpoint`), so that only
/// roxyd's logic and runtime differ.
async fn bare_agent_process() -> BenchResult<()> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let manager: SocketAddr = var(BARE_MANAGER_ENV)?.parse()?;
    let client = tls::client_config(
        tls::load_certs(Path::new(&var(BARE_CERT_ENV)?))?,
        tls::load_private_key(Path::new(&var(BARE_KEY_ENV)?))?,
        tls::load_roots(&[var(BARE_CA_ENV)?])?,
        Config::default().max_concurrent_streams,
    )?;
    let endpoint = connection::client_endpoint(manager, client)?;
    let connection = endpoint.connect(manager, SERVER_NAME)?.await?;
    serve_bare(connection).await;
    Ok(())
}

/// The Manager's endpoint for bare agents: the lab Manager's TLS set-up.
pub fn bare_server(lab: &Lab) -> BenchResult<quinn::Endpoint> {
    let pki = &lab.pki;
    Ok(quinn::Endpoint::server(
        server_config(pki.manager.chain(), pki.manager.key(), pki.roots()?)?,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )?)
}

/// The next connection to `server`.
pub async fn accept_bare(server: &quinn::Endpoint) -> BenchResult<quinn::Connection> {
    let incoming = tokio::time::timeout(HANG, server.accept())
        .await?
        .ok_or("the bare agents' endpoint closed")?;
    Ok(incoming.await?)
}

/// A bare agent as a process of its own on runtime `flavour` (`one` or
/// `multi`), connected; returns the process and the Manager's connection.
pub async fn spawn_bare(
    files: &PkiFiles,
    server: &quinn::Endpoint,
    flavour: &str,
) -> BenchResult<(Child, quinn::Connection)> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env(BARE_FLAVOUR_ENV, flavour)
        .env(BARE_MANAGER_ENV, server.local_addr()?.to_string())
        .env(BARE_CERT_ENV, &files.agent_cert)
        .env(BARE_KEY_ENV, &files.agent_key)
        .env(BARE_CA_ENV, &files.ca_cert)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let child = command.spawn()?;
    Ok((child, accept_bare(server).await?))
}

/// A bare agent in this process, on the bench's runtime, connected with
/// roxyd's client set-up; returns the Manager's connection.
pub async fn in_process_bare(
    lab: &Lab,
    server: &quinn::Endpoint,
) -> BenchResult<quinn::Connection> {
    let addr = server.local_addr()?;
    let endpoint = connection::client_endpoint(addr, lab.client_config()?)?;
    let connecting = endpoint.connect(addr, SERVER_NAME)?;
    let (agent_side, manager_side) = tokio::join!(connecting, accept_bare(server));
    let agent_side = agent_side?;
    tokio::spawn(async move {
        serve_bare(agent_side).await;
        drop(endpoint);
    });
    manager_side
}

/// Extra roxyd binaries to run beside this tree's, from
/// `ROXYBENCH_ALSO=label=path;label=path`: an older build or another
/// profile, measured in the same run. Each is started like this tree's and
/// must pass the same recorder check.
pub fn also_binaries() -> BenchResult<Vec<(String, PathBuf)>> {
    let Ok(text) = std::env::var("ROXYBENCH_ALSO") else {
        return Ok(Vec::new());
    };
    text.split(';')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (label, path) = part
                .split_once('=')
                .ok_or_else(|| format!("ROXYBENCH_ALSO: {part:?} is not label=path"))?;
            Ok((label.to_owned(), PathBuf::from(path)))
        })
        .collect()
}

/// Puts every thread of process `pid` on CPU `cpu` (`taskset`), so that
/// the Manager and the agent under test each keep a core of their own and
/// the scheduler's placement stops deciding the result: measured on this
/// 2-core machine, unpinned runs of the same builds swung by 10-20% at one
/// level. Skipped, with a note, where `taskset` is missing, there is only
/// one CPU, or `ROXYBENCH_PIN=0`.
pub fn pin(pid: u32, cpu: usize) {
    // Counted once, before anything is pinned: once the bench has pinned
    // itself, it sees only its own CPU, and every later call would skip.
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    if cpus < 2 || std::env::var("ROXYBENCH_PIN").is_ok_and(|v| v == "0") {
        return;
    }
    let pinned = std::process::Command::new("taskset")
        .args(["-apc", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status();
    if !pinned.is_ok_and(|status| status.success()) {
        eprintln!("bench: cannot pin process {pid} to CPU {cpu}; results will swing more");
    }
}

/// This tree's roxyd as it ships, with the `test-backend` feature added:
/// built once per run by cargo in `target/bench-shipped`. The binary
/// `cargo bench` makes beside the benches is not it: that build takes the
/// features of the dev-dependencies too (tokio's `test-util`, whose clock
/// every timer consults, and its multi-thread scheduler), which a release
/// build of roxyd does not have.
///
/// # Panics
///
/// When the build fails.
pub fn this_roxyd() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            let target = manifest.join("target").join("bench-shipped");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            eprintln!(
                "bench: building roxyd as it ships (release, test-backend) in {}",
                target.display()
            );
            let status = std::process::Command::new(cargo)
                .current_dir(manifest)
                .args([
                    "build",
                    "--release",
                    "--features",
                    "test-backend",
                    "--bin",
                    "roxyd",
                ])
                .arg("--target-dir")
                .arg(&target)
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building roxyd as it ships failed");
            target.join("release").join("roxyd")
        })
        .clone()
}

/// roxyd builds under test, each connected to the lab's Manager: this
/// tree's first, then those of [`also_binaries`].
pub struct Roxyds {
    pub names: Vec<String>,
    pub processes: Vec<RoxydProcess>,
    pub targets: Vec<Target>,
}

impl Roxyds {
    /// Starts and connects every build, one after the other.
    pub async fn spawn(lab: &Lab, files: &PkiFiles) -> BenchResult<Self> {
        let manager = lab.manager.local_addr()?;
        let mut builds = vec![("roxyd".to_owned(), this_roxyd())];
        builds.extend(also_binaries()?);
        let mut roxyds = Self {
            names: Vec::new(),
            processes: Vec::new(),
            targets: Vec::new(),
        };
        for (name, binary) in builds {
            let process = RoxydProcess::spawn(&binary, files, manager).await?;
            let session = accept_roxyd(lab).await?;
            roxyds.names.push(name);
            roxyds.processes.push(process);
            roxyds.targets.push(Target(session.connection().clone()));
        }
        Ok(roxyds)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    /// Stops every build with SIGTERM and waits for each.
    pub async fn stop(self) -> BenchResult<()> {
        for process in self.processes {
            process.stop().await?;
        }
        Ok(())
    }
}

/// A running `roxyd` with the recorder, its output lines collected (the
/// tests' [`support::Roxyd`]).
pub struct RoxydProcess {
    process: support::Roxyd,
    pub pid: u32,
}

impl RoxydProcess {
    /// Starts `binary` with `--backend recorder` against `manager`, its
    /// defaults otherwise (every `ROXYD_` variable and `RUST_LOG` cleared;
    /// `RUST_LOG` from `ROXYBENCH_RUST_LOG`, else [`DEFAULT_RUST_LOG`]),
    /// and returns once its startup line has named the recorder; any other
    /// build is killed and the run aborted, before anything is sent to it.
    pub async fn spawn(binary: &Path, files: &PkiFiles, manager: SocketAddr) -> BenchResult<Self> {
        let mut process = Self::start(binary, files, manager)?;
        process.confirm_recorder().await?;
        Ok(process)
    }

    /// As [`Self::spawn`], without waiting for the startup line: the caller
    /// must call [`Self::confirm_recorder`] before any request.
    pub fn start(binary: &Path, files: &PkiFiles, manager: SocketAddr) -> BenchResult<Self> {
        Self::start_with(binary, files, manager, &[])
    }

    /// As [`Self::start`], with extra environment `env` (`ROXYD_` settings).
    pub fn start_with(
        binary: &Path,
        files: &PkiFiles,
        manager: SocketAddr,
        env: &[(&str, &str)],
    ) -> BenchResult<Self> {
        let mut args: Vec<OsString> = vec!["--backend".into(), "recorder".into()];
        args.extend(support::lab_args(files, manager));
        let filter =
            std::env::var("ROXYBENCH_RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.to_owned());
        let mut env = env.to_vec();
        env.push(("RUST_LOG", &filter));
        let process = support::Roxyd::spawn_program(binary.as_os_str(), &args, &env);
        let pid = u32::try_from(process.pid())?;
        Ok(Self { process, pid })
    }

    /// Checks the startup line names the recording backend, and returns when
    /// it was read. Any other build is killed and the run aborted: it would
    /// carry power requests out.
    pub async fn confirm_recorder(&mut self) -> BenchResult<Instant> {
        let line = self.process.wait_for_line(&["roxyd starting"]).await;
        let at = Instant::now();
        if !line.contains(RECORDER_BACKEND) {
            self.process.signal(nix::sys::signal::Signal::SIGKILL);
            return Err(
                format!("ABORTED: not the recording build; its startup line: {line}").into(),
            );
        }
        Ok(at)
    }

    /// Stops roxyd with SIGTERM, waits for it to exit, and returns all it
    /// printed.
    pub async fn stop(self) -> BenchResult<String> {
        self.process.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, output) = self.process.exit().await;
        if !status.success() {
            return Err(format!("roxyd exited with {status} after SIGTERM").into());
        }
        Ok(output)
    }
}

/// The lab Manager's next agent connection (its handshake done).
pub async fn accept_roxyd(lab: &Lab) -> BenchResult<roxyd_lab::manager::AgentSession> {
    Ok(tokio::time::timeout(HANG, lab.manager.accept()).await??)
}

// ---------------------------------------------------------------------------
// Measuring.

/// Median, 99th percentile and worst of a set of durations.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: Duration,
    pub p99: Duration,
    pub worst: Duration,
}

impl Spread {
    /// Nearest-rank percentiles; `samples` must not be empty.
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let rank = |per_cent: usize| samples[(samples.len() * per_cent).div_ceil(100).max(1) - 1];
        Self {
            median: rank(50),
            p99: rank(99),
            worst: samples[samples.len() - 1],
        }
    }
}

/// Sequential round trips of every target (`count / 10` warm-up requests
/// each first), in ten alternating blocks so that a change in the machine's
/// load falls on all alike.
pub async fn round_trips(targets: &[Target], count: usize) -> BenchResult<Vec<Spread>> {
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
pub async fn throughput(
    target: &Target,
    in_flight: usize,
    total: usize,
) -> BenchResult<(f64, usize)> {
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
pub fn cpu_time(pid: u32) -> Duration {
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

/// The number after `name` on its line of a `/proc` file (KiB for sizes).
pub fn proc_field(text: &str, name: &str) -> BenchResult<u64> {
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("no {name} in a /proc file"))?;
    Ok(value.parse()?)
}

/// Peak resident set (`VmHWM`) of a process, in KiB.
pub fn peak_rss(pid: u32) -> BenchResult<u64> {
    proc_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status"))?,
        "VmHWM:",
    )
}

/// Memory of a process in KiB, from `/proc/PID/status` and
/// `/proc/PID/smaps_rollup`.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// Resident: `RssAnon` + `RssFile` + `RssShmem`.
    pub rss: u64,
    /// Resident anonymous memory: heap and stacks.
    pub anon: u64,
    /// Resident pages of mapped files: the binary and libraries, mostly
    /// clean pages shared with the page cache.
    pub file: u64,
    /// Proportional set size: shared pages divided among their users.
    pub pss: u64,
    /// Pages no other process maps (`Private_Clean` + `Private_Dirty`).
    pub private: u64,
    pub threads: u64,
}

impl Memory {
    pub fn of(pid: u32) -> BenchResult<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        let field = proc_field;
        Ok(Self {
            rss: field(&status, "VmRSS:")?,
            anon: field(&status, "RssAnon:")?,
            file: field(&status, "RssFile:")?,
            pss: field(&rollup, "Pss:")?,
            private: field(&rollup, "Private_Clean:")? + field(&rollup, "Private_Dirty:")?,
            threads: field(&status, "Threads:")?,
        })
    }
}

pub fn micros(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

pub fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[allow(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
pub fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

pub fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}
