//! The platform backends' own logic: graceful command lookup and start, the
//! macOS backend (compiled and tested on every host), the fallback, and the
//! Linux capability check. Nothing here calls `reboot(2)`.
#![cfg(feature = "test-backend")]

mod support;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use roxyd::{
    dispatch::{DispatchConfig, Dispatcher},
    platform::{
        GracefulCommands, GracefulOp, ImmediateOp, PowerBackend, PrepareError, StartError,
        graceful_command::{CommandLine, SYSTEM_DIRS},
        macos::MacosBackend,
        unsupported::UnsupportedBackend,
    },
    power_log::RequestForm,
    reply::{self, WireForm},
    wire::{self, NodePowerRequest, RequestCode, reply_text},
};
use rstest::rstest;
use tempfile::TempDir;

/// Links a stand-in for command `name` into `dir`: it appends its name and
/// arguments to `dir/calls` and exits with 0 (`succeeds`) or 1. The scripts
/// are checked in, not written here, so that no test execs a file another
/// thread still holds open for writing (ETXTBSY).
fn fake_command(dir: &Path, name: &str, succeeds: bool) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(if succeeds {
            "fake-command-ok"
        } else {
            "fake-command-fail"
        });
    let path = dir.join(name);
    std::os::unix::fs::symlink(script, &path).unwrap();
    path
}

