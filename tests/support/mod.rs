//! Running the real `roxyd` binary in tests: files for it, and a handle that
//! reads its log lines so tests wait on what it says, not on time.
#![allow(dead_code)]

#[cfg(feature = "test-backend")]
pub mod backend_lifetime;
pub mod held_reply;
pub mod immediate;
#[cfg(feature = "test-backend")]
pub mod lab_agent;

use std::{
    ffi::OsString,
    path::Path,
    process::{ExitStatus, Stdio},
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

use roxyd_lab::{SERVER_NAME, pki::PkiFiles};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// The longest any single wait in these tests may take: a safety net that
/// turns a hang into a failure with the log, not a time the tests rely on.
/// A test's own limit ([`TEST_LIMIT`]) is shorter and trips first.
pub const HANG: Duration = Duration::from_secs(60);

/// How long one test may run, on real time: several times what any test
/// here takes on a loaded 2-core machine, and shorter than nextest's 30 s
/// slow-timeout period, so that a hang fails the test with the rule it
/// checks instead of being killed without one.
pub const TEST_LIMIT: Duration = Duration::from_secs(20);

/// The limit of a test that floods roxyd with thousands of streams: roxyd's
/// own pace (a batch of streams closed to make room, then time for the
/// Manager to answer) makes it take 10 to 20 s; still shorter than
/// nextest's slow-timeout period.
pub const FLOOD_LIMIT: Duration = Duration::from_secs(28);

/// `test`'s output, or a failure saying `rule` was broken once it has run
/// for [`TEST_LIMIT`]. The limit runs on real time, also in tests on
/// paused Tokio time: a thread waits for the test's end, with a timeout.
/// A test still running when the limit trips is dropped while the failure
/// unwinds, so a [`Roxyd`] in it prints what roxyd said.
///
/// # Panics
///
/// When `test` has not ended within [`TEST_LIMIT`], naming `rule`.
pub async fn bounded<T>(rule: &str, test: impl std::future::Future<Output = T>) -> T {
    bounded_for(TEST_LIMIT, rule, test).await
}

/// As [`bounded`], with the limit `limit`.
///
/// # Panics
///
/// When `test` has not ended within `limit`, naming `rule`.
pub async fn bounded_for<T>(
    limit: Duration,
    rule: &str,
    test: impl std::future::Future<Output = T>,
) -> T {
    let (_running, ended) = std::sync::mpsc::channel::<()>();
    let (expired, expiry) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        if ended.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
            let _ = expired.send(());
        }
    });
    let mut test = std::pin::pin!(test);
    tokio::select! {
        output = &mut test => output,
        Ok(()) = expiry => panic!("rule broken: {rule} (the test did not end within {limit:?})"),
    }
}

/// As [`bounded`], for a synchronous test that waits on threads or child
/// processes: `test` runs on a thread of its own, whose end is waited for
/// with a timeout. A panic in `test` fails the test as it would have.
///
/// # Panics
///
/// When `test` panics, or has not ended within [`TEST_LIMIT`], naming `rule`.
pub fn bounded_blocking<T: Send + 'static>(
    rule: &str,
    test: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, ended) = std::sync::mpsc::channel();
    let running = std::thread::spawn(move || {
        let _ = done.send(test());
    });
    match ended.recv_timeout(TEST_LIMIT) {
        Ok(output) => output,
        // The sender was dropped unsent: `test` panicked.
        Err(RecvTimeoutError::Disconnected) => match running.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the test's thread ended without its output"),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("rule broken: {rule} (the test did not end within {TEST_LIMIT:?})")
        }
    }
}

/// The `roxyd` binary built for this test run (it has the recorder, which
/// [`Roxyd::spawn`] chooses).
pub fn roxyd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_roxyd")
}

/// The arguments that point roxyd at `manager` with the lab's files.
pub fn lab_args(files: &PkiFiles, manager: std::net::SocketAddr) -> Vec<OsString> {
    vec![
        "--cert".into(),
        files.agent_cert.clone().into(),
        "--key".into(),
        files.agent_key.clone().into(),
        "--ca-certs".into(),
        files.ca_cert.clone().into(),
        format!("{SERVER_NAME}@{manager}").into(),
    ]
}

/// A lab Manager and its throwaway PKI files in a temporary directory, for
/// tests that start the real binary against it.
pub struct LabFiles {
    /// The lab: its Manager listens on loopback.
    pub lab: roxyd_lab::Lab,
    /// The PKI files, written into `dir`.
    pub files: PkiFiles,
    /// Where the files (and any configuration file) are.
    pub dir: tempfile::TempDir,
}

impl LabFiles {
    /// A new lab with its files written out.
    pub fn new() -> Self {
        let lab = roxyd_lab::Lab::new().unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let files = lab.pki.write_to(dir.path()).unwrap();
        Self { lab, files, dir }
    }

    /// The arguments that point roxyd at the lab's Manager.
    pub fn args(&self) -> Vec<OsString> {
        lab_args(&self.files, self.lab.manager.local_addr().unwrap())
    }

    /// The default arguments with `flag`'s value replaced.
    pub fn with(&self, flag: &str, value: impl Into<OsString>) -> Vec<OsString> {
        let mut args = self.args();
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.into();
        args
    }

    /// The default arguments with the Manager address replaced.
    pub fn with_manager(&self, manager: &str) -> Vec<OsString> {
        let mut args = self.args();
        *args.last_mut().unwrap() = manager.into();
        args
    }

    /// `text` written as `roxyd.toml` in the directory; its path.
    pub fn config(&self, text: &str) -> String {
        write_file(self.dir.path(), "roxyd.toml", text)
            .display()
            .to_string()
    }

