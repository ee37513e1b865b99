//! The power latch with real graceful commands (stand-ins run from a
//! temporary directory) and a recorder for the immediate path: a graceful
//! command that exited blocks nothing, and one that hangs never blocks an
//! immediate request.
#![cfg(all(unix, feature = "test-backend"))]

mod support;

use std::{
    fs, io,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use roxyd::platform::recorder::journal::{Entry, Recorder};
use roxyd::{
    dispatch::Dispatcher,
    platform::{
        GracefulCommands, GracefulOp, GracefulStart, ImmediateOp, PowerBackend, PrepareError,
        StartError, graceful_command::CommandLine,
    },
    power_log::RequestForm,
    reply::{self, WireForm},
    wire::{self, NodePowerRequest, RequestCode, reply_text},
};
use rstest::rstest;
use tempfile::TempDir;

/// The longest any wait here may take before the test fails.
const HANG: Duration = Duration::from_secs(60);

const REBOOT: CommandLine = CommandLine {
    program: "reboot",
    args: &[],
};
const POWER_OFF: CommandLine = CommandLine {
    program: "poweroff",
    args: &[],
};

/// Graceful commands run for real from a temporary directory; immediate
/// operations go to a recorder.
#[derive(Clone)]
struct Mixed {
    commands: GracefulCommands,
    recorder: Recorder,
    /// The PIDs of the graceful commands started, in order.
    started: Arc<Mutex<Vec<u32>>>,
}

impl PowerBackend for Mixed {
    fn prepare(&self, op: ImmediateOp) -> Result<(), PrepareError> {
        self.recorder.prepare(op)
    }

    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        self.recorder.perform(op)
    }

    fn start_graceful(&self, op: GracefulOp) -> Result<GracefulStart, StartError> {
        let started = self.commands.start(op)?;
        if let GracefulStart::Spawned(child) = &started {
            self.started
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(child.id().expect("a child just spawned has its id"));
        }
        Ok(started)
    }
}

/// A temporary directory whose `reboot` and `poweroff` are the fixture
/// `script`, and a dispatcher on a [`Mixed`] backend that runs them.
struct Rig {
    dir: TempDir,
    backend: Mixed,
    dispatcher: Arc<Dispatcher<Mixed>>,
}

impl Rig {
    fn new(script: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(script);
        for name in ["reboot", "poweroff"] {
            std::os::unix::fs::symlink(&fixture, dir.path().join(name)).unwrap();
        }
        let backend = Mixed {
            commands: GracefulCommands::new(REBOOT, POWER_OFF)
                .with_search_dirs(vec![dir.path().to_owned()]),
            recorder: Recorder::new(),
            started: Arc::default(),
        };
        let dispatcher = Arc::new(Dispatcher::new(
            backend.clone(),
            roxyd::dispatch::DispatchConfig::default(),
        ));
        Self {
            dir,
            backend,
            dispatcher,
        }
    }

    /// Sends one request on a stream of its own and returns the reply.
    async fn request(&self, request: NodePowerRequest) -> Vec<u8> {
        let dispatcher = Arc::clone(&self.dispatcher);
        let (mut manager, agent) = tokio::io::duplex(4096);
        let serving = tokio::spawn(async move {
            let (mut recv, mut send) = tokio::io::split(agent);
            dispatcher.serve_stream(&mut recv, &mut send).await
        });
        let frame = wire::encode_request(RequestCode::NODE_POWER, &wire::encode(&request));
        wire::write_frame(&mut manager, &frame).await.unwrap();
        let reply = tokio::time::timeout(
            HANG,
            wire::FrameReader::new(&mut manager).read_frame(u32::MAX),
        )
        .await
        .expect("a reply")
        .unwrap()
        .unwrap()
        .to_vec();
        drop(manager);
        tokio::time::timeout(HANG, serving)
            .await
            .expect("the stream ends")
            .unwrap();
        reply
    }

    fn performed(&self) -> Vec<Entry> {
        self.backend.recorder.journal().power_operations()
    }

    async fn wait_performed(&self, op: ImmediateOp) {
        tokio::time::timeout(
            HANG,
            self.backend
                .recorder
                .journal()
                .wait_for(|e| e.contains(&Entry::Perform(op))),
        )
        .await
        .unwrap_or_else(|_| panic!("{op} was never performed: {:?}", self.performed()));
    }

