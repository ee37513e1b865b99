//! The real path, safely: the Linux backend's `reboot(2)` and the real
//! `roxyd` binary (built without `test-backend`), each as PID 1 of a fresh
//! PID namespace.
//!
//! In a PID namespace other than the first, `reboot(2)` does not reboot the
//! machine: the kernel kills the namespace's init, and its parent sees it die
//! by SIGHUP (restart) or SIGINT (power-off). Every test here checks that the
//! process about to reach the syscall is PID 1 of a namespace of its own, and
//! fails, saying why, where it cannot make one (not root, say): the runners
//! filter this file out there, so it shows as skipped, never as passed. A graceful
//! request reaches the real binary only when it runs in a private mount
//! namespace whose `/usr/sbin` is a tmpfs of stand-in commands
//! ([`Namespaced::start_with`]): the host's own `reboot` would not be
//! stopped by any namespace.
#![cfg(all(target_os = "linux", feature = "test-backend"))]

mod support;

use std::{
    ffi::OsString,
    os::unix::process::ExitStatusExt,
    path::Path,
    process::ExitStatus,
    sync::Arc,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use roxyd::{
    platform::{ImmediateOp, PowerBackend, linux::LinuxBackend},
    reply::{self, WireForm},
    wire::{self, NodePowerRequest, NodePowerResponse, RequestCode, reply_text},
};
use roxyd_lab::{
    Direction, Lab, LabOptions, UdpRelay,
    manager::{AgentSession, Generation},
    pki::PkiFiles,
};
use rstest::rstest;
use support::{HANG, Roxyd, immediate::Immediate, signal_pid};
use tempfile::TempDir;

/// Why these tests cannot run here, if they cannot.
async fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root: cannot create PID namespaces".into());
    }
    match tokio::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .kill_on_drop(true)
        .status()
        .await
    {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!("cannot create a PID namespace (unshare: {status})")),
        Err(e) => Some(format!("cannot run unshare: {e}")),
    }
}

/// Fails the test, saying why, where it cannot run: a test that checked
/// nothing must never count as passed. Where there is no root, the runners
/// select these tests out instead (`scripts/test` and CI use the nextest
/// profile `unprivileged`), so they show as skipped.
async fn require_pid_namespaces() {
    if let Some(reason) = unavailable().await {
        panic!(
            "cannot run here ({reason}); run the suite with scripts/test, which filters these tests out where they cannot run"
        );
    }
}

/// The real `roxyd` binary, which `scripts/test` builds without
/// `test-backend` and names in `ROXYTEST_REAL_BINARY`; the test fails, saying
/// so, without it.
fn real_binary() -> OsString {
    std::env::var_os("ROXYTEST_REAL_BINARY")
        .expect("ROXYTEST_REAL_BINARY is not set; scripts/test builds the real binary and sets it")
}

// ---------------------------------------------------------------------------
// The backend alone.

/// What the namespaced child does: set by [`linux_backend_ends_its_pid_namespace`].
const CHILD_OP: &str = "ROXYTEST_PIDNS_CHILD_OP";

#[rstest]
#[case::reboot("reboot", Signal::SIGHUP)]
#[case::power_off("power-off", Signal::SIGINT)]
#[tokio::test]
async fn linux_backend_ends_its_pid_namespace(#[case] op: &str, #[case] expected: Signal) {
    let rule = "reboot(2) as PID 1 of a PID namespace ends the namespace";
    support::bounded(rule, async move {
        require_pid_namespaces().await;
        let status = tokio::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "pid_namespace_child", "--ignored", "--nocapture"])
            .env(CHILD_OP, op)
            .kill_on_drop(true)
            .status()
            .await
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(expected as i32),
            "the namespace should end by {expected}: {status}"
        );
    })
    .await;
}

/// A `sync(2)` that never returns (a hung mount or disk) still ends in the
/// real `reboot(2)`, once the sync timeout has passed.
#[rstest]
#[case::reboot("reboot-after-hung-sync", Signal::SIGHUP)]
#[case::power_off("power-off-after-hung-sync", Signal::SIGINT)]
#[tokio::test]
async fn a_sync_that_never_returns_still_ends_in_reboot(
    #[case] op: &str,
    #[case] expected: Signal,
) {
    support::bounded(
        "a sync(2) that never returns still ends in reboot(2) once the sync bound passed",
        async move {
            require_pid_namespaces().await;
            let mut child = tokio::process::Command::new("unshare")
                .args(["--pid", "--fork", "--kill-child", "--"])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", "pid_namespace_child", "--ignored", "--nocapture"])
                .env(CHILD_OP, op)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let status = tokio::time::timeout(HANG, child.wait())
                .await
                .expect("reboot(2) was never reached: the hung sync held it")
                .unwrap();
            assert_eq!(
                status.signal(),
                Some(expected as i32),
                "the namespace should end by {expected}: {status}"
            );
        },
    )
    .await;
}

