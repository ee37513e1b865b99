//! The real `roxyd` binary and its power log: `--power-log` (human lines,
//! `--json`, missing, unreadable and damaged logs, the state directory from
//! the configuration), the start line explaining the previous power event,
//! the `start` entry, and `--check`'s report on the state directory.
#![cfg(all(unix, feature = "test-backend"))]

mod support;

use std::{ffi::OsString, path::Path};

use nix::sys::signal::Signal;
use roxyd::power_log::{self, Entry, Event, read_log};
use roxyd_lab::Lab;
use support::{Roxyd, lab_args, run_to_exit, within, write_file};
use tempfile::TempDir;

const MANAGER: &str = "manager.roxyd.test@127.0.0.1:38390";

fn released_line(boot_id: &str) -> String {
    format!(
        r#"{{"at":"2026-12-04T15:24:05.123Z","kind":"power","op":"reboot","request":"flat-reboot","manager":"{MANAGER}","reply":"delivered","outcome":"released","boot_id":"{boot_id}","roxyd":"0.1.0"}}"#
    )
}

fn exited_line(boot_id: &str, status: i32) -> String {
    format!(
        r#"{{"at":"2026-12-04T15:30:00.000Z","kind":"power","op":"graceful-power-off","request":"node-power","manager":"{MANAGER}","reply":"initiated","outcome":"command-exited","exit_status":{status},"boot_id":"{boot_id}","roxyd":"0.1.0"}}"#
    )
}

fn start_line(boot_id: &str) -> String {
    format!(
        r#"{{"at":"2026-12-04T15:00:00.000Z","kind":"start","boot_id":"{boot_id}","roxyd":"0.1.0"}}"#
    )
}

fn power_log_args(json: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--power-log".into()];
    if json {
        args.push("--json".into());
    }
    args
}

/// Runs `roxyd --power-log` on `state_dir`; its status, stdout, stderr.
async fn print_log(state_dir: &Path, json: bool) -> (Option<i32>, String, String) {
    run_power_log(power_log_args(json), Some(state_dir)).await
}

