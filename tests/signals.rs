//! SIGHUP and the real binary: it reopens the log file (after a rotation
//! renamed it) and says so in one line, or with logs on standard output says
//! there is nothing to reopen; it never stops roxyd.
#![cfg(all(target_os = "linux", feature = "test-backend"))]

mod support;

use std::path::{Path, PathBuf};

use nix::sys::{
    inotify::{AddWatchFlags, InitFlags, Inotify},
    signal::Signal,
};
use roxyd_lab::Lab;
use support::{HANG, Roxyd, lab_args, within};
use tempfile::TempDir;

/// Waits until `file` holds `needle`, woken by inotify on each write in its
/// directory (no polling); bounded by [`HANG`].
async fn wait_for_text(file: PathBuf, needle: &'static str) -> String {
    let dir = file.parent().unwrap().to_owned();
    let (found, watch) = tokio::sync::oneshot::channel();
    // A thread of its own, not the runtime's blocking pool, which the test
    // would wait for at its end if the text never came.
    std::thread::spawn(move || {
        let inotify = Inotify::init(InitFlags::empty()).unwrap();
        inotify
            .add_watch(&dir, AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE)
            .unwrap();
        loop {
            // Read after the watch is set, so that no write is missed.
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.contains(needle) {
                let _ = found.send(text);
                return;
            }
            inotify.read_events().unwrap();
        }
    });
    tokio::time::timeout(HANG, watch)
        .await
        .unwrap_or_else(|_| panic!("{needle:?} did not appear in the log file within {HANG:?}"))
        .expect("the watching thread ended")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn sighup_reopens_the_log_file_after_a_rename_and_roxyd_keeps_running() {
    support::bounded(
        "SIGHUP reopens the log file after a rename and roxyd keeps running",
        async move {
            let lab = Lab::new().unwrap();
            let dir = TempDir::new().unwrap();
            let files = lab.pki.write_to(dir.path()).unwrap();
            let log = dir.path().join("roxyd.log");
            let rotated = dir.path().join("roxyd.log.1");
            let args = lab_args(&files, lab.manager.local_addr().unwrap());
            let log_text = log.display().to_string();
            let roxyd = Roxyd::spawn(&args, &[("ROXYD_LOG_FILE", &log_text)]);
            // Connected: the SIGHUP handler is in place before roxyd connects.
            let _session = within("the Manager accepting roxyd", lab.manager.accept())
                .await
                .unwrap();
            wait_for_text(log.clone(), "connected to the Manager").await;

            std::fs::rename(&log, &rotated).unwrap();
            roxyd.signal(Signal::SIGHUP);
            let new = wait_for_text(log.clone(), "SIGHUP: log file reopened").await;
            assert_eq!(new.lines().count(), 1, "one line, in the new file:\n{new}");
            assert!(new.contains("INFO"), "{new}");

            roxyd.signal(Signal::SIGTERM);
            let (exit, output) = roxyd.exit().await;
            assert_eq!(
                exit.code(),
                Some(0),
                "roxyd survived SIGHUP and stopped on SIGTERM: {output}"
            );
            let new = read(&log);
            assert!(
                new.contains("stopped"),
                "later lines go to the new file:\n{new}"
            );
            let old = read(&rotated);
            assert!(
                old.contains("roxyd starting")
                    && !old.contains("SIGHUP")
                    && !old.contains("stopped"),
                "{old}"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn sighup_with_logs_on_standard_output_is_one_line_and_nothing_else() {
    support::bounded(
        "SIGHUP with logs on standard output is one line and nothing else",
        async move {
            let lab = Lab::new().unwrap();
            let dir = TempDir::new().unwrap();
            let files = lab.pki.write_to(dir.path()).unwrap();
            let args = lab_args(&files, lab.manager.local_addr().unwrap());
            let mut roxyd = Roxyd::spawn(&args, &[]);
            let _session = within("the Manager accepting roxyd", lab.manager.accept())
                .await
                .unwrap();
            roxyd.wait_for_line(&["connected to the Manager"]).await;
            roxyd.signal(Signal::SIGHUP);
            roxyd
                .wait_for_line(&[
                    "INFO",
                    "SIGHUP: logs go to standard output; nothing to reopen",
                ])
                .await;
            roxyd.signal(Signal::SIGTERM);
            let (exit, output) = roxyd.exit().await;
            assert_eq!(exit.code(), Some(0), "{output}");
            assert_eq!(output.matches("SIGHUP").count(), 1, "{output}");
        },
    )
    .await;
}