/// Runs only as [`linux_backend_ends_its_pid_namespace`]'s (or
/// [`a_sync_that_never_returns_still_ends_in_reboot`]'s) child, as PID 1 of
/// a fresh PID namespace; anywhere else it refuses before the syscall.
#[test]
#[ignore = "run by linux_backend_ends_its_pid_namespace as PID 1 of a fresh PID namespace"]
fn pid_namespace_child() {
    let (op, hung_sync) = match std::env::var(CHILD_OP).as_deref() {
        Ok("reboot") => (ImmediateOp::Reboot, false),
        Ok("power-off") => (ImmediateOp::PowerOff, false),
        Ok("reboot-after-hung-sync") => (ImmediateOp::Reboot, true),
        Ok("power-off-after-hung-sync") => (ImmediateOp::PowerOff, true),
        other => panic!("{CHILD_OP} is {other:?}; this test only runs as another test's child"),
    };
    assert_eq!(
        std::process::id(),
        1,
        "refusing to call reboot(2): not PID 1 of a fresh PID namespace"
    );
    let mut backend = LinuxBackend::new();
    if hung_sync {
        // A sync step that never returns; reboot(2) must follow the bound.
        backend = backend
            .with_sync_step(Arc::new(|| {
                loop {
                    std::thread::park();
                }
            }))
            .with_sync_timeout(Duration::from_millis(200));
    }
    backend.prepare(op).expect("CAP_SYS_BOOT in the namespace");
    let error = backend
        .perform(op)
        .expect_err("reboot(2) only returns on failure");
    panic!("reboot(2) failed: {error}");
}

// ---------------------------------------------------------------------------
// The real binary, end to end.

/// A shell that refuses unless it is PID 1, then becomes the command.
const PID_ONE_GUARD: &str = r#"[ "$$" = 1 ] || { echo "refusing: not PID 1 of a fresh PID namespace" >&2; exit 99; }; exec "$@""#;

/// As [`PID_ONE_GUARD`], and then, in the namespace's own mount namespace
/// (private: nothing propagates to the host), a tmpfs over `/usr/sbin`, the
/// first directory roxyd looks graceful commands up in, holding `reboot` and
/// `poweroff` stand-ins (the script named by `$1`): the host's own commands
/// are never found.
const PID_ONE_STAND_INS: &str = r#"[ "$$" = 1 ] || { echo "refusing: not PID 1 of a fresh PID namespace" >&2; exit 99; }
stand_in=$1; shift
mount -t tmpfs roxyd-stand-ins /usr/sbin || exit 98
for c in reboot poweroff; do ln -s "$stand_in" "/usr/sbin/$c" || exit 97; done
exec "$@""#;

/// How to start the namespaced roxyd.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Privileges {
    /// As root, with CAP_SYS_BOOT.
    Full,
    /// As root, with CAP_SYS_BOOT dropped from the bounding set.
    WithoutSysBoot,
}

/// The real roxyd as PID 1 of a fresh PID namespace, connected (through the
/// address given) to a lab Manager.
struct Namespaced {
    roxyd: Roxyd,
}

impl Namespaced {
    async fn start(
        binary: &OsString,
        files: &PkiFiles,
        manager: std::net::SocketAddr,
        privileges: Privileges,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_with(binary, files, manager, privileges, env, None).await
    }

    /// As [`Self::start`], with `reboot` and `poweroff` stand-ins (the
    /// fixture script `stand_in`) in place of the system's own.
    async fn start_with(
        binary: &OsString,
        files: &PkiFiles,
        manager: std::net::SocketAddr,
        privileges: Privileges,
        env: &[(&str, &str)],
        stand_in: Option<&str>,
    ) -> Self {
        let mut args: Vec<OsString> = ["--pid", "--fork", "--kill-child"]
            .into_iter()
            .map(OsString::from)
            .collect();
        if stand_in.is_some() {
            args.push("--mount".into());
        }
        args.extend(["--", "sh", "-c"].map(OsString::from));
        args.push(
            if stand_in.is_some() {
                PID_ONE_STAND_INS
            } else {
                PID_ONE_GUARD
            }
            .into(),
        );
        args.push("sh".into());
        if let Some(script) = stand_in {
            args.push(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures")
                    .join(script)
                    .into(),
            );
        }
        if privileges == Privileges::WithoutSysBoot {
            args.extend(["setpriv", "--bounding-set", "-sys_boot", "--"].map(OsString::from));
        }
        args.push(binary.clone());
        args.extend(support::lab_args(files, manager));
        let mut roxyd = Roxyd::spawn_program("unshare".as_ref(), &args, env);
        // The real backend, not the recorder.
        let line = roxyd.wait_for_line(&["roxyd starting", "linux"]).await;
        assert!(!line.contains("recorder"), "{line}");
        let namespaced = Self { roxyd };
        namespaced.assert_pid_one();
        if stand_in.is_some() {
            namespaced.assert_stand_ins();
        }
        namespaced
    }

