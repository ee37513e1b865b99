//! roxyctl: a lab tool on the Manager's side of the protocol. It makes
//! throwaway certificates, or listens for one agent, sends it one request and
//! prints the reply.
//!
//! Exit status: 0 for an `Ok` reply, 1 for an `Err` reply, 2 for anything
//! else (bad arguments, files, connection).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use roxyd_lab::{
    manager::{AgentSession, Generation, Manager, server_config},
    pki::ThrowawayPki,
};
use roxyd_proto::{
    tls,
    wire::{NodePowerRequest, RequestCode},
};

#[derive(Debug, Parser)]
#[command(
    name = "roxyctl",
    version,
    about = "Lab tool on the Manager's side of roxyd's protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a throwaway CA, Manager and agent certificate into DIR.
    Certs {
        /// Where to write ca.pem, manager.pem, manager.key, agent.pem, agent.key.
        dir: PathBuf,
        /// The Manager's TLS server name.
        #[arg(long, default_value = "manager.roxyd.test")]
        server_name: String,
    },
    /// Waits for an agent, sends it one request and prints the reply.
    Send {
        /// Where to listen for the agent.
        #[arg(long, default_value = "127.0.0.1:38390")]
        listen: SocketAddr,
        /// The Manager's certificate chain (PEM).
        #[arg(long, value_name = "CERT.pem")]
        cert: PathBuf,
        /// The Manager's private key (PEM).
        #[arg(long, value_name = "KEY.pem")]
        key: PathBuf,
        /// CA certificates agent certificates must chain to, comma-separated.
        #[arg(long = "ca-certs", value_delimiter = ',', required = true)]
        ca_certs: Vec<PathBuf>,
        /// Seconds to wait for the agent and its reply.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Which Manager generation to act as: 0.18 reads every reply; 0.19
        /// sends an immediate reboot or shutdown fire-and-forget (finishes
        /// its side, declines the reply, reads nothing).
        #[arg(long, value_enum, default_value_t = Gen::V0_18)]
        generation: Gen,
        /// The request.
        request: Request,
    },
}

/// A Manager generation, as named on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Gen {
    /// review-protocol 0.18.
    #[value(name = "0.18")]
    V0_18,
    /// review-protocol 0.19.
    #[value(name = "0.19")]
    V0_19,
}

impl From<Gen> for Generation {
    fn from(generation: Gen) -> Self {
        match generation {
            Gen::V0_18 => Self::V0_18,
            Gen::V0_19 => Self::V0_19,
        }
    }
}

/// A request roxyctl can send.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Request {
    /// Grouped power request (code 106): immediate reboot.
    Reboot,
    /// Grouped power request (code 106): immediate power-off.
    Shutdown,
    /// Grouped power request (code 106): graceful reboot.
    GracefulReboot,
    /// Grouped power request (code 106): graceful power-off.
    GracefulShutdown,
    /// Legacy flat reboot (code 4).
    FlatReboot,
    /// Legacy flat shutdown (code 21).
    FlatShutdown,
    /// Echo (code 17), the Manager's ping.
    Echo,
}

impl Request {
    /// Sends it as a Manager of `generation` does and returns the reply as
    /// text and whether it was `Ok` (a request sent fire-and-forget counts
    /// as `Ok` once sent).
    async fn send(
        self,
        session: &AgentSession,
        generation: Generation,
    ) -> Result<(String, bool), String> {
        let grouped = |request| async move {
            match session.node_power_as(generation, request).await {
                Ok(Some(reply)) => Ok((format!("{reply:?}"), reply.is_ok())),
                Ok(None) => Ok(("sent fire-and-forget; no reply read".to_owned(), true)),
                Err(e) => Err(e.to_string()),
            }
        };
        let unit = |code| async move {
            session
                .unit_request(code)
                .await
                .map(|reply| (format!("{reply:?}"), reply.is_ok()))
                .map_err(|e| e.to_string())
        };
        match self {
            Self::Reboot => grouped(NodePowerRequest::Reboot).await,
            Self::Shutdown => grouped(NodePowerRequest::Shutdown).await,
            Self::GracefulReboot => grouped(NodePowerRequest::GracefulReboot).await,
            Self::GracefulShutdown => grouped(NodePowerRequest::GracefulShutdown).await,
            Self::FlatReboot => unit(RequestCode::FLAT_REBOOT).await,
            Self::FlatShutdown => unit(RequestCode::FLAT_SHUTDOWN).await,
            Self::Echo => unit(RequestCode::ECHO).await,
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Certs { dir, server_name } => match make_certs(&dir, &server_name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("roxyctl: {e}");
                ExitCode::from(2)
            }
        },
        Command::Send {
            listen,
            cert,
            key,
            ca_certs,
            timeout,
            generation,
            request,
        } => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("roxyctl: cannot start: {e}");
                    return ExitCode::from(2);
                }
            };
            let sent = runtime.block_on(async {
                let config = server_config(
                    tls::load_certs(&cert).map_err(|e| e.to_string())?,
                    tls::load_private_key(&key).map_err(|e| e.to_string())?,
                    tls::load_roots(&ca_certs).map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                let manager = Manager::bind(listen, config)
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
                println!("roxyctl: waiting for an agent on {listen}");
                tokio::time::timeout(Duration::from_secs(timeout), async {
                    let session = manager.accept().await.map_err(|e| e.to_string())?;
                    let agent = session.agent();
                    println!(
                        "roxyctl: agent {} {} (protocol {}) connected from {}",
                        agent.app_name,
                        agent.version,
                        agent.protocol_version,
                        session.connection().remote_address()
                    );
                    let reply = request.send(&session, generation.into()).await;
                    session.connection().close(0u32.into(), b"roxyctl done");
                    manager.endpoint().wait_idle().await;
                    reply
                })
                .await
                .map_err(|_| format!("no agent or reply within {timeout} s"))?
            });
            match sent {
                Ok((reply, ok)) => {
                    println!("roxyctl: {request:?} -> {reply}");
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("roxyctl: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn make_certs(dir: &std::path::Path, server_name: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let pki = ThrowawayPki::generate(server_name).map_err(|e| e.to_string())?;
    let files = pki
        .write_to(dir)
        .map_err(|e| format!("cannot write into {}: {e}", dir.display()))?;
    println!("roxyctl: throwaway certificates for {server_name} (never use them in production):");
    for path in [
        &files.ca_cert,
        &files.manager_cert,
        &files.manager_key,
        &files.agent_cert,
        &files.agent_key,
    ] {
        println!("  {}", path.display());
    }
    Ok(())
}
