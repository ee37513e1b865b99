//! What an operator reads holds up: nothing in the repository points outside
//! it, the README's troubleshooting lines are ones roxyd prints, the exit
//! statuses agree between `--help`, the README and the systemd unit, the
//! unit names files the Debian package installs, and every repository path,
//! benchmark and test the documentation names exists.

mod support;

mod env_names;

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
    support::bounded_blocking(
        "no tracked file refers to a path outside the repository",
        move || {
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
        },
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
    support::bounded_blocking(
        "the README's troubleshooting quotes lines roxyd prints",
        move || {
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
                let agent =
                    relative.starts_with("src/") || relative.starts_with("crates/proto/src/");
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
                        let fragment =
                            fragment.trim_matches(|c: char| c.is_whitespace() || c == ':');
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
        },
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
    support::bounded_blocking(
        "the exit statuses agree between --help, the README and the unit",
        move || {
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
        },
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
        // `man:roxyd(1)` is /usr/share/man/man1/roxyd.1 (cargo-deb gzips it).
        let path = match url.strip_prefix("man:") {
            Some(page) => {
                let (name, section) = page.trim_end_matches(')').split_once('(').unwrap();
                format!("/usr/share/man/man{section}/{name}.{section}")
            }
            None => url
                .strip_prefix("file://")
                .expect("a file:// or man: URL")
                .to_owned(),
        };
        assert!(installed(&path), "Documentation={url} is not installed");
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
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    // cargo-deb installs the unit from `unit-scripts` and writes the
    // maintainer scripts for it; the package must not start a node before
    // its Manager and certificates are configured.
    let units = &deb["systemd-units"];
    let unit_dir = units["unit-scripts"]
        .as_str()
        .expect("systemd-units.unit-scripts");
    assert_eq!(
        repo().join(unit_dir).join("roxyd.service"),
        repo().join("contrib/roxyd.service"),
        "the packaged unit is not contrib/roxyd.service"
    );
    assert_eq!(
        units["enable"].as_bool(),
        Some(false),
        "enabled before configured"
    );
    assert_eq!(
        units["start"].as_bool(),
        Some(false),
        "started before configured"
    );
    assert!(
        deb.get("maintainer-scripts").is_some(),
        "cargo-deb needs maintainer-scripts for systemd-units"
    );
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

/// The documentation an operator or developer reads as true now; the
/// changelog is history and may name what no longer exists.
fn reference_docs() -> Vec<PathBuf> {
    tracked_files()
        .into_iter()
        .filter(|path| {
            let relative = path.strip_prefix(repo()).unwrap().to_string_lossy();
            path.extension().is_some_and(|e| e == "md")
                && relative != "CHANGELOG.md"
                && !relative.starts_with("target/")
        })
        .collect()
}

/// The `code spans` and link targets of a Markdown text.
fn spans_and_links(text: &str) -> (Vec<String>, Vec<String>) {
    let spans = text
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    let links = text
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(str::to_owned)
        .collect();
    (spans, links)
}

/// The top-level names of the repository, from which a word in a code span
/// is taken as a repository path.
fn top_level_names() -> BTreeSet<String> {
    tracked_files()
        .iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(repo()).ok()?;
            Some(
                relative
                    .components()
                    .next()?
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned(),
            )
        })
        .collect()
}

/// Whether git ignores `relative` (build output, fuzz corpora): such paths
/// exist only once made, and the docs may name them.
fn ignored_by_git(relative: &str) -> bool {
    Command::new("git")
        .args(["check-ignore", "-q", "--no-index", relative])
        .current_dir(repo())
        .status()
        .is_ok_and(|status| status.success())
}

/// A word with the punctuation around it, a `#anchor` and a `:line` removed.
fn bare_path(word: &str) -> &str {
    let word = word.trim_matches(|c: char| "\"'(),;.:".contains(c));
    let word = word.split('#').next().unwrap_or(word);
    word.split(':').next().unwrap_or(word)
}

/// Every repository path named in a code span (from the repository's top)
/// or as a link target (from the document's directory) exists.
#[test]
fn every_path_the_docs_name_exists() {
    support::bounded_blocking("every path the docs name exists", move || {
        let tops = top_level_names();
        let mut missing = Vec::new();
        let docs = reference_docs();
        assert!(docs.len() >= 4, "documentation found: {docs:?}");
        for doc in &docs {
            let shown = doc.strip_prefix(repo()).unwrap().display().to_string();
            let (spans, links) = spans_and_links(&std::fs::read_to_string(doc).unwrap());
            for span in &spans {
                for word in span.split_whitespace() {
                    let path = bare_path(word);
                    let first = path.split('/').next().unwrap_or_default();
                    let named = path.contains('/') || path.contains('.');
                    if named
                        && tops.contains(first)
                        && !path.contains('*')
                        && !repo().join(path).exists()
                        && !ignored_by_git(path)
                    {
                        missing.push(format!("{shown}: `{path}`"));
                    }
                }
            }
            for link in &links {
                if link.contains("://") || link.starts_with('#') || link.starts_with("mailto:") {
                    continue;
                }
                let path = link.split('#').next().unwrap_or(link);
                if !path.is_empty() && !doc.parent().unwrap().join(path).exists() {
                    missing.push(format!("{shown}: link ({path})"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "named in the docs but not in the repository:\n{}",
            missing.join("\n")
        );
    });
}

/// Every `--bench NAME` the docs, scripts and CI give is a benchmark of the
/// manifest, and every `binary::test` the docs cite is a test in
/// `tests/binary.rs`.
#[test]
fn every_bench_and_test_the_docs_name_exists() {
    support::bounded_blocking("every bench and test the docs name exists", move || {
        let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
        let benches: BTreeSet<&str> = manifest["bench"]
            .as_array()
            .unwrap()
            .iter()
            .map(|bench| bench["name"].as_str().unwrap())
            .collect();
        let mut texts: Vec<(String, String)> = reference_docs()
            .iter()
            .map(|doc| {
                (
                    doc.strip_prefix(repo()).unwrap().display().to_string(),
                    std::fs::read_to_string(doc).unwrap(),
                )
            })
            .collect();
        for extra in ["CHANGELOG.md", ".ci/run", ".github/workflows/ci.yml"] {
            texts.push((extra.to_owned(), read(extra)));
        }
        let mut missing = Vec::new();
        let mut benches_named = 0;
        for (shown, text) in &texts {
            for rest in text.split("--bench ").skip(1) {
                let name = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                    .next()
                    .unwrap();
                // `--bench NAME`: a placeholder, not a name.
                if name.chars().all(|c| c.is_ascii_uppercase()) {
                    continue;
                }
                benches_named += 1;
                if !benches.contains(name) {
                    missing.push(format!("{shown}: --bench {name}"));
                }
            }
            let (spans, _) = spans_and_links(text);
            for span in spans {
                let parts: Vec<&str> = span.split("::").collect();
                let [binary, .., test] = parts.as_slice() else {
                    continue;
                };
                if parts.len() < 2
                    || !test
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    continue;
                }
                // `dispatch::streams` names a module of the crate, not a test.
                let module = repo().join("src").join(parts.join("/"));
                if module.with_extension("rs").exists() || module.is_dir() {
                    continue;
                }
                let file = repo().join("tests").join(format!("{binary}.rs"));
                let Ok(source) = std::fs::read_to_string(&file) else {
                    continue;
                };
                if !source.contains(&format!("fn {test}(")) {
                    missing.push(format!(
                        "{shown}: `{span}` (no fn {test} in tests/{binary}.rs)"
                    ));
                }
            }
        }
        assert!(benches_named >= 4, "found {benches_named} --bench names");
        assert!(
            missing.is_empty(),
            "named in the docs but not in the code:\n{}",
            missing.join("\n")
        );
    });
}

/// Every test and benchmark setting the documentation names
/// (`ROXYTEST_*`, `ROXYBENCH_*`) is read by a test, benchmark or script.
#[test]
fn every_test_and_bench_setting_the_docs_name_is_read() {
    support::bounded_blocking(
        "every test and bench setting the docs name is read",
        move || {
            let mut code = String::new();
            for path in tracked_files() {
                let relative = path
                    .strip_prefix(repo())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let is_code =
                    path.extension().is_some_and(|e| e == "rs") || relative.starts_with("scripts/");
                if is_code && relative != "tests/docs.rs" && relative != "tests/knobs.rs" {
                    code.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
            let mut unread = Vec::new();
            let mut named = 0;
            for doc in reference_docs() {
                let shown = doc.strip_prefix(repo()).unwrap().display().to_string();
                let text = std::fs::read_to_string(&doc).unwrap();
                for prefix in ["ROXYTEST_", "ROXYBENCH_"] {
                    for name in env_names::names_with_prefix(&text, prefix) {
                        named += 1;
                        if !code.contains(&name) {
                            unread.push(format!(
                                "{shown}: {name} is read by no test, bench or script"
                            ));
                        }
                    }
                }
            }
            assert!(named >= 3, "found {named} settings in the docs");
            assert!(unread.is_empty(), "{}", unread.join("\n"));
        },
    );
}