    /// Checks, before any graceful request, that roxyd sees the stand-ins'
    /// tmpfs over `/usr/sbin`, not the host's commands.
    fn assert_stand_ins(&self) {
        let pid = self.host_pid();
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
        assert!(
            mounts.contains("roxyd-stand-ins /usr/sbin tmpfs"),
            "no stand-ins over /usr/sbin:\n{mounts}"
        );
        let host = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !host.contains("roxyd-stand-ins"),
            "the stand-ins leaked to the host"
        );
    }

    /// roxyd's PID as this test sees it: the child of `unshare`.
    fn host_pid(&self) -> i32 {
        let unshare = self.roxyd.pid();
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .expect("unshare's children");
        children
            .split_whitespace()
            .next()
            .expect("unshare has forked")
            .parse()
            .unwrap()
    }

    /// Checks, before any power request, that roxyd is PID 1 of a PID
    /// namespace other than this test's.
    fn assert_pid_one(&self) {
        let pid = self.host_pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .expect("NSpid line");
        assert_eq!(
            nspid.split_whitespace().last(),
            Some("1"),
            "roxyd is not PID 1: {nspid}"
        );
        let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
        assert_ne!(ours, theirs, "roxyd shares this test's PID namespace");
    }

    async fn wait_for_line(&mut self, needles: &[&str]) -> String {
        self.roxyd.wait_for_line(needles).await
    }

    /// Sends `signal` to roxyd itself (not to `unshare`).
    fn signal(&self, signal: Signal) {
        signal_pid(self.host_pid(), signal);
    }

    async fn exit(self) -> (ExitStatus, String) {
        self.roxyd.exit().await
    }

    /// As [`Self::exit`], with the moment this test saw the namespace end.
    async fn exit_at(self) -> (ExitStatus, Instant, String) {
        self.roxyd.exit_at().await
    }
}

/// The line of roxyd's log that holds every one of `needles`.
fn log_position(output: &str, needles: &[&str]) -> usize {
    output
        .lines()
        .position(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("roxyd never logged {needles:?}:\n{output}"))
}

/// The order roxyd logged: the reply was written, the Manager acknowledged
/// it, and only then was the operation released.
fn assert_released_after_acknowledgement(output: &str) {
    let written = log_position(output, &[WRITTEN]);
    let acknowledged = log_position(output, &[SETTLED, "delivery=Acknowledged"]);
    let released = log_position(output, &[RELEASED]);
    assert!(
        written < acknowledged && acknowledged < released,
        "released before the reply was written and acknowledged:\n{output}"
    );
}

/// What roxyd logs once the reply is written, and when it releases.
const WRITTEN: &str = "reply written; awaiting its delivery";
const RELEASED: &str = "releasing power operation";
/// What roxyd logs when the wait for the Manager's acknowledgement ends.
const SETTLED: &str = "reply delivery settled";

/// What the real binary's test needs of an immediate request beyond
/// [`Immediate`] itself.
trait ImmediateOnRealBinary {
    /// The signal its `reboot(2)` ends the namespace by.
    fn signal(self) -> Signal;
    /// Sends it and returns the reply payload.
    async fn send(self, session: &AgentSession) -> Vec<u8>;
}

impl ImmediateOnRealBinary for Immediate {
    fn signal(self) -> Signal {
        match self.op() {
            ImmediateOp::Reboot => Signal::SIGHUP,
            ImmediateOp::PowerOff => Signal::SIGINT,
        }
    }

    async fn send(self, session: &AgentSession) -> Vec<u8> {
        let (code, body) = self.code_and_body();
        tokio::time::timeout(HANG, session.request_raw(code, &body))
            .await
            .unwrap_or_else(|_| panic!("no reply to {self:?} within {HANG:?}"))
            .expect("a reply")
    }
}

struct Setup {
    lab: Lab,
    files: PkiFiles,
    _dir: TempDir,
}

fn setup(options: LabOptions) -> Setup {
    let lab = Lab::with_options(options).unwrap();
    let dir = TempDir::new().unwrap();
    let files = lab.pki.write_to(dir.path()).unwrap();
    Setup {
        lab,
        files,
        _dir: dir,
    }
}

/// The real binary, with all privileges, as PID 1 of a fresh namespace,
/// connected to a lab Manager and answering echo. Keep the [`Setup`]: it
/// holds the Manager.
async fn serving_real_binary() -> (Setup, Namespaced, AgentSession) {
    require_pid_namespaces().await;
    let binary = real_binary();
    let setup = setup(LabOptions::default());
    let addr = setup.lab.manager.local_addr().unwrap();
    let roxyd = Namespaced::start(&binary, &setup.files, addr, Privileges::Full, &[]).await;
    let session = accept(&setup.lab).await;
    assert_eq!(
        session.unit_request(RequestCode::ECHO).await.unwrap(),
        Ok(())
    );
    (setup, roxyd, session)
}

/// The Manager's reply to an immediate request, awaited on a task of its own.
type PendingReply = tokio::task::JoinHandle<
    Result<Result<NodePowerResponse, String>, roxyd_lab::manager::ManagerError>,
