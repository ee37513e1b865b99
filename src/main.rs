//! The roxyd daemon: reads its command line and configuration, sets up
//! logging and TLS, and runs until SIGINT or SIGTERM; SIGHUP reopens the
//! log file.
//!
//! Exit statuses: [`roxyd::cli::exit_status`], shown by `--help`.

use std::{io::Write, net::SocketAddr, path::Path, process::ExitCode, sync::Arc, time::Duration};

use clap::CommandFactory;
use roxyd::{
    cli::{Cli, exit_status},
    config::{self, Config},
    connection,
    daemon::{self, Outcome, Settings},
    dispatch::Dispatcher,
    logging::{LogSink, one_line},
    platform::{self, BackendOptions},
    power_log::{self, PowerLog},
    stop::Stop,
    tls,
};
use tracing_subscriber::{filter::Targets, prelude::*};

/// A problem that stops roxyd before it can connect.
#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error(transparent)]
    Config(#[from] roxyd::config::ConfigError),
    #[error("cannot open log file {path}: {reason}")]
    LogFile { path: String, reason: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Session(#[from] connection::SessionError),
    #[error(transparent)]
    Backend(#[from] platform::NoRecorder),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    match start(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", one_line(&format!("roxyd: {e}\n"), false));
            ExitCode::from(exit_status::BAD_SETUP)
        }
    }
}

fn start(cli: &Cli) -> Result<ExitCode, StartupError> {
    // A misspelt variable is an error, as a misspelt configuration key is.
    let options: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|var| var.to_string_lossy().into_owned())
        .collect();
    config::check_env_names(std::env::vars_os().map(|(name, _)| name), &options)?;
    let config = Config::load(cli.config.as_deref(), |var| std::env::var(var).ok())?;
    if cli.power_log {
        return Ok(print_power_log(config.state_dir(), cli.json));
    }
    let log = init_logging(&config)?;
    let backend = platform::daemon_backend(
        cli.backend,
        BackendOptions {
            sync_timeout: config.sync_timeout(),
        },
    )?;
    // The command line overrides the environment and the file.
    let manager = config::required(cli.manager.clone().or(config.manager.clone()), "manager")?;
    let cert_path = config::required(cli.cert.clone().or(config.cert.clone()), "cert")?;
    let key_path = config::required(cli.key.clone().or(config.key.clone()), "key")?;
    let ca_paths = config::required(
        cli.ca_certs
            .clone()
            .map(|list| list.0)
            .or(config.ca_certs.clone()),
        "ca_certs",
    )?;
    let chain = tls::load_certs(&cert_path)?;
    let key = tls::load_private_key(&key_path)?;
    warn_if_key_exposed(&key_path);
    let roots = tls::load_roots(&ca_paths)?;
    let client = tls::client_config(chain, key, roots, config.max_concurrent_streams)?;
    let settings = Settings::from_config(&config, manager, cli.check);
    let power_log = if cli.check {
        report_state_dir(config.state_dir());
        PowerLog::off()
    } else {
        // Explains the previous power event and records this start, on the
        // log's own thread: a hung state directory does not delay the start.
        PowerLog::start(config.state_dir(), &settings.manager.to_string())
    };
    // One thread serves everything: nothing on it blocks (power operations
    // and command reapers have threads of their own), and the benchmarks show
    // a multi-threaded runtime only adding wake-ups between threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The daemon runs as a task, not as the `block_on` future: the
    // scheduler polls a woken task with the rest of its run queue, but the
    // `block_on` future only after the queue is empty and the I/O driver was
    // polled once more (an `epoll_wait` per wake-up of the connection loop).
    let daemon = runtime.spawn(async move {
        reopen_log_on_hangup(log)?;
        let stop = Stop::on_signals()?;
        let endpoint = connection::client_endpoint(settings.manager.addr, client)?;
        let backend_name = backend.name();
        let records = backend.records();
        let dispatcher = Arc::new(
            Dispatcher::new(backend, config.dispatch()).with_power_log(power_log.clone()),
        );
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            backend = backend_name,
            can_record = platform::CAN_RECORD,
            "roxyd starting"
        );
        if records {
            tracing::warn!("recording backend chosen: power requests are answered and logged, never carried out");
        }
        let run = daemon::run(&settings, &endpoint, dispatcher, stop);
        let result = if settings.check {
            tokio::select! {
                result = run => result,
                refused = nothing_listens(settings.manager.addr) => {
                    Err(daemon::DaemonError::CheckFailed(refused))
                }
            }
        } else {
            run.await
        };
        // Entries recorded just before the stop (a graceful command's exit,
        // say) are written before roxyd exits, unless the disk hangs.
        let _ = power_log.flush(POWER_LOG_FLUSH);
        Ok(match result {
            Ok(Outcome::Stopped) => ExitCode::from(exit_status::SUCCESS),
            Ok(Outcome::Checked { manager_protocol }) => {
                // The version is the Manager's text: one line, escaped.
                print!(
                    "{}",
                    one_line(
                        &format!(
                            "roxyd: connected to the Manager at {}; it speaks protocol {manager_protocol}\n",
                            settings.manager
                        ),
                        false
                    )
                );
                ExitCode::from(exit_status::SUCCESS)
            }
            Err(e) => {
                // May hold the Manager's text (a refusal): one line, escaped.
                eprint!("{}", one_line(&format!("roxyd: {e}\n"), false));
                ExitCode::from(e.exit_status())
            }
        })
    });
    match runtime.block_on(daemon) {
        Ok(outcome) => outcome,
        // A panic in the daemon goes on as it would have on this thread.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// How long roxyd, stopping, waits for the power log's last entries.
const POWER_LOG_FLUSH: Duration = Duration::from_secs(1);

/// `--power-log`: prints the log in `state_dir`, newest last, one line for a
/// person per entry or, with `json`, each entry as stored. No log prints
/// nothing; lines that are not entries are skipped with one line on standard
/// error naming the file; an unreadable log is one line on standard error
/// and [`exit_status::POWER_LOG_UNREADABLE`].
fn print_power_log(state_dir: &Path, json: bool) -> ExitCode {
    let path = power_log::log_path(state_dir);
    let log = match power_log::read_log(&path) {
        Ok(Some(log)) => log,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roxyd: cannot read the power log {}: {e}", path.display());
            return ExitCode::from(exit_status::POWER_LOG_UNREADABLE);
        }
    };
    if log.skipped > 0 {
        eprintln!(
            "roxyd: skipped {} lines of the power log {} that are not entries (corrupt, truncated or edited)",
            log.skipped,
            path.display()
        );
    }
    let mut out = std::io::stdout().lock();
    for (entry, line) in &log.entries {
        let shown = if json { line.clone() } else { entry.human() };
        // A closed pipe (`| head`) ends the listing, nothing more.
        if writeln!(out, "{shown}").is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// `--check`: says whether the state directory takes the power log.
fn report_state_dir(state_dir: &Path) {
    match power_log::check_writable(state_dir) {
        Ok(()) => println!(
            "roxyd: the state directory {} is writable",
            state_dir.display()
        ),
        Err(e) => println!(
            "roxyd: the state directory {} is not writable ({e}): power requests would be carried out but not recorded",
            state_dir.display()
        ),
    }
}

/// Warns when the private key file can be read by anyone but its owner: the
/// key is what the Manager trusts this appliance by.
fn warn_if_key_exposed(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(metadata) = std::fs::metadata(path) else {
            return;
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            tracing::warn!(
                "private key file {} is readable by group or others (mode {mode:04o}); make it readable by its owner only: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Logs to the configured file, or standard output; `RUST_LOG` sets the
/// filter (default `info`): a level, `target=level` directives, or both,
/// comma-separated, as in `info,roxyd::platform::recorder=warn`.
fn init_logging(config: &Config) -> Result<LogSink, StartupError> {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let sink = match &config.log_file {
        Some(path) => LogSink::file(path).map_err(|e| StartupError::LogFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?,
        None => LogSink::stdout(std::io::IsTerminal::is_terminal(&std::io::stdout())),
    };
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(sink.ansi())
        .with_writer(sink.clone())
        .finish()
        .with(filter)
        .init();
    Ok(sink)
}

/// Reopens the log on every SIGHUP (after logrotate renamed it, say), for
/// as long as roxyd runs; SIGHUP never stops roxyd. Call it early, inside
/// the runtime: from then on SIGHUP no longer ends the process.
fn reopen_log_on_hangup(log: LogSink) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                log.reopen();
            }
        });
    }
    #[cfg(not(unix))]
    let _ = log;
    Ok(())
}

/// Resolves when the Manager's address answers a datagram with ICMP port
/// unreachable: nothing listens there, and `--check` can say so at once.
/// quinn's socket is not connected and does not ask for ICMP errors, so its
/// handshake would wait out the whole timeout; a connected socket of its own
/// gets the error as `ECONNREFUSED`. Never resolves otherwise: a Manager
/// ignores the empty datagram, and the handshake decides.
async fn nothing_listens(addr: SocketAddr) -> String {
    let probe = async {
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(local).await?;
        socket.connect(addr).await?;
        socket.send(&[]).await?;
        let mut buf = [0u8; 1];
        loop {
            socket.recv(&mut buf).await?;
        }
    };
    let result: std::io::Result<()> = probe.await;
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("nothing listens at {addr}: it answered ICMP port unreachable")
        }
        _ => std::future::pending().await,
    }
}