    /// `-c FILE` holding `text`, then the default arguments.
    pub fn with_file(&self, text: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-c".into(), self.config(text).into()];
        args.extend(self.args());
        args
    }

    /// As [`Self::with_file`], with the state directory set to the
    /// directory.
    pub fn with_config(&self, text: &str) -> Vec<OsString> {
        let state = self.dir.path().to_str().unwrap();
        self.with_file(&format!("{text}\nstate_dir = {state:?}\n"))
    }
}

/// A running roxyd whose output lines are collected.
pub struct Roxyd {
    child: Child,
    /// The state directory made for this run, unless the test chose one.
    _state_dir: Option<tempfile::TempDir>,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Roxyd {
    /// Starts roxyd with `args` and extra environment `env`; `RUST_LOG` and
    /// every `ROXYD_` variable of the test's own environment are cleared.
    /// It runs on the recorder, chosen explicitly (`ROXYD_BACKEND`), unless
    /// `env` chooses otherwise.
    pub fn spawn(args: &[OsString], env: &[(&str, &str)]) -> Self {
        let mut env = env.to_vec();
        if !env.iter().any(|(key, _)| *key == "ROXYD_BACKEND") {
            env.insert(0, ("ROXYD_BACKEND", "recorder"));
        }
        Self::spawn_program(roxyd_binary().as_ref(), args, &env)
    }

    /// As [`Self::spawn`], but runs `program` (a wrapper that ends by
    /// executing roxyd, say) with `args`. Unless `env` (`ROXYD_STATE_DIR`)
    /// or a configuration file (`-c`, which must then set `state_dir`)
    /// names one, roxyd's state directory is a fresh temporary one, kept as
    /// long as this handle.
    pub fn spawn_program(
        program: &std::ffi::OsStr,
        args: &[OsString],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("ROXYD_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().copied());
        let named = env.iter().any(|(key, _)| *key == "ROXYD_STATE_DIR")
            || args.iter().any(|arg| arg == "-c" || arg == "--config");
        let state_dir = if named {
            None
        } else {
            let dir = tempfile::tempdir().expect("a state directory");
            command.env("ROXYD_STATE_DIR", dir.path());
            Some(dir)
        };
        let mut child = command.spawn().expect("roxyd starts");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            _state_dir: state_dir,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until roxyd prints a line containing every one of `needles`,
    /// and returns it.
    pub async fn wait_for_line(&mut self, needles: &[&str]) -> String {
        let found = tokio::time::timeout(HANG, async {
            loop {
                let line = self.lines.recv().await?;
                self.seen.push(line.clone());
                if needles.iter().all(|n| line.contains(n)) {
                    return Some(line);
                }
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "roxyd never printed {needles:?}; it printed:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// Waits until roxyd has printed, in any order, a line for each of
    /// `wanted` (a line containing every one of its needles); returns them
    /// in the order of `wanted`.
    pub async fn wait_for_lines(&mut self, wanted: &[&[&str]]) -> Vec<String> {
        let mut found: Vec<Option<String>> = vec![None; wanted.len()];
        let matches = |line: &str, needles: &[&str]| needles.iter().all(|n| line.contains(n));
        for line in &self.seen {
            for (slot, needles) in found.iter_mut().zip(wanted) {
                if slot.is_none() && matches(line, needles) {
                    *slot = Some(line.clone());
                }
            }
        }
        let all = tokio::time::timeout(HANG, async {
            while found.iter().any(Option::is_none) {
                let line = self.lines.recv().await?;
                self.seen.push(line.clone());
                for (slot, needles) in found.iter_mut().zip(wanted) {
                    if slot.is_none() && matches(&line, needles) {
                        *slot = Some(line.clone());
                    }
                }
            }
            Some(())
        })
        .await;
        match all {
            Ok(Some(())) => found.into_iter().flatten().collect(),
            _ => panic!(
                "roxyd never printed all of {wanted:?}; it printed:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// The process started, in this test's PID namespace.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id().expect("still running")).unwrap()
    }

    /// Sends `signal` to roxyd.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        signal_pid(self.pid(), signal);
    }

    /// Waits for roxyd to exit; returns its status and everything it printed.
    pub async fn exit(self) -> (ExitStatus, String) {
        let (status, _, output) = self.exit_at().await;
        (status, output)
    }

    /// As [`Self::exit`], with the moment this test saw the process end.
    pub async fn exit_at(mut self) -> (ExitStatus, Instant, String) {
        let status = tokio::time::timeout(HANG, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "roxyd did not exit within {HANG:?}; it printed:\n{}",
                    self.seen.join("\n")
                )
            })
            .expect("roxyd's status");
        let ended = Instant::now();
        while let Ok(Some(line)) = tokio::time::timeout(HANG, self.lines.recv()).await {
            self.seen.push(line);
        }
        (status, ended, self.seen.join("\n"))
    }
}

impl Drop for Roxyd {
    /// A test failing while roxyd runs (its limit tripped, say) shows what
    /// roxyd printed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            eprintln!("roxyd printed:\n{}", self.seen.join("\n"));
        }
    }
}

/// `future`'s output, or a failure naming `what` after [`HANG`]: for waits
/// that have no limit of their own.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not come within {HANG:?}"))
}

/// Sends `signal` to process `pid`.
pub fn signal_pid(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal delivered");
}

/// Runs roxyd to completion with `args` and returns its status and output.
pub async fn run_to_exit(args: &[OsString], env: &[(&str, &str)]) -> (ExitStatus, String) {
    Roxyd::spawn(args, env).exit().await
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