>;

/// One real immediate reboot: the real binary as PID 1 of a fresh
/// namespace, sent `Reboot` by the lab's Manager, until the namespace ended
/// by SIGHUP. Returns the Manager's session, its reply (still to be
/// awaited) and roxyd's output.
async fn reboot_in_namespace(
    binary: &OsString,
    setup: &Setup,
    env: &[(&str, &str)],
) -> (AgentSession, PendingReply, String) {
    let addr = setup.lab.manager.local_addr().unwrap();
    let roxyd = Namespaced::start(binary, &setup.files, addr, Privileges::Full, env).await;
    let session = accept(&setup.lab).await;
    let reply = tokio::spawn({
        let session = session.clone();
        async move { session.node_power(NodePowerRequest::Reboot).await }
    });
    let (status, output) = roxyd.exit().await;
    assert_eq!(
        status.signal(),
        Some(Signal::SIGHUP as i32),
        "{status}\n{output}"
    );
    (session, reply, output)
}

async fn accept(lab: &Lab) -> AgentSession {
    tokio::time::timeout(HANG, lab.manager.accept())
        .await
        .expect("roxyd connects")
        .unwrap()
}

#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::grouped_shutdown(Immediate::GroupedShutdown)]
#[case::flat_reboot(Immediate::FlatReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn real_binary_replies_then_ends_its_namespace(#[case] request: Immediate) {
    support::bounded(
        "the real binary replies, then reboot(2) ends its PID namespace",
        async move {
            let (_setup, roxyd, session) = serving_real_binary().await;

            // Both ends watched at once: when the Manager has the reply, and when
            // the namespace is gone.
            let ((reply, replied_at), (status, died_at, output)) = tokio::join!(
                async { (request.send(&session).await, Instant::now()) },
                roxyd.exit_at(),
            );
            assert_eq!(reply, reply::initiated_payload(request.form()));
            assert_eq!(
                status.signal(),
                Some(request.signal() as i32),
                "namespace should end by {}: {status}\n{output}",
                request.signal()
            );
            assert!(
                replied_at < died_at,
                "the Manager had the reply only {:?} after the namespace died\n{output}",
                replied_at - died_at
            );
            assert_released_after_acknowledgement(&output);
        },
    )
    .await;
}

#[rstest]
#[case::grouped_reboot(Immediate::GroupedReboot)]
#[case::flat_shutdown(Immediate::FlatShutdown)]
#[tokio::test]
async fn manager_stopping_the_stream_before_the_reply_leaves_roxyd_running(
    #[case] request: Immediate,
) {
    support::bounded(
        "a Manager stopping the stream before the reply leaves roxyd running",
        async move {
            require_pid_namespaces().await;
            let binary = real_binary();
            // Four bytes of credit per stream: roxyd's reply (5 or 6 bytes) cannot
            // be written in full until the Manager reads, which it never does.
            let setup = setup(LabOptions {
                stream_receive_window: Some(4),
                ..LabOptions::default()
            });
            let addr = setup.lab.manager.local_addr().unwrap();
            let mut roxyd =
                Namespaced::start(&binary, &setup.files, addr, Privileges::Full, &[]).await;
            let session = accept(&setup.lab).await;

            let (mut send, mut recv) = session.open_stream().await.unwrap();
            let (code, body) = request.code_and_body();
            wire::write_frame(&mut send, &wire::encode_request(code, &body))
                .await
                .unwrap();
            roxyd.wait_for_line(&["prepared; writing the reply"]).await;
            recv.stop(0u32.into()).unwrap();
            roxyd
                .wait_for_line(&["reply not written; cancelling"])
                .await;
            roxyd
                .wait_for_line(&["pending power operation cancelled; nothing done"])
                .await;

            // Still alive and serving; then it stops cleanly: no power operation ran.
            let (mut send, mut recv) = session.open_stream().await.unwrap();
            wire::write_frame(&mut send, &wire::encode_request(RequestCode::ECHO, &[]))
                .await
                .unwrap();
            send.finish().unwrap();
            let echo = tokio::time::timeout(HANG, async {
                let mut reply = Vec::new();
                recv.read_to_end(64)
                    .await
                    .map(|bytes| reply.extend(bytes))
                    .unwrap();
                reply
            })
            .await
            .unwrap();
            assert_eq!(echo[4..], wire::encode(&Ok::<(), String>(())));
            roxyd.signal(Signal::SIGTERM);
            let (status, output) = roxyd.exit().await;
            assert_eq!(status.code(), Some(0), "{status}\n{output}");
            assert!(!output.contains("releasing power operation"), "{output}");
        },
    )
    .await;
}