    fn started_pids(&self) -> Vec<u32> {
        self.backend
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Kills the graceful command started last and waits until the latch
    /// is free.
    async fn kill_last_and_wait_idle(&self) {
        let pid = *self.started_pids().last().expect("a command was started");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        tokio::time::timeout(HANG, self.dispatcher.power().wait_idle())
            .await
            .expect("the latch is freed once the command ended");
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn initiated() -> Vec<u8> {
    reply::initiated_payload(WireForm::Grouped)
}

/// Exit status 0 does not mean the host goes down (a cancelled systemd job,
/// an inhibitor, a chroot): once the command has exited, with any status,
/// the next request of either kind is accepted.
#[rstest]
#[case::exited_0_then_immediate("fake-command-ok", NodePowerRequest::Reboot)]
#[case::exited_0_then_graceful("fake-command-ok", NodePowerRequest::GracefulShutdown)]
#[case::exited_1_then_immediate("fake-command-fail", NodePowerRequest::Shutdown)]
#[case::exited_1_then_graceful("fake-command-fail", NodePowerRequest::GracefulReboot)]
#[tokio::test]
async fn graceful_exited_and_host_stayed_up_next_request_is_accepted(
    #[case] script: &str,
    #[case] next: NodePowerRequest,
) {
    support::bounded(
        "once a graceful command exited and the host stayed up, the next request is accepted",
        async move {
            let rig = Rig::new(script);
            let run = rig
                .dispatcher
                .power()
                .start_graceful(GracefulOp::Reboot, RequestForm::NodePower)
                .unwrap();
            let exited_0 = tokio::time::timeout(HANG, run.finished())
                .await
                .expect("the command ends");
            assert_eq!(exited_0, script == "fake-command-ok");

            assert_eq!(rig.request(next).await, initiated(), "{next:?}");
            match next {
                NodePowerRequest::Reboot => rig.wait_performed(ImmediateOp::Reboot).await,
                NodePowerRequest::Shutdown => rig.wait_performed(ImmediateOp::PowerOff).await,
                _ => {
                    tokio::time::timeout(HANG, rig.dispatcher.power().wait_idle())
                        .await
                        .expect("the second command ends");
                    let second = if next == NodePowerRequest::GracefulReboot {
                        "reboot "
                    } else {
                        "poweroff "
                    };
                    assert_eq!(rig.calls(), ["reboot ", second]);
                }
            }
        },
    )
    .await;
}

/// The operator's way out of a hung graceful shutdown: an immediate request
/// is accepted and carried out while the command still runs. Meanwhile a
/// second graceful request is refused (one system command at a time), and
/// once the hung command ends, by any means, nothing is blocked.
#[rstest]
#[case::reboot(NodePowerRequest::Reboot, ImmediateOp::Reboot)]
#[case::power_off(NodePowerRequest::Shutdown, ImmediateOp::PowerOff)]
#[tokio::test]
async fn graceful_hangs_an_immediate_request_is_accepted_and_carried_out(
    #[case] request: NodePowerRequest,
    #[case] op: ImmediateOp,
) {
    support::bounded(
        "while a graceful command hangs, an immediate request is accepted and carried out",
        async move {
            let rig = Rig::new("fake-command-hang");
            assert_eq!(
                rig.request(NodePowerRequest::GracefulReboot).await,
                initiated()
            );
            assert!(rig.dispatcher.power().is_busy());
            assert_eq!(
                rig.request(NodePowerRequest::GracefulShutdown).await,
                reply::error_payload(reply_text::FAIL),
                "a second graceful command while the first runs"
            );

            assert_eq!(rig.request(request).await, initiated());
            rig.wait_performed(op).await;
            assert_eq!(rig.performed(), vec![Entry::Perform(op)]);

            // End the hung command; its exit (by a signal) frees the latch, and a
            // graceful request is accepted again.
            rig.kill_last_and_wait_idle().await;
            assert_eq!(
                rig.request(NodePowerRequest::GracefulShutdown).await,
                initiated()
            );
            rig.kill_last_and_wait_idle().await;
            assert_eq!(rig.started_pids().len(), 2);
        },
    )
    .await;
}

/// A command that exits at once but leaves a child holding its standard
/// output: the reaper waits for the command itself, so it is reaped (no
/// zombie) and the latch freed while the child still holds the pipe.
#[tokio::test]
async fn a_command_whose_child_holds_its_output_is_reaped_at_once() {
    support::bounded(
        "a command whose child holds its output is reaped at once",
        async move {
            let rig = Rig::new("fake-command-leaves-child");
            let run = rig
                .dispatcher
                .power()
                .start_graceful(GracefulOp::Reboot, RequestForm::NodePower)
                .unwrap();
            let exited_0 = tokio::time::timeout(HANG, run.finished())
                .await
                .expect("the command is reaped while its child still holds the pipe");
            assert!(exited_0);
            assert!(!rig.dispatcher.power().is_busy());

            let pid = rig.started_pids()[0];
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "the command {pid} is still in the process table (a zombie)"
            );
            let sleeper: i32 = fs::read_to_string(rig.dir.path().join("sleeper.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let alive = Path::new(&format!("/proc/{sleeper}")).exists();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(sleeper),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            assert!(alive, "the sleeper should still have held the pipe");
        },
    )
    .await;
}

/// Threads of this process.
fn threads() -> usize {
    fs::read_dir("/proc/self/task").unwrap().count()
}

/// A running command is waited for, and its output read, without a thread
/// of its own: many hung commands over a daemon's life cost no threads, and
/// none can be missing when the runtime needs to wait.
#[tokio::test(flavor = "current_thread")]
async fn a_running_graceful_command_takes_no_thread() {
    support::bounded("a running graceful command takes no thread", async move {
        let rig = Rig::new("fake-command-hang");
        let before = threads();
        let _run = rig
            .dispatcher
            .power()
            .start_graceful(GracefulOp::Reboot, RequestForm::NodePower)
            .unwrap();
        // Let the reaper start and the command write its first output.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(rig.dispatcher.power().is_busy());
        assert_eq!(threads(), before, "threads started for the command");
        rig.kill_last_and_wait_idle().await;
    })
    .await;
}

/// A backend whose `perform` panics.
struct PanickingPerform;

impl PowerBackend for PanickingPerform {
    fn prepare(&self, _op: ImmediateOp) -> Result<(), PrepareError> {
        Ok(())
    }

    fn perform(&self, op: ImmediateOp) -> io::Result<()> {
        panic!("deliberate panic performing {op}");
    }

    fn start_graceful(&self, _op: GracefulOp) -> Result<GracefulStart, StartError> {
        Ok(GracefulStart::Simulated)
    }
}

/// "An operation is being performed" ends with a panic in `perform` too:
/// the daemon's stop, which waits for it, is not held for ever.
#[tokio::test]
async fn a_panic_in_perform_ends_the_performing_state() {
    support::bounded("a panic in perform ends the performing state", async move {
        let dispatcher = Arc::new(Dispatcher::new(
            PanickingPerform,
            roxyd::dispatch::DispatchConfig {
                delivery_timeout: Duration::ZERO,
                ..roxyd::dispatch::DispatchConfig::default()
            },
        ));
        let (mut manager, agent) = tokio::io::duplex(4096);
        let serving = {
            let dispatcher = Arc::clone(&dispatcher);
            tokio::spawn(async move {
                let (mut recv, mut send) = tokio::io::split(agent);
                dispatcher.serve_stream(&mut recv, &mut send).await
            })
        };
        let frame = wire::encode_request(
            RequestCode::NODE_POWER,
            &wire::encode(&NodePowerRequest::Reboot),
        );
        wire::write_frame(&mut manager, &frame).await.unwrap();
        let reply = tokio::time::timeout(
            HANG,
            wire::FrameReader::new(&mut manager).read_frame(u32::MAX),
        )
        .await
        .expect("a reply")
        .unwrap()
        .unwrap()
        .to_vec();
        assert_eq!(reply, initiated());
        drop(manager);
        let _ = tokio::time::timeout(HANG, serving)
            .await
            .expect("the stream ends");
        tokio::time::timeout(Duration::from_secs(10), dispatcher.power().wait_performed())
            .await
            .expect("a panicked perform left the operation counted as being performed");
    })
    .await;
}
