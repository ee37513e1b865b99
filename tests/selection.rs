//! Backend selection as plain code: every platform's arm, checked on this
//! host, whatever it is. The `cfg_if!` in `platform` only picks which arm a
//! build runs; these tests check what each arm does.
#![cfg(feature = "test-backend")]

mod support;

use std::time::Duration;

use roxyd::{
    dispatch::{DispatchConfig, Dispatcher},
    platform::{
        BackendOptions, CommandLine, ImmediateOp, Platform, PowerBackend, PrepareError,
        SYSTEM_BACKEND_NAME,
    },
    reply,
    wire::{self, NodePowerRequest, RequestCode, reply_text},
};
use rstest::rstest;

const OPTIONS: BackendOptions = BackendOptions {
    sync_timeout: Duration::from_secs(5),
};

fn command(line: CommandLine) -> Vec<&'static str> {
    std::iter::once(line.program)
        .chain(line.args.iter().copied())
        .collect()
}

#[rstest]
#[case::linux("linux", Platform::Linux, "linux")]
#[case::macos("macos", Platform::Macos, "macos")]
#[case::freebsd("freebsd", Platform::Other, "unsupported")]
#[case::windows("windows", Platform::Other, "unsupported")]
fn each_os_name_maps_to_its_platform(
    #[case] os: &str,
    #[case] platform: Platform,
    #[case] name: &str,
) {
    assert_eq!(Platform::from_os(os), platform);
    assert_eq!(platform.backend_name(), name);
}

#[test]
fn this_build_runs_its_own_platform() {
    let current = Platform::current();
    assert_eq!(current, Platform::from_os(std::env::consts::OS));
    assert_eq!(SYSTEM_BACKEND_NAME, current.backend_name());
}

/// The command tables of the contract: Linux `reboot` / `poweroff`, macOS
/// `sudo reboot` / `sudo shutdown -h now`, none elsewhere.
#[rstest]
#[case::linux(Platform::Linux, Some((vec!["reboot"], vec!["poweroff"])), true)]
#[case::macos(Platform::Macos, Some((vec!["sudo", "reboot"], vec!["sudo", "shutdown", "-h", "now"])), false)]
#[case::other(Platform::Other, None, false)]
fn each_platform_has_the_contract_s_commands(
    #[case] platform: Platform,
    #[case] commands: Option<(Vec<&str>, Vec<&str>)>,
    #[case] immediate: bool,
) {
    let table = platform
        .graceful_commands()
        .map(|(reboot, power_off)| (command(reboot), command(power_off)));
    assert_eq!(table, commands);
    assert_eq!(platform.has_immediate(), immediate);
}

/// The macOS and fallback arms refuse immediate operations before anything
/// happens, so the Manager hears `invalid command`, on both wire forms.
#[rstest]
#[case::macos(Platform::Macos)]
#[case::other(Platform::Other)]
#[tokio::test]
async fn platforms_without_reboot_answer_immediate_requests_with_invalid_command(
    #[case] platform: Platform,
    #[values(
        (RequestCode::NODE_POWER, wire::encode(&NodePowerRequest::Reboot)),
        (RequestCode::NODE_POWER, wire::encode(&NodePowerRequest::Shutdown)),
        (RequestCode::FLAT_REBOOT, Vec::new()),
        (RequestCode::FLAT_SHUTDOWN, Vec::new())
    )]
    request: (u32, Vec<u8>),
) {
    support::bounded(
        "platforms without reboot answer immediate requests with `invalid command`",
        async move {
            let backend = platform.backend(OPTIONS);
            for op in [ImmediateOp::Reboot, ImmediateOp::PowerOff] {
                assert!(matches!(
                    backend.prepare(op),
                    Err(PrepareError::Unsupported)
                ));
            }
            let dispatcher = Dispatcher::new(backend, DispatchConfig::default());
            let (code, body) = request;
            let mut input = Vec::new();
            wire::write_frame(&mut input, &wire::encode_request(code, &body))
                .await
                .unwrap();
            let (mut manager, agent) = tokio::io::duplex(4096);
            let (_, mut send) = tokio::io::split(agent);
            dispatcher
                .serve_stream(&mut input.as_slice(), &mut send)
                .await;
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                wire::FrameReader::new(&mut manager).read_frame(u32::MAX),
            )
            .await
            .expect("a reply")
            .unwrap()
            .expect("a reply frame");
            assert_eq!(
                reply.to_vec(),
                reply::error_payload(reply_text::INVALID_COMMAND)
            );
        },
    )
    .await;
}
