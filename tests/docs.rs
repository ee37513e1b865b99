//! What an operator reads holds up: nothing in the repository points outside
//! it, the README's troubleshooting lines are ones roxyd prints, the exit
//! statuses agree between `--help`, the README and the systemd unit, and the
//! unit names files the Debian package installs.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The files git tracks; in a source tree without git, every file outside
/// build output.
fn tracked_files() -> Vec<PathBuf> {
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output();
    if let Ok(out) = listed {
        if out.status.success() {
            return out
                .stdout
                .split(|b| *b == 0)
                .filter(|name| !name.is_empty())
                .map(|name| repo().join(String::from_utf8_lossy(name).as_ref()))
                .collect();
        }
    }
    let mut files = Vec::new();
    let mut dirs = vec![repo().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if ![".git", "target", "corpus", "artifacts", "coverage"].contains(&name.as_str()) {
                    dirs.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn no_tracked_file_refers_to_a_path_outside_the_repository() {
    // Spelt in pieces so that this file does not trip its own test.
    let forbidden = [concat!("..", "/shared"), concat!("/wo", "rk/")];
    let files = tracked_files();
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut offences = Vec::new();
    for path in &files {
        // Binary and non-UTF-8 files are not documentation.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f)) {
                offences.push(format!(
                    "{}:{}: {}",
                    path.strip_prefix(repo()).unwrap_or(path).display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "paths outside the repository:\n{}",
        offences.join("\n")
    );
}

/// The lines of section `## title` of `text`, up to the next `## ` heading.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|line| *line != format!("## {title}"))
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .collect()
}

/// The cells of the body rows of the first Markdown table among `lines`
/// whose header row is `header`.
fn table_rows(lines: &[&str], header: &str) -> Vec<Vec<String>> {
    lines
        .iter()
        .skip_while(|line| line.trim() != header)
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            line.trim()
                .trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

/// Words in the troubleshooting lines that stand for what varies.
const PLACEHOLDERS: [&str; 9] = [
    "...", "FILE", "ADDR", "N", "NAME", "MODE", "VAR", "OFFERED", "ANSWER",
];

/// Every `code span` in the first column of the README's troubleshooting
/// table is a line roxyd prints (text from the system or from rustls stays
/// outside the spans). Each span's fixed parts, between the placeholders,
/// must be in roxyd's source.
#[test]
fn readme_troubleshooting_quotes_lines_roxyd_prints() {
    let readme = read("README.md");
    let rows = table_rows(
        &section(&readme, "Troubleshooting"),
        "| roxyd says | what it means |",
    );
    assert!(rows.len() >= 10, "troubleshooting table: {rows:?}");
    let mut source = String::new();
    for path in tracked_files() {
        let relative = path.strip_prefix(repo()).unwrap().to_string_lossy();
        // What roxyd prints comes from its own crate and the shared proto
        // crate it links; never from the lab.
        let agent = relative.starts_with("src/") || relative.starts_with("crates/proto/src/");
        if agent && relative.ends_with(".rs") {
            source.push_str(
                &std::fs::read_to_string(&path)
                    .unwrap()
                    .replace("\\\"", "\""),
            );
        }
    }
    let mut missing = Vec::new();
    for row in &rows {
        let spans: Vec<&str> = row[0].split('`').skip(1).step_by(2).collect();
        assert!(!spans.is_empty(), "no quoted line in {row:?}");
        for span in spans {
            let mut fragments = vec![span.to_owned()];
            for placeholder in PLACEHOLDERS {
                fragments = fragments
                    .iter()
                    .flat_map(|f| split_on_word(f, placeholder))
                    .collect();
            }
            for fragment in fragments {
                let fragment = fragment.trim_matches(|c: char| c.is_whitespace() || c == ':');
                if fragment.len() >= 3 && !source.contains(fragment) {
                    missing.push(format!("{fragment:?} (from `{span}`)"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "quoted in the README but not in the agent's source:\n{}",
        missing.join("\n")
    );
}

/// `text` split at each occurrence of `word` that is not part of a longer
/// word.
fn split_on_word(text: &str, word: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    let mut start = 0;
    while let Some(at) = rest[start..].find(word).map(|i| i + start) {
        let end = at + word.len();
        let before = rest[..at].chars().next_back();
        let after = rest[end..].chars().next();
        let standalone = word.starts_with('.')
            || (!before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_'));
        if standalone {
            parts.push(rest[..at].to_owned());
            rest = &rest[end..];
            start = 0;
        } else {
            start = end;
        }
    }
    parts.push(rest.to_owned());
    parts
}

#[test]
fn split_on_word_leaves_longer_words_alone() {
    assert_eq!(
        split_on_word("within N s of NAME N", "N"),
        ["within ", " s of NAME ", ""]
    );
    assert_eq!(split_on_word("a ... b", "..."), ["a ", " b"]);
}

/// The `(status, meaning)` rows of `--help`'s exit status table.
fn help_exit_statuses() -> Vec<(u8, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_roxyd"))
        .arg("--help")
        .env_remove("ROXYD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "roxyd --help: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    help.lines()
        .skip_while(|line| *line != "Exit status:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .map(|line| {
            let (status, meaning) = line.trim().split_once("  ").unwrap();
            (status.parse().unwrap(), meaning.trim().to_owned())
        })
        .collect()
}

/// A status a restart cannot cure says so, in these words.
const PERMANENT: &str = "restarting cannot help";

#[test]
fn exit_statuses_agree_between_help_readme_and_unit() {
    let help = help_exit_statuses();
    assert_eq!(
        help.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4],
        "{help:?}"
    );
    let readme = read("README.md");
    let lines: Vec<&str> = readme.lines().collect();
    let readme_rows: Vec<(u8, String)> = table_rows(&lines, "| exit status | meaning |")
        .into_iter()
        .map(|row| (row[0].parse().unwrap(), row[1].replace('`', "")))
        .collect();
    assert_eq!(readme_rows, help, "README's table differs from --help");

    let unit = read("contrib/roxyd.service");
    let prevented: BTreeSet<u8> = unit
        .lines()
        .find_map(|line| line.strip_prefix("RestartPreventExitStatus="))
        .expect("RestartPreventExitStatus= in the unit")
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let permanent: BTreeSet<u8> = help
        .iter()
        .filter(|(_, meaning)| meaning.ends_with(PERMANENT))
        .map(|(status, _)| *status)
        .collect();
    assert!(!permanent.is_empty());
    assert_eq!(
        prevented, permanent,
        "RestartPreventExitStatus must list exactly the statuses --help says restarting cannot help"
    );
}

/// `(source, dest)` of every asset of the Debian package.
fn deb_assets() -> Vec<(String, String)> {
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|asset| {
            let asset = asset.as_array().unwrap();
            let (source, dest) = (asset[0].as_str().unwrap(), asset[1].as_str().unwrap());
            let dest = if dest.ends_with('/') {
                format!("/{dest}{}", source.rsplit('/').next().unwrap())
            } else {
                format!("/{dest}")
            };
            (source.to_owned(), dest)
        })
        .collect()
}

#[test]
fn the_unit_names_files_the_package_installs() {
    let assets = deb_assets();
    let installed = |path: &str| assets.iter().any(|(_, dest)| dest == path);
    let unit = read("contrib/roxyd.service");
    let documentation = unit
        .lines()
        .find_map(|line| line.strip_prefix("Documentation="))
        .expect("Documentation= in the unit");
    for url in documentation.split_whitespace() {
        let path = url.strip_prefix("file://").expect("a file:// URL");
        assert!(installed(path), "Documentation={path} is not installed");
    }
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("ExecStart= in the unit");
    let binary = exec.split_whitespace().next().unwrap();
    assert!(
        assets.contains(&("target/release/roxyd".to_owned(), binary.to_owned())),
        "ExecStart runs {binary}, which the package does not install"
    );
    let config = exec
        .split_whitespace()
        .skip_while(|word| *word != "-c")
        .nth(1)
        .expect("-c CONFIG in ExecStart");
    assert!(installed(config), "ExecStart reads {config}, not installed");
    assert!(
        installed("/lib/systemd/system/roxyd.service"),
        "the unit itself is not installed"
    );
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    assert_eq!(deb["default-features"].as_bool(), Some(false));
    assert!(
        !deb["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str() == Some("test-backend")),
        "the package must carry the real backend"
    );
    assert!(
        deb["conf-files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str() == Some(config)),
        "{config} must be a conffile"
    );
}
