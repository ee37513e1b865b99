//! What roxyd's log lines may hold: one event is one line whatever text it
//! carries (a command's output, a Manager's strings), and warnings a
//! Manager can trigger at will are summarised, not repeated: 100,000 bad
//! requests give a bounded number of lines, and roxyd keeps serving.
#![cfg(all(unix, feature = "test-backend"))]

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use roxyd::{
    logging::{LogSink, Occurrence, REPEAT_INTERVAL, Repeated, one_line},
    wire::{self, RequestCode},
};
use roxyd_lab::{Lab, SERVER_NAME};
use rstest::rstest;
use support::{Roxyd, lab_args, within};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

#[rstest]
#[case::newline("a\nb\n", false, "a\\nb\n")]
#[case::carriage_return("a\rINFO forged\n", false, "a\\rINFO forged\n")]
#[case::control_chars("x\u{0}\u{7}\u{7f}\t\n", false, "x\\u{0}\\u{7}\\u{7f}\\t\n")]
#[case::escape_without_colours("\u{1b}[2J\n", false, "\\u{1b}[2J\n")]
#[case::escape_kept_for_colours(
    "\u{1b}[32mINFO\u{1b}[0m a\nb\n",
    true,
    "\u{1b}[32mINFO\u{1b}[0m a\\nb\n"
)]
#[case::c1_control("a\u{85}b\n", false, "a\\u{85}b\n")]
#[case::plain_text_unchanged(
    "roxyd starting version=0.1.0 path=C:\\x ünï\n",
    false,
    "roxyd starting version=0.1.0 path=C:\\x ünï\n"
)]
fn one_event_is_one_line(#[case] event: &str, #[case] ansi: bool, #[case] expected: &str) {
    let line = one_line(event, ansi);
    assert_eq!(line, expected);
    assert_eq!(line.matches('\n').count(), 1);
}

/// A graceful command's output, as its reaper logs it, through the sink
/// roxyd logs with: one line in the file, the output escaped in it.
#[test]
fn command_output_with_newlines_and_control_chars_stays_on_one_line() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("roxyd.log");
    let sink = LogSink::file(&path).unwrap();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(sink)
        .finish();
    let out = "Rebooting.\n2026-12-04T15:00:00Z  INFO roxyd: stopped\r\n\u{1b}[2J\u{7}\u{0}";
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(stdout = %out, stderr = "", "graceful command finished");
    });
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(
            "stdout=Rebooting.\\n2026-12-04T15:00:00Z  INFO roxyd: stopped\\r\\n\\u{1b}[2J\\u{7}\\u{0}"
        ),
        "{text}"
    );
}

#[test]
fn repeated_warning_is_logged_first_then_once_per_interval_with_a_count() {
    let repeated = Repeated::new("test");
    let start = Instant::now();
    assert_eq!(repeated.occurred_at(start), Occurrence::Log { unlogged: 0 });
    for i in 1..=1000 {
        let at = start + REPEAT_INTERVAL * i / 1001;
        assert_eq!(repeated.occurred_at(at), Occurrence::Counted);
    }
    let later = start + REPEAT_INTERVAL;
    assert_eq!(
        repeated.occurred_at(later),
        Occurrence::Log { unlogged: 1000 }
    );
    assert_eq!(
        repeated.occurred_at(later + Duration::from_millis(1)),
        Occurrence::Counted
    );
    // The connection's end logs the rest and starts afresh.
    repeated.summarise();
    assert_eq!(
        repeated.occurred_at(later + Duration::from_millis(2)),
        Occurrence::Log { unlogged: 0 }
    );
}

const BAD_REQUESTS: usize = 100_000;

/// 100,000 requests with an unknown code, pipelined on one stream by a lab
/// Manager: each is answered, the log gets the first, at most one summary
/// per interval and one at the connection's end; an echo is answered
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_requests_gives_a_bounded_number_of_lines_and_roxyd_keeps_serving() {
    support::bounded_for(
        support::FLOOD_LIMIT,
        "a flood of bad requests gives a bounded number of lines and roxyd keeps serving",
        async move {
            let lab = Lab::new().unwrap();
            let dir = TempDir::new().unwrap();
            let files = lab.pki.write_to(dir.path()).unwrap();
            let args = lab_args(&files, lab.manager.local_addr().unwrap());
            let started = Instant::now();
            let mut roxyd = Roxyd::spawn(&args, &[]);
            let session = within("the Manager accepting roxyd", lab.manager.accept())
                .await
                .unwrap();
            // One `manager` format, NAME@IP:PORT, on every line that names it.
            let connected = roxyd.wait_for_line(&["connected to the Manager"]).await;
            let manager = format!(
                "manager={SERVER_NAME}@{}",
                lab.manager.local_addr().unwrap()
            );
            assert!(connected.contains(&manager), "{connected}");
            let (mut send, recv) = session.open_stream().await.unwrap();
            let writer = tokio::spawn(async move {
                let frame = wire::encode_request(9999, &[]);
                for _ in 0..BAD_REQUESTS {
                    wire::write_frame(&mut send, &frame).await.unwrap();
                }
                send.shutdown().await.unwrap();
            });
            let expected: Result<(), String> = Err("unknown request code: 9999".to_owned());
            let mut replies = wire::FrameReader::new(recv);
            within("every bad request answered", async {
                for _ in 0..BAD_REQUESTS {
                    let reply = replies.read_frame(1024).await.unwrap().unwrap();
                    assert_eq!(
                        wire::decode::<Result<(), String>>(&reply).unwrap(),
                        expected
                    );
                }
            })
            .await;
            writer.await.unwrap();
            assert_eq!(
                session.unit_request(RequestCode::ECHO).await.unwrap(),
                Ok(()),
                "roxyd keeps serving"
            );
            session.connection().close(0u32.into(), b"done");
            roxyd
                .wait_for_line(&["the Manager closed the connection"])
                .await;
            roxyd.signal(Signal::SIGTERM);
            let (exit, output) = roxyd.exit().await;
            let elapsed = started.elapsed();
            assert_eq!(exit.code(), Some(0), "{output}");
            let warnings = output
                .lines()
                .filter(|line| {
                    line.contains("unknown request code") || line.contains("repeated warning")
                })
                .count();
            // The first, one per whole interval passed, one at the connection's end.
            let bound = 2 + usize::try_from(elapsed.as_secs() / REPEAT_INTERVAL.as_secs()).unwrap();
            assert!(
                (1..=bound).contains(&warnings),
                "{warnings} lines about bad requests in {elapsed:?}, at most {bound}:\n{output}"
            );
            // A request's lines name its connection and stream.
            let first = output
                .lines()
                .find(|line| line.contains("unknown request code"))
                .unwrap();
            assert!(
                first.contains("request{connection=") && first.contains(" stream="),
                "{first}"
            );
            // Every bad request is counted: a line of its own, or in a count.
            let logged = output
                .lines()
                .filter(|line| line.contains("unknown request code"))
                .count();
            let unlogged: usize = output
                .lines()
                .filter_map(|line| {
                    line.split_once("unlogged=")?
                        .1
                        .split(' ')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .sum();
            assert_eq!(logged + unlogged, BAD_REQUESTS, "{output}");
            assert!(output.lines().count() < 50, "{output}");
        },
    )
    .await;
}
