//! The real `roxyd` binary (the `--all-features` build, run with
//! `--backend recorder` unless a test says otherwise) against the
//! Manager built in this repository: bad command lines and config files,
//! connecting, serving, reconnecting, stopping in every phase, and refusals.
#![cfg(all(unix, feature = "test-backend"))]

mod support;

use std::{
    ffi::OsString,
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use roxyd::{
    connection::SLOTS_HELD_CODE,
    wire::{NodePowerRequest, NodePowerResponse, RequestCode},
};
use roxyd_lab::{
    Lab, SERVER_NAME,
    manager::{Manager, VersionPolicy},
    pki::{PemPair, PkiError, ThrowawayPki},
};
use rstest::rstest;
use support::{HANG, LabFiles, Roxyd, lab_args, run_to_exit, within};
use tempfile::TempDir;

/// A lab whose files are on disk.
type Setup = LabFiles;

fn setup() -> Setup {
    LabFiles::new()
}

/// A bad invocation: its arguments and environment, from the set-up.
type Invocation = fn(&Setup) -> (Vec<OsString>, Vec<(&'static str, String)>);

fn only(args: Vec<OsString>) -> (Vec<OsString>, Vec<(&'static str, String)>) {
    (args, Vec::new())
}

#[rstest]
#[case::no_arguments(|_: &Setup| only(vec![]), "roxyd: no Manager address given", 2)]
#[case::no_ca(|s: &Setup| { let mut a = s.args(); let i = a.iter().position(|x| x == "--ca-certs").unwrap(); a.drain(i..i + 2); only(a) }, "roxyd: no CA certificates given: pass --ca-certs", 2)]
#[case::address_without_at(|s: &Setup| only(s.with_manager("manager127.0.0.1:38390")), "invalid Manager address \"manager127.0.0.1:38390\": no '@'", 2)]
#[case::address_without_name(|s: &Setup| only(s.with_manager("@127.0.0.1:38390")), "the server name is empty", 2)]
#[case::address_with_host_name(|s: &Setup| only(s.with_manager("m@localhost:38390")), "the address is not IP:PORT", 2)]
#[case::address_without_port(|s: &Setup| only(s.with_manager("m@127.0.0.1")), "the address is not IP:PORT", 2)]
#[case::address_port_zero(|s: &Setup| only(s.with_manager("m@127.0.0.1:0")), "the port is 0", 2)]
#[case::bad_server_name(|s: &Setup| only(s.with_manager("bad name!@127.0.0.1:1")), "not a valid DNS name", 2)]
#[case::missing_cert(|s: &Setup| only(s.with("--cert", "/nonexistent/agent.pem")), "roxyd: cannot read /nonexistent/agent.pem: No such file or directory", 2)]
#[case::missing_key(|s: &Setup| only(s.with("--key", "/nonexistent/agent.key")), "roxyd: cannot read /nonexistent/agent.key: No such file or directory", 2)]
#[case::missing_ca(|s: &Setup| only(s.with("--ca-certs", "/nonexistent/ca.pem")), "roxyd: cannot read /nonexistent/ca.pem", 2)]
#[case::one_of_two_cas_missing(|s: &Setup| only(s.with("--ca-certs", format!("{},/nonexistent/ca2.pem", s.files.ca_cert.display()))), "roxyd: cannot read /nonexistent/ca2.pem", 2)]
#[case::cert_file_without_certificate(|s: &Setup| only(s.with("--cert", s.files.agent_key.clone())), "roxyd: no certificate found in", 2)]
#[case::key_file_without_key(|s: &Setup| only(s.with("--key", s.files.agent_cert.clone())), "no private key found", 2)]
#[case::ca_file_without_certificate(|s: &Setup| only(s.with("--ca-certs", s.files.agent_key.clone())), "roxyd: no certificate found in", 2)]
#[case::key_of_another_certificate(|s: &Setup| only(s.with("--key", s.files.manager_key.clone())), "roxyd: TLS configuration", 2)]
#[case::missing_config(|s: &Setup| { let mut a: Vec<OsString> = vec!["-c".into(), "/nonexistent/roxyd.toml".into()]; a.extend(s.args()); only(a) }, "roxyd: cannot read config file /nonexistent/roxyd.toml", 2)]
#[case::config_not_toml(|s: &Setup| only(s.with_config("this is = = not toml")), "roxyd: invalid config file", 2)]
#[case::config_unknown_key(|s: &Setup| only(s.with_config("log_flie = \"/tmp/x\"\n")), "unknown key log_flie", 2)]
#[case::config_wrong_type(|s: &Setup| only(s.with_config("max_frame_len = \"big\"\n")), "roxyd: invalid config file", 2)]
#[case::config_zero_limit(|s: &Setup| only(s.with_config("max_frame_len = 0\n")), "max_frame_len = 0; expected a whole number from 1 to 4294967295", 2)]
#[case::config_zero_handshake_timeout(|s: &Setup| only(s.with_config("handshake_timeout_secs = 0\n")), "handshake_timeout_secs = 0; expected a whole number from 1 to 300", 2)]
#[case::config_zero_sync_timeout(|s: &Setup| only(s.with_config("sync_timeout_ms = 0\n")), "sync_timeout_ms = 0; expected a whole number from 1 to 60000", 2)]
#[case::config_delivery_wait_beyond_10s(|s: &Setup| only(s.with_config("delivery_timeout_ms = 10001\n")), "delivery_timeout_ms = 10001; expected a whole number from 0 to 10000", 2)]
#[case::env_absurd_reply_timeout(|s: &Setup| (s.args(), vec![("ROXYD_REPLY_TIMEOUT_SECS", "99999999".into())]), "reply_timeout_secs = \"99999999\"; expected a whole number from 1 to 3600", 2)]
#[case::env_absurd_handshake_timeout(|s: &Setup| (s.args(), vec![("ROXYD_HANDSHAKE_TIMEOUT_SECS", "86400".into())]), "handshake_timeout_secs = \"86400\"; expected a whole number from 1 to 300", 2)]
#[case::unknown_backend(|s: &Setup| { let mut a: Vec<OsString> = vec!["--backend".into(), "real".into()]; a.extend(s.args()); only(a) }, "invalid value 'real' for '--backend <system|recorder>'", 2)]
#[case::config_slots_timeout_zero(|s: &Setup| only(s.with_config("stream_slots_timeout_secs = 0\n")), "stream_slots_timeout_secs = 0; expected a whole number from 1 to 3600", 2)]
#[case::config_slots_timeout_absurd(|s: &Setup| only(s.with_config("stream_slots_timeout_secs = 3601\n")), "stream_slots_timeout_secs = 3601; expected a whole number from 1 to 3600", 2)]
#[case::config_backoff_inverted(|s: &Setup| only(s.with_config("reconnect_initial_ms = 5000\nreconnect_max_ms = 10\n")), "exceeds reconnect_max_ms = 10", 2)]
#[case::env_not_a_number(|s: &Setup| (s.args(), vec![("ROXYD_MAX_FRAME_LEN", "lots".into())]), "roxyd: invalid environment variable ROXYD_MAX_FRAME_LEN: max_frame_len = \"lots\"; expected a whole number from 1 to 4294967295", 2)]
#[case::env_overrides_a_good_file(|s: &Setup| (s.with_config("max_concurrent_streams = 8\n"), vec![("ROXYD_MAX_CONCURRENT_STREAMS", "0".into())]), "environment variable ROXYD_MAX_CONCURRENT_STREAMS: max_concurrent_streams = \"0\"; expected a whole number from 1 to 10000", 2)]
#[case::env_unknown(|s: &Setup| (s.args(), vec![("ROXYD_LOG_FLIE", "/tmp/roxyd.log".into())]), "roxyd: unknown environment variable ROXYD_LOG_FLIE: roxyd reads ROXYD_CONFIG, ROXYD_BACKEND and ROXYD_ + a configuration key in capitals", 2)]
#[case::log_file_unwritable(|s: &Setup| (s.args(), vec![("ROXYD_LOG_FILE", "/nonexistent/dir/roxyd.log".into())]), "roxyd: cannot open log file /nonexistent/dir/roxyd.log", 2)]
#[tokio::test]
async fn bad_invocation_fails_with_one_clear_line(
    #[case] invocation: Invocation,
    #[case] message: &str,
    #[case] status: i32,
) {
    support::bounded(
        "a bad invocation fails at once with one clear line",
        async move {
            let setup = setup();
            let (args, env) = invocation(&setup);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (exit, output) = run_to_exit(&args, &env).await;
            assert_eq!(exit.code(), Some(status), "{output}");
            assert!(
                output.contains(message),
                "expected {message:?} in:\n{output}"
            );
            assert!(!output.contains("panicked"), "{output}");
            assert!(!output.contains("connecting to the Manager"), "{output}");
        },
    )
    .await;
}

#[tokio::test]
async fn version_names_the_backend_and_whether_this_build_can_record() {
    support::bounded(
        "--version names the backend and whether this build can record",
        async move {
            let (exit, output) = run_to_exit(&["--version".into()], &[]).await;
            assert_eq!(exit.code(), Some(0), "{output}");
            assert!(
                output.contains("backend: linux")
                    && output.contains("can also record instead, with --backend recorder"),
                "{output}"
            );
        },
    )
    .await;
}

/// A `--all-features` build carries power requests out unless the recorder
/// is chosen: its start-up line names the real backend. Nothing is sent to
/// it: the Manager's address is silent.
#[tokio::test]
async fn all_features_build_runs_the_real_backend_unless_told_otherwise() {
    support::bounded(
        "all features build runs the real backend unless told otherwise",
        async move {
            let setup = setup();
            let (_socket, silent) = silent_address();
            let args = setup.with_manager(&format!("m@{silent}"));
            for (choice, expected) in [
                ("system", "backend=\"linux\""),
                ("recorder", "backend=\"recorder\""),
            ] {
                let mut roxyd = Roxyd::spawn(&args, &[("ROXYD_BACKEND", choice)]);
                roxyd
                    .wait_for_line(&["roxyd starting", expected, "can_record=true"])
                    .await;
                roxyd.signal(Signal::SIGTERM);
                let (exit, output) = roxyd.exit().await;
                assert_eq!(exit.code(), Some(0), "{output}");
                assert_eq!(
                    output.contains("recording backend chosen"),
                    choice == "recorder",
                    "{output}"
                );
            }
        },
    )
    .await;
}

#[tokio::test]
async fn help_shows_the_command_line_shape() {
    support::bounded("--help shows the command line's shape", async move {
        let (exit, output) = run_to_exit(&["--help".into()], &[]).await;
        assert_eq!(exit.code(), Some(0));
        for needle in [
            "NAME@IP:PORT",
            "--cert",
            "--key",
            "--ca-certs",
            "--config",
            "--check",
            "--backend",
        ] {
            assert!(output.contains(needle), "{needle} missing from:\n{output}");
        }
    })
    .await;
}

/// Accepts agents in the background, so that TLS handshakes proceed even
/// for agents the test refuses.
fn accept_forever(manager: Manager) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = manager.accept().await;
        }
    })
}