#[tokio::test]
async fn without_cap_sys_boot_immediate_requests_are_invalid_command() {
    support::bounded(
        "without CAP_SYS_BOOT immediate requests are answered `invalid command`",
        async move {
            require_pid_namespaces().await;
            let binary = real_binary();
            let setup = setup(LabOptions::default());
            let addr = setup.lab.manager.local_addr().unwrap();
            let roxyd =
                Namespaced::start(&binary, &setup.files, addr, Privileges::WithoutSysBoot, &[])
                    .await;
            let session = accept(&setup.lab).await;
            for request in [
                Immediate::GroupedReboot,
                Immediate::GroupedShutdown,
                Immediate::FlatReboot,
                Immediate::FlatShutdown,
            ] {
                let reply = request.send(&session).await;
                assert_eq!(
                    reply,
                    reply::error_payload(reply_text::INVALID_COMMAND),
                    "{request:?}"
                );
            }
            assert_eq!(
                session.unit_request(RequestCode::ECHO).await.unwrap(),
                Ok(())
            );
            roxyd.signal(Signal::SIGTERM);
            let (status, output) = roxyd.exit().await;
            assert_eq!(status.code(), Some(0), "{status}\n{output}");
            assert!(
                output.contains("CAP_SYS_BOOT is not in the effective capability set"),
                "{output}"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn sigterm_while_the_reply_write_is_held_up_cancels() {
    support::bounded(
        "SIGTERM while the reply write is held up cancels the operation",
        async move {
            require_pid_namespaces().await;
            let binary = real_binary();
            let setup = setup(LabOptions {
                stream_receive_window: Some(4),
                ..LabOptions::default()
            });
            let addr = setup.lab.manager.local_addr().unwrap();
            // A reply timeout far beyond the test: only SIGTERM can end the write.
            let env = [("ROXYD_REPLY_TIMEOUT_SECS", "3600")];
            let mut roxyd =
                Namespaced::start(&binary, &setup.files, addr, Privileges::Full, &env).await;
            let session = accept(&setup.lab).await;
            let (mut send, _recv) = session.open_stream().await.unwrap();
            let (code, body) = Immediate::GroupedReboot.code_and_body();
            wire::write_frame(&mut send, &wire::encode_request(code, &body))
                .await
                .unwrap();
            roxyd.wait_for_line(&["prepared; writing the reply"]).await;

            roxyd.signal(Signal::SIGTERM);
            let (status, output) = roxyd.exit().await;
            assert_eq!(status.code(), Some(0), "{status}\n{output}");
            assert!(
                output.contains("pending power operation cancelled; nothing done"),
                "{output}"
            );
            assert!(!output.contains("releasing power operation"), "{output}");
        },
    )
    .await;
}

/// Once the reply is written the operation is committed: the Manager may
/// already have been told `Initiated`. A SIGTERM during the wait for the
/// Manager's acknowledgement lets the wait run to its bound (the stop's
/// bound, `delivery_timeout_ms` here), never longer, then releases it.
#[tokio::test]
async fn sigterm_after_the_reply_was_written_releases_when_the_bound_passes() {
    support::bounded("SIGTERM after the reply was written releases the operation when the delivery bound passes", async move {
    require_pid_namespaces().await;
    let binary = real_binary();
    let setup = setup(LabOptions::default());
    let relay = UdpRelay::start(setup.lab.manager.local_addr().unwrap(), 1)
        .await
        .unwrap();
    let env = [("ROXYD_DELIVERY_TIMEOUT_MS", "1000")];
    let mut roxyd =
        Namespaced::start(&binary, &setup.files, relay.addr(), Privileges::Full, &env).await;
    let session = accept(&setup.lab).await;
    // From now on nothing roxyd sends reaches the Manager: its reply is
    // written but never acknowledged.
    relay.block(Direction::ToManager, true);
    let pending = tokio::spawn({
        let session = session.clone();
        async move { session.node_power(NodePowerRequest::Reboot).await }
    });
    roxyd
        .wait_for_line(&["reply written; awaiting its delivery"])
        .await;

    let signalled = std::time::Instant::now();
    roxyd.signal(Signal::SIGTERM);
    let (status, output) = roxyd.exit().await;
    assert_eq!(
        status.signal(),
        Some(Signal::SIGHUP as i32),
        "{status}\n{output}"
    );
    assert!(output.contains("releasing power operation"), "{output}");
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "rule broken: a stop never waits without a bound; released {took:?} after SIGTERM\n{output}"
    );
    // Never acknowledged: released once the wait's bound passed, after the write.
    assert!(
        log_position(&output, &[WRITTEN]) < log_position(&output, &[RELEASED]),
        "released before the reply was written:\n{output}"
    );
    pending.abort();
    })
    .await;
}

/// The immediate path is the way out of a graceful shutdown that hangs, and a
/// graceful command that exited 0 while the host stayed up blocks nothing,
/// even when a child it left behind still holds its output (it is reaped
/// at once): each time an immediate reboot that follows is answered
/// `Initiated` and ends the namespace. The graceful command is a stand-in.
#[rstest]
#[case::graceful_hangs("fake-command-hang", None)]
#[case::graceful_exited_0_host_stayed_up("fake-command-ok", Some(&["graceful command finished"][..]))]
#[case::graceful_exited_0_leaving_a_child_on_its_output(
    "fake-command-leaves-child",
    Some(&["graceful command finished", "left a sleeper behind", "output_still_open=true"][..])
)]
#[tokio::test]
async fn real_binary_after_a_graceful_request_carries_out_an_immediate_one(
    #[case] stand_in: &str,
    #[case] graceful_end: Option<&[&str]>,
) {
    support::bounded(
        "real binary after a graceful request carries out an immediate one",
        async move {
            require_pid_namespaces().await;
            let binary = real_binary();
            let setup = setup(LabOptions::default());
            let addr = setup.lab.manager.local_addr().unwrap();
            let mut roxyd = Namespaced::start_with(
                &binary,
                &setup.files,
                addr,
                Privileges::Full,
                &[],
                Some(stand_in),
            )
            .await;
            let session = accept(&setup.lab).await;
            let graceful = session
                .request_raw(
                    RequestCode::NODE_POWER,
                    &wire::encode(&NodePowerRequest::GracefulReboot),
                )
                .await
                .expect("a reply");
            assert_eq!(graceful, reply::initiated_payload(WireForm::Grouped));
            roxyd
                .wait_for_line(&["graceful command started", "/usr/sbin/reboot"])
                .await;
            if let Some(end) = graceful_end {
                roxyd.wait_for_line(end).await;
            }

            let reply = Immediate::GroupedReboot.send(&session).await;
            assert_eq!(
                reply,
                reply::initiated_payload(WireForm::Grouped),
                "the immediate reboot was refused"
            );
            let (status, output) = roxyd.exit().await;
            assert_eq!(
                status.signal(),
                Some(Signal::SIGHUP as i32),
                "{status}\n{output}"
            );
        },
    )
    .await;
}

/// A build without `test-backend` refuses the recorder in one line, before
/// it connects anywhere.
#[tokio::test]
async fn real_binary_refuses_the_recorder_in_one_line() {
    support::bounded("the real binary refuses the recorder in one line", async move {
    let binary = real_binary();
    let mut command = tokio::process::Command::new(&binary);
    command
        .args(["--backend", "recorder", "--cert", "c", "--key", "k"])
        .args(["--ca-certs", "ca", "m@127.0.0.1:9"]);
    // roxyd refuses unknown ROXYD_ variables, and the runner may export some.
    for (key, _) in std::env::vars() {
        if key.starts_with("ROXYD_") {
            command.env_remove(key);
        }
    }
    let output = tokio::time::timeout(HANG, command.output())
        .await
        .expect("roxyd exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "roxyd: --backend recorder: this roxyd was built without the test-backend feature and cannot record; it carries power requests out"
    );
    let version = tokio::process::Command::new(&binary)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!(
            "roxyd {} (backend: linux; this build cannot record)",
            env!("CARGO_PKG_VERSION")
        )
    );
    })
    .await;
}

