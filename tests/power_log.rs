//! The power log on its own: each entry kind as stored, the start
//! explanations, the reader against bad input, the writer's bounds (size,
//! trimming, a hung state directory) and its file mode.

mod support;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use proptest::prelude::*;
use roxyd::power_log::{
    self, Asked, Entry, Event, Level, MAX_LOG_BYTES, MAX_LOG_ENTRIES, Op, Outcome, PowerLog,
    PowerRecord, RELEASE_WAIT, Recorded, Reply, RequestForm, explain, read::parse_log, read_log,
};
use rstest::rstest;

/// The longest a test waits for the writer: far above anything it takes,
/// and shorter than nextest's slow-timeout.
const FLUSH: Duration = Duration::from_secs(15);

const MANAGER: &str = "manager.example@192.0.2.10:38390";

fn power(op: Op, request: RequestForm, reply: Reply, outcome: Outcome) -> PowerRecord {
    PowerRecord {
        op,
        request,
        manager: MANAGER.to_owned(),
        reply,
        outcome,
        exit_status: None,
        reason: None,
    }
}

fn entry(at: &str, event: Event, boot_id: &str) -> Entry {
    Entry {
        at: at.to_owned(),
        event,
        boot_id: boot_id.to_owned(),
        roxyd: "0.1.0".to_owned(),
    }
}

const AT: &str = "2026-12-04T15:24:05.123Z";

fn with(mut record: PowerRecord, exit_status: Option<i32>, reason: Option<&str>) -> Event {
    record.exit_status = exit_status;
    record.reason = reason.map(str::to_owned);
    Event::Power(record)
}

#[rstest]
#[case::start(
    Event::Start,
    r#"{"at":"AT","kind":"start","boot_id":"b1","roxyd":"0.1.0"}"#
)]
#[case::released_delivered(
    Event::Power(power(Op::Reboot, RequestForm::FlatReboot, Reply::Delivered, Outcome::Released)),
    r#"{"at":"AT","kind":"power","op":"reboot","request":"flat-reboot","manager":"M","reply":"delivered","outcome":"released","boot_id":"b1","roxyd":"0.1.0"}"#
)]
#[case::released_declined(
    Event::Power(power(Op::PowerOff, RequestForm::FlatShutdown, Reply::Declined, Outcome::Released)),
    r#"{"at":"AT","kind":"power","op":"power-off","request":"flat-shutdown","manager":"M","reply":"declined","outcome":"released","boot_id":"b1","roxyd":"0.1.0"}"#
)]
#[case::released_unconfirmed(
    Event::Power(power(Op::Reboot, RequestForm::NodePower, Reply::Unconfirmed, Outcome::Released)),
    r#"{"at":"AT","kind":"power","op":"reboot","request":"node-power","manager":"M","reply":"unconfirmed","outcome":"released","boot_id":"b1","roxyd":"0.1.0"}"#
)]
#[case::cancelled(
    with(power(Op::Reboot, RequestForm::NodePower, Reply::Cancelled, Outcome::Cancelled), None, Some("connection lost")),
    r#"{"at":"AT","kind":"power","op":"reboot","request":"node-power","manager":"M","reply":"cancelled","outcome":"cancelled","reason":"connection lost","boot_id":"b1","roxyd":"0.1.0"}"#
)]
#[case::refused(
    with(power(Op::PowerOff, RequestForm::NodePower, Reply::Error("invalid command".to_owned()), Outcome::Refused), None, Some("another power operation is in progress")),
    r#"{"at":"AT","kind":"power","op":"power-off","request":"node-power","manager":"M","reply":"invalid command","outcome":"refused","reason":"another power operation is in progress","boot_id":"b1","roxyd":"0.1.0"}"#
)]
#[case::command_started(
    Event::Power(power(Op::GracefulReboot, RequestForm::NodePower, Reply::Initiated, Outcome::CommandStarted)),
    r#"{"at":"AT","kind":"power","op":"graceful-reboot","request":"node-power","manager":"M","reply":"initiated","outcome":"command-started","boot_id":"b1","roxyd":"0.1.0"}"#
)]
#[case::command_exited(
    with(power(Op::GracefulPowerOff, RequestForm::NodePower, Reply::Initiated, Outcome::CommandExited), Some(1), None),
    r#"{"at":"AT","kind":"power","op":"graceful-power-off","request":"node-power","manager":"M","reply":"initiated","outcome":"command-exited","exit_status":1,"boot_id":"b1","roxyd":"0.1.0"}"#
)]
#[case::command_killed(
    with(power(Op::GracefulReboot, RequestForm::NodePower, Reply::Initiated, Outcome::CommandExited), None, Some("killed by signal 9")),
    r#"{"at":"AT","kind":"power","op":"graceful-reboot","request":"node-power","manager":"M","reply":"initiated","outcome":"command-exited","reason":"killed by signal 9","boot_id":"b1","roxyd":"0.1.0"}"#
)]
fn each_entry_kind_is_stored_as_one_json_line(#[case] event: Event, #[case] stored: &str) {
    let stored = stored
        .replace("AT", AT)
        .replace("\"M\"", &format!("\"{MANAGER}\""));
    let entry = entry(AT, event, "b1");
    assert_eq!(entry.to_line(), stored);
    assert_eq!(serde_json::from_str::<Entry>(&stored).unwrap(), entry);
}

