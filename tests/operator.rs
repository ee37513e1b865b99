//! The operator's side of the real binary: roxyd warns at start-up about a
//! key others can read (keys `roxyctl` writes are tested with the lab), every `ROXYD_` variable roxyd documents is accepted
//! (an unknown one is refused: `daemon::bad_invocation_...`), and a Manager
//! address where nothing answers, or where nothing listens (`--check`
//! fails at once), is reported as such.
#![cfg(all(unix, feature = "test-backend"))]

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path};

use nix::sys::signal::Signal;
use roxyd_lab::Lab;
use rstest::rstest;
use support::{Roxyd, lab_args, write_file};
use tempfile::TempDir;

/// Starts roxyd with `env` (and arguments `args`), waits until it is
/// connecting, stops it, and returns everything it printed.
async fn start_and_stop(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> String {
    let mut roxyd = Roxyd::spawn(args, env);
    roxyd.wait_for_line(&["connecting to the Manager"]).await;
    roxyd.signal(Signal::SIGTERM);
    let (exit, output) = roxyd.exit().await;
    assert_eq!(exit.code(), Some(0), "{output}");
    output
}

#[rstest]
#[case::owner_only(0o600, false)]
#[case::owner_read_only(0o400, false)]
#[case::group_readable(0o640, true)]
#[case::world_readable(0o644, true)]
#[case::others_only(0o604, true)]
#[tokio::test]
async fn roxyd_warns_at_start_up_when_others_can_read_its_key(
    #[case] key_mode: u32,
    #[case] warns: bool,
) {
    support::bounded(
        "roxyd warns at start-up when others can read its key",
        async move {
            let lab = Lab::new().unwrap();
            let dir = TempDir::new().unwrap();
            let files = lab.pki.write_to(dir.path()).unwrap();
            std::fs::set_permissions(&files.agent_key, std::fs::Permissions::from_mode(key_mode))
                .unwrap();
            let output =
                start_and_stop(&lab_args(&files, lab.manager.local_addr().unwrap()), &[]).await;
            let warning = format!(
                "private key file {} is readable by group or others (mode {key_mode:04o})",
                files.agent_key.display()
            );
            assert_eq!(
                output.contains(&warning),
                warns,
                "expected the warning: {warns}\n{output}"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn every_documented_roxyd_variable_is_accepted() {
    support::bounded("every documented ROXYD_ variable is accepted", async move {
        let lab = Lab::new().unwrap();
        let dir = TempDir::new().unwrap();
        let files = lab.pki.write_to(dir.path()).unwrap();
        let config = write_file(dir.path(), "roxyd.toml", "");
        let manager = lab_args(&files, lab.manager.local_addr().unwrap())
            .pop()
            .unwrap();
        let text = |p: &Path| p.to_str().unwrap().to_owned();
        let env: Vec<(String, String)> = [
            ("ROXYD_CONFIG", text(&config)),
            ("ROXYD_CERT", text(&files.agent_cert)),
            ("ROXYD_KEY", text(&files.agent_key)),
            ("ROXYD_CA_CERTS", text(&files.ca_cert)),
            ("ROXYD_APP_NAME", "roxy".into()),
            ("ROXYD_PROTOCOL_VERSION", "0.47.0".into()),
            ("ROXYD_MAX_FRAME_LEN", "65536".into()),
            ("ROXYD_MAX_CONCURRENT_STREAMS", "64".into()),
            ("ROXYD_HANDSHAKE_TIMEOUT_SECS", "10".into()),
            ("ROXYD_STREAM_IDLE_TIMEOUT_SECS", "60".into()),
            ("ROXYD_REPLY_TIMEOUT_SECS", "10".into()),
            ("ROXYD_DELIVERY_TIMEOUT_MS", "2000".into()),
            ("ROXYD_RECONNECT_INITIAL_MS", "1000".into()),
            ("ROXYD_RECONNECT_MAX_MS", "60000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let output = start_and_stop(&[manager], &env).await;
        assert!(!output.contains("unknown environment variable"), "{output}");
        // ROXYD_LOG_FILE: `daemon::logs_go_to_the_configured_file` and others.
    })
    .await;
}

/// Nothing answers at the Manager's address (a UDP socket that reads
/// nothing): `--check` says so, naming the address and the time waited, and
/// exits 1.
#[tokio::test]
async fn check_with_nothing_answering_says_so() {
    support::bounded(
        "--check with nothing answering says so and exits 1",
        async move {
            let lab = Lab::new().unwrap();
            let dir = TempDir::new().unwrap();
            let files = lab.pki.write_to(dir.path()).unwrap();
            let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = silent.local_addr().unwrap();
            let mut args = lab_args(&files, addr);
            args.insert(0, "--check".into());
            let (exit, output) =
                support::run_to_exit(&args, &[("ROXYD_HANDSHAKE_TIMEOUT_SECS", "1")]).await;
            assert_eq!(exit.code(), Some(1), "{output}");
            assert!(
                output.contains(&format!(
                    "roxyd: no answer from the Manager at {addr} within 1 s"
                )),
                "{output}"
            );
            drop(silent);
        },
    )
    .await;
}

/// `--check` against a loopback port where nothing listens: the host
/// answers ICMP port unreachable, and roxyd says so at once instead of
/// waiting out `handshake_timeout_secs` (here its largest, 300 s, far beyond
/// the test's own limit).
#[tokio::test]
async fn check_fails_at_once_when_nothing_listens() {
    support::bounded("--check fails at once when nothing listens", async move {
        let lab = Lab::new().unwrap();
        let dir = TempDir::new().unwrap();
        let files = lab.pki.write_to(dir.path()).unwrap();
        // A port that was free a moment ago; nothing listens on it now.
        let addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut args = lab_args(&files, addr);
        args.insert(0, "--check".into());
        let (exit, output) =
            support::run_to_exit(&args, &[("ROXYD_HANDSHAKE_TIMEOUT_SECS", "300")]).await;
        assert_eq!(exit.code(), Some(1), "{output}");
        assert!(
            output.contains(&format!(
                "roxyd: nothing listens at {addr}: it answered ICMP port unreachable"
            )),
            "{output}"
        );
    })
    .await;
}