#[rstest]
#[case::grouped_reboot(
    Some(NodePowerRequest::Reboot),
    RequestCode::NODE_POWER,
    "immediate reboot"
)]
#[case::grouped_shutdown(
    Some(NodePowerRequest::Shutdown),
    RequestCode::NODE_POWER,
    "immediate power-off"
)]
#[case::flat_reboot(None, RequestCode::FLAT_REBOOT, "immediate reboot")]
#[case::flat_shutdown(None, RequestCode::FLAT_SHUTDOWN, "immediate power-off")]
#[case::graceful_reboot(
    Some(NodePowerRequest::GracefulReboot),
    RequestCode::NODE_POWER,
    "graceful reboot"
)]
#[tokio::test]
async fn serves_a_power_request_then_stops_on_sigterm(
    #[case] grouped: Option<NodePowerRequest>,
    #[case] code: u32,
    #[case] op: &str,
) {
    support::bounded(
        "roxyd answers a power request, carries it out, then stops on SIGTERM",
        async move {
            let setup = setup();
            let mut roxyd = Roxyd::spawn(&setup.args(), &[]);
            let session = within("roxyd's connection", setup.lab.manager.accept())
                .await
                .unwrap();
            assert_eq!(session.agent().app_name, "roxy");
            assert_eq!(session.agent().protocol_version, "0.47.0");
            match grouped {
                Some(request) => assert_eq!(
                    session.node_power(request).await.unwrap(),
                    Ok(NodePowerResponse::Initiated)
                ),
                None => assert_eq!(session.unit_request(code).await.unwrap(), Ok(())),
            }
            let done = roxyd.wait_for_line(&["recording backend: would", op]).await;
            // On the operation's own thread too, a line about the request names it.
            assert!(done.contains("request{connection="), "{done}");
            // Still serving after the operation.
            assert_eq!(
                session.unit_request(RequestCode::ECHO).await.unwrap(),
                Ok(())
            );
            roxyd.signal(Signal::SIGTERM);
            let (exit, output) = roxyd.exit().await;
            assert_eq!(exit.code(), Some(0), "{output}");
            assert!(output.contains("stopping signal=\"SIGTERM\""), "{output}");
            assert!(output.contains("stopped"), "{output}");
            // What the Manager asked for and roxyd did is INFO: no warning but the
            // recorder's own.
            let warnings: Vec<&str> = output
                .lines()
                .filter(|line| line.contains("WARN") && !line.contains("recording backend chosen"))
                .collect();
            assert!(warnings.is_empty(), "{warnings:#?}");
            let closed = session.connection().closed().await;
            assert!(closed.to_string().contains("roxyd stopping"), "{closed}");
        },
    )
    .await;
}