#[test]
fn fields_and_kinds_of_a_newer_roxyd_are_read_not_rejected() {
    let log = parse_log(
        concat!(
            r#"{"at":"T1","kind":"power","op":"reboot","request":"flat-reboot","manager":"m","reply":"delivered","outcome":"released","boot_id":"b","roxyd":"9.0.0","reason_code":7,"extra":{"a":[1]}}"#,
            "\n",
            r#"{"at":"T2","kind":"upgrade","from":"1","boot_id":"b","roxyd":"9.0.0"}"#,
            "\n",
        )
        .as_bytes(),
    );
    assert_eq!(log.skipped, 0, "{log:?}");
    assert!(matches!(log.entries[0].0.event, Event::Power(_)));
    assert_eq!(log.entries[1].0.event, Event::Unknown);
    assert!(log.entries[1].0.human().contains("does not know"));
}

fn released(at: &str, boot: &str) -> Entry {
    entry(
        at,
        Event::Power(power(
            Op::Reboot,
            RequestForm::FlatReboot,
            Reply::Delivered,
            Outcome::Released,
        )),
        boot,
    )
}

fn graceful(outcome: Outcome, status: Option<i32>, boot: &str) -> Entry {
    entry(
        AT,
        with(
            power(
                Op::GracefulPowerOff,
                RequestForm::NodePower,
                Reply::Initiated,
                outcome,
            ),
            status,
            None,
        ),
        boot,
    )
}

fn refused(boot: &str) -> Entry {
    entry(
        "T9",
        with(
            power(
                Op::PowerOff,
                RequestForm::NodePower,
                Reply::Error("fail".into()),
                Outcome::Refused,
            ),
            None,
            Some("busy"),
        ),
        boot,
    )
}

fn start(boot: &str) -> Entry {
    entry("T0", Event::Start, boot)
}

#[rstest]
#[case::came_back_from_a_release(
    vec![start("old"), released(AT, "old")], "new", Level::Info,
    Some("the host came back from reboot asked by manager.example@192.0.2.10:38390 at 2026-12-04T15:24:05.123Z, reply delivered")
)]
#[case::came_back_from_a_started_command(
    vec![start("old"), graceful(Outcome::CommandStarted, None, "old")], "new", Level::Info,
    Some("the host came back from graceful-power-off asked by manager.example@192.0.2.10:38390 at 2026-12-04T15:24:05.123Z, reply initiated")
)]
#[case::came_back_after_a_command_that_exited_0(
    vec![graceful(Outcome::CommandStarted, None, "old"), graceful(Outcome::CommandExited, Some(0), "old")], "new", Level::Info,
    Some("the host came back from graceful-power-off")
)]
#[case::refusals_after_the_release_are_passed_over(
    vec![released(AT, "old"), refused("old")], "new", Level::Info,
    Some("the host came back from reboot")
)]
#[case::release_did_not_take_the_host_down(
    vec![released(AT, "b1")], "b1", Level::Warn,
    Some("the reboot asked by manager.example@192.0.2.10:38390 at 2026-12-04T15:24:05.123Z did not take the host down")
)]
#[case::command_exited_0_did_not_take_the_host_down(
    vec![graceful(Outcome::CommandExited, Some(0), "b1")], "b1", Level::Warn,
    Some("the graceful-power-off asked by manager.example@192.0.2.10:38390 at 2026-12-04T15:24:05.123Z did not take the host down (exit status 0)")
)]
#[case::failed_command_did_not_take_the_host_down(
    vec![graceful(Outcome::CommandExited, Some(3), "b1")], "b1", Level::Warn,
    Some("did not take the host down (exit status 3)")
)]
#[case::restarted_without_a_power_request(
    vec![released(AT, "older"), start("old")], "new", Level::Info,
    Some("the host restarted without a power request through roxyd")
)]
#[case::restarted_after_a_failed_command(
    vec![graceful(Outcome::CommandExited, Some(3), "old")], "new", Level::Info,
    Some("the host restarted without a power request through roxyd")
)]
#[case::roxyd_restarted_on_the_same_boot(vec![start("b1")], "b1", Level::Info, None)]
#[case::first_start(vec![], "b1", Level::Info, None)]
#[case::only_refusals(vec![refused("old")], "new", Level::Info, None)]
#[case::boot_id_unknown(
    vec![released(AT, "unknown")], "new", Level::Info,
    Some("cannot tell whether the host restarted since 2026-12-04T15:24:05.123Z")
)]
fn each_start_explanation(
    #[case] entries: Vec<Entry>,
    #[case] boot_now: &str,
    #[case] level: Level,
    #[case] says: Option<&str>,
) {
    let explained = explain(&entries, boot_now);
    match says {
        None => assert_eq!(explained, None),
        Some(text) => {
            let explained = explained.expect("an explanation");
            assert_eq!(explained.level, level, "{explained:?}");
            assert!(explained.text.contains(text), "{explained:?}");
        }
    }
}