/// A review-protocol 0.19 Manager sends the immediate request fire-and-forget
/// and declines the reply: the real binary carries it out all the same.
#[rstest]
#[case::reboot(NodePowerRequest::Reboot, Signal::SIGHUP)]
#[case::shutdown(NodePowerRequest::Shutdown, Signal::SIGINT)]
#[tokio::test]
async fn real_binary_carries_out_a_fire_and_forget_request(
    #[case] request: NodePowerRequest,
    #[case] expected: Signal,
) {
    support::bounded(
        "the real binary carries out a fire-and-forget request",
        async move {
            let (_setup, roxyd, session) = serving_real_binary().await;
            let sent =
                tokio::time::timeout(HANG, session.node_power_as(Generation::V0_19, request))
                    .await
                    .expect("the request is sent");
            assert_eq!(sent.unwrap(), None);
            let (status, output) = roxyd.exit().await;
            assert_eq!(
                status.signal(),
                Some(expected as i32),
                "namespace should end by {expected}: {status}\n{output}"
            );
            assert!(output.contains("releasing power operation"), "{output}");
        },
    )
    .await;
}

/// Repeats the real immediate reboot from a 0.19 Manager (fire-and-forget)
/// and counts the tries whose namespace died by `reboot(2)`. Run it with
/// `scripts/test --run-ignored only --no-capture -E 'test(stress)'`;
/// `ROXYTEST_STRESS_RUNS` sets the number of tries (200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stress run: scripts/test --run-ignored only --no-capture -E 'test(stress)'"]
async fn stress_fire_and_forget_is_carried_out() {
    require_pid_namespaces().await;
    let binary = real_binary();
    let runs: usize = std::env::var("ROXYTEST_STRESS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let env = [("RUST_LOG", "roxyd=info")];
    let setup = setup(LabOptions::default());
    let addr = setup.lab.manager.local_addr().unwrap();
    let (mut carried_out, mut declined) = (0, 0);
    for _ in 0..runs {
        let roxyd = Namespaced::start(&binary, &setup.files, addr, Privileges::Full, &env).await;
        let session = accept(&setup.lab).await;
        tokio::time::timeout(
            HANG,
            session.node_power_as(Generation::V0_19, NodePowerRequest::Reboot),
        )
        .await
        .expect("the request is sent")
        .unwrap();
        // roxyd answers within milliseconds either way; one that is still up
        // after the longest wait the decline rule allows (1 s for the FIN)
        // and a margin has dropped the request. Dropping `roxyd` kills it.
        match tokio::time::timeout(Duration::from_secs(3), roxyd.exit()).await {
            Ok((status, output)) if status.signal() == Some(Signal::SIGHUP as i32) => {
                carried_out += 1;
                if output.contains("Manager declined the reply") {
                    declined += 1;
                }
            }
            Ok((status, output)) => println!("not carried out: {status}\n{output}"),
            Err(_) => println!("not carried out: roxyd still up after 3 s"),
        }
        session.connection().close(0u32.into(), b"next run");
    }
    println!(
        "stress: 0.19 Manager (fire-and-forget): carried out in {carried_out}/{runs} tries ({declined} after a declined reply, the rest after the reply was written)"
    );
    assert_eq!(carried_out, runs, "fire-and-forget requests dropped");
}

// ---------------------------------------------------------------------------
// Stress: is the reply delivered before the namespace dies, every time?

/// Seconds of day of a log line's RFC 3339 timestamp.
fn log_time(line: &str) -> Option<f64> {
    let time = line
        .split_whitespace()
        .next()?
        .split_once('T')?
        .1
        .strip_suffix('Z')?;
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// Repeats the end-to-end immediate reboot; fails unless in every try the
/// Manager received `Initiated` before the namespace died and roxyd logged
/// the release after the reply write (a positive gap) and, with the default
/// wait, after the Manager's acknowledgement. Run it with
/// `scripts/test --run-ignored only --no-capture -E 'test(stress)'`;
/// `ROXYTEST_STRESS_RUNS` sets the number of tries (200), and
/// `ROXYTEST_STRESS_DELIVERY_TIMEOUT_MS=0` measures roxyd without the wait for
/// the Manager's acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stress run: scripts/test --run-ignored only --no-capture -E 'test(stress)'"]
async fn stress_reply_delivered_before_the_namespace_dies() {
    require_pid_namespaces().await;
    let binary = real_binary();
    let runs: usize = std::env::var("ROXYTEST_STRESS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let delivery = std::env::var("ROXYTEST_STRESS_DELIVERY_TIMEOUT_MS").ok();
    let mut env: Vec<(&str, &str)> = vec![("RUST_LOG", "roxyd=info")];
    if let Some(ms) = &delivery {
        env.push(("ROXYD_DELIVERY_TIMEOUT_MS", ms));
    }
    let setup = setup(LabOptions::default());
    let mut delivered = 0;
    let mut bad_order = 0;
    let mut gaps_us = Vec::new();
    for _ in 0..runs {
        let (session, reply, output) = reboot_in_namespace(&binary, &setup, &env).await;
        // The namespace is gone; whatever reached this host is in the
        // Manager's socket by now. A reply still missing after a second of
        // grace never left the dead namespace.
        match tokio::time::timeout(Duration::from_secs(1), reply).await {
            Ok(Ok(Ok(Ok(NodePowerResponse::Initiated)))) => delivered += 1,
            _ => reply_lost(&output),
        }
        let at = |needle: &str| {
            output
                .lines()
                .find(|l| l.contains(needle))
                .and_then(log_time)
        };
        // With the default wait, the release must also follow the Manager's
        // acknowledgement.
        if delivery.is_none() && !output.contains("delivery=Acknowledged") {
            bad_order += 1;
            println!("released without the Manager's acknowledgement; roxyd said:\n{output}");
        }
        match (at(WRITTEN), at(RELEASED)) {
            (Some(written), Some(released)) if released > written => {
                gaps_us.push((released - written) * 1e6);
            }
            (Some(written), Some(released)) => {
                bad_order += 1;
                gaps_us.push((released - written) * 1e6);
                println!("released before the reply was written; roxyd said:\n{output}");
            }
            _ => {
                bad_order += 1;
                println!("no write or no release logged; roxyd said:\n{output}");
            }
        }
        session.connection().close(0u32.into(), b"next run");
    }
    gaps_us.sort_by(f64::total_cmp);
    let median = gaps_us.get(gaps_us.len() / 2).copied().unwrap_or(f64::NAN);
    let worst = gaps_us.last().copied().unwrap_or(f64::NAN);
    println!(
        "stress: delivery_timeout_ms={}: Manager received Initiated before the namespace died in {delivered}/{runs} tries; reply write to release: median {median:.0} µs, worst {worst:.0} µs",
        delivery.as_deref().unwrap_or("default (2000)")
    );
    assert_eq!(delivered, runs, "replies lost");
    assert_eq!(
        bad_order, 0,
        "tries without a positive reply-write-to-release gap (or, with the default \
         wait, without the acknowledgement)"
    );
}

fn reply_lost(output: &str) {
    println!("reply lost; roxyd said:\n{output}");
}

// ---------------------------------------------------------------------------
// The power log across a "reboot" that only ends a PID namespace.

/// The real binary carries out an immediate reboot as PID 1 of a namespace:
/// the namespace ends, the host's boot id stays. The next start, in a new
/// namespace on the same state directory, must say that the reboot did not
/// take the host down; `--power-log` shows the release between the starts.
#[tokio::test]
async fn after_a_reboot_that_ended_only_its_namespace_the_next_start_says_so() {
    support::bounded(
        "after a reboot that ended only its namespace, the next start says so",
        async move {
            require_pid_namespaces().await;
            let binary = real_binary();
            let setup = setup(LabOptions::default());
            let addr = setup.lab.manager.local_addr().unwrap();
            let state = TempDir::new().unwrap();
            let env = [("ROXYD_STATE_DIR", state.path().to_str().unwrap())];

            let (session, reply, _output) = reboot_in_namespace(&binary, &setup, &env).await;
            let _ = tokio::time::timeout(HANG, reply).await;
            session.connection().close(0u32.into(), b"next run");

            let mut again =
                Namespaced::start(&binary, &setup.files, addr, Privileges::Full, &env).await;
            let manager = format!("{}@{addr}", roxyd_lab::SERVER_NAME);
            let line = again
                .roxyd
                .wait_for_lines(&[&["did not take the host down"]])
                .await
                .swap_remove(0);
            assert!(line.contains("WARN"), "{line}");
            assert!(
                line.contains(&format!("the reboot asked by {manager} at ")),
                "{line}"
            );
            let _session = accept(&setup.lab).await;
            again.signal(Signal::SIGTERM);
            let (status, output) = again.exit().await;
            assert_eq!(status.code(), Some(0), "{status}\n{output}");

            let shown = tokio::process::Command::new(&binary)
                .arg("--power-log")
                .env_clear()
                .env("ROXYD_STATE_DIR", state.path())
                .output()
                .await
                .unwrap();
            let shown = String::from_utf8(shown.stdout).unwrap();
            let lines: Vec<&str> = shown.lines().collect();
            assert_eq!(lines.len(), 3, "{shown}");
            assert!(lines[0].contains("started"), "{shown}");
            assert!(
                lines[1].contains(&format!(
                    "reboot (node-power) asked by {manager}: reply delivered, released"
                )),
                "{shown}"
            );
            assert!(lines[2].contains("started"), "{shown}");
            println!("roxyd --power-log after the namespace's reboot:\n{shown}start line: {line}");
        },
    )
    .await;
}

/// What roxyd logs (at debug level) once the release's entry is in the
/// power log, right before `sync(2)` and `reboot(2)`.
const RECORDED: &str = "release recorded in the power log";

/// Measures what recording the release adds to the immediate path: the time
/// from the release to its entry being handed to the file (the step before
/// `sync(2)` and `reboot(2)`), over repeated real reboots of the real binary
/// as PID 1 of a namespace. Run it with
/// `scripts/test --run-ignored only --no-capture -E 'test(stress_power_log)'`;
/// `ROXYTEST_STRESS_RUNS` sets the number of tries (100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stress run: scripts/test --run-ignored only --no-capture -E 'test(stress_power_log)'"]
async fn stress_power_log_added_time() {
    require_pid_namespaces().await;
    let binary = real_binary();
    let runs: usize = std::env::var("ROXYTEST_STRESS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let state = TempDir::new().unwrap();
    let env = [
        ("RUST_LOG", "roxyd=debug"),
        ("ROXYD_STATE_DIR", state.path().to_str().unwrap()),
    ];
    let setup = setup(LabOptions::default());
    let (mut added_us, mut written_to_recorded_us) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (session, reply, output) = reboot_in_namespace(&binary, &setup, &env).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), reply).await;
        let at = |needle: &str| {
            output
                .lines()
                .find(|l| l.contains(needle))
                .and_then(log_time)
        };
        match (at(WRITTEN), at(RELEASED), at(RECORDED)) {
            (Some(written), Some(released), Some(recorded)) => {
                added_us.push((recorded - released) * 1e6);
                written_to_recorded_us.push((recorded - written) * 1e6);
            }
            _ => panic!("a step was not logged; roxyd said:\n{output}"),
        }
        session.connection().close(0u32.into(), b"next run");
    }
    let summary = |gaps: &mut Vec<f64>| {
        gaps.sort_by(f64::total_cmp);
        (gaps[gaps.len() / 2], gaps[gaps.len() - 1])
    };
    let (median, worst) = summary(&mut added_us);
    let (w_median, w_worst) = summary(&mut written_to_recorded_us);
    println!(
        "stress: power log over {runs} real reboots: release to entry recorded: median {median:.0} µs, worst {worst:.0} µs; reply written to entry recorded (including the wait for the acknowledgement): median {w_median:.0} µs, worst {w_worst:.0} µs"
    );
}