fn calls(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sends one request through a dispatcher on `backend` and returns the reply.
async fn one_request<B: PowerBackend>(backend: B, code: u32, body: &[u8]) -> Vec<u8> {
    let dispatcher = Arc::new(Dispatcher::new(backend, DispatchConfig::default()));
    let (mut manager, agent) = tokio::io::duplex(4096);
    let serving = tokio::spawn(async move {
        let (mut recv, mut send) = tokio::io::split(agent);
        dispatcher.serve_stream(&mut recv, &mut send).await
    });
    wire::write_frame(&mut manager, &wire::encode_request(code, body))
        .await
        .unwrap();
    let reply = wire::FrameReader::new(&mut manager)
        .read_frame(u32::MAX)
        .await
        .unwrap()
        .unwrap()
        .to_vec();
    drop(manager);
    serving.await.unwrap();
    reply
}

fn grouped(request: NodePowerRequest) -> (u32, Vec<u8>) {
    (RequestCode::NODE_POWER, wire::encode(&request))
}

#[rstest]
#[case::grouped_reboot(grouped(NodePowerRequest::Reboot))]
#[case::grouped_shutdown(grouped(NodePowerRequest::Shutdown))]
#[case::flat_reboot((RequestCode::FLAT_REBOOT, Vec::new()))]
#[case::flat_shutdown((RequestCode::FLAT_SHUTDOWN, Vec::new()))]
#[tokio::test]
async fn macos_refuses_immediate_operations(#[case] request: (u32, Vec<u8>)) {
    support::bounded(
        "macOS refuses immediate operations with `invalid command`",
        async move {
            let dir = TempDir::new().unwrap();
            fake_command(dir.path(), "sudo", true);
            let backend = MacosBackend::with_commands(
                GracefulCommands::new(MacosBackend::REBOOT, MacosBackend::POWER_OFF)
                    .with_search_dirs(vec![dir.path().to_owned()]),
            );
            let reply = one_request(backend, request.0, &request.1).await;
            assert_eq!(reply, reply::error_payload(reply_text::INVALID_COMMAND));
            assert!(calls(dir.path()).is_empty());
        },
    )
    .await;
}

#[rstest]
#[case::graceful_reboot(GracefulOp::Reboot, "sudo reboot")]
#[case::graceful_shutdown(GracefulOp::PowerOff, "sudo shutdown -h now")]
#[tokio::test]
async fn macos_graceful_runs_sudo(#[case] op: GracefulOp, #[case] expected: &str) {
    support::bounded(
        "a graceful request on macOS runs its command through sudo",
        // Boxed: the future is too large to move by value.
        Box::pin(async move {
            let dir = TempDir::new().unwrap();
            fake_command(dir.path(), "sudo", true);
            let backend = MacosBackend::with_commands(
                GracefulCommands::new(MacosBackend::REBOOT, MacosBackend::POWER_OFF)
                    .with_search_dirs(vec![dir.path().to_owned()]),
            );
            assert!(matches!(
                backend.prepare(ImmediateOp::Reboot),
                Err(PrepareError::Unsupported)
            ));
            let outcome = backend.start_graceful(op).unwrap().wait().await;
            assert!(outcome.host_going_down(), "{outcome:?}");
            assert_eq!(calls(dir.path()), vec![expected.to_owned()]);
        }),
    )
    .await;
}

/// The default table: `sudo reboot` and `sudo shutdown -h now`, with `sudo`
/// looked up in the system directories, in order. Checked without the host's
/// own `sudo`: the search path shows in the not-found error, and stand-ins
/// in two directories show which one wins.
#[test]
fn macos_default_commands_are_looked_up_in_system_directories() {
    let commands = GracefulCommands::new(MacosBackend::REBOOT, MacosBackend::POWER_OFF);
    for (op, args) in [
        (GracefulOp::Reboot, &["reboot"][..]),
        (GracefulOp::PowerOff, &["shutdown", "-h", "now"][..]),
    ] {
        let line = commands.command_line(op);
        assert_eq!((line.program, line.args), ("sudo", args), "{op:?}");
    }

    // The default search path, read from what a failed lookup reports.
    let nowhere = CommandLine {
        program: "roxyd-test-no-such-command",
        args: &[],
    };
    match GracefulCommands::new(nowhere, nowhere).resolve(GracefulOp::Reboot) {
        Err(StartError::NotFound { program, dirs }) => {
            assert_eq!(program, nowhere.program);
            assert_eq!(dirs, SYSTEM_DIRS.join(":"));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(SYSTEM_DIRS, ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]);

    // The first directory holding the program wins.
    let (first, second) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    fake_command(second.path(), "sudo", true);
    let looked_up = |dirs: &[&Path]| {
        GracefulCommands::new(MacosBackend::REBOOT, MacosBackend::POWER_OFF)
            .with_search_dirs(dirs.iter().map(|d| d.to_path_buf()).collect())
            .resolve(GracefulOp::PowerOff)
            .unwrap()
    };
    assert_eq!(
        looked_up(&[first.path(), second.path()]),
        second.path().join("sudo")
    );
    fake_command(first.path(), "sudo", true);
    assert_eq!(
        looked_up(&[first.path(), second.path()]),
        first.path().join("sudo")
    );
}

#[rstest]
#[case::graceful_reboot(NodePowerRequest::GracefulReboot)]
#[case::graceful_shutdown(NodePowerRequest::GracefulShutdown)]
#[tokio::test]
async fn missing_graceful_command_is_fail(#[case] request: NodePowerRequest) {
    support::bounded(
        "a missing graceful command is answered `fail`",
        async move {
            let empty = TempDir::new().unwrap();
            let commands = GracefulCommands::new(MacosBackend::REBOOT, MacosBackend::POWER_OFF)
                .with_search_dirs(vec![empty.path().to_owned()]);
            let (code, body) = grouped(request);
            let reply = one_request(MacosBackend::with_commands(commands), code, &body).await;
            assert_eq!(reply, reply::error_payload(reply_text::FAIL));
        },
    )
    .await;
}

#[test]
fn lookup_skips_files_that_are_not_executable_and_uses_the_first_match() {
    let first = TempDir::new().unwrap();
    let second = TempDir::new().unwrap();
    fs::write(first.path().join("sudo"), "not a program").unwrap();
    fs::set_permissions(first.path().join("sudo"), fs::Permissions::from_mode(0o644)).unwrap();
    let found = fake_command(second.path(), "sudo", true);
    let commands = GracefulCommands::new(MacosBackend::REBOOT, MacosBackend::POWER_OFF)
        .with_search_dirs(vec![first.path().to_owned(), second.path().to_owned()]);
    assert_eq!(commands.resolve(GracefulOp::Reboot).unwrap(), found);
    let none = GracefulCommands::new(MacosBackend::REBOOT, MacosBackend::POWER_OFF)
        .with_search_dirs(vec![first.path().to_owned()]);
    assert!(matches!(
        none.resolve(GracefulOp::Reboot),
        Err(StartError::NotFound {
            program: "sudo",
            ..
        })
    ));
}

#[rstest]
#[case::grouped_reboot(grouped(NodePowerRequest::Reboot), reply_text::INVALID_COMMAND)]
#[case::grouped_shutdown(grouped(NodePowerRequest::Shutdown), reply_text::INVALID_COMMAND)]
#[case::graceful_reboot(grouped(NodePowerRequest::GracefulReboot), reply_text::FAIL)]
#[case::graceful_shutdown(grouped(NodePowerRequest::GracefulShutdown), reply_text::FAIL)]
#[case::flat_reboot((RequestCode::FLAT_REBOOT, Vec::new()), reply_text::INVALID_COMMAND)]
#[case::flat_shutdown((RequestCode::FLAT_SHUTDOWN, Vec::new()), reply_text::INVALID_COMMAND)]
#[tokio::test]
async fn unsupported_platform_refuses_everything(
    #[case] request: (u32, Vec<u8>),
    #[case] expected: &str,
) {
    support::bounded(
        "an unsupported platform refuses every power request",
        async move {
            let reply = one_request(UnsupportedBackend, request.0, &request.1).await;
            assert_eq!(reply, reply::error_payload(expected));
        },
    )
    .await;
}

#[cfg(target_os = "linux")]
mod linux {
    use nix::sys::reboot::RebootMode;
    use roxyd::platform::linux::{LinuxBackend, reboot_mode};

    use super::*;

    /// The kernel's own numbers (reboot(2): `LINUX_REBOOT_CMD_RESTART` and
    /// `LINUX_REBOOT_CMD_POWER_OFF`), read independently of nix's names, so
    /// that a swap is caught without root and without a PID namespace.
    #[rstest]
    #[case::reboot(ImmediateOp::Reboot, RebootMode::RB_AUTOBOOT, 0x0123_4567)]
    #[case::power_off(ImmediateOp::PowerOff, RebootMode::RB_POWER_OFF, 0x4321_fedc)]
    fn immediate_ops_map_to_the_matching_reboot_command(
        #[case] op: ImmediateOp,
        #[case] mode: RebootMode,
        #[case] kernel_cmd: u32,
    ) {
        assert_eq!(reboot_mode(op), mode);
        assert_eq!(
            (reboot_mode(op) as i32).cast_unsigned(),
            kernel_cmd,
            "{op:?}"
        );
    }

    fn backend_in(dir: &Path) -> LinuxBackend {
        LinuxBackend::with_commands(
            GracefulCommands::new(LinuxBackend::REBOOT, LinuxBackend::POWER_OFF)
                .with_search_dirs(vec![dir.to_owned()]),
        )
    }

    #[rstest]
    #[case::graceful_reboot(NodePowerRequest::GracefulReboot)]
    #[case::graceful_shutdown(NodePowerRequest::GracefulShutdown)]
    #[tokio::test]
    async fn graceful_answers_initiated_once_started(#[case] request: NodePowerRequest) {
        support::bounded(
            "a graceful request is answered Initiated once its command started",
            async move {
                let dir = TempDir::new().unwrap();
                fake_command(dir.path(), "reboot", true);
                fake_command(dir.path(), "poweroff", true);
                let (code, body) = grouped(request);
                let reply = one_request(backend_in(dir.path()), code, &body).await;
                assert_eq!(reply, reply::initiated_payload(WireForm::Grouped));
            },
        )
        .await;
    }

    #[rstest]
    #[case::graceful_reboot(GracefulOp::Reboot, "reboot ")]
    #[case::graceful_shutdown(GracefulOp::PowerOff, "poweroff ")]
    #[tokio::test]
    async fn graceful_runs_the_system_command(#[case] op: GracefulOp, #[case] expected: &str) {
        support::bounded("a graceful request runs the system command", async move {
            let dir = TempDir::new().unwrap();
            fake_command(dir.path(), "reboot", true);
            fake_command(dir.path(), "poweroff", true);
            let dispatcher = Dispatcher::new(backend_in(dir.path()), DispatchConfig::default());
            let going_down = dispatcher
                .power()
                .start_graceful(op, RequestForm::NodePower)
                .unwrap()
                .finished()
                .await;
            assert!(going_down);
            assert_eq!(calls(dir.path()), vec![expected.to_owned()]);
        })
        .await;
    }

    #[tokio::test]
    async fn a_graceful_command_frees_the_latch_once_it_exited_whatever_its_status() {
        support::bounded(
            "a graceful command frees the latch once it exited, whatever its status",
            async move {
                let dir = TempDir::new().unwrap();
                fake_command(dir.path(), "reboot", false);
                fake_command(dir.path(), "poweroff", true);
                let dispatcher = Dispatcher::new(backend_in(dir.path()), DispatchConfig::default());
                let power = dispatcher.power();

                let failed = power
                    .start_graceful(GracefulOp::Reboot, RequestForm::NodePower)
                    .unwrap();
                assert!(!failed.finished().await);
                assert!(!power.is_busy());
                let succeeded = power
                    .start_graceful(GracefulOp::PowerOff, RequestForm::NodePower)
                    .unwrap();
                assert!(succeeded.finished().await);
                // Exit status 0 does not mean the host goes down: nothing is blocked.
                assert!(!power.is_busy());
                let again = power
                    .start_graceful(GracefulOp::Reboot, RequestForm::NodePower)
                    .unwrap();
                assert!(!again.finished().await);
                assert_eq!(
                    calls(dir.path()),
                    vec![
                        "reboot ".to_owned(),
                        "poweroff ".to_owned(),
                        "reboot ".to_owned()
                    ]
                );
            },
        )
        .await;
    }

    /// Bit 22 of `CapEff` in /proc/self/status: an independent reading.
    fn has_cap_sys_boot_per_proc() -> bool {
        let status = fs::read_to_string("/proc/thread-self/status").unwrap();
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim();
        u64::from_str_radix(hex, 16).unwrap() & (1 << 22) != 0
    }

    #[test]
    fn prepare_agrees_with_the_kernel_about_cap_sys_boot() {
        let result = LinuxBackend::new().prepare(ImmediateOp::Reboot);
        if has_cap_sys_boot_per_proc() {
            assert!(result.is_ok(), "{result:?}");
        } else {
            assert!(
                matches!(result, Err(PrepareError::MissingCapability)),
                "{result:?}"
            );
        }
    }

    #[rstest]
    #[case::grouped_reboot(grouped(NodePowerRequest::Reboot))]
    #[case::grouped_shutdown(grouped(NodePowerRequest::Shutdown))]
    #[case::flat_reboot((RequestCode::FLAT_REBOOT, Vec::new()))]
    #[case::flat_shutdown((RequestCode::FLAT_SHUTDOWN, Vec::new()))]
    fn without_cap_sys_boot_immediate_is_invalid_command(#[case] request: (u32, Vec<u8>)) {
        support::bounded_blocking(
            "without CAP_SYS_BOOT immediate requests are answered `invalid command`",
            move || {
                // Capabilities are per thread: drop CAP_SYS_BOOT from this thread's
                // effective set and serve the request on a runtime in this thread.
                let dropped = std::thread::spawn(move || {
                    if caps::drop(
                        None,
                        caps::CapSet::Effective,
                        caps::Capability::CAP_SYS_BOOT,
                    )
                    .is_err()
                    {
                        return None;
                    }
                    assert!(!has_cap_sys_boot_per_proc());
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    Some(runtime.block_on(one_request(LinuxBackend::new(), request.0, &request.1)))
                })
                .join()
                .unwrap();
                let reply =
                    dropped.expect("dropping a capability from the own thread always works");
                assert_eq!(reply, reply::error_payload(reply_text::INVALID_COMMAND));
            },
        );
    }
}