#[rstest]
#[case::corrupt(b"{\"at\": nonsense\n".to_vec())]
#[case::truncated(b"{\"at\":\"T\",\"kind\":\"start\",\"boo".to_vec())]
#[case::not_utf8(b"\xff\xfe{}\n".to_vec())]
#[case::missing_fields(b"{\"at\":\"T\",\"kind\":\"power\",\"boot_id\":\"b\",\"roxyd\":\"1\"}\n".to_vec())]
#[case::not_an_object(b"[1,2,3]\n".to_vec())]
#[case::huge_line(vec![b'x'; 100_000])]
fn a_bad_line_is_skipped_and_the_others_read(#[case] bad: Vec<u8>) {
    let good = |boot: &str| format!("{}\n", start(boot).to_line()).into_bytes();
    let mut bytes = good("first");
    bytes.extend_from_slice(&bad);
    bytes.push(b'\n');
    bytes.extend_from_slice(&good("last"));
    let log = parse_log(&bytes);
    assert_eq!(log.skipped, 1, "{log:?}");
    let boots: Vec<&str> = log
        .entries
        .iter()
        .map(|(e, _)| e.boot_id.as_str())
        .collect();
    assert_eq!(boots, ["first", "last"]);
}

#[test]
fn a_huge_file_is_read_from_its_end_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("power.log");
    let mut text = "x".repeat(usize::try_from(3 * MAX_LOG_BYTES).unwrap());
    text.push('\n');
    text.push_str(&start("newest").to_line());
    text.push('\n');
    fs::write(&path, text).unwrap();
    let log = read_log(&path).unwrap().unwrap();
    // The partial first line, the tail of the huge one, is not counted.
    assert_eq!(log.skipped, 0, "{log:?}");
    assert_eq!(log.entries.len(), 1);
    assert_eq!(log.entries[0].0.boot_id, "newest");
}

#[test]
fn a_missing_log_reads_as_none() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_log(&dir.path().join("power.log")).unwrap(), None);
}

proptest! {
    /// Any bytes: no panic, and every line that is an entry is read.
    #[test]
    fn the_reader_reads_every_entry_among_any_bytes(
        junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
    ) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (i, piece) in junk.iter().enumerate() {
            let clean: Vec<u8> = piece.iter().copied().filter(|&b| b != b'\n').collect();
            bytes.extend_from_slice(&clean);
            bytes.push(b'\n');
            let boot = format!("boot{i}");
            bytes.extend_from_slice(start(&boot).to_line().as_bytes());
            bytes.push(b'\n');
            expected.push(boot);
        }
        let log = parse_log(&bytes);
        let boots: Vec<String> = log
            .entries
            .iter()
            .map(|(e, _)| e.boot_id.clone())
            .filter(|b| b.starts_with("boot"))
            .collect();
        prop_assert_eq!(boots, expected);
        prop_assert!(log.skipped <= junk.len());
    }

    #[test]
    fn the_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let log = parse_log(&bytes);
        prop_assert!(log.entries.len() + log.skipped <= bytes.len());
    }
}

fn asked() -> Asked {
    Asked {
        op: Op::Reboot,
        request: RequestForm::FlatReboot,
    }
}

fn entries(dir: &Path) -> Vec<Entry> {
    let log = read_log(&dir.join("power.log")).unwrap().unwrap();
    assert_eq!(log.skipped, 0, "{log:?}");
    log.entries.into_iter().map(|(e, _)| e).collect()
}