#[tokio::test]
async fn config_file_and_environment_set_the_identity() {
    support::bounded(
        "the config file and the environment set the identity roxyd announces",
        async move {
            let setup = setup();
            let args =
                setup.with_config("app_name = \"from-file\"\nprotocol_version = \"0.40.0\"\n");
            let _roxyd = Roxyd::spawn(&args, &[("ROXYD_PROTOCOL_VERSION", "0.41.0")]);
            let session = within("roxyd's connection", setup.lab.manager.accept())
                .await
                .unwrap();
            assert_eq!(session.agent().app_name, "from-file");
            assert_eq!(session.agent().protocol_version, "0.41.0");
            assert_eq!(session.agent().version, env!("CARGO_PKG_VERSION"));
        },
    )
    .await;
}

#[tokio::test]
async fn logs_go_to_the_configured_file() {
    support::bounded("roxyd logs to the configured file", async move {
        let setup = setup();
        let log = setup.dir.path().join("roxyd.log");
        let roxyd = Roxyd::spawn(&setup.args(), &[("ROXYD_LOG_FILE", log.to_str().unwrap())]);
        let session = within("roxyd's connection", setup.lab.manager.accept())
            .await
            .unwrap();
        // Served, so roxyd has logged its connection.
        assert_eq!(
            session.unit_request(RequestCode::ECHO).await.unwrap(),
            Ok(())
        );
        roxyd.signal(Signal::SIGTERM);
        let (exit, output) = roxyd.exit().await;
        assert_eq!(exit.code(), Some(0), "{output}");
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("connected to the Manager"), "{logged}");
        assert!(logged.contains("stopped"), "{logged}");
        assert!(!output.contains("connected to the Manager"), "{output}");
    })
    .await;
}

