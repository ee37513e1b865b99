//! The Debian package's generated files match the code: the man page and the
//! shell completions under `contrib/` are what `clap_mangen` and `clap_complete`
//! make of `roxyd::cli::Cli` now, and the package's synopsis fits the
//! 80 columns Debian's tools show.
//!
//! After changing the command line, regenerate them with
//! `ROXYTEST_REGENERATE=1 scripts/test -E 'binary(packaging)'` and commit the
//! result.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::{Shell, generate};
use roxyd::cli::Cli;

/// Set to `1` to write the generated files instead of comparing them.
const REGENERATE: &str = "ROXYTEST_REGENERATE";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `generated` with the checked-in file at `relative`, or writes it
/// there when [`REGENERATE`] is `1`.
fn matches_checked_in(relative: &str, generated: &[u8]) {
    let path = repo().join(relative);
    if std::env::var(REGENERATE).is_ok_and(|v| v == "1") {
        std::fs::write(&path, generated)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{relative} differs from what the command line's definition generates; \
         regenerate it with {REGENERATE}=1 scripts/test -E 'binary(packaging)'"
    );
}

#[test]
fn the_man_page_is_generated_from_the_command_line() {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .unwrap();
    matches_checked_in("contrib/man/roxyd.1", &page);
}

#[test]
fn the_bash_completion_is_generated_from_the_command_line() {
    let mut script = Vec::new();
    generate(Shell::Bash, &mut Cli::command(), "roxyd", &mut script);
    matches_checked_in("contrib/completions/roxyd.bash", &script);
}

#[test]
fn the_zsh_completion_is_generated_from_the_command_line() {
    let mut script = Vec::new();
    generate(Shell::Zsh, &mut Cli::command(), "roxyd", &mut script);
    matches_checked_in("contrib/completions/_roxyd", &script);
}

/// dpkg and apt show the description's first line, the synopsis, in 80
/// columns with the package name before it; lintian wants it under 80.
#[test]
fn the_package_synopsis_fits_a_line() {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let synopsis = manifest["package"]["description"].as_str().unwrap();
    assert!(
        synopsis.len() < 80 && !synopsis.contains('\n'),
        "the synopsis is {} characters: {synopsis:?}",
        synopsis.len()
    );
}

/// The `(key, value)` of every `# key = value` line of the sample
/// configuration.
fn commented_keys(sample: &str) -> Vec<(String, String)> {
    sample
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter_map(|line| line.split_once(" = "))
        .filter(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// The field names and `Debug` values of the configuration roxyd uses when
/// no key is set.
fn default_fields() -> Vec<(String, String)> {
    let defaults = roxyd::config::Config::load(None, |_| None).unwrap();
    format!("{defaults:#?}")
        .lines()
        .filter_map(|line| line.strip_prefix("    "))
        .filter(|line| !line.starts_with(' '))
        .filter_map(|line| line.split_once(": "))
        .map(|(key, value)| (key.to_owned(), value.trim_end_matches(',').to_owned()))
        .collect()
}

/// The packaged conffile pins nothing: every key is commented out, so that a
/// default a later release changes reaches the node on upgrade. Every key
/// roxyd reads is shown, and a commented value is the default, except for
/// the keys that have none (shown as examples).
#[test]
fn the_sample_configuration_shows_every_default_commented_out() {
    let sample = std::fs::read_to_string(repo().join("contrib/roxyd.toml")).unwrap();
    let active: toml::Table = sample.parse().unwrap();
    assert!(active.is_empty(), "active keys in the sample: {active:?}");

    let shown = commented_keys(&sample);
    let defaults = default_fields();
    assert!(defaults.len() >= 10, "{defaults:?}");
    let dir = tempfile::tempdir().unwrap();
    for (key, default) in &defaults {
        let Some((_, value)) = shown.iter().find(|(k, _)| k == key) else {
            panic!("the sample does not show `{key}` (default {default})");
        };
        let has_no_default = ["None", "[]", "\"\""].contains(&default.as_str());
        if has_no_default {
            continue;
        }
        let file = dir.path().join("one-key.toml");
        std::fs::write(&file, format!("{key} = {value}\n")).unwrap();
        let loaded = roxyd::config::Config::load(Some(&file), |_| None)
            .unwrap_or_else(|e| panic!("`{key} = {value}` from the sample: {e}"));
        let loaded_value = format!("{loaded:#?}")
            .lines()
            .find_map(|line| line.strip_prefix(&format!("    {key}: ")))
            .map(|v| v.trim_end_matches(',').to_owned());
        assert_eq!(
            loaded_value.as_deref(),
            Some(default.as_str()),
            "the sample shows `{key} = {value}`, the default is {default}"
        );
    }
    for key in ["manager", "cert", "key", "ca_certs", "state_dir"] {
        assert!(
            shown.iter().any(|(k, _)| k == key),
            "the sample does not show `{key}`"
        );
    }
}
