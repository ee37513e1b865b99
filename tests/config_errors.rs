//! Configuration errors of the real binary: each is one line naming its
//! source (the file with line and column, or the variable), the key, the
//! value, and what the key accepts; and the Manager address and TLS files
//! come from the command line, the environment or the file, in that order.
#![cfg(all(unix, feature = "test-backend"))]

mod support;

use std::ffi::OsString;

use nix::sys::signal::Signal;
use roxyd_lab::SERVER_NAME;
use rstest::rstest;
use support::{LabFiles, Roxyd, run_to_exit};

type Setup = LabFiles;

fn setup() -> Setup {
    LabFiles::new()
}

/// The arguments and environment of one bad invocation.
type Invocation = fn(&Setup) -> (Vec<OsString>, Vec<(&'static str, String)>);

fn file(s: &Setup, text: &str) -> Vec<OsString> {
    s.with_file(text)
}

#[rstest]
#[case::malformed_toml(
    |s: &Setup| (file(s, "app_name = \"roxy\"\nlog_file = /var/log/roxyd.log\n"), vec![]),
    &["roxyd.toml, line 2, column 12:", "string values must be quoted", "log_file = /var/log/roxyd.log"]
)]
#[case::duplicate_key(
    |s: &Setup| (file(s, "max_frame_len = 1024\nmax_frame_len = 2048\n"), vec![]),
    &["roxyd.toml, line 2, column 1: duplicate key max_frame_len; the line reads \"max_frame_len = 2048\""]
)]
#[case::negative_in_file(
    |s: &Setup| (file(s, "\nmax_frame_len = -1\n"), vec![]),
    &["roxyd.toml, line 2, column 17: max_frame_len = -1; expected a whole number from 1 to 4294967295"]
)]
#[case::u32_bound_is_u32_max(
    |s: &Setup| (file(s, "max_frame_len = 4294967296\n"), vec![]),
    &["roxyd.toml, line 1, column 17: max_frame_len = 4294967296; expected a whole number from 1 to 4294967295"]
)]
#[case::wrong_type_in_file(
    |s: &Setup| (file(s, "max_frame_len = \"big\"\n"), vec![]),
    &["line 1, column 17: max_frame_len = \"big\"; expected a whole number from 1 to 4294967295"]
)]
#[case::too_large_in_file(
    |s: &Setup| (file(s, "reply_timeout_secs = 99999999999999999999\n"), vec![]),
    &["roxyd.toml, line 1, column 22: reply_timeout_secs = 99999999999999999999; expected a whole number from 1 to 3600"]
)]
#[case::env_zero_blames_the_variable_not_the_file(
    |s: &Setup| (file(s, "handshake_timeout_secs = 20\n"), vec![("ROXYD_HANDSHAKE_TIMEOUT_SECS", "0".into())]),
    &["roxyd: invalid environment variable ROXYD_HANDSHAKE_TIMEOUT_SECS: handshake_timeout_secs = \"0\"; expected a whole number from 1 to 300"]
)]
#[case::env_negative(
    |s: &Setup| (s.args(), vec![("ROXYD_HANDSHAKE_TIMEOUT_SECS", "-5".into())]),
    &["roxyd: invalid environment variable ROXYD_HANDSHAKE_TIMEOUT_SECS: handshake_timeout_secs = \"-5\"; expected a whole number from 1 to 300"]
)]
#[case::env_too_large(
    |s: &Setup| (s.args(), vec![("ROXYD_REPLY_TIMEOUT_SECS", "99999999999999999999999".into())]),
    &["environment variable ROXYD_REPLY_TIMEOUT_SECS: reply_timeout_secs = \"99999999999999999999999\"; expected a whole number from 1 to 3600"]
)]
#[case::ca_list_with_empty_entry(
    |s: &Setup| { let mut a = s.args(); let at = a.iter().position(|x| x == "--ca-certs").unwrap(); a[at + 1] = "ca.pem,".into(); (a, vec![]) },
    &["invalid value 'ca.pem,' for '--ca-certs", "entry 2 of \"ca.pem,\" is empty"]
)]
#[case::env_ca_list_with_empty_entry(
    |s: &Setup| (file(s, "manager = \"m@127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\n"), vec![("ROXYD_CA_CERTS", "ca.pem,".into())]),
    &["environment variable ROXYD_CA_CERTS: ca_certs = \"ca.pem,\"; expected comma-separated paths with none empty (entry 2"]
)]
#[case::host_name_as_manager(
    |s: &Setup| { let mut a = s.args(); *a.last_mut().unwrap() = "m@manager.example:38390".into(); (a, vec![]) },
    &["the address is not IP:PORT; host names are not resolved, and an IPv6 address needs brackets"]
)]
#[case::host_name_as_manager_in_file(
    |s: &Setup| { let mut a = file(s, "manager = \"m@manager.example:38390\"\n"); a.pop(); (a, vec![]) },
    &["line 1, column 11: manager = \"m@manager.example:38390\"; expected NAME@IP:PORT (the address is not IP:PORT; host names are not resolved"]
)]
#[case::unknown_key(
    |s: &Setup| (file(s, "\n\nlog_flie = \"/tmp/x\"\n"), vec![]),
    &["roxyd.toml, line 3, column 1: unknown key log_flie; the keys are manager, cert, key, ca_certs, log_file"]
)]
#[case::protocol_version_not_semver(
    |s: &Setup| (file(s, "protocol_version = \"banana\"\n"), vec![]),
    &["line 1, column 20: protocol_version = \"banana\"; expected a semantic version MAJOR.MINOR.PATCH"]
)]
#[case::protocol_version_two_parts(
    |s: &Setup| (s.args(), vec![("ROXYD_PROTOCOL_VERSION", "0.47".into())]),
    &["environment variable ROXYD_PROTOCOL_VERSION: protocol_version = \"0.47\"; expected a semantic version"]
)]
#[case::multi_line_value_stays_on_one_line(
    |s: &Setup| (file(s, "protocol_version = \"\"\"\n0.47.0\n2026-12-04T15:00:00Z  INFO roxyd: forged\"\"\"\n"), vec![]),
    &["line 1, column 20: protocol_version = \"\"\"\\n0.47.0\\n2026-12-04T15:00:00Z  INFO roxyd: forged\"\"\"; expected a semantic version"]
)]
#[case::backoff_inverted_names_both_sources(
    |s: &Setup| (file(s, "reconnect_initial_ms = 5000\n"), vec![("ROXYD_RECONNECT_MAX_MS", "10".into())]),
    &["reconnect_initial_ms = 5000 (config file", "line 1, column 24) exceeds reconnect_max_ms = 10 (environment variable ROXYD_RECONNECT_MAX_MS)"]
)]
#[case::no_manager_anywhere(
    |s: &Setup| { let mut a = s.args(); a.pop(); (a, vec![]) },
    &["roxyd: no Manager address given: pass NAME@IP:PORT as the last argument, set ROXYD_MANAGER, or set manager in the config file (-c)"]
)]
#[case::no_ca_anywhere(
    |s: &Setup| { let mut a = s.args(); let at = a.iter().position(|x| x == "--ca-certs").unwrap(); a.drain(at..at + 2); (a, vec![]) },
    &["roxyd: no CA certificates given: pass --ca-certs, set ROXYD_CA_CERTS, or set ca_certs in the config file (-c)"]
)]
#[tokio::test]
async fn configuration_error_is_one_line_naming_source_key_value_and_range(
    #[case] invocation: Invocation,
    #[case] needles: &[&str],
) {
    support::bounded(
        "configuration error is one line naming source key value and range",
        async move {
            let setup = setup();
            let (args, env) = invocation(&setup);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (exit, output) = run_to_exit(&args, &env).await;
            assert_eq!(exit.code(), Some(2), "{output}");
            let line = output
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .unwrap_or_else(|| panic!("expected one line with {needles:?} in:\n{output}"));
            assert!(
                line.starts_with("roxyd: ") || line.starts_with("error: "),
                "{line}"
            );
            assert!(!output.contains("connecting to the Manager"), "{output}");
        },
    )
    .await;
}