#[test]
fn the_writer_appends_a_start_entry_then_each_record_in_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = PowerLog::start(dir.path(), MANAGER);
    assert_eq!(log.released(asked(), Reply::Delivered), Recorded::Written);
    log.refused(asked(), "invalid command", "busy");
    log.cancelled(asked(), "connection lost");
    log.command_started(asked());
    log.command_exited(asked(), Some(0), None);
    assert_eq!(log.flush(FLUSH), Recorded::Written);
    let entries = entries(dir.path());
    let boot = power_log::boot_id();
    assert_eq!(entries.len(), 6, "{entries:?}");
    assert_eq!(entries[0].event, Event::Start);
    assert!(
        entries
            .iter()
            .all(|e| e.boot_id == boot && e.roxyd == env!("CARGO_PKG_VERSION"))
    );
    let outcomes: Vec<Outcome> = entries[1..]
        .iter()
        .map(|e| match &e.event {
            Event::Power(record) => {
                assert_eq!(record.manager, MANAGER);
                record.outcome
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Released,
            Outcome::Refused,
            Outcome::Cancelled,
            Outcome::CommandStarted,
            Outcome::CommandExited
        ]
    );
    let mode = fs::metadata(dir.path().join("power.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_entry_after_a_torn_line_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("power.log"),
        b"{\"at\":\"T\",\"kind\":\"sta",
    )
    .unwrap();
    let log = PowerLog::start(dir.path(), MANAGER);
    assert_eq!(log.flush(FLUSH), Recorded::Written);
    let read = read_log(&dir.path().join("power.log")).unwrap().unwrap();
    assert_eq!(read.skipped, 1, "the torn line");
    assert_eq!(read.entries.len(), 1, "{read:?}");
    assert_eq!(read.entries[0].0.event, Event::Start);
}

#[rstest]
#[case::by_entries(MANAGER.to_owned(), MAX_LOG_ENTRIES + 1)]
#[case::by_bytes("m".repeat(4000), usize::try_from(MAX_LOG_BYTES).unwrap() / 4000 + 1)]
fn the_log_is_trimmed_by_rename_to_its_newest_entries(
    #[case] manager: String,
    #[case] records: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    // What a crash in the middle of an earlier trim leaves: a partial new
    // file beside the whole old one. It is not read, and the next trim
    // replaces it.
    fs::write(dir.path().join("power.log.new"), "{\"at\":\"torn").unwrap();
    let log = PowerLog::start(dir.path(), &manager);
    for _ in 0..records {
        log.command_started(asked());
    }
    log.command_exited(asked(), Some(42), None);
    assert_eq!(log.flush(FLUSH), Recorded::Written);
    let path = dir.path().join("power.log");
    let entries = entries(dir.path());
    assert!(entries.len() < records, "not trimmed: {}", entries.len());
    assert!(entries.len() <= MAX_LOG_ENTRIES);
    assert!(fs::metadata(&path).unwrap().len() <= MAX_LOG_BYTES);
    let Event::Power(newest) = &entries.last().unwrap().event else {
        panic!("the newest entry is kept");
    };
    assert_eq!(newest.exit_status, Some(42));
    assert!(
        !dir.path().join("power.log.new").exists(),
        "renamed, not left behind"
    );
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_missing_state_directory_fails_the_record_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let log = PowerLog::start(&dir.path().join("absent"), MANAGER);
    assert_eq!(log.released(asked(), Reply::Delivered), Recorded::Failed);
}

/// A state directory whose log never takes a write (a FIFO nobody reads
/// hangs `open(2)`, as a dead disk would): the release thread waits
/// [`RELEASE_WAIT`] and goes on; recording from the runtime does not wait.
#[test]
fn a_hung_state_directory_holds_a_release_only_for_the_bound() {
    support::bounded_blocking(
        "a hung state directory holds a release only for its bound",
        move || {
            let dir = tempfile::tempdir().unwrap();
            nix::unistd::mkfifo(
                &dir.path().join("power.log"),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .unwrap();
            let log = PowerLog::start(dir.path(), MANAGER);
            let asked_at = Instant::now();
            log.command_started(asked());
            log.refused(asked(), "fail", "busy");
            let recorded = log.released(asked(), Reply::Delivered);
            assert_eq!(recorded, Recorded::TimedOut);
            assert!(
                asked_at.elapsed() >= RELEASE_WAIT,
                "it did wait for the writer"
            );
        },
    );
}