#[tokio::test]
async fn reconnects_after_the_manager_closes_the_connection() {
    support::bounded(
        "roxyd reconnects after the Manager closes the connection",
        async move {
            let setup = setup();
            let env = [
                ("ROXYD_RECONNECT_INITIAL_MS", "20"),
                ("ROXYD_RECONNECT_MAX_MS", "40"),
            ];
            let mut roxyd = Roxyd::spawn(&setup.args(), &env);
            let first = within("roxyd's connection", setup.lab.manager.accept())
                .await
                .unwrap();
            // Served, so roxyd is past its handshake when the Manager closes.
            assert_eq!(first.unit_request(RequestCode::ECHO).await.unwrap(), Ok(()));
            first.connection().close(0u32.into(), b"manager restarting");
            let second = within("roxyd's connection", setup.lab.manager.accept())
                .await
                .unwrap();
            assert_eq!(
                second.unit_request(RequestCode::ECHO).await.unwrap(),
                Ok(())
            );
            roxyd
                .wait_for_line(&[
                    "INFO",
                    "the Manager closed the connection",
                    "manager restarting",
                ])
                .await;
            roxyd.wait_for_line(&["reconnecting after a delay"]).await;
        },
    )
    .await;
}

/// The limit a stop with no Manager served must end within: generous
/// against a busy machine (roxyd takes milliseconds), and well below the
/// 2 s grace a served connection gets to learn of the stop.
const PROMPT_STOP: Duration = Duration::from_secs(1);

fn assert_ended_promptly(signalled: Instant, output: &str) {
    let took = signalled.elapsed();
    assert!(
        took < PROMPT_STOP,
        "roxyd took {took:?} to stop, more than {PROMPT_STOP:?}:\n{output}"
    );
}

#[tokio::test]
async fn stops_at_once_while_waiting_for_the_handshake() {
    support::bounded(
        "roxyd stops at once while waiting for the handshake",
        async move {
            let setup = setup();
            let env = [("ROXYD_HANDSHAKE_TIMEOUT_SECS", "300")];
            let roxyd = Roxyd::spawn(&setup.args(), &env);
            // The Manager reads roxyd's hello and never answers.
            let connection = setup.lab.manager.accept_connection().await.unwrap();
            let (_send, mut recv) = connection.accept_bi().await.unwrap();
            roxyd::wire::FrameReader::new(&mut recv)
                .read_frame(1024)
                .await
                .unwrap()
                .unwrap()
                .to_vec();
            let signalled = Instant::now();
            roxyd.signal(Signal::SIGTERM);
            let (exit, output) = roxyd.exit().await;
            assert_ended_promptly(signalled, &output);
            assert_eq!(exit.code(), Some(0), "{output}");
            assert!(output.contains("stopped"), "{output}");
        },
    )
    .await;
}