/// Runs roxyd with `args`, and `ROXYD_STATE_DIR` set to `state_dir` if any;
/// its status, stdout, stderr.
async fn run_power_log(
    args: Vec<OsString>,
    state_dir: Option<&Path>,
) -> (Option<i32>, String, String) {
    let mut command = tokio::process::Command::new(support::roxyd_binary());
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("ROXYD_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    if let Some(dir) = state_dir {
        command.env("ROXYD_STATE_DIR", dir);
    }
    let out = within("roxyd --power-log", command.output()).await.unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn power_log_prints_one_line_per_entry_newest_last_without_a_manager() {
    support::bounded("--power-log prints one line per entry, newest last, without a Manager", async move {
    let dir = TempDir::new().unwrap();
    let lines = [start_line("b1"), released_line("b1"), exited_line("b2", 1)];
    write_file(dir.path(), "power.log", &format!("{}\n", lines.join("\n")));
    let (status, out, err) = print_log(dir.path(), false).await;
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(err, "");
    let shown: Vec<&str> = out.lines().collect();
    assert_eq!(
        shown,
        [
            "2026-12-04T15:00:00.000Z  roxyd 0.1.0 started  (boot b1)",
            "2026-12-04T15:24:05.123Z  reboot (flat-reboot) asked by manager.roxyd.test@127.0.0.1:38390: reply delivered, released  (boot b1)",
            "2026-12-04T15:30:00.000Z  graceful-power-off (node-power) asked by manager.roxyd.test@127.0.0.1:38390: reply initiated, command-exited with exit status 1  (boot b2)",
        ]
    );
    let (status, json, _) = print_log(dir.path(), true).await;
    assert_eq!(status, Some(0));
    assert_eq!(json.lines().collect::<Vec<_>>(), lines);
    })
    .await;
}

#[tokio::test]
async fn power_log_skips_damaged_lines_with_one_line_naming_the_file() {
    support::bounded("--power-log skips damaged lines with one line naming the file", async move {
    let dir = TempDir::new().unwrap();
    let text = format!(
        "{}\nnot json\n{{\"at\":\"T\",\"kind\n\u{0}\u{1}\n{}",
        start_line("b1"),
        released_line("b1")
    );
    write_file(dir.path(), "power.log", &text);
    let (status, out, err) = print_log(dir.path(), true).await;
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let path = dir.path().join("power.log");
    assert_eq!(
        err.trim(),
        format!(
            "roxyd: skipped 3 lines of the power log {} that are not entries (corrupt, truncated or edited)",
            path.display()
        )
    );
    })
    .await;
}

#[tokio::test]
async fn power_log_without_a_log_prints_nothing() {
    support::bounded("--power-log without a log prints nothing", async move {
        let dir = TempDir::new().unwrap();
        assert_eq!(
            print_log(&dir.path().join("absent"), false).await,
            (Some(0), String::new(), String::new())
        );
    })
    .await;
}

#[tokio::test]
async fn power_log_unreadable_is_one_line_and_status_4() {
    support::bounded(
        "an unreadable power log is one line and exit status 4",
        async move {
            let dir = TempDir::new().unwrap();
            std::fs::create_dir(dir.path().join("power.log")).unwrap();
            let (status, out, err) = print_log(dir.path(), false).await;
            assert_eq!(status, Some(4), "{err}");
            assert_eq!(out, "");
            let path = dir.path().join("power.log");
            assert!(
                err.starts_with(&format!(
                    "roxyd: cannot read the power log {}: ",
                    path.display()
                )) && err.trim().lines().count() == 1,
                "{err}"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn power_log_takes_the_state_directory_from_the_configuration() {
    support::bounded(
        "--power-log takes the state directory from the configuration",
        async move {
            let dir = TempDir::new().unwrap();
            let state = dir.path().join("state");
            std::fs::create_dir(&state).unwrap();
            write_file(&state, "power.log", &format!("{}\n", start_line("b7")));
            let config = write_file(
                dir.path(),
                "roxyd.toml",
                &format!("state_dir = {:?}\n", state.to_str().unwrap()),
            );
            let mut args = vec!["-c".into(), config.into_os_string()];
            args.extend(power_log_args(false));
            let (status, out, err) = run_power_log(args, None).await;
            assert_eq!(status, Some(0), "{err}");
            assert!(out.contains("started  (boot b7)"), "{out}");
        },
    )
    .await;
}

/// Starts roxyd on `state_dir`, pointed at a Manager that never answers;
/// waits for a line with every one of `needles`, stops roxyd, and returns
/// the log's entries.
async fn start_and_stop(state_dir: &Path, needles: &[&str]) -> (String, Vec<Entry>) {
    let lab = Lab::new().unwrap();
    let files_dir = TempDir::new().unwrap();
    let files = lab.pki.write_to(files_dir.path()).unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let args = lab_args(&files, silent.local_addr().unwrap());
    let mut roxyd = Roxyd::spawn(&args, &[("ROXYD_STATE_DIR", state_dir.to_str().unwrap())]);
    // The start line comes from the log's thread, in any order with the
    // daemon's: SIGTERM is handled once roxyd is connecting.
    let line = roxyd
        .wait_for_lines(&[needles, &["connecting to the Manager"]])
        .await
        .swap_remove(0);
    roxyd.signal(Signal::SIGTERM);
    let (status, output) = roxyd.exit().await;
    assert_eq!(status.code(), Some(0), "{output}");
    let entries = read_log(&state_dir.join("power.log"))
        .unwrap()
        .expect("a power log")
        .entries
        .into_iter()
        .map(|(entry, _)| entry)
        .collect();
    (line, entries)
}

#[tokio::test]
async fn start_says_the_host_came_back_and_records_the_start() {
    support::bounded("at start roxyd says the host came back and records the start", async move {
    let dir = TempDir::new().unwrap();
    write_file(
        dir.path(),
        "power.log",
        &format!("{}\n", released_line("an-old-boot")),
    );
    let (line, entries) = start_and_stop(dir.path(), &["the host came back from"]).await;
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line.contains(&format!(
            "the host came back from reboot asked by {MANAGER} at 2026-12-04T15:24:05.123Z, reply delivered"
        )),
        "{line}"
    );
    let newest = entries.last().unwrap();
    assert_eq!(newest.event, Event::Start);
    assert_eq!(newest.boot_id, power_log::boot_id());
    })
    .await;
}

#[tokio::test]
async fn start_warns_when_a_power_request_did_not_take_the_host_down() {
    support::bounded("at start roxyd warns when a power request did not take the host down", async move {
    let dir = TempDir::new().unwrap();
    let boot = power_log::boot_id();
    write_file(
        dir.path(),
        "power.log",
        &format!("{}\n", exited_line(&boot, 0)),
    );
    let (line, _) = start_and_stop(dir.path(), &["did not take the host down"]).await;
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(&format!(
            "the graceful-power-off asked by {MANAGER} at 2026-12-04T15:30:00.000Z did not take the host down (exit status 0)"
        )),
        "{line}"
    );
    })
    .await;
}

#[tokio::test]
async fn start_says_the_host_restarted_without_a_power_request() {
    support::bounded(
        "at start roxyd says the host restarted without a power request",
        async move {
            let dir = TempDir::new().unwrap();
            write_file(
                dir.path(),
                "power.log",
                &format!("{}\n", start_line("an-old-boot")),
            );
            let (line, entries) = start_and_stop(
                dir.path(),
                &["the host restarted without a power request through roxyd"],
            )
            .await;
            assert!(line.contains("INFO"), "{line}");
            assert_eq!(entries.len(), 2);
        },
    )
    .await;
}

#[tokio::test]
async fn a_missing_state_directory_is_one_warning_at_start() {
    support::bounded(
        "a missing state directory is one warning at start",
        async move {
            let dir = TempDir::new().unwrap();
            let absent = dir.path().join("absent");
            let lab = Lab::new().unwrap();
            let files = lab.pki.write_to(dir.path()).unwrap();
            let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let args = lab_args(&files, silent.local_addr().unwrap());
            let mut roxyd = Roxyd::spawn(&args, &[("ROXYD_STATE_DIR", absent.to_str().unwrap())]);
            let line = roxyd
                .wait_for_lines(&[
                    &[
                        "cannot write the power log",
                        "power requests are still carried out",
                    ],
                    &["connecting to the Manager"],
                ])
                .await
                .swap_remove(0);
            assert!(
                line.contains("WARN") && line.contains(absent.to_str().unwrap()),
                "{line}"
            );
            roxyd.signal(Signal::SIGTERM);
            let (status, output) = roxyd.exit().await;
            assert_eq!(status.code(), Some(0), "{output}");
            assert_eq!(
                output.matches("cannot write the power log").count(),
                1,
                "{output}"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn check_reports_whether_the_state_directory_is_writable() {
    support::bounded(
        "--check reports whether the state directory is writable",
        async move {
            let dir = TempDir::new().unwrap();
            let lab = Lab::new().unwrap();
            let files = lab.pki.write_to(dir.path()).unwrap();
            let addr = lab.manager.local_addr().unwrap();
            let manager = lab.manager;
            let _accepting = tokio::spawn(async move {
                loop {
                    let _ = manager.accept().await;
                }
            });
            let mut args = lab_args(&files, addr);
            args.insert(0, "--check".into());
            let state = dir.path().join("state");
            std::fs::create_dir(&state).unwrap();
            for (state_dir, says) in [
                (state.clone(), "is writable"),
                (dir.path().join("absent"), "is not writable"),
            ] {
                let (status, output) =
                    run_to_exit(&args, &[("ROXYD_STATE_DIR", state_dir.to_str().unwrap())]).await;
                assert_eq!(status.code(), Some(0), "{output}");
                assert!(
                    output.contains(&format!(
                        "roxyd: the state directory {} {says}",
                        state_dir.display()
                    )),
                    "{output}"
                );
            }
            assert_eq!(
                std::fs::read_dir(&state).unwrap().count(),
                0,
                "--check leaves nothing behind"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn a_damaged_log_is_one_warning_naming_the_file_and_the_next_entry_is_still_written() {
    support::bounded(
        "a damaged log is one warning naming the file and the next entry is still written",
        async move {
            let dir = TempDir::new().unwrap();
            let text = format!(
                "garbage\n{}\n{{\"truncated\":",
                released_line("an-old-boot")
            );
            write_file(dir.path(), "power.log", &text);
            let path = dir.path().join("power.log");
            let path = path.to_str().unwrap();
            let (line, entries) =
                start_and_stop(dir.path(), &["skipped lines of the power log", path]).await;
            assert!(
                line.contains("WARN") && line.contains("skipped=2"),
                "{line}"
            );
            assert_eq!(entries.len(), 2, "{entries:?}");
            assert_eq!(entries[1].event, Event::Start);
        },
    )
    .await;
}
