//! `roxyctl`, the lab's command-line tool: the private keys it writes are
//! readable by their owner only.
#![cfg(unix)]

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use rstest::rstest;
use tempfile::TempDir;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[rstest]
#[case::fresh_directory(false)]
#[case::over_world_readable_keys(true)]
fn roxyctl_certs_writes_private_keys_for_their_owner_only(#[case] keys_existed: bool) {
    let dir = TempDir::new().unwrap();
    let keys = ["manager.key", "agent.key"];
    if keys_existed {
        for key in keys {
            let path = write_file(dir.path(), key, "old key\n");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_roxyctl"))
        .arg("certs")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "roxyctl certs: {out:?}");
    for key in keys {
        let path = dir.path().join(key);
        assert_eq!(mode(&path), 0o600, "{key}");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----"),
            "{key} holds the new key"
        );
    }
}
