//! roxyctl: a lab tool on the Manager's side of the protocol. It makes
//! throwaway certificates; or listens for one agent, sends it one request
//! (a named one, or any code with any body) and prints the reply; or plays a
//! Manager that refuses the agent's protocol version.
//!
//! Exit status: 0 for an `Ok` reply (or an agent refused as asked), 1 for an
//! `Err` reply, 2 for anything else (bad arguments, files, connection).

use std::{
    fmt::Write as _, future::Future, net::SocketAddr, path::PathBuf, process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use roxyd_lab::{
    manager::{AgentSession, Generation, Manager, ManagerError, VersionPolicy, server_config},
    pki::ThrowawayPki,
};
use roxyd_proto::{
    tls,
    wire::{self, NodePowerRequest, RequestCode},
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
        #[command(flatten)]
        manager: ManagerArgs,
        /// Which Manager generation to act as: 0.18 reads every reply; 0.19
        /// sends an immediate reboot or shutdown fire-and-forget (finishes
        /// its side, declines the reply, reads nothing).
        #[arg(long, value_enum, default_value_t = Gen::V0_18)]
        generation: Gen,
        /// The request; or give `--code` (and `--body`) instead.
        #[arg(required_unless_present = "code", conflicts_with = "code")]
        request: Option<Request>,
        /// Sends this request code, whatever it is, instead of a named
        /// request: for bad and unknown requests. The reply is printed as
        /// hex, and as text when it is an error.
        #[arg(long)]
        code: Option<u32>,
        /// The body sent with `--code`, in hex (empty by default).
        #[arg(long, requires = "code", default_value = "", value_parser = parse_hex)]
        body: Bytes,
    },
    /// Waits for an agent and refuses its protocol version in the handshake,
    /// as a Manager whose requirement the agent does not meet does. Exits 0
    /// once one agent was refused.
    Refuse {
        #[command(flatten)]
        manager: ManagerArgs,
        /// The requirement the Manager answers with (semver), which the
        /// agent's protocol version must not meet.
        #[arg(long, default_value = ">=999.0.0")]
        require: semver::VersionReq,
    },
}

/// Where and as whom roxyctl plays the Manager.
#[derive(Debug, clap::Args)]
struct ManagerArgs {
    /// Where to listen for the agent (port 0 picks a free one; the address
    /// is printed).
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
}

impl ManagerArgs {
    /// Listens as the Manager, with `policy` for the handshake.
    fn bind(&self, policy: VersionPolicy) -> Result<Manager, String> {
        let config = server_config(
            tls::load_certs(&self.cert).map_err(|e| e.to_string())?,
            tls::load_private_key(&self.key).map_err(|e| e.to_string())?,
            tls::load_roots(&self.ca_certs).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let manager = Manager::bind(self.listen, config)
            .map_err(|e| format!("cannot listen on {}: {e}", self.listen))?
            .with_policy(policy);
        let addr = manager.local_addr().map_err(|e| e.to_string())?;
        println!("roxyctl: waiting for an agent on {addr}");
        Ok(manager)
    }
}

/// Bytes given in hex on the command line.
type Bytes = Vec<u8>;

fn parse_hex(text: &str) -> Result<Bytes, String> {
    let digits: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err("an odd number of hex digits".to_owned());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let byte: String = pair.iter().collect();
            u8::from_str_radix(&byte, 16).map_err(|_| format!("not hex: {byte}"))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
}

/// Sends request `code` with `body` and returns the reply as text and
/// whether it was `Ok`: every reply is a `Result`, whose first byte is the
/// variant (0 for `Ok`); an `Err`'s text follows whatever `T` is.
async fn send_raw(
    session: &AgentSession,
    code: u32,
    body: &[u8],
) -> Result<(String, bool), String> {
    let reply = session
        .request_raw(code, body)
        .await
        .map_err(|e| e.to_string())?;
    let ok = reply.first() == Some(&0);
    let text = match wire::decode_prefix::<Result<(), String>>(&reply) {
        Ok(Err(text)) if !ok => format!("Err({text:?}) [{}]", hex(&reply)),
        _ => format!("{} [{}]", if ok { "Ok" } else { "?" }, hex(&reply)),
    };
    Ok((text, ok))
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
            manager,
            generation,
            request,
            code,
            body,
        } => {
            let what = match (request, code) {
                (Some(request), _) => format!("{request:?}"),
                (None, Some(code)) => format!("code {code} body [{}]", hex(&body)),
                (None, None) => unreachable!("clap requires a request or --code"),
            };
            let sent = run(&manager, VersionPolicy::default(), |session| async move {
                match (request, code) {
                    (Some(request), _) => request.send(&session, generation.into()).await,
                    (None, Some(code)) => send_raw(&session, code, &body).await,
                    (None, None) => unreachable!("clap requires a request or --code"),
                }
            });
            match sent {
                Ok((reply, ok)) => {
                    println!("roxyctl: {what} -> {reply}");
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
        Command::Refuse { manager, require } => {
            let policy = VersionPolicy {
                requirement: require,
                ..VersionPolicy::default()
            };
            match run_refusing(&manager, policy) {
                Ok(text) => {
                    println!("roxyctl: refused the agent's protocol version: Err({text:?})");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("roxyctl: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))
}

/// Waits for one agent, runs `exchange` with it, closes the connection.
fn run<F, Fut>(
    args: &ManagerArgs,
    policy: VersionPolicy,
    exchange: F,
) -> Result<(String, bool), String>
where
    F: FnOnce(AgentSession) -> Fut,
    Fut: Future<Output = Result<(String, bool), String>>,
{
    runtime()?.block_on(async {
        let manager = args.bind(policy)?;
        let timeout = args.timeout;
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
            let connection = session.connection().clone();
            let reply = exchange(session).await;
            connection.close(0u32.into(), b"roxyctl done");
            manager.endpoint().wait_idle().await;
            reply
        })
        .await
        .map_err(|_| format!("no agent or reply within {timeout} s"))?
    })
}

/// Waits for one agent and refuses it; returns the refusal's text.
fn run_refusing(args: &ManagerArgs, policy: VersionPolicy) -> Result<String, String> {
    runtime()?.block_on(async {
        let manager = args.bind(policy)?;
        let timeout = args.timeout;
        tokio::time::timeout(Duration::from_secs(timeout), async {
            let refused = match manager.accept().await {
                Err(ManagerError::Refused(text)) => Ok(text),
                Ok(session) => Err(format!(
                    "the agent's protocol version {} meets the requirement; not refused",
                    session.agent().protocol_version
                )),
                Err(e) => Err(e.to_string()),
            };
            manager.close();
            manager.endpoint().wait_idle().await;
            refused
        })
        .await
        .map_err(|_| format!("no agent within {timeout} s"))?
    })
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
