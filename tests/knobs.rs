//! Test and benchmark settings never take the daemon's `ROXYD_` prefix:
//! roxyd refuses unknown `ROXYD_` variables (a typo must not be silently
//! ignored), so a setting named that way in an operator's or developer's
//! shell would stop roxyd from starting. They are named `ROXYTEST_*` and
//! `ROXYBENCH_*`.

mod support;

mod env_names;

use std::{collections::BTreeSet, path::Path, process::Command};

use clap::CommandFactory;
use roxyd::cli::Cli;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The text of every file under the repository's `relative` paths (files or
/// directories, recursively).
fn texts(relative: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending: Vec<_> = relative.iter().map(|r| repo().join(r)).collect();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            let shown = path.strip_prefix(repo()).unwrap().display().to_string();
            out.push((shown, text));
        }
    }
    assert!(!out.is_empty(), "nothing to read under {relative:?}");
    out
}

/// Where test and benchmark settings are read or set.
const KNOB_SOURCES: [&str; 5] = [
    "scripts",
    "benches",
    "tests/pidns.rs",
    "tests/support",
    "examples",
];

/// Every `ROXYTEST_*` and `ROXYBENCH_*` name the scripts, benchmarks and
/// tests use.
fn knob_names() -> BTreeSet<String> {
    texts(&KNOB_SOURCES)
        .iter()
        .flat_map(|(_, text)| {
            let mut names = env_names::names_with_prefix(text, "ROXYTEST_");
            names.extend(env_names::names_with_prefix(text, "ROXYBENCH_"));
            names
        })
        .collect()
}

/// roxyd, started with `env` on top of an environment without `ROXYD_`
/// variables, and certificate paths that do not exist: it gets past the
/// environment check only to fail reading the certificate, before it could
/// connect anywhere. Returns its exit status and standard error.
fn roxyd_with(env: &[(String, String)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roxyd"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ROXYD_") {
            command.env_remove(key);
        }
    }
    let output = command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["--cert", "/nonexistent/roxyd-knobs/agent.pem"])
        .args(["--key", "/nonexistent/roxyd-knobs/agent.key"])
        .args(["--ca-certs", "/nonexistent/roxyd-knobs/ca.pem"])
        .arg("manager.invalid@127.0.0.1:9")
        .output()
        .expect("roxyd starts");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_shell_exporting_every_test_and_bench_setting_still_starts_roxyd() {
    support::bounded_blocking(
        "a shell exporting every test and bench setting still starts roxyd",
        move || {
            let knobs = knob_names();
            for expected in ["ROXYTEST_REAL_BINARY", "ROXYBENCH_QUICK"] {
                assert!(
                    knobs.contains(expected),
                    "{expected} not found in {knobs:?}"
                );
            }
            let env: Vec<(String, String)> =
                knobs.iter().map(|k| (k.clone(), "1".to_owned())).collect();
            let (status, stderr) = roxyd_with(&env);
            assert!(
                !stderr.contains("unknown environment variable"),
                "roxyd refused a test or bench setting: {stderr}"
            );
            assert!(
                stderr.contains("/nonexistent/roxyd-knobs/agent.pem"),
                "roxyd did not get as far as reading its certificate: {stderr}"
            );
            assert_eq!(status, Some(2), "{stderr}");
        },
    );
}

/// What the test above guards against: a setting under the daemon's prefix
/// stops roxyd.
#[test]
fn a_setting_under_the_daemon_prefix_stops_roxyd() {
    support::bounded_blocking("a setting under the daemon prefix stops roxyd", move || {
        let (status, stderr) = roxyd_with(&[("ROXYD_BENCH_QUICK".to_owned(), "1".to_owned())]);
        assert!(
            stderr.contains("unknown environment variable ROXYD_BENCH_QUICK"),
            "{stderr}"
        );
        assert_eq!(status, Some(2), "{stderr}");
    });
}

/// Every `ROXYD_` name the scripts, benchmarks and shared test code use is
/// one roxyd reads (`ROXYD_BACKEND`, a configuration key): none is a test
/// or bench setting under the daemon's prefix.
#[test]
fn test_and_bench_code_uses_only_variables_roxyd_reads() {
    let options: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|var| var.to_string_lossy().into_owned())
        .collect();
    let mut offences = Vec::new();
    for (file, text) in texts(&KNOB_SOURCES) {
        for name in env_names::names_with_prefix(&text, "ROXYD_") {
            if let Err(e) = roxyd::config::check_env_names([name.clone().into()], &options) {
                offences.push(format!("{file}: {name}: {e}"));
            }
        }
    }
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}