/// The Manager address and the TLS files in the file alone, in the
/// environment alone, and the command line over both: roxyd connects to the
/// one that wins.
#[rstest]
#[case::file_only(Place::File)]
#[case::environment_only(Place::Env)]
#[case::command_line_over_both(Place::CommandLine)]
#[tokio::test]
async fn manager_and_tls_files_come_from_file_environment_or_command_line(#[case] place: Place) {
    support::bounded("manager and tls files come from file environment or command line", async move {
    let s = setup();
    let manager = format!("{SERVER_NAME}@{}", s.lab.manager.local_addr().unwrap());
    let (cert, key, ca) = (
        s.files.agent_cert.display().to_string(),
        s.files.agent_key.display().to_string(),
        s.files.ca_cert.display().to_string(),
    );
    let wrong = "m@127.0.0.1:9";
    let (args, env): (Vec<OsString>, Vec<(&str, String)>) = match place {
        Place::File => (
            file_only_args(
                &s,
                &format!(
                    "manager = \"{manager}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nca_certs = [\"{ca}\"]\n"
                ),
            ),
            vec![],
        ),
        Place::Env => (
            vec![],
            vec![
                ("ROXYD_MANAGER", manager.clone()),
                ("ROXYD_CERT", cert),
                ("ROXYD_KEY", key),
                ("ROXYD_CA_CERTS", ca),
            ],
        ),
        Place::CommandLine => {
            let mut args = file_only_args(
                &s,
                &format!(
                    "manager = \"{wrong}\"\ncert = \"/nonexistent/c\"\nkey = \"/nonexistent/k\"\nca_certs = [\"/nonexistent/ca\"]\n"
                ),
            );
            args.extend(s.args());
            (
                args,
                vec![
                    ("ROXYD_MANAGER", wrong.to_owned()),
                    ("ROXYD_CERT", "/nonexistent/c2".to_owned()),
                    ("ROXYD_KEY", "/nonexistent/k2".to_owned()),
                    ("ROXYD_CA_CERTS", "/nonexistent/ca2".to_owned()),
                ],
            )
        }
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut roxyd = Roxyd::spawn(&args, &env);
    let _session = support::within("the Manager accepting roxyd", s.lab.manager.accept())
        .await
        .unwrap();
    roxyd.wait_for_line(&["connected to the Manager"]).await;
    roxyd.signal(Signal::SIGTERM);
    let (exit, output) = roxyd.exit().await;
    assert_eq!(exit.code(), Some(0), "{output}");
    })
    .await;
}

#[derive(Debug, Clone, Copy)]
enum Place {
    File,
    Env,
    CommandLine,
}

fn file_only_args(s: &Setup, text: &str) -> Vec<OsString> {
    vec!["-c".into(), s.config(text).into()]
}