/// `--check` states how long it waited ("within 1 s"); it must not take
/// noticeably longer than that.
#[tokio::test]
async fn check_against_a_silent_manager_ends_within_the_time_it_states() {
    support::bounded(
        "--check against a silent Manager ends within the time it states",
        async move {
            let setup = setup();
            let (_socket, silent) = silent_address();
            let mut args = setup.with_manager(&format!("m@{silent}"));
            args.insert(0, "--check".into());
            let started = Instant::now();
            let (exit, output) = run_to_exit(&args, &[("ROXYD_HANDSHAKE_TIMEOUT_SECS", "1")]).await;
            let took = started.elapsed();
            assert_eq!(exit.code(), Some(1), "{output}");
            assert!(output.contains("within 1 s"), "{output}");
            assert!(
                took < Duration::from_secs(1) + PROMPT_STOP,
                "--check took {took:?} for a stated 1s:\n{output}"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn a_manager_holding_every_stream_slot_gets_a_fresh_connection() {
    support::bounded(
        "a manager holding every stream slot gets a fresh connection",
        async move {
            let setup = setup();
            let env = [
                ("ROXYD_RECONNECT_INITIAL_MS", "20"),
                ("ROXYD_RECONNECT_MAX_MS", "40"),
                ("ROXYD_MAX_CONCURRENT_STREAMS", "16"),
                ("ROXYD_STREAM_SLOTS_TIMEOUT_SECS", "1"),
            ];
            let mut roxyd = Roxyd::spawn(&setup.args(), &env);
            let first = setup.lab.manager.accept().await.unwrap();
            let stuck = tokio::spawn(roxyd_lab::hold_stream_slots(first.connection().clone()));
            // A power request behind the stuck task never finds a slot here.
            let behind = {
                let first = first.clone();
                tokio::spawn(
                    async move { first.node_power(NodePowerRequest::GracefulReboot).await },
                )
            };
            let closed = tokio::time::timeout(HANG, first.connection().closed())
                .await
                .expect("roxyd never closed the held connection");
            let quinn::ConnectionError::ApplicationClosed(close) = &closed else {
                panic!("roxyd did not close the connection itself: {closed}");
            };
            assert_eq!(close.error_code, SLOTS_HELD_CODE.into());
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(reason.contains("every stream slot held"), "{reason}");
            let stuck = tokio::time::timeout(HANG, stuck)
                .await
                .expect("the stuck task never ended");
            assert_eq!(stuck.unwrap(), 16, "the stuck task held every slot");
            let behind = tokio::time::timeout(HANG, behind)
                .await
                .expect("the request never ended");
            assert!(behind.unwrap().is_err(), "answered on a held connection");

            let second = tokio::time::timeout(HANG, setup.lab.manager.accept())
                .await
                .expect("roxyd never reconnected")
                .unwrap();
            assert_eq!(
                second
                    .node_power(NodePowerRequest::GracefulReboot)
                    .await
                    .unwrap(),
                Ok(NodePowerResponse::Initiated)
            );
            let line = roxyd
                .wait_for_line(&["WARN", "every request stream slot is held"])
                .await;
            assert!(line.contains("waited_secs=1"), "{line}");
            roxyd.wait_for_line(&["reconnecting after a delay"]).await;
        },
    )
    .await;
}

/// A UDP port where nothing answers: QUIC's connect waits there.
fn silent_address() -> (std::net::UdpSocket, std::net::SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[rstest]
#[case::sigterm(Signal::SIGTERM, "SIGTERM")]
#[case::sigint(Signal::SIGINT, "SIGINT")]
#[tokio::test]
async fn stops_cleanly_while_connecting(#[case] signal: Signal, #[case] name: &str) {
    support::bounded(
        "roxyd stops cleanly on a signal while connecting",
        async move {
            let setup = setup();
            let (_socket, silent) = silent_address();
            let mut roxyd = Roxyd::spawn(&setup.with_manager(&format!("m@{silent}")), &[]);
            roxyd.wait_for_line(&["connecting to the Manager"]).await;
            let signalled = Instant::now();
            roxyd.signal(signal);
            let (exit, output) = roxyd.exit().await;
            assert_ended_promptly(signalled, &output);
            assert_eq!(exit.code(), Some(0), "{output}");
            assert!(
                output.contains(&format!("stopping signal=\"{name}\"")),
                "{output}"
            );
            assert!(output.contains("stopped"), "{output}");
        },
    )
    .await;
}

#[tokio::test]
async fn stops_cleanly_while_waiting_to_reconnect() {
    support::bounded(
        "roxyd stops cleanly while waiting to reconnect",
        async move {
            let setup = setup();
            let env = [
                ("ROXYD_RECONNECT_INITIAL_MS", "600000"),
                ("ROXYD_RECONNECT_MAX_MS", "600000"),
            ];
            let mut roxyd = Roxyd::spawn(&setup.args(), &env);
            let session = within("roxyd's connection", setup.lab.manager.accept())
                .await
                .unwrap();
            session.connection().close(0u32.into(), b"bye");
            roxyd.wait_for_line(&["reconnecting after a delay"]).await;
            roxyd.signal(Signal::SIGTERM);
            let (exit, output) = roxyd.exit().await;
            assert_eq!(exit.code(), Some(0), "{output}");
            assert!(output.contains("stopped"), "{output}");
        },
    )
    .await;
}

#[tokio::test]
async fn manager_certificate_from_another_ca_is_refused_and_retried() {
    support::bounded(
        "manager certificate from another ca is refused and retried",
        async move {
            let setup = setup();
            let stranger = Lab::new().unwrap();
            let addr = stranger.manager.local_addr().unwrap();
            let _accepting = accept_forever(stranger.manager);
            let env = [
                ("ROXYD_RECONNECT_INITIAL_MS", "10"),
                ("ROXYD_RECONNECT_MAX_MS", "20"),
            ];
            let args = lab_args(&setup.files, addr);
            let mut roxyd = Roxyd::spawn(&args, &env);
            let first = roxyd
                .wait_for_line(&["cannot connect to the Manager", "invalid peer certificate"])
                .await;
            assert!(first.contains("UnknownIssuer"), "{first}");
            // It keeps retrying with backoff rather than exiting.
            roxyd.wait_for_line(&["reconnecting after a delay"]).await;
            roxyd
                .wait_for_line(&["cannot connect to the Manager", "invalid peer certificate"])
                .await;
            roxyd.signal(Signal::SIGTERM);
            let (exit, output) = roxyd.exit().await;
            assert_eq!(exit.code(), Some(0), "{output}");
        },
    )
    .await;
}

/// A Manager roxyd must not trust, and the reason rustls gives.
#[rstest]
#[case::expired(|pki: &ThrowawayPki| pki.ca.expired_manager_cert(SERVER_NAME), "certificate expired")]
#[case::for_another_name(|pki: &ThrowawayPki| pki.ca.manager_cert("other.roxyd.test"), "certificate not valid for name \"manager.roxyd.test\"")]
#[case::agent_certificate_as_server(|pki: &ThrowawayPki| Ok(pki.agent.clone()), "invalid peer certificate")]
#[tokio::test]
async fn manager_certificate_that_does_not_verify_is_refused_and_retried(
    #[case] presented: fn(&ThrowawayPki) -> Result<PemPair, PkiError>,
    #[case] reason: &str,
) {
    support::bounded(
        "manager certificate that does not verify is refused and retried",
        async move {
            let lab = Lab::presenting(presented).unwrap();
            let dir = TempDir::new().unwrap();
            let files = lab.pki.write_to(dir.path()).unwrap();
            let addr = lab.manager.local_addr().unwrap();
            let _accepting = accept_forever(lab.manager);
            let env = [
                ("ROXYD_RECONNECT_INITIAL_MS", "10"),
                ("ROXYD_RECONNECT_MAX_MS", "20"),
            ];
            let mut roxyd = Roxyd::spawn(&lab_args(&files, addr), &env);
            roxyd
                .wait_for_line(&["ERROR", "cannot connect to the Manager", reason])
                .await;
            roxyd.wait_for_line(&["reconnecting after a delay"]).await;
            roxyd
                .wait_for_line(&["cannot connect to the Manager", reason])
                .await;
            roxyd.signal(Signal::SIGTERM);
            let (exit, output) = roxyd.exit().await;
            assert_eq!(exit.code(), Some(0), "{output}");
        },
    )
    .await;
}

#[tokio::test]
async fn check_reports_a_manager_it_cannot_verify_and_exits_1() {
    support::bounded(
        "--check reports a Manager it cannot verify and exits 1",
        async move {
            let setup = setup();
            let stranger = Lab::new().unwrap();
            let addr = stranger.manager.local_addr().unwrap();
            let _accepting = accept_forever(stranger.manager);
            let mut args = lab_args(&setup.files, addr);
            args.insert(0, "--check".into());
            let (exit, output) = run_to_exit(&args, &[]).await;
            assert_eq!(exit.code(), Some(1), "{output}");
            assert!(
                output.contains("roxyd: cannot connect to the Manager: ")
                    && output.contains("invalid peer certificate: UnknownIssuer"),
                "{output}"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn check_succeeds_against_a_good_manager() {
    support::bounded("--check succeeds against a good Manager", async move {
        let setup = setup();
        let mut args = setup.args();
        args.insert(0, "--check".into());
        let roxyd = Roxyd::spawn(&args, &[]);
        let session = within("roxyd's connection", setup.lab.manager.accept())
            .await
            .unwrap();
        let (exit, output) = roxyd.exit().await;
        assert_eq!(exit.code(), Some(0), "{output}");
        assert!(
            output.contains("roxyd: connected to the Manager at"),
            "{output}"
        );
        drop(session);
    })
    .await;
}

#[rstest]
#[case::requirement_not_met(
    ">=0.48.0",
    "0.48.0",
    "the Manager refused protocol version 0.47.0 (roxyd's protocol_version) and answered \">=0.48.0\", the version it requires or the highest it speaks"
)]
#[case::newer_than_the_manager(
    "*",
    "0.46.0",
    "the Manager refused protocol version 0.47.0 (roxyd's protocol_version) and answered \"0.46.0\", the version it requires or the highest it speaks"
)]
#[tokio::test]
async fn manager_refusing_the_protocol_version_ends_roxyd(
    #[case] requirement: &str,
    #[case] highest: &str,
    #[case] message: &str,
) {
    support::bounded(
        "manager refusing the protocol version ends roxyd",
        async move {
            let Setup {
                lab,
                files,
                dir: _dir,
            } = setup();
            let addr = lab.manager.local_addr().unwrap();
            let manager = lab.manager.with_policy(VersionPolicy {
                requirement: requirement.parse().unwrap(),
                highest: highest.parse().unwrap(),
            });
            let roxyd = Roxyd::spawn(&lab_args(&files, addr), &[]);
            assert!(manager.accept().await.is_err());
            let (exit, output) = roxyd.exit().await;
            assert_eq!(exit.code(), Some(3), "{output}");
            assert!(output.contains(&format!("roxyd: {message}")), "{output}");
        },
    )
    .await;
}

#[tokio::test]
async fn a_stalled_stream_does_not_delay_a_power_request_on_another() {
    support::bounded(
        "a stalled stream does not delay a power request on another",
        async move {
            let setup = setup();
            let mut roxyd = Roxyd::spawn(&setup.args(), &[]);
            let session = within("roxyd's connection", setup.lab.manager.accept())
                .await
                .unwrap();
            // Stream one: a frame header promising 5 bytes, then nothing.
            let (mut stalled, mut stalled_recv) = session.open_stream().await.unwrap();
            stalled.write_all(&5u32.to_be_bytes()).await.unwrap();
            // Stream two: a power request, answered while stream one waits.
            assert_eq!(
                session.node_power(NodePowerRequest::Reboot).await.unwrap(),
                Ok(NodePowerResponse::Initiated)
            );
            roxyd
                .wait_for_line(&["recording backend: would", "immediate reboot"])
                .await;
            // Stream one completes its request late and is still answered.
            stalled
                .write_all(&roxyd::wire::encode_request(RequestCode::ECHO, &[0]))
                .await
                .unwrap();
            let reply = roxyd::wire::FrameReader::new(&mut stalled_recv)
                .read_frame(1024)
                .await
                .unwrap()
                .unwrap()
                .to_vec();
            assert_eq!(reply, roxyd::wire::encode(&Ok::<(), String>(())));
        },
    )
    .await;
}

#[test]
fn support_paths_exist() {
    assert!(Path::new(support::roxyd_binary()).exists());
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
#[cfg(target_os = "linux")]
fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The real binary's memory stays flat under 4 GiB frame claims and a flood
/// of half-written streams; the figures are printed for the record.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn oversized_frames_and_a_stream_flood_keep_memory_bounded() {
    support::bounded_for(
        support::FLOOD_LIMIT,"oversized frames and a stream flood keep memory bounded", async move {
    let setup = setup();
    let roxyd = Roxyd::spawn(&setup.args(), &[]);
    let session = within("roxyd's connection", setup.lab.manager.accept())
        .await
        .unwrap();
    assert_eq!(
        session.unit_request(RequestCode::ECHO).await.unwrap(),
        Ok(())
    );
    let (baseline, _) = memory_kib(roxyd.pid());

    for _ in 0..500 {
        let (mut send, mut recv) = session.open_stream().await.unwrap();
        send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let reply = roxyd::wire::FrameReader::new(&mut recv)
            .read_frame(1024)
            .await
            .unwrap()
            .unwrap()
            .to_vec();
        assert!(String::from_utf8_lossy(&reply).contains("exceeds the limit"));
    }
    let (after_oversized, peak_oversized) = memory_kib(roxyd.pid());

    let mut waiting = tokio::task::JoinSet::new();
    for i in 0..3_000 {
        let Ok(opened) = tokio::time::timeout(support::HANG, session.open_stream()).await else {
            let roxyd = roxyd;
            roxyd.signal(Signal::SIGTERM);
            let (_, output) = roxyd.exit().await;
            panic!("stuck at stream {i}:\n{output}");
        };
        let (mut send, mut recv) = opened.unwrap();
        send.write_all(&[0, 0]).await.unwrap();
        waiting.spawn(async move {
            let _ = roxyd::wire::FrameReader::new(&mut recv)
                .read_frame(1024)
                .await;
            drop(send);
        });
    }
    assert_eq!(
        session
            .node_power(NodePowerRequest::GracefulReboot)
            .await
            .unwrap(),
        Ok(NodePowerResponse::Initiated)
    );
    let (after_flood, peak) = memory_kib(roxyd.pid());
    println!(
        "roxyd memory: connected {baseline} KiB; after 500 frames claiming 4 GiB {after_oversized} KiB (peak {peak_oversized} KiB); after 3,000 half-written streams {after_flood} KiB (peak {peak} KiB)"
    );
    assert!(
        peak < baseline + 32 * 1024,
        "peak {peak} KiB from {baseline} KiB"
    );
    drop(waiting);
    })
    .await;
}

#[tokio::test]
async fn a_handshake_reply_that_never_comes_is_retried() {
    support::bounded("a handshake reply that never comes is retried", async move {
    let setup = setup();
    let env = [
        ("ROXYD_HANDSHAKE_TIMEOUT_SECS", "1"),
        ("ROXYD_RECONNECT_INITIAL_MS", "10"),
        ("ROXYD_RECONNECT_MAX_MS", "20"),
    ];
    let mut roxyd = Roxyd::spawn(&setup.args(), &env);
    // The Manager reads roxyd's hello and never answers, twice.
    let mut silent = Vec::new();
    for _ in 0..2 {
        let connection = setup.lab.manager.accept_connection().await.unwrap();
        let (send, mut recv) = connection.accept_bi().await.unwrap();
        let hello = roxyd::wire::FrameReader::new(&mut recv)
            .read_frame(1024)
            .await
            .unwrap()
            .unwrap()
            .to_vec();
        assert!(roxyd::wire::decode::<roxyd::wire::AgentInfo>(&hello).is_ok());
        roxyd
            .wait_for_line(&[
                "ERROR",
                &format!(
                    "the Manager at {} accepted the connection but did not answer the handshake within 1 s",
                    setup.lab.manager.local_addr().unwrap()
                ),
            ])
            .await;
        silent.push((connection, send, recv));
    }
    roxyd.signal(Signal::SIGTERM);
    let (exit, output) = roxyd.exit().await;
    assert_eq!(exit.code(), Some(0), "{output}");
    })
    .await;
}

/// The daemon's backend forwards every backend call: with `--backend
/// recorder` the recorder sees the release of a served immediate operation.
#[tokio::test]
async fn the_recorder_in_the_daemon_sees_the_settlement() {
    support::bounded(
        "the recorder in the daemon sees the settlement",
        async move {
            let setup = setup();
            let mut roxyd = Roxyd::spawn(
                &setup.args(),
                &[("RUST_LOG", "info,roxyd::platform::recorder=debug")],
            );
            let session = within("roxyd's connection", setup.lab.manager.accept())
                .await
                .unwrap();
            assert_eq!(
                session
                    .unit_request(RequestCode::FLAT_REBOOT)
                    .await
                    .unwrap(),
                Ok(())
            );
            roxyd
                .wait_for_line(&["recording backend call", "Settled(Reboot, Released)"])
                .await;
            roxyd.signal(Signal::SIGTERM);
            let (exit, output) = roxyd.exit().await;
            assert_eq!(exit.code(), Some(0), "{output}");
        },
    )
    .await;
}
